//! Image collections (`--data imagefolder:DIR`, `images:LIST`): torchvision's
//! preprocessing reproduced bit for bit, an audit of a folder equal to the
//! audit of the arrays `prepare` writes (decoding per batch or not, sharded
//! or not), and hostile folders refused with the file's name.

use crate::util::{fixture, read_csv, repo_path, stderr, stdout, upat_audit};
use std::path::{Path, PathBuf};
use upat::data::images::ImageOptions;
use upat::data::{load_npz, DataSpec, Split};

/// `target/goldens/images` (scripts/goldens/images.py: a folder of every
/// JPEG and PNG flavour and torchvision's tensors for it). Skipped when
/// absent, except under `UPAT_REQUIRE_GOLDENS=1`.
fn goldens() -> Option<PathBuf> {
    let dir = repo_path("target/goldens/images");
    if dir.join("cases.tsv").is_file() {
        return Some(dir);
    }
    let required = std::env::var("UPAT_REQUIRE_GOLDENS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "goldens required but missing: run .venv/bin/python scripts/goldens/images.py target/goldens/images"
    );
    eprintln!("skipped: no image goldens (scripts/goldens/images.py makes them)");
    None
}

fn options(transform: &str) -> ImageOptions {
    ImageOptions {
        transform: transform.parse().unwrap(),
        classes: None,
    }
}

#[test]
fn torchvisions_decoding_and_preprocessing_are_reproduced_bit_for_bit() {
    let Some(dir) = goldens() else {
        return;
    };
    let cases = std::fs::read_to_string(dir.join("cases.tsv")).unwrap();
    let spec = DataSpec::ImageFolder(dir.join("folder"));
    for line in cases.lines() {
        let (name, transform) = line.split_once('\t').unwrap();
        let expected = load_npz(&dir.join(format!("{name}.npz"))).unwrap();
        let mut data = spec.load_with(Split::Test, &options(transform)).unwrap();
        assert!(data.prepare(false).unwrap().is_empty(), "{name}");
        assert_eq!(data.image_shape, expected.image_shape, "{name}");
        assert_eq!(data.labels, expected.labels, "{name}");
        let ours = data.pixels_of(0..data.len()).unwrap();
        let theirs = expected.pixels_of(0..expected.len()).unwrap();
        let per_image = data.image_len();
        for (i, (a, b)) in ours
            .chunks(per_image)
            .zip(theirs.chunks(per_image))
            .enumerate()
        {
            let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differing,
                0,
                "{name}: image {} ({}) differs from torchvision in {differing} values",
                i,
                data.file_names().unwrap()[i]
            );
        }
    }
}

