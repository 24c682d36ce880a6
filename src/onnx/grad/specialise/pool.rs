//! MaxPool backwards: one fused kernel (`ai.upat.MaxPoolGrad`, registered
//! by upat's ONNX Runtime sessions on the CPU), or `MaxUnpool` where the
//! windows do not overlap.

use super::{has_subgraphs, Kernels, UPAT_DOMAIN};
use crate::onnx::grad::emit::attr_ints;
use crate::onnx::pb;
use std::collections::HashSet;

/// The fused MaxPool backward: inputs the pool's input `x` and the
/// gradient of its output; output the gradient of `x`.
pub const MAX_POOL_GRAD: &str = "MaxPoolGrad";

/// A MaxPool whose portable backward ONNX Runtime can run faster.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSite {
    /// The tensor the portable backward ends in: d(loss)/d(MaxPool input).
    pub output: String,
    /// d(loss)/d(MaxPool output).
    pub grad: String,
    /// The MaxPool's argmax indices.
    pub indices: String,
    /// The MaxPool's input.
    pub input: String,
    pub kernel: Vec<i64>,
    pub strides: Vec<i64>,
    /// Begin pads then end pads, as ONNX writes them.
    pub pads: Vec<i64>,
    pub dilations: Vec<i64>,
    /// Whether no two windows share a cell (strides ≥ kernel, no dilation,
    /// floor mode): then writing each gradient equals adding it.
    pub disjoint: bool,
}

/// Replaces the portable backward of each of `sites` by the fastest form
/// `kernels` allows; returns whether it used the fused kernel.
pub(super) fn rewrite(g: &mut pb::GraphProto, sites: &[PoolSite], kernels: Kernels) -> bool {
    let mut fused_any = false;
    for site in sites {
        let Some(at) = g.node.iter().position(|n| n.output.contains(&site.output)) else {
            continue;
        };
        let replacement = if kernels == Kernels::WithUpatOps && site.kernel.len() == 2 {
            fused_any = true;
            vec![fused(site)]
        } else if site.disjoint {
            unpool(site)
        } else {
            continue;
        };
        g.node.splice(at..=at, replacement);
    }
    fused_any
}

/// `ai.upat.MaxPoolGrad(x, g)`: argmax of each window in `x` (the first of
/// equal maxima, as ONNX Runtime's MaxPool picks), then its gradient added there.
fn fused(site: &PoolSite) -> pb::NodeProto {
    pb::NodeProto {
        op_type: MAX_POOL_GRAD.into(),
        domain: UPAT_DOMAIN.into(),
        name: format!("{}/max_pool_grad", site.output),
        input: vec![site.input.clone(), site.grad.clone()],
        output: vec![site.output.clone()],
        attribute: vec![
            attr_ints("kernel_shape", &site.kernel),
            attr_ints("strides", &site.strides),
            attr_ints("pads", &site.pads),
            attr_ints("dilations", &site.dilations),
        ],
        ..Default::default()
    }
}

/// `MaxUnpool(g, indices, Shape(x))`.
fn unpool(site: &PoolSite) -> Vec<pb::NodeProto> {
    let shape = format!("{}/input_shape", site.output);
    let shape_of = pb::NodeProto {
        op_type: "Shape".into(),
        name: format!("{}/shape", site.output),
        input: vec![site.input.clone()],
        output: vec![shape.clone()],
        ..Default::default()
    };
    let unpool = pb::NodeProto {
        op_type: "MaxUnpool".into(),
        name: format!("{}/maxunpool", site.output),
        input: vec![site.grad.clone(), site.indices.clone(), shape],
        output: vec![site.output.clone()],
        attribute: vec![
            attr_ints("kernel_shape", &site.kernel),
            attr_ints("strides", &site.strides),
            attr_ints("pads", &site.pads),
        ],
        ..Default::default()
    };
    vec![shape_of, unpool]
}

/// Drops the Indices output of the model's MaxPools where nothing reads it
/// any more: ONNX Runtime computes a MaxPool without indices on a fast
/// vectorised path, with them on a scalar one.
pub(super) fn drop_unread_indices(g: &mut pb::GraphProto, forward_nodes: usize) {
    if has_subgraphs(g) {
        // Subgraphs read outer names without listing them.
        return;
    }
    let read: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(g.output.iter().map(|o| o.name.clone()))
        .collect();
    for node in &mut g.node[..forward_nodes] {
        if node.op_type == "MaxPool" && node.output.len() == 2 && !read.contains(&node.output[1]) {
            node.output.truncate(1);
        }
    }
}
