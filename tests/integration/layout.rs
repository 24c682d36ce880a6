//! Channels-last (NHWC) models, as Keras exports through tf2onnx give them:
//! detected, fed NCHW data through a transpose, and audited exactly like the
//! same network taking NCHW.

use crate::util::{cpu, fixture, read_csv, stderr, stdout, upat_audit, BACKENDS};
use upat::data::read_npz_f32;
use upat::onnx::{ClassifierGraph, Layout, OnnxModel};
use upat::runtime;

#[test]
fn an_nhwc_model_gives_the_nchw_models_logits_and_gradients() {
    let (_, x) = read_npz_f32(&fixture("tiny_cnn_golden.npz"), "x").unwrap();
    let n = x.len() / (3 * 8 * 8);
    let nchw = OnnxModel::load(&fixture("tiny_cnn.onnx")).unwrap();
    let nhwc = OnnxModel::load(&fixture("tiny_cnn_nhwc.onnx")).unwrap();
    let detected = ClassifierGraph::prepare(&nhwc, None, None, None).unwrap();
    assert!(detected.input.channels_last);
    assert_eq!(detected.input.chw, [Some(3), Some(8), Some(8)]);
    let reference = ClassifierGraph::prepare(&nchw, None, None, None).unwrap();
    assert!(!reference.input.channels_last);
    for backend in BACKENDS {
        let logits = |graph: &ClassifierGraph| {
            runtime::open(graph, [3, 8, 8], cpu(backend))
                .unwrap()
                .logits(&x, n)
                .unwrap()
                .values
        };
        assert_eq!(logits(&detected), logits(&reference), "{backend:?}");
        let grad = |graph: &ClassifierGraph| {
            let g = upat::onnx::grad::build(graph, [3, 8, 8], upat::attack::Loss::Ce).unwrap();
            let mut model = runtime::GradientModel::open(&g, [3, 8, 8], cpu(backend)).unwrap();
            let labels: Vec<i64> = (0..n as i64).map(|i| i % 5).collect();
            model
                .loss_and_grad(&x, &labels, None, n)
                .unwrap()
                .input_grad
        };
        assert_eq!(grad(&detected), grad(&reference), "{backend:?}");
    }
    // Forcing the other layout reads [N,8,8,3] as 8 channels of 8x3.
    let forced = ClassifierGraph::prepare_as(&nhwc, None, None, None, Layout::Nchw).unwrap();
    assert_eq!(forced.input.chw, [Some(8), Some(8), Some(3)]);
}

#[test]
fn an_nhwc_model_audits_like_the_nchw_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("npz:{}", fixture("tiny_cnn_golden.npz").display());
    let mut reports = Vec::new();
    for model in ["tiny_cnn.onnx", "tiny_cnn_nhwc.onnx"] {
        let out = format!("out-{model}");
        let model = fixture(model).display().to_string();
        let result = upat_audit(dir.path(), &[&model, "--data", &data, "--out", &out]);
        assert!(result.status.success(), "{model}: {}", stderr(&result));
        let (header, rows) = read_csv(&dir.path().join(&out).join("report.csv"));
        let keep: Vec<usize> = ["attack_id", "clean_acc", "robust_acc", "mean_norm"]
            .iter()
            .map(|c| header.iter().position(|h| h == c).unwrap())
            .collect();
        reports.push(
            rows.iter()
                .map(|r| keep.iter().map(|&i| r[i].clone()).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(reports[0], reports[1]);
    let model = fixture("tiny_cnn_nhwc.onnx").display().to_string();
    let inspect = upat_audit(dir.path(), &["inspect", &model]);
    assert!(
        stdout(&inspect).contains("layout: NHWC"),
        "{}",
        stdout(&inspect)
    );
    // --layout nchw takes it as 8 channels: not the data's 3, exit 2.
    let forced = upat_audit(
        dir.path(),
        &[
            &model, "--data", &data, "--layout", "nchw", "--out", "forced",
        ],
    );
    assert_eq!(forced.status.code(), Some(2), "{}", stderr(&forced));
    assert!(stderr(&forced).contains("channels"), "{}", stderr(&forced));
    let bad = upat_audit(dir.path(), &[&model, "--data", &data, "--layout", "hwc"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("auto, nchw or nhwc"),
        "{}",
        stderr(&bad)
    );
}
