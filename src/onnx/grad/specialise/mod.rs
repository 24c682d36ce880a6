//! Faster forms of gradient rules for ONNX Runtime. The gradient graph is
//! built from standard ops that every runtime computes alike (tract, ONNX
//! Runtime, anyone's: what `upat-audit grad -o` writes); where ONNX Runtime
//! has a faster kernel for the same values, the graph it runs is rewritten
//! here, and the portable nodes the rewrite leaves unused are dropped.
//!
//! - **MaxPool** (`pool.rs`): the portable backward takes the forward
//!   MaxPool's Indices output (which ONNX Runtime computes on a scalar path),
//!   routes each output's gradient to its argmax with `Mod` (ONNX Runtime's
//!   indices are flat over N·C·H·W, tract's over H·W), reshapes and
//!   `ScatterElements(add)`, also scalar. On the CPU, upat's own kernel
//!   `ai.upat.MaxPoolGrad(x, g)` finds each window's argmax again and adds
//!   the gradient there in one pass, and the forward MaxPool loses its
//!   Indices output and runs vectorised. Elsewhere (CUDA), pools whose windows
//!   do not overlap run as `MaxUnpool(g, indices, Shape(x))`: no two outputs
//!   share an argmax, so writing equals adding. Measured on the
//!   adversarially trained Fashion-MNIST CNN (batch 128, 2 threads): loss and
//!   input gradient 4,600 → 5,750 images/s with `MaxUnpool`.
//! - **Stride-1 convolutions' input gradient** (`conv.rs`): the portable
//!   `ConvTranspose(g, W)` is a `Conv` of `g` with `W` flipped in space and
//!   its channel axes swapped, padded by (k−1)·d − p. ONNX Runtime's Conv
//!   kernels (NCHWc, direct) are far faster than its ConvTranspose (GEMM,
//!   then Col2Im). Only for weights stored in the model.
//! - **ReLU** (`relu.rs`): on the CPU, `Where(Greater(x, 0), g, 0)` as
//!   upat's kernel `ai.upat.ReluGrad(x, g)`, the same values in one pass:
//!   ONNX Runtime's Where takes a generic broadcasting path, and
//!   `Mul(g, Cast(x > 0))`, twice as fast, differs where `g` is not finite.

mod conv;
mod pool;
mod relu;

pub use pool::{PoolSite, MAX_POOL_GRAD};
pub use relu::{ReluSite, RELU_GRAD};

use super::GradientGraph;
use crate::onnx::pb;
use std::collections::HashSet;

/// The domain of upat's own ONNX Runtime kernels.
pub const UPAT_DOMAIN: &str = "ai.upat";

/// Which kernels the rewritten graph may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// ONNX's standard ops only (any execution provider).
    Standard,
    /// upat's own CPU kernels too (`ai.upat`), which the session registers
    /// (`runtime::ort_ops`).
    WithUpatOps,
}

/// The graph ONNX Runtime runs: `graph` with its MaxPool and ReLU
/// backwards and stride-1 convolution gradients rewritten.
pub fn for_onnx_runtime(graph: &GradientGraph, kernels: Kernels) -> pb::ModelProto {
    rewritten(graph, kernels, ConvGradients::AsConv)
}

/// The graph tract runs: `graph` with its MaxPool and ReLU backwards as
/// upat's kernels (`runtime::tract_ops`). Convolution gradients stay
/// `ConvTranspose`: the Conv form made tract slower (870–900 images/s
/// against 1,330 on the adversarially trained CNN).
pub fn for_tract(graph: &GradientGraph) -> pb::ModelProto {
    rewritten(graph, Kernels::WithUpatOps, ConvGradients::AsConvTranspose)
}

/// How stride-1 convolutions' input gradients run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvGradients {
    AsConv,
    AsConvTranspose,
}

fn rewritten(graph: &GradientGraph, kernels: Kernels, convs: ConvGradients) -> pb::ModelProto {
    let mut proto = graph.proto.clone();
    let g = proto.graph.as_mut().expect("a gradient graph has a graph");
    let mut fused = pool::rewrite(g, &graph.pool_sites, kernels);
    if kernels == Kernels::WithUpatOps {
        fused |= relu::rewrite(g, &graph.relu_sites);
    }
    if convs == ConvGradients::AsConv {
        conv::rewrite(g, graph.forward_nodes);
    }
    prune_unused(g);
    pool::drop_unread_indices(g, graph.forward_nodes);
    if fused {
        proto.opset_import.push(pb::OperatorSetIdProto {
            domain: UPAT_DOMAIN.into(),
            version: 1,
        });
    }
    proto
}

/// The values of a float initializer stored in the model, if `name` is one.
fn float_initializer<'g>(
    g: &'g pb::GraphProto,
    name: &str,
) -> Option<(&'g pb::TensorProto, Vec<f32>)> {
    let t = g.initializer.iter().find(|t| t.name == name)?;
    if t.data_type != 1 || !t.external_data.is_empty() {
        return None;
    }
    let count = t
        .dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))?;
    let values: Vec<f32> = if t.float_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    (values.len() == count).then_some((t, values))
}

/// A name not yet used in `g`, from `hint`.
fn fresh_name(g: &pb::GraphProto, hint: &str) -> String {
    let taken = |name: &str| {
        g.initializer.iter().any(|t| t.name == name)
            || g.input.iter().any(|i| i.name == name)
            || g.node.iter().any(|n| n.output.iter().any(|o| o == name))
    };
    let mut name = hint.to_string();
    let mut k = 1;
    while taken(&name) {
        name = format!("{hint}_{k}");
        k += 1;
    }
    name
}

/// Whether a node of `g` has a subgraph (If, Loop, Scan), whose reads of
/// outer names are not listed as the node's inputs.
fn has_subgraphs(g: &pb::GraphProto) -> bool {
    g.node.iter().any(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    })
}

/// Removes the nodes none of whose outputs is read (by a node, a subgraph
/// or the graph's outputs), repeatedly: the portable nodes a rewrite left
/// behind. Nodes with subgraphs are kept whatever they output.
fn prune_unused(g: &mut pb::GraphProto) {
    if has_subgraphs(g) {
        // Names read inside subgraphs are not listed as inputs: keep all.
        return;
    }
    loop {
        let read: HashSet<&str> = g
            .output
            .iter()
            .map(|o| o.name.as_str())
            .chain(
                g.node
                    .iter()
                    .flat_map(|n| n.input.iter().map(String::as_str)),
            )
            .collect();
        let unused: HashSet<usize> = g
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.output.iter().any(|o| read.contains(o.as_str())))
            .map(|(i, _)| i)
            .collect();
        if unused.is_empty() {
            return;
        }
        let mut i = 0;
        g.node.retain(|_| {
            i += 1;
            !unused.contains(&(i - 1))
        });
    }
}
