//! `--shard K/N` and `merge`: the merged shards of an audit equal the
//! unsharded audit (report.csv apart from `seconds`, samples.csv as a set),
//! also when the shards find their index as a Kubernetes Indexed Job's pods
//! do, and merge refuses shards that do not make one audit.

use crate::util::{
    fashion_mnist_dir, repo_path, report_without_seconds, stderr, upat_audit, MIXED_SUITE,
};
use std::path::Path;

/// 37 samples: no shard count here divides them.
const SAMPLES: &str = "37";

/// The audit's arguments with `extra`; `None` without Fashion-MNIST.
pub fn audit_args(dir: &Path, extra: &[&str]) -> Option<Vec<String>> {
    let fmnist = fashion_mnist_dir()?;
    std::fs::write(dir.join("suite.toml"), MIXED_SUITE).unwrap();
    let plain = repo_path("models/fmnist-cnn.onnx").display().to_string();
    let mut args: Vec<String> = [
        plain.as_str(),
        "--data",
        &format!("fashion-mnist:{}", fmnist.display()),
        "--samples",
        SAMPLES,
        "--backend",
        "tract",
        "--suite",
        "suite.toml",
        "--source",
        &plain,
        "--batch-size",
        "8",
    ]
    .map(str::to_string)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    Some(args)
}

fn run(dir: &Path, extra: &[&str]) -> Option<std::process::Output> {
    let args = audit_args(dir, extra)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Some(upat_audit(dir, &args))
}

/// Shard `index` as a Kubernetes Indexed Job runs it: `--shard auto/N`,
/// the index in `JOB_COMPLETION_INDEX` (no cluster runs here: the pods are
/// processes).
fn run_as_indexed_job(dir: &Path, index: usize, count: usize, out: &str) -> std::process::Output {
    let auto = format!("auto/{count}");
    let args = audit_args(dir, &["--shard", &auto, "--out", out]).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_upat-audit"))
        .args(&args)
        .current_dir(dir)
        .env("JOB_COMPLETION_INDEX", index.to_string())
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .expect("upat-audit runs")
}

pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Runs the `count` shards; as Kubernetes would (`--shard auto/N`) when
/// `indexed_job`, else with explicit `--shard K/N` and alternating
/// `--threads 1` and `2`.
fn shards(dir: &Path, count: usize, indexed_job: bool) -> Vec<String> {
    (0..count)
        .map(|k| {
            let out = format!("s{count}-{k}");
            let shard = format!("{k}/{count}");
            let result = if indexed_job {
                run_as_indexed_job(dir, k, count, &out)
            } else {
                // Shards of one audit may share a node with different
                // thread counts: the count must not change outcomes or
                // make the shards uncombinable.
                let threads = if k % 2 == 0 { "1" } else { "2" };
                run(
                    dir,
                    &["--shard", &shard, "--out", &out, "--threads", threads],
                )
                .unwrap()
            };
            assert!(
                result.status.success(),
                "shard {shard}: {}",
                stderr(&result)
            );
            out
        })
        .collect()
}

fn merge(dir: &Path, shard_dirs: &[String], out: &str) -> std::process::Output {
    let mut args = vec!["merge"];
    args.extend(shard_dirs.iter().map(String::as_str));
    args.extend(["--out", out]);
    upat_audit(dir, &args)
}

#[test]
fn merged_shards_equal_the_unsharded_audit() {
    let dir = tempfile::tempdir().unwrap();
    let Some(whole) = run(dir.path(), &["--out", "whole", "--per-sample"]) else {
        return;
    };
    assert!(whole.status.success(), "{}", stderr(&whole));
    for count in [1, 2, 3, 7] {
        let parts = shards(dir.path(), count, count == 3);
        let out = format!("merged{count}");
        let merged = merge(dir.path(), &parts, &out);
        assert!(merged.status.success(), "N={count}: {}", stderr(&merged));
        assert_eq!(
            report_without_seconds(&dir.path().join(&out)),
            report_without_seconds(&dir.path().join("whole")),
            "N={count}"
        );
        assert_eq!(
            sorted_lines(&dir.path().join(&out).join("samples.csv")),
            sorted_lines(&dir.path().join("whole/samples.csv")),
            "N={count}"
        );
    }
}

#[test]
fn merge_refuses_shards_that_do_not_make_one_audit() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_) = audit_args(dir.path(), &[]) else {
        return;
    };
    let parts = shards(dir.path(), 3, false);
    let refused = |dirs: &[String], expected: &str| {
        let out = merge(dir.path(), dirs, "m");
        assert_eq!(out.status.code(), Some(2), "{dirs:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{dirs:?}: `{expected}` not in {}",
            stderr(&out)
        );
        assert!(!dir.path().join("m/report.csv").exists());
    };
    refused(&parts[..2], "2/3 missing");
    refused(
        &[
            parts[0].clone(),
            parts[0].clone(),
            parts[1].clone(),
            parts[2].clone(),
        ],
        "both shard 0/3",
    );
    // A shard of another audit (another seed).
    let other = run(
        dir.path(),
        &["--shard", "1/3", "--seed", "5", "--out", "other"],
    )
    .unwrap();
    assert!(other.status.success(), "{}", stderr(&other));
    refused(
        &[parts[0].clone(), "other".into(), parts[2].clone()],
        "--seed",
    );
    // A shard that did not finish.
    let audit_json = dir.path().join(&parts[1]).join("audit.json");
    let text = std::fs::read_to_string(&audit_json).unwrap();
    std::fs::write(
        &audit_json,
        text.replace("\"complete\": true", "\"complete\": false"),
    )
    .unwrap();
    refused(&parts, "did not finish");
    std::fs::write(&audit_json, text).unwrap();
    // Not a shard directory at all.
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    refused(
        &[parts[0].clone(), "empty".into(), parts[2].clone()],
        "holds no audit",
    );
    // Bad shard specs are usage errors before anything runs.
    let bad = run(dir.path(), &["--shard", "3/3", "--out", "bad"]).unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("does not exist"), "{}", stderr(&bad));
    // The parts merge once whole again.
    let ok = merge(dir.path(), &parts, "m");
    assert!(ok.status.success(), "{}", stderr(&ok));
}
