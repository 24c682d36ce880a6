//! `upat-audit` and `upat-train` as a user runs them: reports, gates, exit codes.

use crate::util::{
    cell, fashion_mnist_dir, fixture, linear_model, read_csv, repo_path, stderr, stdout, upat_audit,
};
use std::path::Path;

fn arg(p: &Path) -> String {
    p.display().to_string()
}

fn golden_data() -> String {
    format!("npz:{}", arg(&fixture("tiny_cnn_golden.npz")))
}

#[test]
fn smoke_audit_of_two_models_writes_a_comparative_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = upat_audit(
        dir.path(),
        &[
            &arg(&fixture("tiny_cnn.onnx")),
            &arg(&fixture("tiny_cnn_batch1.onnx")),
            "--data",
            &golden_data(),
            "--backend",
            "tract",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("audit-report/report.csv"));
    assert_eq!(header, upat::report::REPORT_COLUMNS);
    assert_eq!(
        rows.len(),
        8,
        "clean, fgsm, pgd and worst_case for each model"
    );
    for row in &rows {
        assert_eq!(cell(&header, row, "n"), "6");
        assert!((cell(&header, row, "clean_acc").parse::<f64>().unwrap() - 4.0 / 6.0).abs() < 1e-9);
        assert_eq!(cell(&header, row, "backend"), "tract");
        assert_eq!(cell(&header, row, "model_sha256").len(), 64);
    }
    let ids: Vec<&str> = rows[..4]
        .iter()
        .map(|r| cell(&header, r, "attack_id"))
        .collect();
    assert_eq!(ids, ["clean", "fgsm-linf-8", "pgd5-linf-8", "worst_case"]);
    let pgd = &rows[2];
    assert_eq!(
        (
            cell(&header, pgd, "norm"),
            cell(&header, pgd, "steps"),
            cell(&header, pgd, "loss")
        ),
        ("linf", "5", "ce")
    );
    let robust: f64 = cell(&header, pgd, "robust_acc").parse().unwrap();
    assert!(
        robust <= 4.0 / 6.0 + 1e-9,
        "robust accuracy cannot exceed clean accuracy"
    );
    if let Ok(max_norm) = cell(&header, pgd, "max_norm").parse::<f64>() {
        assert!(max_norm <= 8.0 / 255.0 + 1e-6, "{max_norm}");
    }
    let (summary_header, summary) = read_csv(&dir.path().join("audit-report/summary.csv"));
    assert_eq!(
        summary_header,
        [
            "model",
            "dataset",
            "n",
            "clean",
            "fgsm-linf-8",
            "pgd5-linf-8",
            "worst_case"
        ]
    );
    assert_eq!(summary.len(), 2);
    assert!(stdout(&out).contains("worst_case"));
    assert!(stderr(&out).contains("backend: tract"));
}

#[test]
fn uint8_nhwc_npz_is_read_like_the_float_original() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("npz:{}", arg(&fixture("uint8_nhwc.npz")));
    let out = upat_audit(
        dir.path(),
        &[
            &arg(&fixture("tiny_cnn.onnx")),
            "--data",
            &data,
            "--backend",
            "tract",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("audit-report/report.csv"));
    assert_eq!(cell(&header, &rows[0], "n"), "6");
    assert_eq!(cell(&header, &rows[0], "dataset"), "npz:uint8_nhwc.npz");
}

