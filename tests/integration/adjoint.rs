//! Gradients of linear ops in forms no exporter in the zoo writes, checked
//! against each runtime's own op: Resize with antialias,
//! half_pixel_symmetric, and tf_crop_and_resize with its region of interest
//! and extrapolation.
//!
//! The model is linear, logits = W·flatten(op(x)) = A·x, so the input
//! gradient of the cross-entropy is Aᵀp with p = softmax(z) − onehot(y).
//! The adjoint identity ⟨Aᵀp, v⟩ = ⟨p, A·v⟩ then checks it for any v, where
//! A·v is the model's own forward pass at v: the reference is the runtime's
//! op, not a second reading of the ONNX definition.

use crate::util::{cpu, pixels, BACKENDS};
use upat::attack::Loss;
use upat::onnx::grad;
use upat::onnx::{pb, tensor_value_info, ClassifierGraph, OnnxModel};
use upat::runtime::{BackendChoice, GradientModel};

const SHAPE: [usize; 3] = [2, 5, 7];
const CLASSES: usize = 10;

struct Case {
    mode: &'static str,
    transform: &'static str,
    extra: Vec<pb::AttributeProto>,
    /// Over all four axes, or (with `sizes`) over axes 2 and 3.
    roi: Vec<f32>,
    scales: [f32; 4],
    /// Output sizes of axes 2 and 3, instead of the scales.
    sizes: Option<[i64; 2]>,
}

