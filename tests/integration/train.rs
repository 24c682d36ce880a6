//! `upat-train` end to end on tiny generated data: every method leaves a
//! complete run directory, a resumed run equals an uninterrupted one, and the
//! exported model is what `upat-audit` reads.

use crate::util::{stderr, upat_audit};
use std::path::Path;
use std::process::Output;
use upat::data::{save_npz, Dataset};

/// 60 single-channel 12×12 images of 3 classes (a bright square in a class-specific corner).
fn tiny_dataset(path: &Path) {
    let (n, side) = (60usize, 12usize);
    let mut pixels = vec![0.1f32; n * side * side];
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    for (i, &y) in labels.iter().enumerate() {
        let (r0, c0) = [(0, 0), (0, 6), (6, 3)][y as usize];
        for r in r0..r0 + 6 {
            for c in c0..c0 + 6 {
                pixels[i * side * side + r * side + c] =
                    0.6 + 0.3 * ((i * 7 + r * 3 + c) % 5) as f32 / 5.0;
            }
        }
    }
    let data = Dataset::new("tiny", [1, side, side], pixels, labels, 3, path).unwrap();
    save_npz(path, &data).unwrap();
}

fn upat_train(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_upat-train"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("upat-train runs")
}

const SMALL: [&str; 14] = [
    "--width",
    "2",
    "--batch-size",
    "16",
    "--holdout",
    "12",
    "--steps",
    "1",
    "--device",
    "cpu",
    "--lr",
    "0.01",
    "--seed",
    "3",
];

fn train_ok(dir: &Path, args: &[&str]) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(SMALL);
    let out = upat_train(dir, &all);
    assert!(out.status.success(), "{all:?}: {}", stderr(&out));
}

fn assert_complete(run: &Path, epochs: usize) {
    for file in ["config.json", "checkpoint.safetensors", "metrics.csv"] {
        assert!(run.join(file).is_file(), "{} lacks {file}", run.display());
    }
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), epochs + 1, "{metrics}");
    assert!(metrics.starts_with("epoch,loss,lr,clean_acc,pgd_acc,seconds"));
}

