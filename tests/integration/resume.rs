//! `--resume`: an audit killed mid-way continues from the rows its journal
//! holds and ends with the outcomes of an uninterrupted run.

use crate::util::{
    fashion_mnist_dir, repo_path, report_without_seconds, stderr, upat_audit, MIXED_SUITE,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A white-box attack.
const PGD: &str = r#"
name = "resume"
[[attack]]
id = "pgd"
kind = "pgd"
norm = "linf"
eps = 0.1
steps = 10
step_size = 0.02
"#;

struct Setup {
    dir: tempfile::TempDir,
    args: Vec<String>,
}

/// `suite` on the plain Fashion-MNIST CNN (its own transfer source), 40
/// test images, tract (`None` without the data).
fn setup(suite: &str) -> Option<Setup> {
    let fmnist = fashion_mnist_dir()?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("suite.toml"), suite).unwrap();
    let plain = repo_path("models/fmnist-cnn.onnx").display().to_string();
    let args = [
        plain.as_str(),
        "--data",
        &format!("fashion-mnist:{}", fmnist.display()),
        "--samples",
        "40",
        "--backend",
        "tract",
        "--suite",
        "suite.toml",
        "--batch-size",
        "16",
        "--per-sample",
    ]
    .map(str::to_string)
    .to_vec();
    Some(Setup { dir, args })
}

impl Setup {
    fn args_with(&self, extra: &[&str]) -> Vec<String> {
        let mut args = self.args.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn run(&self, extra: &[&str]) -> std::process::Output {
        let args = self.args_with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        upat_audit(self.dir.path(), &args)
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }
}

fn entries(out: &Path) -> usize {
    std::fs::read_dir(out.join("journal")).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    })
}

