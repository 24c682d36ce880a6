//! A sharded audit on a real Slurm cluster: `scripts/slurm-local.sh` starts
//! munged, slurmctld and slurmd on this machine, the shards run as an
//! `sbatch --array` job with `--shard auto`, the merge as a job depending on
//! it (`afterok`), and the merged report equals the unsharded audit.

use crate::shard::{audit_args, sorted_lines};
use crate::util::{repo_path, report_without_seconds, stderr, upat_audit};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SHARDS: usize = 3;
/// Far more than the job needs (seconds), far less than CI's budget.
const DEADLINE: Duration = Duration::from_secs(600);

/// A cluster started by `scripts/slurm-local.sh start`; dropping it stops
/// the daemons it started (by their pids), also when the test fails.
struct LocalSlurm {
    dir: PathBuf,
}

impl LocalSlurm {
    /// `None` (with a note) where Slurm cannot be installed; with
    /// `UPAT_REQUIRE_SLURM=1` (set by the test script once it installed
    /// Slurm) that fails the test instead.
    fn start(dir: &Path) -> Option<LocalSlurm> {
        let out = script(&["start", &dir.display().to_string()]);
        if out.status.code() == Some(3) {
            if std::env::var("UPAT_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
                panic!("Slurm is required but unavailable: {}", stderr(&out));
            }
            eprintln!("skipped: no Slurm here ({})", stderr(&out).trim());
            return None;
        }
        assert!(
            out.status.success(),
            "slurm-local.sh start: {}",
            stderr(&out)
        );
        Some(LocalSlurm {
            dir: dir.to_path_buf(),
        })
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    /// A Slurm client command against this cluster.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", self.conf());
        command
    }

    /// `scontrol show job ID`'s JobState.
    fn job_state(&self, id: &str) -> String {
        let out = self
            .command("scontrol")
            .args(["show", "job", id])
            .output()
            .expect("scontrol runs");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find_map(|field| field.strip_prefix("JobState="))
            .unwrap_or("unknown")
            .to_string()
    }
}

impl Drop for LocalSlurm {
    fn drop(&mut self) {
        let out = script(&["stop", &self.dir.display().to_string()]);
        if !out.status.success() {
            eprintln!("slurm-local.sh stop: {}", stderr(&out));
        }
    }
}

fn script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_path("scripts/slurm-local.sh"))
        .args(args)
        .output()
        .expect("bash runs")
}

/// `text` as one word for bash.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A batch script that runs `upat-audit` with `args`, then `shell_tail`
/// as the shell reads it (for the scheduler's variables).
fn batch_script(args: &[String], shell_tail: &str) -> String {
    let words: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_upat-audit"))
        .chain(args.iter().map(String::as_str))
        .map(quoted)
        .collect();
    format!(
        "#!/bin/bash\nset -euo pipefail\nexec {} {shell_tail}\n",
        words.join(" ")
    )
}

/// Runs `command` to its end, or fails the test at the deadline.
fn run_before_deadline(mut command: Command, what: &str) -> Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sbatch runs");
    let started = Instant::now();
    let id = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if started.elapsed() > DEADLINE {
            // The cluster is stopped when the test unwinds; this ends the wait.
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("{what} did not finish in {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    waiter.join().unwrap().expect("sbatch waited")
}

fn task_logs(dir: &Path) -> String {
    (0..SHARDS)
        .map(|k| {
            let log = dir.join(format!("task-{k}.out"));
            format!(
                "--- {}\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn a_slurm_job_array_merges_to_the_unsharded_audit() {
    let dir = tempfile::tempdir().unwrap();
    let Some(whole) = audit_args(dir.path(), &["--out", "whole", "--per-sample"]) else {
        return;
    };
    let whole = upat_audit(
        dir.path(),
        &whole.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(whole.status.success(), "{}", stderr(&whole));
    let Some(slurm) = LocalSlurm::start(&dir.path().join("cluster")) else {
        return;
    };

    // Each array task finds its shard in SLURM_ARRAY_TASK_ID/_COUNT.
    let shard = audit_args(dir.path(), &["--shard", "auto", "--threads", "1"]).unwrap();
    let script = batch_script(&shard, r#"--out "shard-$SLURM_ARRAY_TASK_ID""#);
    std::fs::write(dir.path().join("shard.sbatch"), script).unwrap();
    let array = slurm
        .command("sbatch")
        .current_dir(dir.path())
        .args([
            "--parsable",
            &format!("--array=0-{}", SHARDS - 1),
            "--cpus-per-task=1",
            "--output=task-%a.out",
            "shard.sbatch",
        ])
        .output()
        .expect("sbatch runs");
    assert!(array.status.success(), "sbatch: {}", stderr(&array));
    let array_id = String::from_utf8_lossy(&array.stdout).trim().to_string();

    let mut merge_args: Vec<String> = vec!["merge".into()];
    merge_args.extend((0..SHARDS).map(|k| format!("shard-{k}")));
    merge_args.extend(["--out".into(), "merged".into()]);
    std::fs::write(
        dir.path().join("merge.sbatch"),
        batch_script(&merge_args, ""),
    )
    .unwrap();
    let mut merge = slurm.command("sbatch");
    merge.current_dir(dir.path()).args([
        "--parsable",
        "--wait",
        &format!("--dependency=afterok:{array_id}"),
        "--kill-on-invalid-dep=yes",
        "--output=merge.out",
        "merge.sbatch",
    ]);
    let merged = run_before_deadline(merge, "the merge job");
    let merge_id = String::from_utf8_lossy(&merged.stdout).trim().to_string();
    let state = slurm.job_state(&merge_id);
    assert_eq!(
        state,
        "COMPLETED",
        "merge job {merge_id}: {}\n--- merge.out\n{}\n{}",
        stderr(&merged),
        std::fs::read_to_string(dir.path().join("merge.out")).unwrap_or_default(),
        task_logs(dir.path())
    );

    let (merged, whole) = (dir.path().join("merged"), dir.path().join("whole"));
    assert_eq!(
        report_without_seconds(&merged),
        report_without_seconds(&whole)
    );
    assert_eq!(
        sorted_lines(&merged.join("samples.csv")),
        sorted_lines(&whole.join("samples.csv"))
    );
    // Each task found its own shard in the scheduler's variables.
    for k in 0..SHARDS {
        let audit = std::fs::read(dir.path().join(format!("shard-{k}/audit.json"))).unwrap();
        let audit: serde_json::Value = serde_json::from_slice(&audit).unwrap();
        let shard = &audit["fingerprint"]["shard"];
        assert_eq!(
            (shard["index"].as_u64(), shard["count"].as_u64()),
            (Some(k as u64), Some(SHARDS as u64)),
            "shard-{k}/audit.json: {audit}"
        );
    }
}
