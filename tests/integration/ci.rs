//! What CI reads besides the exit code: `--junit` XML (one test case per
//! gate and model, and per gradient-masking flag), report.md appended to
//! `GITHUB_STEP_SUMMARY`, the gates' verdicts in report.md and audit.json,
//! and the same from `merge` of a sharded audit.

use crate::util::{fixture, stderr};
use std::path::Path;

/// Runs upat-audit in `dir` with `GITHUB_STEP_SUMMARY` set to `summary.md`.
fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_upat-audit"))
        .args(args)
        .current_dir(dir)
        .env("GITHUB_STEP_SUMMARY", dir.join("summary.md"))
        .output()
        .expect("upat-audit runs")
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn gates_and_flags_reach_junit_the_job_summary_and_the_report_files() {
    let dir = tempfile::tempdir().unwrap();
    // A softmax output: the audit raises the `probabilities` flag. The
    // clean gate fails (4 of 6 correct), the worst-case one passes.
    let model = fixture("tiny_cnn_softmax.onnx").display().to_string();
    let data = format!("npz:{}", fixture("tiny_cnn_golden.npz").display());
    let common = [
        model.as_str(),
        "--data",
        &data,
        "--fail-under",
        "clean=0.9",
        "--fail-under",
        "worst_case=0.0",
    ];
    let out = run(
        dir.path(),
        &[&common[..], &["--junit", "junit.xml"]].concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let xml = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    let audit: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("audit-report/audit.json")).unwrap(),
    )
    .unwrap();
    let flags = audit["flags"].as_array().unwrap().len();
    assert!(flags >= 1);
    // Two gates, the model's masking checks, one per flag: only the clean
    // gate fails.
    let cases = 3 + flags;
    assert_eq!(count(&xml, "<testcase "), cases, "{xml}");
    assert!(
        xml.contains(&format!("tests=\"{cases}\" failures=\"1\"")),
        "{xml}"
    );
    assert_eq!(count(&xml, "<failure "), 1, "{xml}");
    assert!(
        xml.contains("robust accuracy under `clean` is 0.6667, below the required 0.9000 (set by --fail-under)"),
        "{xml}"
    );
    assert!(xml.contains("flag probabilities"), "{xml}");
    let report = std::fs::read_to_string(dir.path().join("audit-report/report.md")).unwrap();
    assert!(
        report.contains("## Gates") && report.contains("| 0.9000 | 0.6667 | **fail** |"),
        "{report}"
    );
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert_eq!(summary.trim_end(), report.trim_end());
    let audit: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("audit-report/audit.json")).unwrap(),
    )
    .unwrap();
    let verdicts = audit["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2);
    assert!(verdicts
        .iter()
        .any(|v| v["attack_id"] == "clean" && v["passed"] == false));

    // With --fail-on-flags the flag fails its test case too.
    let strict = run(
        dir.path(),
        &[
            &common[..],
            &[
                "--junit",
                "strict.xml",
                "--fail-on-flags",
                "--out",
                "strict",
            ],
        ]
        .concat(),
    );
    assert_eq!(strict.status.code(), Some(1));
    let xml = std::fs::read_to_string(dir.path().join("strict.xml")).unwrap();
    assert!(
        xml.contains(&format!("tests=\"{cases}\" failures=\"{}\"", 1 + flags)),
        "{xml}"
    );

    // Sharded: merge takes --fail-under, --fail-on-flags and --junit.
    for k in 0..2 {
        let shard = format!("{k}/2");
        let out_dir = format!("shard{k}");
        let out = run(
            dir.path(),
            &[
                model.as_str(),
                "--data",
                &data,
                "--shard",
                &shard,
                "--out",
                &out_dir,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let merged = run(
        dir.path(),
        &[
            "merge",
            "shard0",
            "shard1",
            "--out",
            "merged",
            "--fail-under",
            "clean=0.9",
            "--junit",
            "merged.xml",
        ],
    );
    assert_eq!(merged.status.code(), Some(1), "{}", stderr(&merged));
    let xml = std::fs::read_to_string(dir.path().join("merged.xml")).unwrap();
    assert!(
        xml.contains("is 0.6667, below the required 0.9000"),
        "{xml}"
    );
    assert!(xml.contains("failures=\"1\""), "{xml}");
    let flags_only = run(
        dir.path(),
        &[
            "merge",
            "shard0",
            "shard1",
            "--out",
            "merged2",
            "--fail-on-flags",
        ],
    );
    assert_eq!(flags_only.status.code(), Some(1), "{}", stderr(&flags_only));
    assert!(
        stderr(&flags_only).contains("--fail-on-flags"),
        "{}",
        stderr(&flags_only)
    );
    let passing = run(
        dir.path(),
        &["merge", "shard0", "shard1", "--out", "merged3"],
    );
    assert_eq!(passing.status.code(), Some(0), "{}", stderr(&passing));
}

#[cfg(feature = "ort")]
#[test]
fn an_ort_library_named_in_ort_dylib_path_that_does_not_load_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let model = fixture("tiny_cnn.onnx").display().to_string();
    let data = format!("npz:{}", fixture("tiny_cnn_golden.npz").display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upat-audit"))
        .args([model.as_str(), "--data", &data])
        .current_dir(dir.path())
        .env("ORT_DYLIB_PATH", &fake)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ORT_DYLIB_PATH") && err.contains("libonnxruntime.so"),
        "{err}"
    );
    assert!(!dir.path().join("audit-report/report.csv").exists());
}

/// The binary as pip, pipx or `uv tool` install it: `PREFIX/bin/upat-audit`
/// finds ONNX Runtime in `PREFIX/lib/python3.X/site-packages` (the
/// `onnxruntime` package beside it), with no venv activated, no Python on
/// `PATH` and no checkout around it; without the package it says how to add
/// one and runs on tract. (The audit-only build: the train build links
/// libtorch from where it was built.)
#[cfg(not(feature = "train"))]
#[test]
fn an_installed_binary_finds_onnx_runtime_in_its_own_environment() {
    let venv_ort = crate::util::repo_path(".venv/lib")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages/onnxruntime"))
        .find(|p| p.is_dir())
        .expect("the project venv has onnxruntime");
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    let packages = prefix.join("lib/python3.11/site-packages");
    std::fs::create_dir_all(&packages).unwrap();
    std::os::unix::fs::symlink(&venv_ort, packages.join("onnxruntime")).unwrap();
    let installed = prefix.join("bin/upat-audit");
    std::fs::copy(env!("CARGO_BIN_EXE_upat-audit"), &installed).unwrap();
    let model = fixture("tiny_cnn.onnx").display().to_string();
    let data = format!("npz:{}", fixture("tiny_cnn_golden.npz").display());
    let run = |binary: &Path| {
        std::process::Command::new(binary)
            .args([model.as_str(), "--data", &data])
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/nonexistent")
            .env("HOME", dir.path())
            .output()
            .unwrap()
    };
    let out = run(&installed);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("backend: ort ({}", packages.display())),
        "{}",
        stderr(&out)
    );
    // Elsewhere, with no ONNX Runtime to find: tract, and a note saying so.
    let alone = dir.path().join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    std::fs::copy(&installed, alone.join("upat-audit")).unwrap();
    let out = run(&alone.join("upat-audit"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("backend: tract"), "{}", stderr(&out));
}
