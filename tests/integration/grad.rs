//! The gradient graph against PyTorch autograd, finite differences, and
//! across backends.

use crate::util::{cpu, fixture, relative_error, stderr, stdout, upat_audit, BACKENDS};
use upat::attack::Loss;
use upat::data::read_npz_f32;
use upat::onnx::grad::{self, GradientGraph};
use upat::onnx::{ClassifierGraph, OnnxModel};
use upat::runtime::{BackendChoice, GradientModel, LossAndGrad};

/// The ops zoo of `tests/fixtures/zoo.py`: between them, every rule.
const ZOO: [&str; 11] = [
    "activations",
    "pooling",
    "shapes",
    "arithmetic",
    "tiny_vit",
    "gelu_op",
    "misc_ops",
    "reductions",
    "rare_ops",
    "resizing",
    "shape_if",
];

fn gradient_graph(model: &str, loss: Loss) -> GradientGraph {
    let model = OnnxModel::load(&fixture(model)).unwrap();
    let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    grad::build(&graph, [3, 8, 8], loss).unwrap_or_else(|e| panic!("{}: {e}", model.path.display()))
}

struct Golden {
    x: Vec<f32>,
    y: Vec<i64>,
    n: usize,
}

fn golden(npz: &str) -> Golden {
    let path = fixture(npz);
    let (shape, x) = read_npz_f32(&path, "x").unwrap();
    let (_, y) = read_npz_f32(&path, "y").unwrap();
    Golden {
        x,
        y: y.iter().map(|&v| v as i64).collect(),
        n: shape[0],
    }
}

fn npz_member(npz: &str, member: &str) -> Vec<f32> {
    read_npz_f32(&fixture(npz), member).unwrap().1
}

fn evaluate(
    graph: &GradientGraph,
    backend: BackendChoice,
    g: &Golden,
    targets: Option<&[i64]>,
) -> LossAndGrad {
    let mut model = GradientModel::open(graph, [3, 8, 8], cpu(backend)).unwrap();
    model.loss_and_grad(&g.x, &g.y, targets, g.n).unwrap()
}

#[test]
fn every_rule_matches_pytorch_autograd_on_both_backends() {
    for name in ZOO {
        let graph = gradient_graph(&format!("zoo/{name}.onnx"), Loss::Ce);
        let npz = format!("zoo/{name}_golden.npz");
        let g = golden(&npz);
        let expected = npz_member(&npz, "grad_ce");
        assert!(
            expected.iter().any(|v| v.abs() > 1e-4),
            "{name}: the reference gradient is zero, the test would prove nothing"
        );
        for backend in BACKENDS {
            let out = evaluate(&graph, backend, &g, None);
            let logits_error = relative_error(&out.logits.values, &npz_member(&npz, "logits"));
            assert!(
                logits_error <= 1e-5,
                "{name} on {backend:?}: logits relative error {logits_error}"
            );
            let error = relative_error(&out.input_grad, &expected);
            assert!(
                error <= 1e-3,
                "{name} on {backend:?}: gradient relative error {error}"
            );
        }
    }
}

#[test]
fn every_loss_head_matches_pytorch_on_both_backends() {
    let npz = "tiny_cnn_golden.npz";
    let g = golden(npz);
    let targets: Vec<i64> = npz_member(npz, "targets")
        .iter()
        .map(|&v| v as i64)
        .collect();
    for (loss, key) in [
        (Loss::Ce, "ce"),
        (Loss::Margin, "margin"),
        (Loss::Dlr, "dlr"),
        (Loss::DlrTargeted, "dlr_targeted"),
    ] {
        let graph = gradient_graph("tiny_cnn.onnx", loss);
        let t = (loss == Loss::DlrTargeted).then_some(targets.as_slice());
        for backend in BACKENDS {
            let out = evaluate(&graph, backend, &g, t);
            let loss_error = relative_error(&out.loss, &npz_member(npz, &format!("loss_{key}")));
            let grad_error =
                relative_error(&out.input_grad, &npz_member(npz, &format!("grad_{key}")));
            assert!(
                loss_error <= 1e-5 && grad_error <= 1e-3,
                "{key} on {backend:?}: loss {loss_error}, gradient {grad_error}"
            );
        }
    }
}