fn complete(out: &Path) -> bool {
    let text = std::fs::read_to_string(out.join("audit.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["complete"].as_bool().unwrap()
}

#[test]
fn a_killed_audit_resumes_to_the_outcomes_of_an_uninterrupted_one() {
    let Some(setup) = setup(MIXED_SUITE) else {
        return;
    };
    let source = repo_path("models/fmnist-cnn.onnx").display().to_string();
    let setup = Setup {
        args: setup.args_with(&["--source", &source]),
        ..setup
    };
    let whole = setup.run(&["--out", "whole"]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let rows = entries(&setup.path("whole"));
    // clean, pgd, aa's four components and its final row, transfer.
    assert_eq!(rows, 8);
    assert!(complete(&setup.path("whole")));

    // Killed (SIGKILL, nothing to clean up) once it has finished a few rows.
    let mut child = Command::new(env!("CARGO_BIN_EXE_upat-audit"))
        .args(setup.args_with(&["--out", "killed"]))
        .current_dir(setup.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while entries(&setup.path("killed")) < 2 && Instant::now() < deadline {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the audit ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished = entries(&setup.path("killed"));
    assert!((2..rows).contains(&finished), "{finished} rows journaled");
    assert!(!complete(&setup.path("killed")));
    assert!(!setup.path("killed/report.csv").exists());

    let resumed = setup.run(&["--out", "killed", "--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains(&format!("{finished} row(s) finished earlier")),
        "{}",
        stderr(&resumed)
    );
    assert!(complete(&setup.path("killed")));
    assert_eq!(
        report_without_seconds(&setup.path("killed")),
        report_without_seconds(&setup.path("whole"))
    );
    assert_eq!(
        std::fs::read_to_string(setup.path("killed/samples.csv")).unwrap(),
        std::fs::read_to_string(setup.path("whole/samples.csv")).unwrap()
    );

    // Rows removed from the middle of a cascade and a transfer row: the
    // cascade continues from the components it still has.
    let partial = setup.path("partial");
    std::fs::create_dir_all(partial.join("journal")).unwrap();
    std::fs::copy(setup.path("whole/audit.json"), partial.join("audit.json")).unwrap();
    for entry in std::fs::read_dir(setup.path("whole/journal")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["meta"]["attack_id"]
            .as_str()
            .unwrap()
            .to_string();
        if !["aa:fab-t", "aa:square", "aa", "transfer"].contains(&id.as_str()) {
            std::fs::copy(
                &path,
                partial.join("journal").join(path.file_name().unwrap()),
            )
            .unwrap();
        }
    }
    let resumed = setup.run(&["--out", "partial", "--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(
        report_without_seconds(&partial),
        report_without_seconds(&setup.path("whole"))
    );
}

#[test]
fn resume_refuses_what_it_cannot_continue() {
    let Some(setup) = setup(PGD) else { return };
    // Nothing to resume: a requeued job passing --resume starts afresh.
    let nothing = setup.run(&["--out", "empty", "--resume"]);
    assert!(nothing.status.success(), "{}", stderr(&nothing));
    assert!(
        stderr(&nothing).contains("holds no audit to resume; starting a new one"),
        "{}",
        stderr(&nothing)
    );
    assert!(complete(&setup.path("empty")));

    let first = setup.run(&["--out", "r", "--seed", "1"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let other_seed = setup.run(&["--out", "r", "--resume", "--seed", "2"]);
    assert_eq!(other_seed.status.code(), Some(2), "{}", stderr(&other_seed));
    assert!(
        stderr(&other_seed).contains("--seed"),
        "{}",
        stderr(&other_seed)
    );
    // A refused --resume leaves the finished audit as it was.
    assert!(complete(&setup.path("r")));
    assert!(setup.path("r/report.csv").exists());

    // A damaged entry is named, not trusted.
    let journal = setup.path("r/journal");
    let victim = std::fs::read_dir(&journal)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&victim, b"{\"meta\": 1}").unwrap();
    let damaged = setup.run(&["--out", "r", "--resume", "--seed", "1"]);
    assert_eq!(damaged.status.code(), Some(2), "{}", stderr(&damaged));
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(stderr(&damaged).contains(&name), "{}", stderr(&damaged));

    // A journal folder planted as a link is not followed.
    #[cfg(unix)]
    {
        let elsewhere = setup.path("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::create_dir(setup.path("linked")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, setup.path("linked/journal")).unwrap();
        let linked = setup.run(&["--out", "linked"]);
        assert_eq!(linked.status.code(), Some(2), "{}", stderr(&linked));
        assert!(
            stderr(&linked).contains("symbolic link"),
            "{}",
            stderr(&linked)
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    // Without --resume, an earlier journal is cleared and the audit starts over.
    let again = setup.run(&["--out", "r", "--seed", "2"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(entries(&setup.path("r")), 2);
}

/// A rerun into a finished audit's directory that fails once under way
/// leaves no results of the earlier run beside its own incomplete
/// `audit.json`.
#[test]
fn a_failed_rerun_leaves_no_stale_results() {
    let Some(setup) = setup(PGD) else { return };
    let first = setup.run(&["--out", "r"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(setup.path("r/report.csv").exists());
    // A second model that does not take Fashion-MNIST's images: the audit
    // starts, then fails on it (exit 2).
    let mut args = setup.args_with(&["--out", "r"]);
    args.insert(
        1,
        repo_path("tests/fixtures/tiny_cnn.onnx")
            .display()
            .to_string(),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let failed = upat_audit(setup.dir.path(), &args);
    assert_eq!(failed.status.code(), Some(2), "{}", stderr(&failed));
    assert!(!complete(&setup.path("r")));
    for stale in upat::report::RESULT_FILES {
        assert!(!setup.path("r").join(stale).exists(), "{stale} left behind");
    }
}

/// One audit at a time in a report directory: a second is refused while
/// the first runs, and the directory is free again once it is killed.
#[test]
fn a_report_directory_is_held_by_one_audit() {
    let Some(setup) = setup(MIXED_SUITE) else {
        return;
    };
    let source = repo_path("models/fmnist-cnn.onnx").display().to_string();
    let mut long = setup.args_with(&["--out", "busy", "--source", &source]);
    let samples = long.iter().position(|a| a == "--samples").unwrap() + 1;
    long[samples] = "400".into();
    let mut child = Command::new(env!("CARGO_BIN_EXE_upat-audit"))
        .args(&long)
        .current_dir(setup.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = setup.path("busy/.upat-audit.lock");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&lock).map_or(true, |pid| pid.trim() != child.id().to_string()) {
        assert!(
            Instant::now() < deadline,
            "the audit never took its directory"
        );
        assert!(child.try_wait().unwrap().is_none(), "the audit ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = setup.run(&["--out", "busy", "--source", &source]);
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        still_running,
        "the first audit ended before the second started"
    );
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("in use by another upat-audit")
            && stderr(&second).contains(&child.id().to_string()),
        "{}",
        stderr(&second)
    );
    // The kernel released the killed audit's lock.
    let third = setup.run(&["--out", "busy", "--source", &source]);
    assert!(third.status.success(), "{}", stderr(&third));
}
