//! Reverse-mode differentiation of ONNX classifiers, emitted as ONNX.
//!
//! White-box attacks need d(loss)/d(input) from a model that only exists as
//! ONNX, and neither standard ONNX Runtime builds nor tract can differentiate.
//! [`build`] appends to the model a loss head and the backward pass, written
//! only in standard ONNX ops, so the augmented model runs on any runtime:
//!
//! ```text
//! inputs:  <image input> [N,C,H,W], labels int64 [N] (targets int64 [N] for dlr-targeted)
//! outputs: <logits> [N,K], loss [N] (per sample), input_grad [N,C,H,W] = d(Σ loss)/d(input)
//! ```
//!
//! Only the differentiable subgraph is differentiated: tensors reachable from
//! the input through float edges at differentiable input positions, and that
//! reach the logits. Shape arithmetic (Shape, Gather on shapes, Reshape's
//! shape input, ...) stays forward-only. Each op's rule is one function in
//! `rules/`, looked up by op type.

pub(crate) mod emit;
mod fold;
mod loss;
mod rules;
mod upgrade;

pub use rules::{RuleEntry, RULES, STRAIGHT_THROUGH};
mod shapes;
pub mod specialise;

pub use loss::Loss;
pub use shapes::{Shapes, TensorShape};

use crate::error::{Error, Result};
use crate::onnx::{pb, tensor_value_info, ClassifierGraph};
use emit::Emitter;
use rules::{Ctx, DiffInputs};
use std::collections::{HashMap, HashSet};

/// Name of the labels input of a gradient graph.
pub const LABELS: &str = "labels";
/// Name of the target-class input (targeted losses only).
pub const TARGETS: &str = "targets";
/// The reference embedding input `[N, D]` of the embedding losses (in place
/// of `labels`).
pub const REFERENCE: &str = "reference";
/// Name of the per-sample loss output.
pub const LOSS: &str = "loss";
/// Name of the input-gradient output.
pub const INPUT_GRAD: &str = "input_grad";

/// The lowest opset read; models before 13 are rewritten to opset-13 forms
/// first ([`upgrade`]).
const MIN_OPSET: i64 = 7;
/// The opset whose op forms the rules rely on (axes as inputs).
const RULES_OPSET: i64 = 13;
/// Emitted ops need opset 16+ (ScatterElements with reduction); 17 is what
/// exporters default to and keeps every forward op's meaning for opsets 13–16.
const GRAD_OPSET: i64 = 17;

/// A classifier augmented with a loss head and its input gradient.
#[derive(Debug, Clone)]
pub struct GradientGraph {
    pub proto: pb::ModelProto,
    pub input: String,
    pub logits: String,
    pub loss: Loss,
    /// Number of classes (the logits' second dimension).
    pub classes: usize,
    /// The batch size the model was exported with, if fixed.
    pub fixed_batch: Option<usize>,
    /// Op types on the path differentiated by the straight-through
    /// estimator ([`STRAIGHT_THROUGH`]): the gradient is approximate.
    pub approximated: Vec<String>,
    /// MaxPool backwards ONNX Runtime runs in a faster form
    /// ([`specialise::for_onnx_runtime`]).
    pub pool_sites: Vec<specialise::PoolSite>,
    /// ReLU backwards ONNX Runtime runs as one kernel.
    pub relu_sites: Vec<specialise::ReluSite>,
    /// The model's own nodes come first in `proto`, this many; the
    /// gradient's follow. Rewrites for speed touch only the latter.
    pub forward_nodes: usize,
}

/// Why a model cannot be differentiated: the first op without a rule on the
/// path from input to logits.
fn unsupported(node: &pb::NodeProto, path: &std::path::Path) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        message: format!(
            "op {} (node `{}`) lies between the input and the logits and has no gradient rule, \
             so white-box attacks cannot run on this model; use a gradient-free suite (square, blackbox): \
             `--suite scorebased` runs the Square Attack, which needs the model's scores only",
            node.op_type, node.name
        ),
    }
}