/// The embedding heads (an encoder audit's label-free objectives) on
/// tiny_cnn's output taken as a 5-wide embedding, against random reference
/// embeddings: loss and input gradient as PyTorch's float64 autograd gives
/// them, on both backends and on the fixed-batch export (chunked, padded).
#[test]
fn embedding_losses_match_pytorch_autograd_on_both_backends() {
    let npz = "tiny_cnn_embedding_golden.npz";
    let g = golden_embedding(npz);
    for loss in Loss::EMBEDDING {
        let key = loss.as_str();
        for model in ["tiny_cnn.onnx", "tiny_cnn_batch1.onnx"] {
            let graph = gradient_graph(model, loss);
            assert_eq!(graph.classes, 5);
            let inputs: Vec<&str> = graph
                .proto
                .graph
                .as_ref()
                .unwrap()
                .input
                .iter()
                .map(|i| i.name.as_str())
                .collect();
            assert!(
                inputs.contains(&grad::REFERENCE) && !inputs.contains(&grad::LABELS),
                "{inputs:?}"
            );
            for backend in BACKENDS {
                let mut session = GradientModel::open(&graph, [3, 8, 8], cpu(backend)).unwrap();
                let out = session
                    .embedding_loss_and_grad(&g.x, &g.reference, g.n)
                    .unwrap();
                let loss_error =
                    relative_error(&out.loss, &npz_member(npz, &format!("loss_{key}")));
                let grad_error =
                    relative_error(&out.input_grad, &npz_member(npz, &format!("grad_{key}")));
                assert!(
                    loss_error <= 1e-5 && grad_error <= 1e-3,
                    "{key}, {model} on {backend:?}: loss {loss_error}, gradient {grad_error}"
                );
                // Labels are no input of an embedding loss.
                assert!(session.loss_and_grad(&g.x, &[0; 6], None, g.n).is_err());
            }
        }
    }
    // At the reference itself the distance is 0 and so is its gradient.
    let graph = gradient_graph("tiny_cnn.onnx", Loss::L2);
    let mut session = GradientModel::open(&graph, [3, 8, 8], cpu(BackendChoice::Ort)).unwrap();
    let own = session
        .embedding_loss_and_grad(&g.x, &g.reference, g.n)
        .unwrap()
        .logits
        .values;
    let at_self = session.embedding_loss_and_grad(&g.x, &own, g.n).unwrap();
    assert!(at_self.loss.iter().all(|&l| l == 0.0), "{:?}", at_self.loss);
    assert!(at_self.input_grad.iter().all(|&v| v == 0.0));
}

struct EmbeddingGolden {
    x: Vec<f32>,
    reference: Vec<f32>,
    n: usize,
}

fn golden_embedding(npz: &str) -> EmbeddingGolden {
    let (shape, x) = read_npz_f32(&fixture(npz), "x").unwrap();
    EmbeddingGolden {
        x,
        reference: npz_member(npz, "reference"),
        n: shape[0],
    }
}

#[test]
fn fixed_batch_models_get_per_sample_gradients() {
    let npz = "tiny_cnn_golden.npz";
    let g = golden(npz);
    let graph = gradient_graph("tiny_cnn_batch1.onnx", Loss::Ce);
    assert_eq!(graph.fixed_batch, Some(1));
    for backend in BACKENDS {
        let out = evaluate(&graph, backend, &g, None);
        let error = relative_error(&out.input_grad, &npz_member(npz, "grad_ce"));
        assert!(error <= 1e-3, "{backend:?}: {error}");
    }
}

#[test]
fn ort_and_tract_agree_on_every_zoo_gradient() {
    for name in ZOO {
        let graph = gradient_graph(&format!("zoo/{name}.onnx"), Loss::Margin);
        let g = golden(&format!("zoo/{name}_golden.npz"));
        let ort = evaluate(&graph, BackendChoice::Ort, &g, None);
        let tract = evaluate(&graph, BackendChoice::Tract, &g, None);
        assert!(
            relative_error(&tract.loss, &ort.loss) <= 1e-5,
            "{name}: loss"
        );
        let error = relative_error(&tract.input_grad, &ort.input_grad);
        assert!(
            error <= 1e-5,
            "{name}: ort vs tract gradient relative error {error}"
        );
    }
}