fn attr_string(name: &str, value: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn floats(name: &str, dims: &[i64], values: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values,
        ..Default::default()
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// input [N, 2, 5, 7] → `op` (writing "mapped", `features` values per
/// image) → Flatten → MatMul W → logits [N, 10]: linear in the input.
fn linear_head(
    op: pb::NodeProto,
    mut initializer: Vec<pb::TensorProto>,
    features: usize,
) -> pb::ModelProto {
    let weights: Vec<f32> = pixels(features * CLASSES, 7)
        .iter()
        .map(|v| v - 0.5)
        .collect();
    initializer.push(floats(
        "weights",
        &[features as i64, CLASSES as i64],
        weights,
    ));
    let flatten = pb::AttributeProto {
        name: "axis".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "linear".into(),
        node: vec![
            op,
            node("Flatten", &["mapped"], "flat", vec![flatten]),
            node("MatMul", &["flat", "weights"], "logits", vec![]),
        ],
        initializer,
        input: vec![tensor_value_info(
            "input",
            1,
            &[None, Some(2), Some(5), Some(7)],
        )],
        output: vec![tensor_value_info(
            "logits",
            1,
            &[None, Some(CLASSES as i64)],
        )],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 9,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 19,
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// The linear model around one Resize case.
fn resize_model(case: &Case) -> pb::ModelProto {
    let out = match case.sizes {
        Some(sizes) => sizes.map(|s| s as usize),
        None => [2, 3].map(|a| (SHAPE[a - 1] as f32 * case.scales[a]).floor() as usize),
    };
    let mut attributes = vec![
        attr_string("mode", case.mode),
        attr_string("coordinate_transformation_mode", case.transform),
    ];
    attributes.extend(case.extra.iter().cloned());
    let (inputs, sizing) = match case.sizes {
        Some(sizes) => {
            attributes.push(pb::AttributeProto {
                name: "axes".into(),
                r#type: pb::attribute_proto::AttributeType::Ints as i32,
                ints: vec![2, 3],
                ..Default::default()
            });
            let tensor = pb::TensorProto {
                name: "sizes".into(),
                dims: vec![2],
                data_type: 7,
                int64_data: sizes.to_vec(),
                ..Default::default()
            };
            (["input", "roi", "", "sizes"].as_slice(), tensor)
        }
        None => (
            ["input", "roi", "scales"].as_slice(),
            floats("scales", &[4], case.scales.to_vec()),
        ),
    };
    linear_head(
        node("Resize", inputs, "mapped", attributes),
        vec![
            floats("roi", &[case.roi.len() as i64], case.roi.clone()),
            sizing,
        ],
        SHAPE[0] * out[0] * out[1],
    )
}

/// Checks the gradient of `proto` by the adjoint identity on both backends
/// (tract only where it runs the model).
fn check_adjoint(proto: &pb::ModelProto, name: &str, dir: &std::path::Path) {
    let path = dir.join("model.onnx");
    std::fs::write(&path, upat::onnx::encode(proto)).unwrap();
    let model = OnnxModel::load(&path).unwrap();
    let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    let gradient = grad::build(&graph, SHAPE, Loss::Ce).unwrap_or_else(|e| panic!("{name}: {e}"));
    for backend in BACKENDS {
        match adjoint_error(&gradient, backend) {
            Ok(error) => {
                eprintln!("{name} on {backend:?}: adjoint error {error:.1e}");
                assert!(error < 1e-5, "{name} on {backend:?}: adjoint error {error}");
            }
            // ONNX Runtime, the reference, must run every case.
            Err(why) if backend == BackendChoice::Tract => {
                eprintln!(
                    "{name} on tract: not run ({})",
                    why.lines().next().unwrap_or("")
                )
            }
            Err(why) => panic!("{name} on {backend:?}: {why}"),
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// |⟨∇, v⟩ − ⟨p, A·v⟩| / (|∇|·|v|) over three directions v.
fn adjoint_error(gradient: &grad::GradientGraph, backend: BackendChoice) -> Result<f64, String> {
    let mut session =
        GradientModel::open(gradient, SHAPE, cpu(backend)).map_err(|e| e.to_string())?;
    let len: usize = SHAPE.iter().product();
    let x = pixels(len, 1);
    let y = [3i64];
    let at_x = session
        .loss_and_grad(&x, &y, None, 1)
        .map_err(|e| e.to_string())?;
    let z = &at_x.logits.values;
    let top = z.iter().cloned().fold(f32::MIN, f32::max);
    let total: f32 = z.iter().map(|v| (v - top).exp()).sum();
    let mut p: Vec<f32> = z.iter().map(|v| (v - top).exp() / total).collect();
    p[y[0] as usize] -= 1.0;
    let norm = |a: &[f32]| dot(a, a).sqrt();
    let mut worst = 0.0f64;
    for seed in 2..5 {
        let v = pixels(len, seed);
        let at_v = session
            .loss_and_grad(&v, &y, None, 1)
            .map_err(|e| e.to_string())?;
        let lhs = dot(&at_x.input_grad, &v);
        let rhs = dot(&p, &at_v.logits.values);
        worst = worst.max((lhs - rhs).abs() / (norm(&at_x.input_grad) * norm(&v)).max(1e-30));
    }
    Ok(worst)
}

#[test]
fn resize_gradients_are_the_adjoint_of_the_runtimes_resize() {
    let int = |name: &str, i: i64| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    };
    let whole = vec![0.0; 8];
    let scaled = |mode, transform, extra, scales| Case {
        mode,
        transform,
        extra,
        roi: whole.clone(),
        scales,
        sizes: None,
    };
    // tf_crop_and_resize over axes 2 and 3, with output sizes.
    let cropped = |mode, extra, roi: [f32; 4], sizes| Case {
        mode,
        transform: "tf_crop_and_resize",
        extra,
        roi: roi.to_vec(),
        scales: [1.0; 4],
        sizes: Some(sizes),
    };
    let antialias = || vec![int("antialias", 1)];
    let cases = [
        scaled("linear", "half_pixel", antialias(), [1.0, 1.0, 0.45, 0.6]),
        scaled(
            "linear",
            "pytorch_half_pixel",
            antialias(),
            [1.0, 1.0, 1.7, 0.3],
        ),
        scaled("cubic", "half_pixel", antialias(), [1.0, 1.0, 0.5, 0.75]),
        scaled(
            "cubic",
            "asymmetric",
            vec![int("antialias", 1), int("exclude_outside", 1)],
            [1.0, 1.0, 2.0, 0.6],
        ),
        scaled(
            "linear",
            "half_pixel_symmetric",
            antialias(),
            [1.0, 1.0, 0.7, 0.4],
        ),
        scaled(
            "linear",
            "half_pixel_symmetric",
            vec![],
            [1.0, 1.0, 1.7, 0.6],
        ),
        scaled(
            "nearest",
            "half_pixel_symmetric",
            vec![attr_string("nearest_mode", "round_prefer_ceil")],
            [1.0, 1.0, 2.5, 1.5],
        ),
        scaled(
            "cubic",
            "half_pixel_symmetric",
            vec![],
            [1.0, 1.0, 0.7, 0.45],
        ),
        // A region reaching past the input on the last axis: those outputs
        // are the extrapolation value, with no gradient.
        cropped("linear", vec![], [0.2, -0.1, 0.9, 1.2], [6, 9]),
        cropped(
            "nearest",
            vec![attr_string("nearest_mode", "floor")],
            [0.1, 0.3, 0.8, 0.7],
            [7, 4],
        ),
        cropped(
            "cubic",
            vec![int("exclude_outside", 1)],
            [0.25, 0.0, 0.75, 1.0],
            [8, 7],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for case in &cases {
        let antialiased = case.extra.iter().any(|a| a.name == "antialias");
        let name = format!(
            "{} {}{} {:?} {:?}",
            case.mode,
            case.transform,
            if antialiased { " antialias" } else { "" },
            &case.scales[2..],
            case.sizes
        );
        check_adjoint(&resize_model(case), &name, dir.path());
    }
}