/// Names a node's subgraphs (If's branches, Loop's and Scan's bodies) read,
/// at any depth: the outer-scope values among them are its hidden inputs.
fn outer_names_read_by_subgraphs(node: &pb::NodeProto) -> Vec<String> {
    fn visit(graph: &pb::GraphProto, names: &mut Vec<String>) {
        for node in &graph.node {
            names.extend(node.input.iter().filter(|n| !n.is_empty()).cloned());
            for attribute in &node.attribute {
                attribute
                    .g
                    .iter()
                    .chain(&attribute.graphs)
                    .for_each(|g| visit(g, names));
            }
        }
    }
    let mut names = Vec::new();
    for attribute in &node.attribute {
        attribute
            .g
            .iter()
            .chain(&attribute.graphs)
            .for_each(|g| visit(g, &mut names));
    }
    names
}

/// Float-typed (or of unknown type: assume float, so an unsupported op is
/// reported rather than silently cut off).
fn is_float(shapes: &Shapes, name: &str) -> bool {
    shapes.get(name).is_none_or(|s| s.is_float)
}

/// Orders nodes so every input is produced before it is used.
fn topological_order(graph: &pb::GraphProto, path: &std::path::Path) -> Result<Vec<usize>> {
    let mut available: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    available.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    available.insert("");
    let mut done = vec![false; graph.node.len()];
    let mut order = Vec::with_capacity(graph.node.len());
    while order.len() < graph.node.len() {
        let before = order.len();
        for (i, node) in graph.node.iter().enumerate() {
            if !done[i] && node.input.iter().all(|n| available.contains(n.as_str())) {
                done[i] = true;
                order.push(i);
                available.extend(node.output.iter().map(String::as_str));
            }
        }
        if order.len() == before {
            let stuck = graph
                .node
                .iter()
                .enumerate()
                .find(|(i, _)| !done[*i])
                .map(|(_, n)| n.name.clone())
                .unwrap_or_default();
            return Err(Error::Model {
                path: path.to_path_buf(),
                message: format!(
                    "the graph has a cycle or an input nobody produces (at node `{stuck}`)"
                ),
            });
        }
    }
    Ok(order)
}

/// Which node inputs can carry a gradient for this op.
fn diff_positions(node: &pb::NodeProto) -> Vec<usize> {
    match rules::lookup(&node.op_type).map(|r| r.inputs) {
        Some(DiffInputs::Only(positions)) => positions
            .iter()
            .copied()
            .filter(|&p| p < node.input.len())
            .collect(),
        Some(DiffInputs::All) | None => (0..node.input.len()).collect(),
    }
}