/// Deterministic pseudo-random values in [-1, 1].
fn direction(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Central difference of Σ loss along `v` against ⟨input_grad, v⟩.
fn finite_difference_error(
    model: &mut GradientModel,
    g: &Golden,
    targets: Option<&[i64]>,
    v: &[f32],
) -> f32 {
    let h = 1e-3f32;
    let total = |x: &[f32], model: &mut GradientModel| -> f64 {
        model
            .loss_and_grad(x, &g.y, targets, g.n)
            .unwrap()
            .loss
            .iter()
            .map(|&l| f64::from(l))
            .sum()
    };
    let plus: Vec<f32> = g.x.iter().zip(v).map(|(x, d)| x + h * d).collect();
    let minus: Vec<f32> = g.x.iter().zip(v).map(|(x, d)| x - h * d).collect();
    let numeric = (total(&plus, model) - total(&minus, model)) / (2.0 * f64::from(h));
    let grad = model
        .loss_and_grad(&g.x, &g.y, targets, g.n)
        .unwrap()
        .input_grad;
    let analytic: f64 = grad
        .iter()
        .zip(v)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    ((numeric - analytic).abs() / analytic.abs().max(numeric.abs()).max(1e-6)) as f32
}

/// Median relative error allowed between finite differences and the
/// gradient. Models whose function has kinks (max-pooling, ReLU, the max over
/// classes in margin and DLR losses) get a looser bound: a step of size h
/// crosses some kink often enough to spoil the difference quotient itself,
/// while their gradients agree with PyTorch autograd to 1e-6 in the tests above.
const SMOOTH: f32 = 1e-2;
const KINKED: f32 = 3e-2;

#[test]
fn finite_differences_confirm_every_rule_and_loss() {
    let mut cases: Vec<(String, String, Loss, f32)> = ZOO
        .iter()
        .map(|n| {
            (
                format!("zoo/{n}.onnx"),
                format!("zoo/{n}_golden.npz"),
                Loss::Ce,
                // Max pools, and Abs, Max/Min, amax/amin and argmax-chosen
                // indices in `reductions`, put kinks within a step's reach.
                if ["pooling", "reductions", "rare_ops"].contains(n) {
                    KINKED
                } else {
                    SMOOTH
                },
            )
        })
        .collect();
    for loss in [
        Loss::Margin,
        Loss::Dlr,
        Loss::DlrTargeted,
        Loss::TargetMargin,
    ] {
        cases.push((
            "tiny_cnn.onnx".into(),
            "tiny_cnn_golden.npz".into(),
            loss,
            KINKED,
        ));
    }
    for (model_file, npz, loss, tolerance) in cases {
        let graph = gradient_graph(&model_file, loss);
        let g = golden(&npz);
        let targets: Vec<i64> = g.y.iter().map(|&y| (y + 1) % 5).collect();
        let t = loss.is_targeted().then_some(targets.as_slice());
        let mut model = GradientModel::open(&graph, [3, 8, 8], cpu(BackendChoice::Ort)).unwrap();
        // Several directions; kinks (ReLU, max) can spoil one, not the median.
        let mut errors: Vec<f32> = (0..7)
            .map(|seed| finite_difference_error(&mut model, &g, t, &direction(g.x.len(), seed)))
            .collect();
        errors.sort_by(f32::total_cmp);
        let median = errors[3];
        assert!(
            median <= tolerance,
            "{model_file} with {}: median finite-difference relative error {median}",
            loss.as_str()
        );
    }
}

#[test]
fn an_op_without_a_rule_is_named_with_a_way_out() {
    let model = OnnxModel::load(&fixture("unsupported_op.onnx")).unwrap();
    let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    let err = grad::build(&graph, [3, 8, 8], Loss::Ce)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Sin") && err.contains("the_sine") && err.contains("square, blackbox"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = upat_audit(
        dir.path(),
        &[
            "inspect",
            &fixture("unsupported_op.onnx").display().to_string(),
        ],
    );
    assert!(
        stdout(&out).contains("differentiable: no") && stdout(&out).contains("Sin"),
        "{}",
        stdout(&out)
    );
    let out = upat_audit(
        dir.path(),
        &["inspect", &fixture("tiny_cnn.onnx").display().to_string()],
    );
    assert!(
        stdout(&out).contains("differentiable: yes"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn opsets_before_7_are_refused_with_a_way_out() {
    let model = OnnxModel::load(&fixture("tiny_cnn.onnx")).unwrap();
    let mut graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    graph
        .proto
        .opset_import
        .iter_mut()
        .for_each(|o| o.version = 6);
    let err = grad::build(&graph, [3, 8, 8], Loss::Ce)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("opset 6") && err.contains("opset_version=17"),
        "{err}"
    );
}

/// Zoo models exported at opsets 9–12 (axes and bounds as attributes,
/// Softmax over a flattened view, Upsample) give the gradients of their
/// PyTorch models, like their opset-17 exports.
#[test]
fn old_opsets_are_rewritten_and_match_pytorch_autograd() {
    for (name, opset) in [
        ("shapes", 9),
        ("shapes", 11),
        ("arithmetic", 11),
        ("arithmetic", 12),
        ("pooling", 9),
        ("pooling", 11),
        ("activations", 11),
    ] {
        let model = OnnxModel::load(&fixture(&format!("zoo/{name}_opset{opset}.onnx"))).unwrap();
        assert_eq!(model.opset(), Some(opset));
        let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
        let gradient = grad::build(&graph, [3, 8, 8], Loss::Ce).unwrap();
        let npz = format!("zoo/{name}_golden.npz");
        let g = golden(&npz);
        let expected = npz_member(&npz, "grad_ce");
        for backend in BACKENDS {
            let out = evaluate(&gradient, backend, &g, None);
            let error = relative_error(&out.input_grad, &expected);
            assert!(
                error <= 1e-3,
                "{name} at opset {opset} on {backend:?}: gradient relative error {error}"
            );
        }
    }
}

#[test]
fn grad_command_writes_a_graph_with_the_contracted_interface() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("g.onnx");
    let args = [
        "grad",
        &fixture("tiny_cnn.onnx").display().to_string(),
        "--loss",
        "dlr-targeted",
        "-o",
        &out_file.display().to_string(),
    ];
    let out = upat_audit(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = OnnxModel::load(&out_file).unwrap();
    let inputs: Vec<String> = written
        .inputs()
        .into_iter()
        .map(|t| t.describe_named())
        .collect();
    let outputs: Vec<String> = written
        .outputs()
        .into_iter()
        .map(|t| t.describe_named())
        .collect();
    assert_eq!(
        inputs,
        [
            "input float[N,3,8,8]",
            "labels int64[N]",
            "targets int64[N]"
        ]
    );
    assert_eq!(
        outputs,
        [
            "logits float[N,5]",
            "loss float[N]",
            "input_grad float[N,3,8,8]"
        ]
    );
    assert!(written.opset().unwrap() >= 17 && written.proto.ir_version <= 10);
    // An embedding loss reads a reference embedding in place of labels.
    let args = [
        "grad",
        &fixture("tiny_cnn.onnx").display().to_string(),
        "--loss",
        "cosine",
        "-o",
        &out_file.display().to_string(),
    ];
    let out = upat_audit(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("embedding width 5"),
        "{}",
        stdout(&out)
    );
    let written = OnnxModel::load(&out_file).unwrap();
    let inputs: Vec<String> = written
        .inputs()
        .into_iter()
        .map(|t| t.describe_named())
        .collect();
    assert_eq!(inputs, ["input float[N,3,8,8]", "reference float[N,5]"]);
    let out = upat_audit(
        dir.path(),
        &[
            "grad",
            &fixture("unsupported_op.onnx").display().to_string(),
            "-o",
            "x.onnx",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!dir.path().join("x.onnx").exists());
}

/// torchvision architectures with random weights (generated by
/// `scripts/goldens/torchvision_models.py` into `target/goldens`, too large
/// for git). Skipped when absent, except under `UPAT_REQUIRE_GOLDENS=1`
/// (set by scripts/test.sh, which generates them first).
#[test]
fn torchvision_architectures_match_pytorch_autograd_on_both_backends() {
    let dir = crate::util::repo_path("target/goldens");
    if !dir.join("vit_small_golden.npz").is_file() {
        let required = std::env::var("UPAT_REQUIRE_GOLDENS").is_ok_and(|v| v == "1");
        assert!(!required, "goldens required but missing: run .venv/bin/python scripts/goldens/torchvision_models.py");
        eprintln!(
            "skipped: no goldens in {} (scripts/goldens/torchvision_models.py makes them)",
            dir.display()
        );
        return;
    }
    let names = [
        "resnet18_cifar",
        "resnet18_imagenet",
        "vgg11_bn",
        "mobilenet_v2",
        "efficientnet_b0",
        "densenet121",
        "convnext_tiny",
        "vit_small",
    ];
    for name in names {
        let npz = dir.join(format!("{name}_golden.npz"));
        let (shape, x) = read_npz_f32(&npz, "x").unwrap();
        let (_, y) = read_npz_f32(&npz, "y").unwrap();
        let y: Vec<i64> = y.iter().map(|&v| v as i64).collect();
        let expected = read_npz_f32(&npz, "grad_ce").unwrap().1;
        let image_shape = [shape[1], shape[2], shape[3]];
        let model = OnnxModel::load(&dir.join(format!("{name}.onnx"))).unwrap();
        let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
        let gradient =
            grad::build(&graph, image_shape, Loss::Ce).unwrap_or_else(|e| panic!("{name}: {e}"));
        for backend in BACKENDS {
            let started = std::time::Instant::now();
            let mut session = GradientModel::open(&gradient, image_shape, cpu(backend)).unwrap();
            let out = session.loss_and_grad(&x, &y, None, shape[0]).unwrap();
            let error = relative_error(&out.input_grad, &expected);
            eprintln!(
                "{name} on {backend:?}: gradient relative error {error:.2e} ({:.1}s)",
                started.elapsed().as_secs_f32()
            );
            assert!(
                error <= 1e-3,
                "{name} on {backend:?}: gradient relative error {error}"
            );
        }
    }
}

/// ONNX Runtime runs a specialised gradient graph (`grad/specialise/`):
/// stride-1 convolutions' input gradients as `Conv`; on the CPU, ReLU and
/// MaxPool backwards as upat's own kernels, or, with standard ops only,
/// MaxPool's as `MaxUnpool` where windows do not overlap. Logits
/// and loss are the portable graph's exactly, the input gradient within
/// float rounding (the convolutions sum in another order), and the two
/// pool forms agree exactly; strided convolutions stay portable.
#[test]
fn onnx_runtime_runs_specialised_gradients_with_the_portable_values() {
    use upat::onnx::grad::specialise::{for_onnx_runtime, Kernels, MAX_POOL_GRAD, RELU_GRAD};
    // pooling: one tiling pool among overlapping and ceil-mode ones; a
    // dilated and an asymmetric stride-1 conv beside a grouped strided one
    // and a stride-2 average pool (whose backward is a ConvTranspose).
    for (model, golden_file, tiling, strided) in [
        ("zoo/pooling.onnx", "zoo/pooling_golden.npz", 1, 2),
        ("tiny_cnn.onnx", "tiny_cnn_golden.npz", 1, 0),
    ] {
        let portable = gradient_graph(model, Loss::Ce);
        let disjoint = portable.pool_sites.iter().filter(|s| s.disjoint).count();
        assert_eq!(disjoint, tiling, "{model}");
        let standard = for_onnx_runtime(&portable, Kernels::Standard);
        let fused = for_onnx_runtime(&portable, Kernels::WithUpatOps);
        let nodes = |proto: &upat::onnx::pb::ModelProto| proto.graph.clone().unwrap().node;
        let ops = |proto: &upat::onnx::pb::ModelProto, op: &str| {
            nodes(proto).iter().filter(|n| n.op_type == op).count()
        };
        assert_eq!(ops(&standard, "MaxUnpool"), tiling, "{model}");
        assert_eq!(
            ops(&standard, "ScatterElements") + tiling,
            ops(&portable.proto, "ScatterElements"),
            "{model}: the portable scatter stays for the other pools only"
        );
        assert_eq!(
            ops(&fused, MAX_POOL_GRAD),
            portable.pool_sites.len(),
            "{model}"
        );
        assert_eq!(ops(&fused, "MaxUnpool"), 0, "{model}");
        assert!(
            nodes(&fused)
                .iter()
                .filter(|n| n.op_type == "MaxPool")
                .all(|n| n.output.len() == 1),
            "{model}: the forward pools no longer compute indices"
        );
        // The forward ConvTranspose and each strided conv's gradient stay.
        let forward = nodes(&portable.proto)[..portable.forward_nodes]
            .iter()
            .filter(|n| n.op_type == "ConvTranspose")
            .count();
        assert!(
            ops(&portable.proto, "ConvTranspose") > forward + strided,
            "{model}"
        );
        assert_eq!(
            ops(&standard, "ConvTranspose"),
            forward + strided,
            "{model}"
        );
        let relus = portable.relu_sites.len();
        assert!(relus > 0, "{model}");
        assert_eq!(ops(&fused, RELU_GRAD), relus, "{model}");
        assert_eq!(
            ops(&fused, "Where") + relus,
            ops(&standard, "Where"),
            "{model}"
        );
        let run = |proto| run_on_golden(proto, BackendChoice::Ort, golden_file);
        let (a, b, c) = (run(&portable.proto), run(&standard), run(&fused));
        assert_eq!(a.len(), 3);
        assert_eq!(a[..2], b[..2], "{model}: logits and loss must be identical");
        assert_eq!(
            b, c,
            "{model}: upat's kernels must give the standard ops' values"
        );
        let error = relative_error(&b[2].values, &a[2].values);
        assert!(error < 1e-5, "{model}: input gradient off by {error}");
        assert!(a[2].values.iter().any(|v| *v != 0.0));
    }
}

/// tract runs MaxPool and ReLU backwards as upat's kernels too: the same
/// values as its portable graph (the same window maxima; ScatterElements
/// adds in the kernel's order).
#[test]
fn tract_runs_upats_kernels_with_the_portable_values() {
    use upat::onnx::grad::specialise::{for_tract, MAX_POOL_GRAD, RELU_GRAD};
    for (model, golden_file) in [
        ("zoo/pooling.onnx", "zoo/pooling_golden.npz"),
        ("tiny_cnn.onnx", "tiny_cnn_golden.npz"),
    ] {
        let portable = gradient_graph(model, Loss::Ce);
        let fused = for_tract(&portable);
        let ops = |proto: &upat::onnx::pb::ModelProto, op: &str| {
            let graph = proto.graph.as_ref().unwrap();
            graph.node.iter().filter(|n| n.op_type == op).count()
        };
        assert_eq!(
            ops(&fused, MAX_POOL_GRAD),
            portable.pool_sites.len(),
            "{model}"
        );
        assert_eq!(ops(&fused, RELU_GRAD), portable.relu_sites.len(), "{model}");
        assert_eq!(ops(&fused, "ScatterElements"), 0, "{model}");
        assert_eq!(
            ops(&fused, "ConvTranspose"),
            ops(&portable.proto, "ConvTranspose"),
            "{model}: convolution gradients stay ConvTranspose on tract"
        );
        let run = |proto| run_on_golden(proto, BackendChoice::Tract, golden_file);
        let (a, b) = (run(&portable.proto), run(&fused));
        assert_eq!(
            a, b,
            "{model}: upat's kernels must give the portable values"
        );
        assert!(b[2].values.iter().any(|v| *v != 0.0));
    }
}

/// tract finds ops by name alone: a `ReluGrad` of another domain (ONNX
/// Runtime's training op, inputs the other way round) is refused.
#[test]
fn tract_refuses_a_foreign_op_named_like_upats() {
    use upat::onnx::pb;
    use upat::runtime::open_session;
    let value = |name: &str| upat::onnx::tensor_value_info(name, 1, &[None, None]);
    let proto = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            },
            pb::OperatorSetIdProto {
                domain: "com.microsoft".into(),
                version: 1,
            },
        ],
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                op_type: "ReluGrad".into(),
                domain: "com.microsoft".into(),
                input: vec!["dy".into(), "x".into()],
                output: vec!["dx".into()],
                ..Default::default()
            }],
            input: vec![value("dy"), value("x")],
            output: vec![value("dx")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let error = open_session(&proto, cpu(BackendChoice::Tract))
        .err()
        .expect("a foreign ReluGrad is refused")
        .to_string();
    assert!(error.contains("com.microsoft"), "{error}");
}

/// A gradient graph (in any form) run as a plain session on a golden's
/// images and labels: logits, loss and input gradient.
fn run_on_golden(
    proto: &upat::onnx::pb::ModelProto,
    backend: BackendChoice,
    golden_file: &str,
) -> Vec<upat::runtime::Fetched> {
    use upat::runtime::{open_session, Feed};
    let g = golden(golden_file);
    let image = [g.n, 3, 8, 8];
    let vector = [g.n];
    open_session(proto, cpu(backend))
        .unwrap()
        .run(&[Feed::F32(&g.x, &image), Feed::I64(&g.y, &vector)])
        .unwrap()
}
