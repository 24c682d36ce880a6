//! Hostile model files (tests/fixtures/hostile.py: each a few hundred bytes
//! declaring sizes that once crashed or exhausted a tool) and devices given
//! as files: every one a clear error with exit code 2, on both backends,
//! under a memory limit so that a blow-up fails the test, not the machine.

use crate::util::{fashion_mnist_dir, fixture, stderr, stdout};
use std::process::Output;

/// The address-space limit every process here runs under (`ulimit -v`, KiB).
const MEMORY_LIMIT_KIB: u64 = 8_000_000;

/// `upat-audit args...` under the memory limit, in a fresh directory.
fn limited(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_upat-audit"))
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("upat-audit runs")
}

fn assert_clear_error(out: &Output, expected: &str, what: &str) {
    let err = stderr(out);
    let text = format!("{}{err}", stdout(out));
    assert_eq!(out.status.code(), Some(2), "{what}: {text}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: {err}"
    );
    assert!(
        !err.contains("onnxruntime_src") && !err.contains("Os {"),
        "{what}: {err}"
    );
    assert!(
        text.contains(expected),
        "{what}: `{expected}` missing in {text}"
    );
}

#[test]
fn hostile_models_are_clear_errors_on_both_backends() {
    let Some(fmnist) = fashion_mnist_dir() else {
        return;
    };
    let data = format!("fashion-mnist:{}", fmnist.display());
    let cases = [
        (
            "fixed_batch_2_40",
            "fixed batch of 1099511627776",
            "fixed batch of 1099511627776",
        ),
        (
            "huge_input_constant_of_shape",
            "images of 1x60000x60000",
            "images of 1x60000x60000",
        ),
        // Refused by whichever backend meets the allocation first.
        ("huge_constant_inside", "14400000000", "14400000000"),
    ];
    for (name, on_audit, on_inspect) in cases {
        let model = fixture(&format!("hostile/{name}.onnx"))
            .display()
            .to_string();
        for backend in ["ort", "tract"] {
            let out = limited(&[
                &model,
                "--data",
                &data,
                "--samples",
                "4",
                "--suite",
                "smoke",
                "--backend",
                backend,
            ]);
            assert_clear_error(&out, on_audit, &format!("{name} on {backend}"));
        }
        let out = limited(&["inspect", &model]);
        if name == "huge_constant_inside" {
            // Its input is fine: inspect describes it, and says why no
            // gradient graph can be built.
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(
                stdout(&out).contains("differentiable: no") && stdout(&out).contains(on_inspect)
            );
        } else {
            assert_clear_error(&out, on_inspect, &format!("inspect {name}"));
        }
    }
}

#[test]
fn logits_out_of_control_flow_name_the_op() {
    let model = fixture("hostile/logits_from_if.onnx").display().to_string();
    let out = limited(&["inspect", &model]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("differentiable: no") && stdout(&out).contains("op If"),
        "{}",
        stdout(&out)
    );
    let out = limited(&[
        "grad",
        &model,
        "--output-file",
        "g.onnx",
        "--image-shape",
        "1,28,28",
    ]);
    assert_clear_error(&out, "op If", "grad through If");
}

#[cfg(unix)]
#[test]
fn devices_and_directories_are_not_read_as_files() {
    let out = limited(&["inspect", "/dev/zero"]);
    assert_clear_error(&out, "not a regular file", "inspect /dev/zero");
    let out = limited(&["inspect", "/"]);
    assert_clear_error(&out, "not a regular file", "inspect /");
    let model = fixture("tiny_cnn.onnx").display().to_string();
    let out = limited(&[&model, "--data", "npz:/dev/zero"]);
    assert_clear_error(&out, "not a regular file", "npz:/dev/zero");
    let out = limited(&[&model, "--data", "npz:x.npz", "--suite", "/dev/zero"]);
    assert_clear_error(&out, "not a regular file", "--suite /dev/zero");
}

/// A short run of the fuzzer (scripts/fuzz.sh runs it for hours): mutated
/// models, data files, suites and images give errors, never a panic.
#[cfg(feature = "fuzz")]
#[test]
fn a_short_fuzzing_run_finds_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_upat-fuzz"))
        .args(["--iterations", "5000", "--seed", "11", "--findings"])
        .arg(dir.path().join("findings"))
        .output()
        .expect("upat-fuzz runs");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("fuzzed 5000 inputs"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("onnx:accepted"),
        "the mutations never reach the gradient graph: {}",
        stdout(&out)
    );
}
