//! ReLU backwards as one kernel: `ai.upat.ReluGrad(x, g)` in place of
//! `Where(Greater(x, 0), g, 0)`.

use super::UPAT_DOMAIN;
use crate::onnx::pb;

/// upat's ReLU backward: inputs the ReLU's input `x` and the gradient of
/// its output, of one shape; output `g` where x > 0, else 0.
pub const RELU_GRAD: &str = "ReluGrad";

/// A ReLU backward of the portable graph.
#[derive(Debug, Clone, PartialEq)]
pub struct ReluSite {
    /// The tensor the portable backward ends in: d(loss)/d(x).
    pub output: String,
    /// The ReLU's input.
    pub input: String,
    /// d(loss)/d(ReLU output), of x's shape.
    pub grad: String,
}

/// Replaces the portable backward of each of `sites` by `ReluGrad`;
/// returns whether it did.
pub(super) fn rewrite(g: &mut pb::GraphProto, sites: &[ReluSite]) -> bool {
    let mut fused_any = false;
    for site in sites {
        let Some(at) = g.node.iter().position(|n| n.output.contains(&site.output)) else {
            continue;
        };
        g.node[at] = pb::NodeProto {
            op_type: RELU_GRAD.into(),
            domain: UPAT_DOMAIN.into(),
            name: format!("{}/relu_grad", site.output),
            input: vec![site.input.clone(), site.grad.clone()],
            output: vec![site.output.clone()],
            ..Default::default()
        };
        fused_any = true;
    }
    fused_any
}
