//! Forward nodes of models declaring opsets 7–12, rewritten to the forms
//! of opset 13 and later, so the gradient graph (which declares opset 17)
//! keeps their meaning: attributes that became inputs (Squeeze, Unsqueeze
//! and ReduceSum `axes`, Split `split`, Slice bounds, Pad `pads`/`value`,
//! Clip `min`/`max`), Dropout's `ratio`, BatchNormalization's `spatial`,
//! Resize-10's missing `roi`, Upsample as the Resize it became, and
//! Softmax/LogSoftmax/Hardmax, which before opset 13 flatten the input to 2-D
//! at `axis` (default 1) instead of normalising along one axis.

use super::shapes::Shapes;
use crate::error::{Error, Result};
use crate::onnx::grad::emit::{attr_int, attr_string, float_tensor, int64_tensor};
use crate::onnx::pb;

/// Rewrites `graph` (of default-domain opset `opset`) in place.
pub fn to_opset_13(graph: &mut pb::GraphProto, opset: i64, shapes: &Shapes) -> Result<()> {
    if opset >= 13 {
        return Ok(());
    }
    let mut constants: Vec<pb::TensorProto> = Vec::new();
    let mut nodes = Vec::with_capacity(graph.node.len());
    for mut node in std::mem::take(&mut graph.node) {
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            nodes.push(node);
            continue;
        }
        let key = node_key(&node);
        let mut fresh = |suffix: &str, tensor: pb::TensorProto| -> String {
            let name = format!("{key}__upat_{suffix}");
            constants.push(pb::TensorProto {
                name: name.clone(),
                ..tensor
            });
            name
        };
        match node.op_type.as_str() {
            "Squeeze" | "Unsqueeze" | "ReduceSum" => {
                if let Some(axes) = take_ints(&mut node, "axes") {
                    let input = fresh("axes", ints(&axes));
                    set_input(&mut node, 1, input);
                }
            }
            "Split" => {
                if let Some(split) = take_ints(&mut node, "split") {
                    let input = fresh("split", ints(&split));
                    set_input(&mut node, 1, input);
                }
            }
            "Slice" if opset < 10 => {
                let starts = take_ints(&mut node, "starts").unwrap_or_default();
                let ends = take_ints(&mut node, "ends").unwrap_or_default();
                let axes = take_ints(&mut node, "axes");
                let starts = fresh("starts", ints(&starts));
                let ends = fresh("ends", ints(&ends));
                set_input(&mut node, 1, starts);
                set_input(&mut node, 2, ends);
                if let Some(axes) = axes {
                    let axes = fresh("axes", ints(&axes));
                    set_input(&mut node, 3, axes);
                }
            }
            "Pad" if opset < 11 => {
                let pads = take_ints(&mut node, "pads").unwrap_or_default();
                let value = take(&mut node, "value").map_or(0.0, |a| a.f);
                let pads = fresh("pads", ints(&pads));
                let value = fresh("value", float_tensor("", &[], &[value]));
                set_input(&mut node, 1, pads);
                set_input(&mut node, 2, value);
            }
            "Clip" if opset < 11 => {
                let min = take(&mut node, "min").map(|a| a.f);
                let max = take(&mut node, "max").map(|a| a.f);
                if let Some(min) = min {
                    let min = fresh("min", float_tensor("", &[], &[min]));
                    set_input(&mut node, 1, min);
                }
                if let Some(max) = max {
                    let max = fresh("max", float_tensor("", &[], &[max]));
                    set_input(&mut node, 2, max);
                }
            }
            "Dropout" => {
                take(&mut node, "ratio");
                take(&mut node, "is_test");
            }
            "BatchNormalization" => {
                for old in ["spatial", "is_test", "consumed_inputs"] {
                    take(&mut node, old);
                }
            }
            "Resize" if opset < 11 => {
                // Resize-10: (X, scales), asymmetric coordinates.
                let scales = node.input.get(1).cloned().unwrap_or_default();
                node.input.truncate(1);
                node.input.extend([String::new(), scales]);
                old_resize_attributes(&mut node);
            }
            "Upsample" => {
                let scales = match take(&mut node, "scales") {
                    Some(a) => fresh(
                        "scales",
                        float_tensor("", &[a.floats.len() as i64], &a.floats),
                    ),
                    None => node.input.get(1).cloned().unwrap_or_default(),
                };
                node.op_type = "Resize".into();
                node.input.truncate(1);
                node.input.extend([String::new(), scales]);
                old_resize_attributes(&mut node);
            }
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let rank = shapes
                    .get(&node.input[0])
                    .map(|s| s.rank() as i64)
                    .ok_or_else(|| unknown_rank(&node))?;
                let axis = take(&mut node, "axis").map_or(1, |a| a.i);
                let axis = if axis < 0 { axis + rank } else { axis };
                if axis == rank - 1 {
                    node.attribute.push(attr_int("axis", axis));
                } else {
                    // Flatten at `axis`, normalise the trailing block, restore.
                    let (x, y) = (node.input[0].clone(), node.output[0].clone());
                    let flat = format!("{key}__upat_flat");
                    let normalised = format!("{key}__upat_normalised");
                    let shape = format!("{key}__upat_shape");
                    nodes.push(plain("Flatten", &[&x], &flat, vec![attr_int("axis", axis)]));
                    nodes.push(plain(
                        &node.op_type,
                        &[&flat],
                        &normalised,
                        vec![attr_int("axis", 1)],
                    ));
                    nodes.push(plain("Shape", &[&x], &shape, vec![]));
                    node = plain("Reshape", &[&normalised, &shape], &y, vec![]);
                }
            }
            _ => {}
        }
        nodes.push(node);
    }
    graph.node = nodes;
    graph.initializer.extend(constants);
    Ok(())
}

/// Upsample and Resize-10 map output to input coordinates as x_out/scale
/// (asymmetric), nearest by flooring.
fn old_resize_attributes(node: &mut pb::NodeProto) {
    node.attribute
        .retain(|a| a.name != "coordinate_transformation_mode" && a.name != "nearest_mode");
    node.attribute
        .push(attr_string("coordinate_transformation_mode", "asymmetric"));
    node.attribute.push(attr_string("nearest_mode", "floor"));
}

/// A name prefix for constants a node gains.
fn node_key(node: &pb::NodeProto) -> String {
    node.output
        .first()
        .cloned()
        .unwrap_or_else(|| node.name.clone())
}

fn take(node: &mut pb::NodeProto, name: &str) -> Option<pb::AttributeProto> {
    let i = node.attribute.iter().position(|a| a.name == name)?;
    Some(node.attribute.remove(i))
}

fn take_ints(node: &mut pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    take(node, name).map(|a| a.ints)
}

fn ints(values: &[i64]) -> pb::TensorProto {
    int64_tensor("", &[values.len() as i64], values)
}

/// Puts `name` at input position `i`, padding skipped optional inputs.
fn set_input(node: &mut pb::NodeProto, i: usize, name: String) {
    while node.input.len() <= i {
        node.input.push(String::new());
    }
    node.input[i] = name;
}

fn plain(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

fn unknown_rank(node: &pb::NodeProto) -> Error {
    Error::unplaced(format!(
        "the rank of `{}`, input of {} `{}`, could not be inferred",
        node.input[0], node.op_type, node.name
    ))
}