#[test]
fn every_method_runs_an_epoch_and_leaves_a_complete_run() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(&dir.path().join("tiny.npz"));
    let data = "npz:tiny.npz";
    for method in ["upat", "simclr"] {
        train_ok(
            dir.path(),
            &[
                "pretrain", "--method", method, "--data", data, "--epochs", "1", "--out", method,
            ],
        );
        assert_complete(&dir.path().join(method), 1);
        // Pre-training's monitor: a kNN vote on the held-out slice. The
        // classes of the tiny data differ in where the bright square is,
        // which even a barely trained encoder's features tell apart.
        let metrics = std::fs::read_to_string(dir.path().join(method).join("metrics.csv")).unwrap();
        let knn: f64 = metrics
            .lines()
            .last()
            .unwrap()
            .rsplit(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            knn > 0.5 && knn <= 1.0,
            "{method}: kNN accuracy {knn}\n{metrics}"
        );
    }
    for mode in ["linear", "at", "trades-full"] {
        let out = format!("ft-{mode}");
        train_ok(
            dir.path(),
            &[
                "finetune",
                "--encoder",
                "upat",
                "--mode",
                mode,
                "--data",
                data,
                "--epochs",
                "1",
                "--out",
                &out,
            ],
        );
        assert_complete(&dir.path().join(&out), 1);
        assert!(dir.path().join(&out).join("model.onnx").is_file());
    }
    for method in ["ce", "at", "trades", "alp"] {
        let out = format!("sup-{method}");
        train_ok(
            dir.path(),
            &[
                "supervised",
                "--method",
                method,
                "--data",
                data,
                "--epochs",
                "1",
                "--out",
                &out,
            ],
        );
        assert_complete(&dir.path().join(&out), 1);
    }
    // The exported model is audited like any other, metadata included.
    let out = upat_audit(dir.path(), &["inspect", "ft-at/model.onnx"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("upat.method = finetune:at") && text.contains("differentiable: yes"),
        "{text}"
    );
    let out = upat_audit(
        dir.path(),
        &[
            "ft-at/model.onnx",
            "--data",
            data,
            "--suite",
            "smoke",
            "--out",
            "audit",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A pre-training run's head was never trained: no silent random classifier.
    let out = upat_train(dir.path(), &["export", "upat", "-o", "pre.onnx"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pre-training run"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("pre.onnx").exists());
}

/// The options of SMALL without `--width`.
fn small_without_width() -> Vec<&'static str> {
    SMALL.iter().copied().skip(2).collect()
}

#[test]
fn a_run_directory_is_input_too() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(&dir.path().join("tiny.npz"));
    let data = ["--data", "npz:tiny.npz", "--epochs", "1"];
    train_ok(
        dir.path(),
        &[&["pretrain", "--out", "enc"][..], &data].concat(),
    );
    // finetune takes the encoder's width from its run; contradicting it is an error.
    // `args`, the data, and the small settings without --width.
    let finetune_args = |args: &[&'static str]| -> Vec<&'static str> {
        [args, &data[..], &small_without_width()].concat()
    };
    let finetune = finetune_args(&[
        "finetune",
        "--encoder",
        "enc",
        "--mode",
        "linear",
        "--out",
        "ft",
    ]);
    let out = upat_train(dir.path(), &finetune);
    assert!(out.status.success(), "{}", stderr(&out));
    let wrong = finetune_args(&[
        "finetune",
        "--encoder",
        "enc",
        "--out",
        "ft2",
        "--width",
        "3",
    ]);
    let out = upat_train(dir.path(), &wrong);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--width 3 differs") && stderr(&out).contains("(2)"),
        "{}",
        stderr(&out)
    );

    // An edited config.json is held to the command line's rules, whoever reads it.
    let config_path = dir.path().join("ft/config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    for (field, value) in [
        ("width", "0"),
        ("lr", "-5"),
        ("batch_size", "0"),
        ("width", "1000000000"),
    ] {
        let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
        config[field] = serde_json::from_str(value).unwrap();
        std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
        for args in [
            vec!["export", "ft", "-o", "x.onnx"],
            [
                &[
                    "finetune",
                    "--encoder",
                    "enc",
                    "--mode",
                    "linear",
                    "--out",
                    "ft",
                    "--resume",
                ][..],
                &data,
            ]
            .concat(),
            [&["finetune", "--encoder", "ft", "--out", "ft3"][..], &data].concat(),
        ] {
            let out = upat_train(dir.path(), &args);
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{field}={value} {args:?}: {err}"
            );
            assert!(
                err.contains(&format!("`{field}`")) && err.contains("config.json"),
                "{field}={value} {args:?}: {err}"
            );
            assert!(
                !err.contains("frame #") && !err.contains("panicked"),
                "{err}"
            );
        }
    }
    assert!(!dir.path().join("x.onnx").exists() && !dir.path().join("ft3").exists());
}

/// Runs `args` for 2 epochs into `{prefix}straight`, and for 1 epoch into
/// `{prefix}interrupted`, which `between` may then tamper with before the
/// same run resumes to 2 epochs.
fn straight_and_resumed(dir: &Path, args: &[&str], prefix: &str, between: impl FnOnce(&Path)) {
    let run = |extra: &[&str]| {
        let all: Vec<&str> = args.iter().chain(extra).copied().collect();
        train_ok(dir, &all);
    };
    let (straight, interrupted) = (format!("{prefix}straight"), format!("{prefix}interrupted"));
    run(&["--epochs", "2", "--out", &straight]);
    run(&["--epochs", "1", "--out", &interrupted]);
    between(&dir.join(&interrupted));
    run(&["--epochs", "2", "--out", &interrupted, "--resume"]);
}

#[test]
fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(&dir.path().join("tiny.npz"));
    // A run killed after writing epoch 2's metrics row but before its
    // checkpoint: the resume redoes epoch 2 and keeps one row for it.
    let metrics = dir.path().join("interrupted/metrics.csv");
    straight_and_resumed(
        dir.path(),
        &["pretrain", "--method", "upat", "--data", "npz:tiny.npz"],
        "",
        |run| {
            let metrics = run.join("metrics.csv");
            let mut text = std::fs::read_to_string(&metrics).unwrap();
            text.push_str("2,9.99,0.01,,,1.0\n");
            std::fs::write(&metrics, text).unwrap();
        },
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(!text.contains("9.99"), "{text}");
    assert_complete(&dir.path().join("interrupted"), 2);
    let weights = |run: &str| {
        let mut named =
            tch::Tensor::read_safetensors(dir.path().join(run).join("checkpoint.safetensors"))
                .unwrap();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    };
    let same = |first: &str, second: &str| {
        let (a, b) = (weights(first), weights(second));
        assert_eq!(a.len(), b.len());
        for ((name, x), (other, y)) in a.iter().zip(&b) {
            assert_eq!(name, other);
            let diff = (x - y).abs().max().double_value(&[]);
            assert_eq!(
                diff, 0.0,
                "{name} differs by {diff} after resuming {second}"
            );
        }
    };
    same("straight", "interrupted");
    // Fine-tuning resumes too, its fitted feature standardisation included
    // (fitted once, when the run starts, and restored from the checkpoint).
    straight_and_resumed(
        dir.path(),
        &[
            "finetune",
            "--encoder",
            "straight",
            "--mode",
            "at",
            "--data",
            "npz:tiny.npz",
        ],
        "ft-",
        |_| {},
    );
    same("ft-straight", "ft-interrupted");
    let named = weights("ft-straight");
    let shift = &named
        .iter()
        .find(|(n, _)| n == "head_input.shift")
        .expect("the checkpoint holds the standardisation")
        .1;
    assert!(shift.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn training_refuses_to_overwrite_a_run_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(&dir.path().join("tiny.npz"));
    train_ok(
        dir.path(),
        &[
            "supervised",
            "--method",
            "ce",
            "--data",
            "npz:tiny.npz",
            "--epochs",
            "1",
            "--out",
            "run",
        ],
    );
    let mut again: Vec<&str> = vec![
        "supervised",
        "--method",
        "ce",
        "--data",
        "npz:tiny.npz",
        "--epochs",
        "1",
        "--out",
        "run",
    ];
    again.extend(SMALL);
    let out = upat_train(dir.path(), &again);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    for (flag, value) in [
        ("--width", "0"),
        ("--batch-size", "1"),
        ("--epochs", "0"),
        ("--eps", "-1"),
        ("--tau", "0"),
        ("--steps", "-1"),
    ] {
        let option = format!("{flag}={value}");
        let out = upat_train(
            dir.path(),
            &[
                "pretrain",
                "--data",
                "npz:tiny.npz",
                "--holdout",
                "12",
                "--device",
                "cpu",
                &option,
                "--out",
                "bad",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{option}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{option}: {}", stderr(&out));
        assert!(
            !dir.path().join("bad").exists(),
            "{option} left a run directory"
        );
    }
    let out = upat_train(dir.path(), &["export", "nowhere", "-o", "x.onnx"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a run directory"));
}

/// Messages a user meets on common mistakes say what is wrong in the
/// user's words: no Rust debug text, no misleading rule.
#[test]
fn mistakes_get_plain_messages() {
    let dir = tempfile::tempdir().unwrap();
    let empty = Dataset::new(
        "empty",
        [1, 12, 12],
        vec![],
        vec![],
        3,
        &dir.path().join("empty.npz"),
    )
    .unwrap();
    save_npz(&dir.path().join("empty.npz"), &empty).unwrap();
    let mut args = vec!["pretrain", "--data", "npz:empty.npz", "--out", "e"];
    args.extend(SMALL);
    let out = upat_train(dir.path(), &args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has no samples") && !stderr(&out).contains("classes"),
        "{}",
        stderr(&out)
    );

    // Training logs name the device as the command line does.
    tiny_dataset(&dir.path().join("tiny.npz"));
    let data = ["--data", "npz:tiny.npz", "--epochs", "1"];
    let mut args = [&["pretrain", "--out", "enc"][..], &data].concat();
    args.extend(SMALL);
    let out = upat_train(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(log.contains("on cpu") && !log.contains("Cpu"), "{log}");

    // An encoder run that never finished an epoch has no encoder to give.
    std::fs::remove_file(dir.path().join("enc/checkpoint.safetensors")).unwrap();
    let finetune = [
        &["finetune", "--encoder", "enc", "--out", "ft"][..],
        &data,
        &small_without_width(),
    ]
    .concat();
    let out = upat_train(dir.path(), &finetune);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no completed epoch")
            && !stderr(&out).contains("IoError")
            && !stderr(&out).contains("Os {"),
        "{}",
        stderr(&out)
    );
}
