//! Exported ONNX against the tch forward pass, on both backends.

use crate::util::{cpu, BACKENDS};
use tch::{nn, Device, Kind, Tensor};
use upat::onnx::{encode, ClassifierGraph, OnnxModel};
use upat::runtime;
use upat::train::export::{to_onnx, ExportInfo};
use upat::train::model::{HeadFeatures, InputNormalization, Network};

fn network(features: HeadFeatures, channels: i64) -> (nn::VarStore, Network) {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let normalization = InputNormalization {
        mean: vec![0.3; channels as usize],
        std: vec![0.4; channels as usize],
    };
    let net = Network::new(&vs.root(), channels, 4, 7, features, normalization)
        .with_standardized_features(&vs.root(), features == HeadFeatures::Projector);
    // Non-trivial running statistics, so the exported inference-mode BatchNorm is exercised.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("running_mean") {
                let _ = t.uniform_(-0.2, 0.2);
            } else if name.ends_with("running_var") {
                let _ = t.uniform_(0.5, 1.5);
            }
        }
    });
    // A fitted standardisation, which the export folds into the head.
    let images = Tensor::rand([16, channels, 12, 12], (Kind::Float, Device::Cpu));
    net.fit_standardization(&tch::no_grad(|| net.head_features_t(&images, false)));
    (vs, net)
}

#[test]
fn exported_logits_match_the_tch_forward_pass_on_both_backends() {
    for (features, channels) in [(HeadFeatures::Projector, 1), (HeadFeatures::Backbone, 3)] {
        let (_vs, net) = network(features, channels);
        let info = ExportInfo {
            method: "test".into(),
            dataset: "synthetic".into(),
            image_shape: [channels, 12, 12],
            train_config: "{}".into(),
        };
        let proto = to_onnx(&net, &info);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, encode(&proto)).unwrap();
        let x = Tensor::rand([5, channels, 12, 12], (Kind::Float, Device::Cpu));
        let expected =
            Vec::<f32>::try_from(tch::no_grad(|| net.logits_t(&x, false)).flatten(0, -1)).unwrap();
        let pixels = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
        let model = OnnxModel::load(&path).unwrap();
        assert_eq!(model.opset(), Some(17));
        assert!(model.proto.ir_version <= 10);
        let meta: Vec<String> = model.metadata().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            meta,
            [
                "upat.method",
                "upat.dataset",
                "upat.classes",
                "upat.train_config"
            ]
        );
        let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
        for backend in BACKENDS {
            let logits = runtime::open(&graph, [channels as usize, 12, 12], cpu(backend))
                .unwrap()
                .logits(&pixels, 5)
                .unwrap();
            assert_eq!(logits.classes, 7);
            let diff = logits
                .values
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= 1e-4,
                "{features:?} on {backend:?}: max |Δlogit| {diff}"
            );
        }
    }
}