#[test]
fn same_seed_gives_the_same_report_apart_from_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out_dir: &str| {
        let out = upat_audit(
            dir.path(),
            &[
                &arg(&fixture("tiny_cnn.onnx")),
                "--data",
                &golden_data(),
                "--seed",
                "7",
                "--out",
                out_dir,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let (header, mut rows) = read_csv(&dir.path().join(out_dir).join("report.csv"));
        let seconds = header.iter().position(|h| h == "seconds").unwrap();
        rows.iter_mut().for_each(|r| r[seconds].clear());
        rows
    };
    let first = run("a");
    assert_eq!(first, run("b"));
    assert!(
        first.iter().all(|r| r.last().unwrap() == "7"),
        "seed column"
    );
}

#[test]
fn fashion_mnist_cnn_clean_accuracy_equals_pytorchs_on_both_backends() {
    let Some(fmnist) = fashion_mnist_dir() else {
        return;
    };
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("models/fmnist-cnn.expected.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for backend in ["ort", "tract"] {
        let data = format!("fashion-mnist:{}", arg(&fmnist));
        let args = [
            &arg(&repo_path("models/fmnist-cnn.onnx")),
            "--data",
            &data,
            "--samples",
            "1000",
            "--backend",
            backend,
            "--out",
            backend,
        ];
        let out = upat_audit(dir.path(), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let (header, rows) = read_csv(&dir.path().join(backend).join("report.csv"));
        assert_eq!(cell(&header, &rows[0], "n"), "1000");
        let clean: f64 = cell(&header, &rows[0], "clean_acc").parse().unwrap();
        assert_eq!(clean, expected["clean_acc"].as_f64().unwrap(), "{backend}");
    }
}

/// Runs an audit expected to fail with exit code 2 before writing any report;
/// returns stderr.
fn audit_error(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = upat_audit(dir.path(), args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "args {args:?}: {err}");
    assert!(err.lines().any(|l| l.starts_with("error: ")), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    assert!(
        !dir.path().join("audit-report/report.csv").exists(),
        "no report after an error"
    );
    err
}

#[test]
fn bad_models_are_clear_errors_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf model at all, just text").unwrap();
    let truncated = dir.path().join("truncated.onnx");
    let bytes = std::fs::read(fixture("tiny_cnn.onnx")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let data = golden_data();
    let cases: [(String, &str); 6] = [
        (arg(&dir.path().join("missing.onnx")), "No such file"),
        (arg(&garbage), "ONNX"),
        (arg(&truncated), "ONNX"),
        (arg(&fixture("int_input.onnx")), "float32 image input"),
        (arg(&fixture("flat_input.onnx")), "rank 4"),
        (arg(&fixture("tiny_cnn_two_outputs.onnx")), "--output"),
    ];
    for (model, expected) in &cases {
        for backend in ["ort", "tract"] {
            let err = audit_error(&[model, "--data", &data, "--backend", backend]);
            assert!(err.contains(expected), "{model} on {backend}: {err}");
        }
    }
}

#[test]
fn data_that_does_not_fit_the_model_is_a_clear_error() {
    let model = arg(&fixture("tiny_cnn.onnx"));
    let npz = |name: &str| format!("npz:{}", arg(&fixture(name)));
    let err = audit_error(&[&model, "--data", &npz("gray_8x8.npz")]);
    assert!(err.contains("channels") && err.contains("1x8x8"), "{err}");
    let err = audit_error(&[&model, "--data", &npz("labels_out_of_range.npz")]);
    assert!(
        err.contains("outputs 5 classes") && err.contains("labels up to 7"),
        "{err}"
    );
    let err = audit_error(&[&model, "--data", &npz("nan_pixels.npz")]);
    assert!(err.contains("non-finite"), "{err}");
    let err = audit_error(&[&model, "--data", "cifar10:/nonexistent/cifar"]);
    assert!(err.contains("test_batch.bin"), "{err}");
    let err = audit_error(&[&model, "--data", "imagenet:/x"]);
    assert!(err.contains("unknown dataset kind"), "{err}");
}

/// A model whose output width is not the data's class count (an encoder's
/// 16-wide embedding on Fashion-MNIST's 10 classes) is no classifier for
/// it: refused, not audited to a clean accuracy of chance.
#[test]
fn an_output_width_other_than_the_datas_classes_is_refused() {
    if fashion_mnist_dir().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let audit = |width: usize| {
        let model = dir.path().join(format!("linear{width}.onnx"));
        std::fs::write(&model, linear_model([1, 28, 28], width)).unwrap();
        let out = dir.path().join(format!("out{width}"));
        let args = [
            arg(&model),
            "--data".into(),
            "fashion-mnist".into(),
            "--samples".into(),
            "4".into(),
            "--suite".into(),
            "smoke".into(),
            "--out".into(),
            arg(&out),
        ];
        upat_audit(
            dir.path(),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let refused = audit(16);
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains("16 values per image")
            && err.contains("10 classes")
            && err.contains("embedding"),
        "{err}"
    );
    assert!(!dir.path().join("out16/report.csv").exists());
    let accepted = audit(10);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
}

#[test]
fn bad_options_and_suites_are_clear_errors() {
    let model = arg(&fixture("tiny_cnn.onnx"));
    let data = golden_data();
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("mine.toml");
    std::fs::write(&suite, "name = 'mine'\n[[attack]]\nid = 'p'\nkind = 'pgd'\neps = 'x/255'\nsteps = 3\nstep_size = 0.1\n").unwrap();
    let err = audit_error(&[&model, "--data", &data, "--suite", &arg(&suite)]);
    assert!(
        err.contains("mine.toml") && err.contains("`p`") && err.contains("`eps`"),
        "{err}"
    );
    std::fs::write(
        &suite,
        "name = 'later'\n[[attack]]\nid = 's'\nkind = 'deepfool'\neps = 0.03\n",
    )
    .unwrap();
    let err = audit_error(&[&model, "--data", &data, "--suite", &arg(&suite)]);
    assert!(
        err.contains("not available") && err.contains("square"),
        "{err}"
    );
    let err = audit_error(&[&model, "--data", &data, "--suite", "nosuchsuite"]);
    assert!(err.contains("built-in suites are"), "{err}");
    let err = audit_error(&[&model, "--data", &data, "--fail-under", "pgd20-linf-8=0.4"]);
    assert!(err.contains("pgd20-linf-8"), "{err}");
    let err = audit_error(&[&model, "--data", &data, "--normalize", "0.5"]);
    assert!(err.contains("MEAN:STD"), "{err}");
    let err = audit_error(&[&model, "--data", &data, "--normalize", "0.5,0.5:0.2,0.2"]);
    assert!(err.contains("3 channels"), "{err}");
    let err = audit_error(&[
        &model,
        "--data",
        &data,
        "--device",
        "cuda",
        "--backend",
        "tract",
    ]);
    assert!(err.contains("cuda"), "{err}");
    let err = audit_error(&[&model, "--data", &data, "--samples", "0"]);
    assert!(err.contains("--samples"), "{err}");
    // Negative numbers reach the flag's own parser, and its message.
    let err = audit_error(&[&model, "--data", &data, "--samples", "-5"]);
    assert!(
        err.contains("--samples") && err.contains("negative"),
        "{err}"
    );
    let err = audit_error(&[&model, "--data", &data, "--batch-size", "-1"]);
    assert!(
        err.contains("--batch-size") && err.contains("negative"),
        "{err}"
    );
    let err = audit_error(&[&model, "--data", &data, "--seed", "-1"]);
    assert!(err.contains("--seed") && err.contains("negative"), "{err}");
    let err = audit_error(&[&model, "--data", &data, "--threads", "0"]);
    assert!(
        err.contains("--threads") && err.contains("at least 1"),
        "{err}"
    );
    // An attack id that would impersonate the report's own rows.
    std::fs::write(
        &suite,
        "[[attack]]\nid = 'clean'\nkind = 'fgsm'\neps = 0.1\n",
    )
    .unwrap();
    let err = audit_error(&[&model, "--data", &data, "--suite", &arg(&suite)]);
    assert!(err.contains("reserved"), "{err}");
}

#[test]
fn white_box_suites_on_a_model_without_gradients_name_the_op() {
    // The model has three classes: relabel the golden images 0..3.
    let model = arg(&fixture("unsupported_op.onnx"));
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("three.npz");
    let mut golden = upat::data::load_npz(&fixture("tiny_cnn_golden.npz")).unwrap();
    golden.labels = vec![0, 1, 2, 0, 1, 2];
    upat::data::save_npz(&npz, &golden).unwrap();
    let err = audit_error(&[
        &model,
        "--data",
        &format!("npz:{}", arg(&npz)),
        "--suite",
        "smoke",
    ]);
    assert!(
        err.contains("Sin") && err.contains("square, blackbox"),
        "{err}"
    );
}

#[test]
fn scores_only_attacks_run_on_a_model_without_gradients() {
    let model = arg(&fixture("unsupported_op.onnx"));
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("three.npz");
    let mut golden = upat::data::load_npz(&fixture("tiny_cnn_golden.npz")).unwrap();
    golden.labels = vec![0, 1, 2, 0, 1, 2];
    upat::data::save_npz(&npz, &golden).unwrap();
    let suite = dir.path().join("noise.toml");
    std::fs::write(
        &suite,
        "name = 'noise'\n[[attack]]\nid = 'noise-0.3'\nkind = 'noise'\neps = 0.3\nrestarts = 4\n",
    )
    .unwrap();
    let out = upat_audit(
        dir.path(),
        &[
            &model,
            "--data",
            &format!("npz:{}", arg(&npz)),
            "--suite",
            &arg(&suite),
            "--backend",
            "tract",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("audit-report/report.csv"));
    let noise = rows
        .iter()
        .find(|r| cell(&header, r, "attack_id") == "noise-0.3")
        .unwrap();
    assert_eq!(cell(&header, noise, "restarts"), "4");
    assert_eq!(cell(&header, noise, "steps"), "");
    // The built-in score-based suite: Square, 5000 queries, no gradient graph.
    let out = upat_audit(
        dir.path(),
        &[
            &model,
            "--data",
            &format!("npz:{}", arg(&npz)),
            "--suite",
            "scorebased",
            "--backend",
            "tract",
            "--out",
            "scorebased",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("scorebased/report.csv"));
    let ids: Vec<&str> = rows.iter().map(|r| cell(&header, r, "attack_id")).collect();
    assert_eq!(
        ids,
        ["clean", "square-linf-8", "square-l2-0.5", "worst_case"]
    );
}

/// Without a usable CUDA provider (CI: the CPU-only ONNX Runtime),
/// `--device cuda` fails with the reason, and `auto` runs on the CPU and
/// says so.
#[test]
fn cuda_without_cuda_support_fails_loudly_and_auto_says_it_runs_on_the_cpu() {
    if upat::runtime::ort::cuda_usable().is_ok() {
        eprintln!("skipped: this machine runs ONNX Runtime on CUDA");
        return;
    }
    let (model, data) = (arg(&fixture("tiny_cnn.onnx")), golden_data());
    let err = audit_error(&[&model, "--data", &data, "--device", "cuda"]);
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(error_lines.len(), 1, "{err}");
    assert!(
        error_lines[0].contains("CUDA execution provider")
            && error_lines[0].contains("--device cpu"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    for device in [None, Some("auto")] {
        let mut args = vec![model.as_str(), "--data", &data, "--suite", "smoke"];
        args.extend(device.map(|d| ["--device", d]).into_iter().flatten());
        let out = upat_audit(dir.path(), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("device: cpu (ONNX Runtime's CUDA provider is not usable"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn a_failed_gate_exits_1_naming_attack_measured_and_required() {
    let dir = tempfile::tempdir().unwrap();
    let out = upat_audit(
        dir.path(),
        &[
            &arg(&fixture("tiny_cnn.onnx")),
            "--data",
            &golden_data(),
            "--fail-under",
            "clean=0.9",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`clean`") && err.contains("0.6667") && err.contains("0.9000"),
        "{err}"
    );
    assert!(
        dir.path().join("audit-report/report.csv").exists(),
        "the report is complete even when a gate fails"
    );
    // A gate that is met passes; so does a gate from a suite file.
    let out = upat_audit(
        dir.path(),
        &[
            &arg(&fixture("tiny_cnn.onnx")),
            "--data",
            &golden_data(),
            "--fail-under",
            "worst_case=0.5",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let suite = dir.path().join("gated.toml");
    std::fs::write(
        &suite,
        "name = 'gated'\n[[attack]]\nid = 'clean'\nkind = 'clean'\nmin_robust_acc = 0.7\n",
    )
    .unwrap();
    let out = upat_audit(
        dir.path(),
        &[
            &arg(&fixture("tiny_cnn.onnx")),
            "--data",
            &golden_data(),
            "--suite",
            &arg(&suite),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("gated.toml"));
}

#[test]
fn probability_outputs_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let out = upat_audit(
        dir.path(),
        &[
            &arg(&fixture("tiny_cnn_softmax.onnx")),
            "--data",
            &golden_data(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("look like probabilities"),
        "{}",
        stderr(&out)
    );
    let out = upat_audit(
        dir.path(),
        &[&arg(&fixture("tiny_cnn.onnx")), "--data", &golden_data()],
    );
    assert!(!stderr(&out).contains("probabilities"));
}

#[test]
fn inspect_describes_the_model_and_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let out = upat_audit(dir.path(), &["inspect", &arg(&fixture("tiny_cnn.onnx"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "input  float[N,3,8,8]",
        "logits  float[N,5]",
        "Conv ",
        "MaxPool",
        "classifier contract: ok",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in\n{text}");
    }
    let out = upat_audit(dir.path(), &["inspect", &arg(&fixture("int_input.onnx"))]);
    assert!(
        stdout(&out).contains("classifier contract: not met"),
        "{}",
        stdout(&out)
    );
    assert_eq!(out.status.code(), Some(2));
    let garbage = dir.path().join("g.onnx");
    std::fs::write(&garbage, b"garbage").unwrap();
    let out = upat_audit(dir.path(), &["inspect", &arg(&garbage)]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn inspect_names_the_model_when_it_cannot_be_differentiated() {
    let dir = tempfile::tempdir().unwrap();
    let model = arg(&fixture("unsupported_op.onnx"));
    let out = upat_audit(dir.path(), &["inspect", &model]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let verdict = text
        .lines()
        .find(|l| l.starts_with("differentiable:"))
        .unwrap_or_else(|| panic!("no verdict in\n{text}"));
    assert!(
        verdict.contains(&format!("model {model}: op Sin"))
            && verdict.contains("--suite scorebased"),
        "{verdict}"
    );
}

#[cfg(feature = "train")]
#[test]
fn upat_train_finds_libtorch_without_ld_library_path() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upat-train"))
        .arg("info")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("sum([1,2,3]) = 6"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn transfer_from_a_model_to_itself_equals_the_white_box_attack() {
    let Some(fmnist) = fashion_mnist_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("self.toml");
    let settings = "norm = 'linf'\neps = 0.05\nsteps = 10\nstep_size = 0.01\n";
    std::fs::write(&suite, format!("name = 'self'\n[[attack]]\nid = 'white'\nkind = 'pgd'\n{settings}[[attack]]\nid = 'transferred'\nkind = 'transfer'\n{settings}")).unwrap();
    let model = arg(&repo_path("models/fmnist-cnn.onnx"));
    let data = format!("fashion-mnist:{}", arg(&fmnist));
    let args = [
        &model,
        "--data",
        &data,
        "--samples",
        "200",
        "--suite",
        &arg(&suite),
        "--source",
        &model,
    ];
    let out = upat_audit(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("audit-report/report.csv"));
    let acc = |id: &str| -> f64 {
        let row = rows
            .iter()
            .find(|r| cell(&header, r, "attack_id") == id)
            .unwrap();
        cell(&header, row, "robust_acc").parse().unwrap()
    };
    assert!(
        acc("white") < acc("clean"),
        "the attack should bite for the comparison to mean something"
    );
    assert_eq!(acc("white"), acc("transferred"));
    assert_eq!(
        acc("worst_case"),
        acc("white"),
        "the same samples survive both"
    );
    let transferred = rows
        .iter()
        .find(|r| cell(&header, r, "attack_id") == "transferred")
        .unwrap();
    assert_eq!(cell(&header, transferred, "source"), model);
    let (transfer_header, transfer) = read_csv(&dir.path().join("audit-report/transfer.csv"));
    assert_eq!(
        transfer_header,
        ["model".to_string(), format!("{model}|transferred")]
    );
    assert_eq!(transfer.len(), 1);
    for file in ["report.md", "robustness.svg", "summary.csv"] {
        assert!(
            dir.path().join("audit-report").join(file).is_file(),
            "{file}"
        );
    }
    let svg = std::fs::read_to_string(dir.path().join("audit-report/robustness.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("transferred"));
}

#[test]
fn transfer_attacks_need_sources_and_sources_need_transfer_attacks() {
    let model = arg(&fixture("tiny_cnn.onnx"));
    let err = audit_error(&[&model, "--data", &golden_data(), "--suite", "blackbox"]);
    assert!(err.contains("--source"), "{err}");
    let err = audit_error(&[&model, "--data", &golden_data(), "--source", &model]);
    assert!(err.contains("transfer"), "{err}");
}
