//! A stride-1 convolution's input gradient as a `Conv` instead of a
//! `ConvTranspose`.
//!
//! For stride 1, ConvTranspose(g, W) with pads (p_b, p_e) computes
//! dx[o] = Σ_k W[k]·g[o + p_b − k·d]; with k' = K−1−k that is a Conv of `g`
//! with the spatially flipped kernel and pads ((K−1)·d − p_b, (K−1)·d − p_e),
//! whose weights swap ConvTranspose's channel axes within each group:
//! ConvTranspose weights are [C_in, C_out/G, k…], Conv's [C_out, C_in/G, k…].

use super::{float_initializer, fresh_name};
use crate::onnx::grad::emit::{attr_int, attr_ints};
use crate::onnx::pb;
use std::collections::HashMap;

/// Rewrites every ConvTranspose that has a Conv form (stride 1, no bias,
/// no output padding or output shape, weights stored in the model, pads
/// within the dilated kernel) among the nodes from `first` on.
pub(super) fn rewrite(g: &mut pb::GraphProto, first: usize) {
    // One flipped copy per weight, however many nodes read it.
    let mut flipped: HashMap<String, String> = HashMap::new();
    for at in first..g.node.len() {
        let node = &g.node[at];
        if node.op_type != "ConvTranspose" || !node.domain.is_empty() || node.input.len() != 2 {
            continue;
        }
        let Some(geometry) = Geometry::of(node) else {
            continue;
        };
        let weight = node.input[1].clone();
        let Some((tensor, values)) = float_initializer(g, &weight) else {
            continue;
        };
        let Some(conv_geometry) = geometry.as_conv(&tensor.dims) else {
            continue;
        };
        let conv_weight = match flipped.get(&weight) {
            Some(name) => name.clone(),
            None => {
                let (dims, values) = flip(&tensor.dims, &values, geometry.group);
                let name = fresh_name(g, &format!("{weight}/flipped"));
                g.initializer
                    .push(crate::onnx::grad::emit::float_tensor(&name, &dims, &values));
                flipped.insert(weight, name.clone());
                name
            }
        };
        let node = &mut g.node[at];
        node.op_type = "Conv".into();
        node.name = format!("{}/as_conv", node.name);
        node.input[1] = conv_weight;
        node.attribute = conv_geometry;
    }
}

/// The attributes of a ConvTranspose that matter here.
struct Geometry {
    group: i64,
    dilations: Option<Vec<i64>>,
    pads: Option<Vec<i64>>,
}

impl Geometry {
    /// `None` unless the node's strides are 1 and it has no attribute that
    /// the Conv form does not carry over.
    fn of(node: &pb::NodeProto) -> Option<Self> {
        let mut geometry = Geometry {
            group: 1,
            dilations: None,
            pads: None,
        };
        for a in &node.attribute {
            match a.name.as_str() {
                "group" => geometry.group = a.i,
                "dilations" => geometry.dilations = Some(a.ints.clone()),
                "pads" => geometry.pads = Some(a.ints.clone()),
                "strides" if a.ints.iter().all(|&s| s == 1) => {}
                "output_padding" if a.ints.iter().all(|&p| p == 0) => {}
                "kernel_shape" => {}
                "auto_pad" if a.s.is_empty() || a.s == b"NOTSET" => {}
                _ => return None,
            }
        }
        (geometry.group >= 1).then_some(geometry)
    }

    /// The Conv attributes for ConvTranspose weights of shape `dims`, if
    /// every padding fits inside the dilated kernel.
    fn as_conv(&self, dims: &[i64]) -> Option<Vec<pb::AttributeProto>> {
        if dims.len() < 3 || dims.iter().any(|&d| d <= 0) || dims[0] % self.group != 0 {
            return None;
        }
        let kernel = &dims[2..];
        let spatial = kernel.len();
        let dilations = self.dilations.clone().unwrap_or(vec![1; spatial]);
        let pads = self.pads.clone().unwrap_or(vec![0; 2 * spatial]);
        if dilations.len() != spatial || pads.len() != 2 * spatial {
            return None;
        }
        let reach: Vec<i64> = (0..spatial)
            .map(|a| (kernel[a] - 1) * dilations[a])
            .collect();
        let conv_pads: Vec<i64> = pads
            .iter()
            .enumerate()
            .map(|(i, &p)| reach[i % spatial] - p)
            .collect();
        if conv_pads.iter().any(|&p| p < 0) {
            return None;
        }
        Some(vec![
            attr_ints("kernel_shape", kernel),
            attr_ints("strides", &vec![1; spatial]),
            attr_ints("dilations", &dilations),
            attr_ints("pads", &conv_pads),
            attr_int("group", self.group),
        ])
    }
}

/// ConvTranspose weights [C_in, C_out/G, k…] as the Conv weights
/// [C_out, C_in/G, k…] of the same map read backwards: channel axes
/// swapped within each group, the kernel flipped on every spatial axis
/// (which reverses its flat, row-major order).
fn flip(dims: &[i64], values: &[f32], group: i64) -> (Vec<i64>, Vec<f32>) {
    let (c_in, c_out_per_group) = (dims[0] as usize, dims[1] as usize);
    let group = group as usize;
    let c_in_per_group = c_in / group;
    let window: usize = dims[2..].iter().map(|&d| d as usize).product();
    let mut out = vec![0.0f32; values.len()];
    for gi in 0..group {
        for i in 0..c_in_per_group {
            for o in 0..c_out_per_group {
                let from = ((gi * c_in_per_group + i) * c_out_per_group + o) * window;
                let to = ((gi * c_out_per_group + o) * c_in_per_group + i) * window;
                for s in 0..window {
                    out[to + s] = values[from + window - 1 - s];
                }
            }
        }
    }
    let mut conv_dims = dims.to_vec();
    conv_dims[0] = (c_out_per_group * group) as i64;
    conv_dims[1] = c_in_per_group as i64;
    (conv_dims, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipping_swaps_channels_within_groups_and_reverses_each_window() {
        // Two groups, C_in 2 (1 per group), C_out/G 2, 1×2 kernels.
        let dims = [2, 2, 1, 2];
        let values: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let (conv_dims, out) = flip(&dims, &values, 2);
        assert_eq!(conv_dims, [4, 1, 1, 2]);
        // Conv out channel (g, o) reads ConvTranspose (in g, out o), reversed.
        assert_eq!(out, [1.0, 0.0, 3.0, 2.0, 5.0, 4.0, 7.0, 6.0]);
    }

    #[test]
    fn pads_beyond_the_dilated_kernel_keep_the_conv_transpose() {
        let geometry = Geometry {
            group: 1,
            dilations: Some(vec![2, 1]),
            pads: Some(vec![2, 0, 2, 3]),
        };
        let dims = [4, 4, 3, 3];
        assert!(
            geometry.as_conv(&dims).is_none(),
            "3 > (3-1)·1 on the second axis"
        );
        let geometry = Geometry {
            pads: Some(vec![1, 1, 4, 2]),
            ..geometry
        };
        let attrs = geometry.as_conv(&dims).unwrap();
        let pads = attrs.iter().find(|a| a.name == "pads").unwrap();
        assert_eq!(pads.ints, [3, 1, 0, 0]);
    }
}