/// Builds the gradient graph of `graph` for images of `image_shape`.
pub fn build(
    graph: &ClassifierGraph,
    image_shape: [usize; 3],
    loss: Loss,
) -> Result<GradientGraph> {
    let mut proto = graph.proto.clone();
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    if opset < MIN_OPSET {
        return Err(Error::Model {
            path: graph.path.clone(),
            message: format!("declares opset {opset}; the gradient graph needs opset {MIN_OPSET} or later: re-export with opset_version=17"),
        });
    }
    let mut shapes = Shapes::infer(&proto, image_shape, graph.input.fixed_batch)?;
    let mut rewritten = opset < RULES_OPSET;
    if opset < RULES_OPSET {
        let g = proto.graph.as_mut().expect("ClassifierGraph has a graph");
        upgrade::to_opset_13(g, opset, &shapes).map_err(|e| e.with_path(&graph.path, None))?;
        set_opset(&mut proto, RULES_OPSET);
        shapes = Shapes::infer(&proto, image_shape, graph.input.fixed_batch)?;
    }
    if fold::constant_ifs(
        &mut proto,
        &graph.input.name,
        image_shape,
        graph.input.fixed_batch,
    )? {
        rewritten = true;
        shapes = Shapes::infer(&proto, image_shape, graph.input.fixed_batch)?;
    }
    // Computed integer inputs are evaluated on the graph the rules see.
    let analysed = rewritten.then(|| proto.clone());
    let opset = opset.max(RULES_OPSET);
    let g = proto.graph.as_mut().expect("ClassifierGraph has a graph");
    let input = graph.input.name.clone();
    let logits = graph.output_name.clone();
    let order = topological_order(g, &graph.path)?;

    // Forward activity: tensors that depend on the input along differentiable edges.
    let mut active: HashSet<String> = HashSet::from([input.clone()]);
    for &i in &order {
        let node = &g.node[i];
        // A control-flow node (If, Loop, Scan) reads the input through its
        // subgraphs too: it is on the path, to be named as the op without a
        // rule rather than hidden.
        if diff_positions(node)
            .iter()
            .any(|&p| active.contains(&node.input[p]))
            || outer_names_read_by_subgraphs(node)
                .iter()
                .any(|name| active.contains(name))
        {
            // A quantized tensor carries the gradient straight through.
            let straight_through = STRAIGHT_THROUGH.contains(&node.op_type.as_str());
            active.extend(
                node.output
                    .iter()
                    .filter(|o| !o.is_empty() && (straight_through || is_float(&shapes, o)))
                    .cloned(),
            );
        }
    }
    if !active.contains(&logits) {
        return Err(Error::Model {
            path: graph.path.clone(),
            message: "the logits do not depend on the input through float operations".into(),
        });
    }

    // Backward reachability: active tensors the logits depend on.
    let mut needed: HashSet<String> = HashSet::from([logits.clone()]);
    let mut on_path = Vec::new();
    for &i in order.iter().rev() {
        let node = &g.node[i];
        if !node.output.iter().any(|o| needed.contains(o)) {
            continue;
        }
        let inputs: Vec<usize> = diff_positions(node)
            .into_iter()
            .filter(|&p| active.contains(&node.input[p]))
            .collect();
        let reads_input_inside = outer_names_read_by_subgraphs(node)
            .iter()
            .any(|name| active.contains(name));
        if reads_input_inside {
            // No rule differentiates through a subgraph (yet).
            return Err(unsupported(node, &graph.path));
        }
        if inputs.is_empty() {
            continue;
        }
        if rules::lookup(&node.op_type).is_none()
            || !node.domain.is_empty() && node.domain != "ai.onnx"
        {
            return Err(unsupported(node, &graph.path));
        }
        needed.extend(inputs.iter().map(|&p| node.input[p].clone()));
        on_path.push(i);
    }

    let mut approximated: Vec<String> = on_path
        .iter()
        .map(|&i| g.node[i].op_type.clone())
        .filter(|op| STRAIGHT_THROUGH.contains(&op.as_str()))
        .collect();
    approximated.sort();
    approximated.dedup();

    // Bounds, pads and indices that exporters compute with shape arithmetic.
    let constants = rules::Constants::collect(g);
    let computed: Vec<String> = on_path
        .iter()
        // Quantization parameters are not read by the straight-through rule.
        .filter(|&&i| !STRAIGHT_THROUGH.contains(&g.node[i].op_type.as_str()))
        .flat_map(|&i| g.node[i].input.iter().skip(1))
        .filter(|name| {
            !name.is_empty()
                && constants.ints(name).is_none()
                && shapes.get(name).is_some_and(|s| !s.is_float)
        })
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    shapes.evaluate_ints(
        analysed.as_ref().unwrap_or(&graph.proto),
        &computed,
        image_shape,
        graph.input.fixed_batch,
    )?;

    let mut emit = Emitter::new(g, opset.max(GRAD_OPSET));
    let classes = shapes
        .get(&logits)
        .and_then(|s| s.dims.get(1).copied())
        .ok_or_else(|| Error::Model {
            path: graph.path.clone(),
            message: format!("the shape of the logits `{logits}` could not be inferred"),
        })?;
    let head = loss::emit_head(&mut emit, &logits, classes, loss)?;

    // Forward nodes whose rule needs an extra output (MaxPool's argmax indices).
    for &i in &on_path {
        rules::prepare_forward(&mut g.node[i], &mut emit);
    }
    let mut grads: HashMap<String, Vec<String>> =
        HashMap::from([(logits.clone(), vec![head.logits_grad.clone()])]);
    for &i in &on_path {
        let node = g.node[i].clone();
        let output_grads: Vec<Option<String>> = node
            .output
            .iter()
            .map(|o| grads.remove(o).map(|terms| emit.sum(&terms)))
            .collect();
        if output_grads.iter().all(Option::is_none) {
            continue;
        }
        let wanted: Vec<bool> = node
            .input
            .iter()
            .enumerate()
            .map(|(p, n)| needed.contains(n) && diff_positions(&node).contains(&p))
            .collect();
        let rule = rules::lookup(&node.op_type).expect("checked above");
        let mut ctx = Ctx {
            emit: &mut emit,
            shapes: &shapes,
            constants: &constants,
            node: &node,
            wanted: &wanted,
        };
        let input_grads = (rule.backward)(&mut ctx, &output_grads).map_err(|e| {
            let context = format!("gradient of {} (node `{}`)", node.op_type, node.name);
            e.with_path(&graph.path, Some(&context))
        })?;
        for (p, grad) in input_grads.into_iter().enumerate() {
            if let (Some(grad), true) = (grad, wanted.get(p).copied().unwrap_or(false)) {
                grads.entry(node.input[p].clone()).or_default().push(grad);
            }
        }
    }
    let input_grad = match grads.remove(&input) {
        Some(terms) => emit.sum(&terms),
        None => emit.zeros_like(&input),
    };
    emit.nodes.push(identity(&input_grad, INPUT_GRAD));
    emit.nodes.push(identity(&head.loss, LOSS));

    let pool_sites = emit.pool_sites;
    let relu_sites = emit.relu_sites;
    let forward_nodes = g.node.len();
    g.node.extend(emit.nodes);
    g.initializer.extend(emit.initializers);
    if loss.is_embedding() {
        g.input.push(tensor_value_info(
            REFERENCE,
            1,
            &[None, Some(classes as i64)],
        ));
    } else {
        g.input.push(int_vector_input(LABELS));
    }
    if loss.is_targeted() {
        g.input.push(int_vector_input(TARGETS));
    }
    g.output.push(tensor_value_info(LOSS, 1, &[None]));
    let [c, h, w] = image_shape.map(|d| Some(d as i64));
    g.output
        .push(tensor_value_info(INPUT_GRAD, 1, &[None, c, h, w]));
    set_opset(&mut proto, opset.max(GRAD_OPSET));
    Ok(GradientGraph {
        proto,
        input,
        logits,
        loss,
        classes,
        fixed_batch: graph.input.fixed_batch,
        approximated,
        pool_sites,
        relu_sites,
        forward_nodes,
    })
}

fn identity(from: &str, to: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: "Identity".into(),
        name: format!("upat_grad/{to}"),
        input: vec![from.into()],
        output: vec![to.into()],
        ..Default::default()
    }
}

fn int_vector_input(name: &str) -> pb::ValueInfoProto {
    tensor_value_info(name, 7, &[None])
}

fn set_opset(proto: &mut pb::ModelProto, version: i64) {
    match proto
        .opset_import
        .iter_mut()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        Some(o) => o.version = version,
        None => proto.opset_import.push(pb::OperatorSetIdProto {
            domain: String::new(),
            version,
        }),
    }
    // Opset 17 needs IR version 8.
    proto.ir_version = proto.ir_version.max(8);
}
