//! `If` nodes whose condition does not depend on the image's values (only
//! on shapes and constants, as exporters emit for shape checks) are
//! replaced by the branch they always take, so the rules see plain ops. An
//! `If` whose condition depends on pixel values stays, and is named as the
//! op without a rule.

use super::shapes::Shapes;
use crate::error::Result;
use crate::onnx::pb;
use std::collections::HashSet;

/// Folds every foldable `If` of the main graph (repeatedly, for nested
/// ones); returns whether anything changed.
pub fn constant_ifs(
    proto: &mut pb::ModelProto,
    input: &str,
    image_shape: [usize; 3],
    fixed_batch: Option<usize>,
) -> Result<bool> {
    let mut changed = false;
    loop {
        let graph = proto.graph.as_ref().expect("a graph");
        let dependent = value_dependent(graph, input);
        let conditions: Vec<String> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "If" && n.domain.is_empty())
            .filter_map(|n| n.input.first())
            .filter(|c| !dependent.contains(c.as_str()))
            .cloned()
            .collect();
        if conditions.is_empty() {
            return Ok(changed);
        }
        let mut known = Shapes::default();
        known.evaluate_ints(proto, &conditions, image_shape, fixed_batch)?;
        let graph = proto.graph.as_mut().expect("a graph");
        let mut folded = false;
        let mut nodes = Vec::with_capacity(graph.node.len());
        for node in std::mem::take(&mut graph.node) {
            let taken = (node.op_type == "If")
                .then(|| node.input.first().and_then(|c| known.int_value(c)))
                .flatten()
                .and_then(|v| v.first().copied())
                .and_then(|v| branch(&node, v != 0));
            match taken {
                Some(body) => {
                    folded = true;
                    graph.initializer.extend(body.initializer.iter().cloned());
                    nodes.extend(body.node.iter().cloned());
                    for (inner, outer) in body.output.iter().zip(&node.output) {
                        nodes.push(pb::NodeProto {
                            op_type: "Identity".into(),
                            input: vec![inner.name.clone()],
                            output: vec![outer.clone()],
                            ..Default::default()
                        });
                    }
                }
                None => nodes.push(node),
            }
        }
        graph.node = nodes;
        if !folded {
            return Ok(changed);
        }
        changed = true;
    }
}

/// The subgraph an `If` runs when its condition is `condition`.
fn branch(node: &pb::NodeProto, condition: bool) -> Option<&pb::GraphProto> {
    let name = if condition {
        "then_branch"
    } else {
        "else_branch"
    };
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.g.as_ref())
}

/// Tensors whose values depend on the image's values: everything
/// downstream of the input, except through Shape and Size, which read only
/// its shape. Nodes are visited until nothing changes (no order assumed).
fn value_dependent<'a>(graph: &'a pb::GraphProto, input: &'a str) -> HashSet<&'a str> {
    let mut dependent: HashSet<&str> = HashSet::from([input]);
    loop {
        let before = dependent.len();
        for node in &graph.node {
            if node.op_type == "Shape" || node.op_type == "Size" {
                continue;
            }
            let reads = node.input.iter().any(|i| dependent.contains(i.as_str()))
                || reads_inside(node, &dependent);
            if reads {
                dependent.extend(node.output.iter().map(String::as_str));
            }
        }
        if dependent.len() == before {
            return dependent;
        }
    }
}

/// Whether a subgraph of `node` reads a dependent outer tensor.
fn reads_inside(node: &pb::NodeProto, dependent: &HashSet<&str>) -> bool {
    node.attribute.iter().any(|a| {
        a.g.iter().chain(&a.graphs).any(|g| {
            g.node.iter().any(|n| {
                n.input.iter().any(|i| dependent.contains(i.as_str())) || reads_inside(n, dependent)
            })
        })
    })
}
