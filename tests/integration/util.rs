//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::Output;
use upat::runtime::{BackendChoice, Device, RuntimeOptions};

/// Both backends, for tests whose body must hold on each.
pub const BACKENDS: [BackendChoice; 2] = [BackendChoice::Ort, BackendChoice::Tract];

pub fn cpu(backend: BackendChoice) -> RuntimeOptions {
    RuntimeOptions {
        backend,
        device: Device::Cpu,
    }
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn fixture(name: &str) -> PathBuf {
    repo_path("tests/fixtures").join(name)
}

/// Runs `upat-audit` with `args` in `dir`.
pub fn upat_audit(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_upat-audit"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("upat-audit runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fashion-MNIST's system directory, or `None` (with a note) when it is not
/// installed. With `UPAT_REQUIRE_FASHION_MNIST=1` (set by the test script)
/// a missing dataset fails the test instead of skipping it.
pub fn fashion_mnist_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(upat::data::FASHION_MNIST_SYSTEM_DIR);
    if dir.join("t10k-images-idx3-ubyte.gz").is_file() {
        return Some(dir);
    }
    if std::env::var("UPAT_REQUIRE_FASHION_MNIST").is_ok_and(|v| v == "1") {
        panic!("Fashion-MNIST is required but missing: apt-get install dataset-fashion-mnist");
    }
    eprintln!("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
    None
}

/// Reads a CSV file into its header and rows.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// The value of `column` in `row`.
pub fn cell<'a>(header: &[String], row: &'a [String], column: &str) -> &'a str {
    let i = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    &row[i]
}
