//! Models whose tensors live in external data files (PyTorch's exporter's
//! default): audited exactly like the same model saved as one file, on both
//! backends, identified by a hash that covers the data file; a damaged or
//! hostile data file is exit 2 without a report.

use crate::util::{cpu, fixture, read_csv, stderr, upat_audit, BACKENDS};
use sha2::{Digest, Sha256};
use std::path::Path;
use upat::data::read_npz_f32;
use upat::onnx::{ClassifierGraph, OnnxModel};
use upat::runtime;

fn external_model() -> std::path::PathBuf {
    fixture("external/tiny_cnn.onnx")
}

#[test]
fn external_data_gives_the_single_files_logits_on_every_backend() {
    let (_, x) = read_npz_f32(&fixture("tiny_cnn_golden.npz"), "x").unwrap();
    let n = x.len() / (3 * 8 * 8);
    let single = OnnxModel::load(&fixture("tiny_cnn.onnx")).unwrap();
    let external = OnnxModel::load(&external_model()).unwrap();
    assert_eq!(external.data_files.len(), 1);
    for backend in BACKENDS {
        let logits = |model: &OnnxModel| {
            let graph = ClassifierGraph::prepare(model, None, None, None).unwrap();
            runtime::open(&graph, [3, 8, 8], cpu(backend))
                .unwrap()
                .logits(&x, n)
                .unwrap()
                .values
        };
        assert_eq!(logits(&external), logits(&single), "{backend:?}");
    }
}

/// PyTorch 2.11's default export (dynamo, opset 20, weights in
/// `model.onnx.data`) of the same network: PyTorch's golden logits and
/// gradients on both backends.
#[test]
fn pytorchs_default_export_is_read_and_differentiated() {
    let model = OnnxModel::load(&fixture("external/tiny_cnn_dynamo.onnx")).unwrap();
    assert_eq!(model.data_files.len(), 1);
    assert!(model.opset() >= Some(18), "{:?}", model.opset());
    let golden = fixture("tiny_cnn_golden.npz");
    let (_, x) = read_npz_f32(&golden, "x").unwrap();
    let (_, expected) = read_npz_f32(&golden, "logits").unwrap();
    let (_, y) = read_npz_f32(&golden, "y").unwrap();
    let (_, expected_grad) = read_npz_f32(&golden, "grad_ce").unwrap();
    let labels: Vec<i64> = y.iter().map(|&v| v as i64).collect();
    let n = x.len() / (3 * 8 * 8);
    let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    let gradient = upat::onnx::grad::build(&graph, [3, 8, 8], upat::attack::Loss::Ce).unwrap();
    for backend in BACKENDS {
        let logits = runtime::open(&graph, [3, 8, 8], cpu(backend))
            .unwrap()
            .logits(&x, n)
            .unwrap()
            .values;
        let worst = logits
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "{backend:?}: max |Δlogit| {worst}");
        let grad = runtime::GradientModel::open(&gradient, [3, 8, 8], cpu(backend))
            .unwrap()
            .loss_and_grad(&x, &labels, None, n)
            .unwrap()
            .input_grad;
        let error = grad
            .iter()
            .zip(&expected_grad)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt()
            / expected_grad.iter().map(|b| b * b).sum::<f32>().sqrt();
        assert!(
            error <= 1e-4,
            "{backend:?}: gradient relative error {error}"
        );
    }
}

#[test]
fn model_sha256_covers_the_data_file() {
    let model = OnnxModel::load(&external_model()).unwrap();
    let mut hasher = Sha256::new();
    hasher.update(std::fs::read(external_model()).unwrap());
    hasher.update(std::fs::read(fixture("external/tiny_cnn.onnx.data")).unwrap());
    let expected: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(model.sha256, expected);
    assert_eq!(OnnxModel::sha256_of(&external_model()).unwrap(), expected);
}

/// report.csv without the columns that name the file (model, its hash)
/// and time it.
fn comparable_report(out: &Path) -> Vec<Vec<String>> {
    let (header, rows) = read_csv(&out.join("report.csv"));
    let skip: Vec<usize> = ["model", "model_sha256", "seconds"]
        .iter()
        .map(|c| header.iter().position(|h| h == c).unwrap())
        .collect();
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .enumerate()
                .filter(|(i, _)| !skip.contains(i))
                .map(|(_, v)| v)
                .collect()
        })
        .collect()
}

#[test]
fn an_external_data_model_audits_like_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("npz:{}", fixture("tiny_cnn_golden.npz").display());
    for backend in ["ort", "tract"] {
        for (model, out) in [
            (fixture("tiny_cnn.onnx"), "single"),
            (external_model(), "external"),
        ] {
            let model = model.display().to_string();
            let out = format!("{out}-{backend}");
            let result = upat_audit(
                dir.path(),
                &[&model, "--data", &data, "--backend", backend, "--out", &out],
            );
            assert!(result.status.success(), "{model}: {}", stderr(&result));
        }
        let single = comparable_report(&dir.path().join(format!("single-{backend}")));
        assert!(single.len() >= 3, "clean and white-box rows: {single:?}");
        assert_eq!(
            comparable_report(&dir.path().join(format!("external-{backend}"))),
            single,
            "{backend}"
        );
    }
}

#[test]
fn a_truncated_or_escaping_data_file_is_exit_2_without_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::copy(external_model(), models.join("tiny_cnn.onnx")).unwrap();
    let data = std::fs::read(fixture("external/tiny_cnn.onnx.data")).unwrap();
    let golden = format!("npz:{}", fixture("tiny_cnn_golden.npz").display());
    let audit = |expected: &str| {
        let out = upat_audit(
            dir.path(),
            &["models/tiny_cnn.onnx", "--data", &golden, "--out", "report"],
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "`{expected}` not in {}",
            stderr(&out)
        );
        assert!(!dir.path().join("report/report.csv").exists());
    };
    audit("cannot be opened");
    std::fs::write(models.join("tiny_cnn.onnx.data"), &data[..data.len() - 4]).unwrap();
    audit("past the end");
    // The data file as a link to a copy outside the model's directory.
    std::fs::remove_file(models.join("tiny_cnn.onnx.data")).unwrap();
    std::fs::write(dir.path().join("elsewhere.data"), &data).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("elsewhere.data"),
        models.join("tiny_cnn.onnx.data"),
    )
    .unwrap();
    audit("outside the model's directory");
}
