//! Gradient-masking flags: a deliberately masked model gets them, the
//! plain and adversarially trained CNNs get none, and `--fail-on-flags`
//! turns them into exit code 1.

use crate::util::{cell, fashion_mnist_dir, read_csv, repo_path, stderr, upat_audit};
use std::path::Path;
use upat::onnx::{encode, pb, OnnxModel};

/// The Fashion-MNIST CNN with a hot softmax on its logits, softmax(1000·z):
/// probabilities saturated to exactly 0 and 1 in float32, so the input
/// gradient vanishes — the textbook masked model.
fn hot_softmax_model(dir: &Path) -> String {
    let mut proto = OnnxModel::load(&repo_path("models/fmnist-cnn.onnx"))
        .unwrap()
        .proto;
    let g = proto.graph.as_mut().unwrap();
    let logits = g.output[0].name.clone();
    g.initializer.push(pb::TensorProto {
        name: "temperature".into(),
        data_type: 1,
        float_data: vec![1000.0],
        ..Default::default()
    });
    g.node.push(pb::NodeProto {
        op_type: "Mul".into(),
        name: "heat".into(),
        input: vec![logits, "temperature".into()],
        output: vec!["hot".into()],
        ..Default::default()
    });
    g.node.push(pb::NodeProto {
        op_type: "Softmax".into(),
        name: "saturate".into(),
        input: vec!["hot".into()],
        output: vec!["probabilities".into()],
        ..Default::default()
    });
    g.output[0].name = "probabilities".into();
    let path = dir.join("masked.onnx");
    std::fs::write(&path, encode(&proto)).unwrap();
    path.display().to_string()
}

#[test]
fn a_masked_model_is_flagged_and_honest_ones_are_not() {
    let Some(fmnist) = fashion_mnist_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let masked = hot_softmax_model(dir.path());
    let plain = repo_path("models/fmnist-cnn.onnx").display().to_string();
    let trained = repo_path("models/fmnist-cnn-at.onnx").display().to_string();
    let data = format!("fashion-mnist:{}", fmnist.display());
    let args = [
        plain.as_str(),
        trained.as_str(),
        masked.as_str(),
        "--data",
        &data,
        "--samples",
        "100",
        "--suite",
        "fashion-mnist",
    ];
    let out = upat_audit(dir.path(), &args);
    assert!(
        out.status.success(),
        "flags warn, they do not fail: {}",
        stderr(&out)
    );
    let (header, flags) = read_csv(&dir.path().join("audit-report/flags.csv"));
    assert_eq!(header, ["model", "flag", "measured", "detail"]);
    let of = |model: &str| -> Vec<String> {
        flags
            .iter()
            .filter(|r| cell(&header, r, "model") == model)
            .map(|r| cell(&header, r, "flag").to_string())
            .collect()
    };
    assert!(of(&plain).is_empty(), "plain CNN flagged: {:?}", of(&plain));
    assert!(
        of(&trained).is_empty(),
        "AT CNN flagged: {:?}",
        of(&trained)
    );
    let masked_flags = of(&masked);
    for expected in ["probabilities", "zero_gradients", "unbounded_attack_fails"] {
        assert!(
            masked_flags.iter().any(|f| f == expected),
            "{expected} missing: {masked_flags:?}"
        );
    }
    let md = std::fs::read_to_string(dir.path().join("audit-report/report.md")).unwrap();
    assert!(
        md.contains("Gradient-masking flags") && md.contains("zero_gradients"),
        "{md}"
    );
    // --fail-on-flags makes them fatal for CI; the report is still complete.
    let mut strict = args.to_vec();
    strict.extend(["--fail-on-flags", "--out", "strict"]);
    let out = upat_audit(dir.path(), &strict);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--fail-on-flags"), "{}", stderr(&out));
    assert!(dir.path().join("strict/report.csv").is_file());
}

/// A QDQ-quantized model: white-box attacks run through the
/// straight-through estimator, still find adversarial examples, and the
/// report says the gradients are approximate.
#[test]
fn quantized_models_are_attacked_and_flagged_as_approximate() {
    let Some(fmnist) = crate::util::fashion_mnist_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = crate::util::repo_path("models/fmnist-cnn-qdq.onnx");
    for backend in ["ort", "tract"] {
        let out = format!("out-{backend}");
        let result = crate::util::upat_audit(
            dir.path(),
            &[
                &model.display().to_string(),
                "--data",
                &format!("fashion-mnist:{}", fmnist.display()),
                "--samples",
                "64",
                "--suite",
                "whitebox",
                "--backend",
                backend,
                "--out",
                &out,
            ],
        );
        assert!(result.status.success(), "{}", crate::util::stderr(&result));
        let flags = std::fs::read_to_string(dir.path().join(&out).join("flags.csv")).unwrap();
        assert!(
            flags.contains("approximate_gradients") && flags.contains("QuantizeLinear"),
            "{backend}: {flags}"
        );
        let (header, rows) = crate::util::read_csv(&dir.path().join(&out).join("report.csv"));
        let clean: f64 = crate::util::cell(&header, &rows[0], "clean_acc")
            .parse()
            .unwrap();
        let worst = rows
            .iter()
            .map(|r| {
                crate::util::cell(&header, r, "robust_acc")
                    .parse::<f64>()
                    .unwrap()
            })
            .fold(f64::INFINITY, f64::min);
        assert!(
            worst < clean - 0.3,
            "{backend}: the attacks barely moved the quantized model ({clean} -> {worst})"
        );
    }
}