#[test]
fn a_list_file_gives_the_listed_images_with_their_ids_in_list_order() {
    let Some(dir) = goldens() else {
        return;
    };
    let folder = DataSpec::ImageFolder(dir.join("folder"))
        .load_with(Split::Test, &options("resize=40,crop=32"))
        .unwrap();
    let list = DataSpec::Images(dir.join("list.csv"))
        .load_with(Split::Test, &options("resize=40,crop=32"))
        .unwrap();
    // The generator lists every third image of the folder from the second.
    let picked: Vec<usize> = (1..folder.len()).step_by(3).collect();
    assert_eq!(list.len(), picked.len());
    assert_eq!(list.ids, (0..picked.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        list.labels,
        picked.iter().map(|&i| folder.labels[i]).collect::<Vec<_>>()
    );
    assert_eq!(
        *list.pixels_of(0..list.len()).unwrap(),
        folder.gather(&picked).unwrap()
    );
    // --classes pins the numbering: here a fourth class the folder lacks
    // comes first, so every label moves up by one.
    let classes = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(classes.path(), "aardvark\nant\nbee\ncat\n").unwrap();
    let pinned = DataSpec::ImageFolder(dir.join("folder"))
        .load_with(
            Split::Test,
            &ImageOptions {
                classes: Some(classes.path().to_path_buf()),
                ..options("resize=40,crop=32")
            },
        )
        .unwrap();
    assert_eq!(pinned.num_classes, 4);
    assert_eq!(
        pinned.labels,
        folder.labels.iter().map(|y| y + 1).collect::<Vec<_>>()
    );
}

/// A folder of the committed fixture images in two classes, plus `extra`
/// files written into class `b`.
fn fixture_folder(root: &Path) -> PathBuf {
    let folder = root.join("folder");
    let files: Vec<PathBuf> = std::fs::read_dir(fixture("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut files = files;
    files.sort();
    for (i, file) in files.iter().enumerate() {
        let class = folder.join(if i % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&class).unwrap();
        for copy in 0..2 {
            let name = format!("{copy}-{}", file.file_name().unwrap().to_string_lossy());
            std::fs::copy(file, class.join(name)).unwrap();
        }
    }
    folder
}

/// tiny_cnn.onnx takes 3×8×8 images and has 5 classes.
const TINY: [&str; 6] = [
    "--transform",
    "resize=8x8",
    "--backend",
    "tract",
    "--batch-size",
    "5",
];

fn audit(dir: &Path, data: &str, out: &str, extra: &[&str]) -> std::process::Output {
    let model = fixture("tiny_cnn.onnx").display().to_string();
    let mut args = vec![
        model.as_str(),
        "--data",
        data,
        "--out",
        out,
        "--suite",
        "smoke",
    ];
    args.extend(extra);
    upat_audit(dir, &args)
}

#[test]
fn an_audit_of_a_folder_equals_the_audit_of_what_prepare_writes() {
    let dir = tempfile::tempdir().unwrap();
    let folder = fixture_folder(dir.path());
    let data = format!("imagefolder:{}", folder.display());
    let out = upat_audit(
        dir.path(),
        &[
            "prepare",
            "--data",
            &data,
            "--transform",
            "resize=8x8",
            "--out",
            "prepared.npz",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("12 samples of [3, 8, 8]"),
        "{}",
        stdout(&out)
    );
    let prepared = load_npz(&dir.path().join("prepared.npz")).unwrap();
    assert_eq!(prepared.len(), 12);

    let from_npz = audit(dir.path(), "npz:prepared.npz", "npz", &TINY[2..]);
    assert!(from_npz.status.success(), "{}", stderr(&from_npz));
    let expected = figures(&dir.path().join("npz"));
    let from_folder = audit(dir.path(), &data, "from-folder", &TINY);
    assert!(from_folder.status.success(), "{}", stderr(&from_folder));
    // Decoding per batch (with prefetching) sees the same pixels.
    let model = fixture("tiny_cnn.onnx").display().to_string();
    let mut args = vec![
        model.as_str(),
        "--data",
        &data,
        "--out",
        "streamed",
        "--suite",
        "smoke",
    ];
    args.extend(TINY);
    let streamed = std::process::Command::new(env!("CARGO_BIN_EXE_upat-audit"))
        .args(&args)
        .current_dir(dir.path())
        .env("UPAT_DECODE_PER_BATCH", "1")
        .output()
        .unwrap();
    assert!(streamed.status.success(), "{}", stderr(&streamed));
    for run in ["from-folder", "streamed"] {
        assert_eq!(figures(&dir.path().join(run)), expected, "{run}");
    }
    // Two shards merged give the unsharded report.
    for k in 0..2 {
        let shard = format!("{k}/2");
        let out = audit(
            dir.path(),
            &data,
            &format!("shard{k}"),
            &[&TINY[..], &["--shard", &shard]].concat(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let merged = upat_audit(
        dir.path(),
        &["merge", "shard0", "shard1", "--out", "merged"],
    );
    assert!(merged.status.success(), "{}", stderr(&merged));
    assert_eq!(figures(&dir.path().join("merged")), expected);
    // samples.csv names each sample's file: the listing's, by id.
    let names = DataSpec::ImageFolder(folder.clone())
        .load_with(Split::Test, &options("resize=8x8"))
        .unwrap()
        .file_names()
        .unwrap();
    let (header, rows) = read_csv(&dir.path().join("merged/samples.csv"));
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (sample, file) = (column("sample"), column("file"));
    assert!(!rows.is_empty());
    for row in rows {
        let id: usize = row[sample].parse().unwrap();
        assert_eq!(row[file], names[id]);
    }
    // --resume continues an audit of the same files, and refuses one whose
    // image changed (the files' bytes are in the fingerprint).
    let resumed = audit(
        dir.path(),
        &data,
        "from-folder",
        &[&TINY[..], &["--resume"]].concat(),
    );
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("resuming"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(figures(&dir.path().join("from-folder")), expected);
    let changed = folder.join("a").join(&names[0][2..]);
    let mut bytes = std::fs::read(&changed).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 1;
    std::fs::write(&changed, bytes).unwrap();
    let refused = audit(
        dir.path(),
        &data,
        "from-folder",
        &[&TINY[..], &["--resume"]].concat(),
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("differs from this one in its data"),
        "{}",
        stderr(&refused)
    );
}

/// report.csv's rows without `seconds` and `dataset` (which names the data
/// as given: the folder or the .npz).
fn figures(out: &Path) -> Vec<Vec<String>> {
    let (header, rows) = read_csv(&out.join("report.csv"));
    let dropped: Vec<usize> = ["seconds", "dataset"]
        .iter()
        .map(|c| header.iter().position(|h| h == c).unwrap())
        .collect();
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .enumerate()
                .filter(|(i, _)| !dropped.contains(i))
                .map(|(_, v)| v)
                .collect()
        })
        .collect()
}

/// Writes `bytes` as `folder/b/<name>`.
fn plant(folder: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(folder.join("b").join(name), bytes).unwrap();
}

#[test]
fn bad_images_stop_the_audit_by_name_or_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let folder = fixture_folder(dir.path());
    let data = format!("imagefolder:{}", folder.display());
    let jpeg = std::fs::read(fixture("images/a420.jpg")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "truncated.jpg",
            jpeg[..jpeg.len() / 2].to_vec(),
            "Premature end of JPEG file",
        ),
        (
            "notes.png",
            b"these are not pixels".to_vec(),
            "not a JPEG or PNG",
        ),
        ("bitmap.bmp", b"BM\0\0\0\0".to_vec(), "is a BMP image"),
        ("empty.jpg", Vec::new(), "not a JPEG or PNG"),
    ];
    for (name, bytes, message) in &cases {
        plant(&folder, name, bytes);
        let out = audit(dir.path(), &data, "bad", &TINY);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("b/{name}")) && err.contains(message),
            "{name}: {err}"
        );
        assert!(err.contains("--skip-bad-images"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        std::fs::remove_file(folder.join("b").join(name)).unwrap();
    }
    // A link out of the folder, to a perfectly good image.
    let outside = dir.path().join("outside.jpg");
    std::fs::write(&outside, &jpeg).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("b/link.jpg")).unwrap();
    let out = audit(dir.path(), &data, "link", &TINY);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("leads out of"), "{}", stderr(&out));
    // Skipped: the run goes on without them and report.md names them.
    plant(&folder, "truncated.jpg", &jpeg[..jpeg.len() / 2]);
    let skipping = [&TINY[..], &["--skip-bad-images"]].concat();
    let out = audit(dir.path(), &data, "skipped", &skipping);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = std::fs::read_to_string(dir.path().join("skipped/report.md")).unwrap();
    assert!(
        report.contains("2 image(s) could not be used")
            && report.contains("b/link.jpg")
            && report.contains("b/truncated.jpg"),
        "{report}"
    );
    let (header, rows) = read_csv(&dir.path().join("skipped/report.csv"));
    let samples = header.iter().position(|h| h == "n").unwrap();
    assert_eq!(rows[0][samples], "12", "the good images are all audited");
    // Sharded, each shard skips its own bad images, and merge's report.md
    // still names them.
    for k in 0..2 {
        let shard = format!("{k}/2");
        let out = audit(
            dir.path(),
            &data,
            &format!("skip-shard{k}"),
            &[&skipping[..], &["--shard", &shard]].concat(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let merged = upat_audit(
        dir.path(),
        &[
            "merge",
            "skip-shard0",
            "skip-shard1",
            "--out",
            "skip-merged",
        ],
    );
    assert!(merged.status.success(), "{}", stderr(&merged));
    let report = std::fs::read_to_string(dir.path().join("skip-merged/report.md")).unwrap();
    assert!(
        report.contains("could not be used") && report.contains("b/truncated.jpg"),
        "{report}"
    );
    assert_eq!(
        figures(&dir.path().join("skip-merged")),
        figures(&dir.path().join("skipped"))
    );
}

#[test]
fn hostile_folders_and_lists_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let folder = fixture_folder(dir.path());
    // A class folder with no image.
    std::fs::create_dir(folder.join("c")).unwrap();
    let data = format!("imagefolder:{}", folder.display());
    let out = audit(dir.path(), &data, "x", &TINY);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has no image files"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir(folder.join("c")).unwrap();
    // --classes that does not name a folder.
    std::fs::write(dir.path().join("classes.txt"), "a\n").unwrap();
    let extra = [&TINY[..], &["--classes", "classes.txt"]].concat();
    let out = audit(dir.path(), &data, "x", &extra);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`b`"), "{}", stderr(&out));
    // Lists: `..`, a label out of range, a class not in --classes.
    let list = dir.path().join("list.csv");
    for (text, message) in [
        ("../etc/passwd,0\n", "has `..`"),
        (
            "folder/a/0-a420.jpg,7\n",
            "label 7 is outside the 1 classes",
        ),
        ("folder/a/0-a420.jpg,zebra\n", "class `zebra` is not among"),
        ("", "lists no image"),
    ] {
        std::fs::write(&list, text).unwrap();
        let out = audit(dir.path(), "images:list.csv", "x", &extra);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(stderr(&out).contains(message), "{text}: {}", stderr(&out));
    }
    // Options for image collections on other data.
    let out = audit(
        dir.path(),
        &format!("npz:{}", fixture("gray_8x8.npz").display()),
        "x",
        &["--transform", "res224"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("apply to imagefolder"),
        "{}",
        stderr(&out)
    );
}
