//! The gradient rules, one function per ONNX op, looked up by op type.
//!
//! A rule receives the gradients of the node's outputs (`None` for outputs
//! nothing downstream uses) and returns one gradient per node input (`None`
//! where the input is not wanted). Rules may use the static shapes of
//! [`Shapes`] and the values of constant inputs.

mod activation;
mod conv;
mod elementwise;
mod index;
mod linalg;
mod norm;
mod pool;
mod quant;
mod reduce;
mod resize;
mod shape;

use super::emit::Emitter;
use super::shapes::{Shapes, TensorShape};
use crate::error::{Error, Result};
use crate::onnx::pb;
use std::collections::HashMap;

/// Which inputs of an op can carry a gradient.
#[derive(Debug, Clone, Copy)]
pub enum DiffInputs {
    All,
    Only(&'static [usize]),
}

type Backward = fn(&mut Ctx, &[Option<String>]) -> Result<Vec<Option<String>>>;

/// A gradient rule.
pub struct Rule {
    pub inputs: DiffInputs,
    pub backward: Backward,
}

const fn rule(inputs: DiffInputs, backward: Backward) -> Rule {
    Rule { inputs, backward }
}

const FIRST: DiffInputs = DiffInputs::Only(&[0]);

/// Every rule: the ops it differentiates, which inputs, and the restrictions
/// it checks (listed in docs/op-coverage.md, which a test keeps current).
pub const RULES: &[RuleEntry] = &[
    entry(&["Conv"], FIRST, conv::conv, "auto_pad VALID, NOTSET, SAME_UPPER or SAME_LOWER; any groups, strides, dilations, pads"),
    entry(&["ConvTranspose"], FIRST, conv::conv_transpose, "explicit pads (no auto_pad, no output_shape)"),
    entry(&["MaxPool"], FIRST, pool::max_pool, "row-major storage_order; overlapping, padded, ceil_mode and tied windows"),
    entry(&["AveragePool"], FIRST, pool::average_pool, "no dilations; both count_include_pad modes"),
    entry(&["GlobalAveragePool"], FIRST, pool::global_average_pool, ""),
    entry(&["GlobalMaxPool"], FIRST, pool::global_max_pool, ""),
    entry(&["BatchNormalization"], FIRST, norm::batch_normalization, "inference mode (training_mode = 0)"),
    entry(&["LayerNormalization"], FIRST, norm::layer_normalization, "not over the batch axis"),
    entry(&["Softmax"], FIRST, norm::softmax, "opset 13+ semantics (one axis)"),
    entry(&["LogSoftmax"], FIRST, norm::log_softmax, "opset 13+ semantics (one axis)"),
    entry(&["Relu"], FIRST, activation::relu, ""),
    entry(&["LeakyRelu"], FIRST, activation::leaky_relu, ""),
    entry(&["PRelu"], FIRST, activation::prelu, ""),
    entry(&["Sigmoid"], FIRST, activation::sigmoid, ""),
    entry(&["Tanh"], FIRST, activation::tanh, ""),
    entry(&["Softplus"], FIRST, activation::softplus, ""),
    entry(&["Elu"], FIRST, activation::elu, ""),
    entry(&["Erf"], FIRST, activation::erf, ""),
    entry(&["Gelu"], FIRST, activation::gelu, ""),
    entry(&["HardSigmoid"], FIRST, activation::hard_sigmoid, ""),
    entry(&["HardSwish"], FIRST, activation::hard_swish, ""),
    entry(&["Clip"], FIRST, activation::clip, "bounds as inputs or attributes"),
    entry(&["Exp"], FIRST, activation::exp, ""),
    entry(&["Log"], FIRST, activation::log, ""),
    entry(&["Abs"], FIRST, activation::abs, ""),
    entry(&["Reciprocal"], FIRST, activation::reciprocal, ""),
    entry(&["Softsign"], FIRST, activation::softsign, ""),
    entry(&["Selu"], FIRST, activation::selu, ""),
    entry(&["Celu"], FIRST, activation::celu, ""),
    entry(&["Mish"], FIRST, activation::mish, ""),
    entry(&["ThresholdedRelu"], FIRST, activation::thresholded_relu, ""),
    entry(&["Gemm"], DiffInputs::Only(&[0, 1, 2]), linalg::gemm, "differentiated in A, B and C"),
    entry(&["MatMul"], DiffInputs::All, linalg::matmul, "no 1-D operand"),
    entry(&["Add"], DiffInputs::All, elementwise::add, ""),
    entry(&["Sub"], DiffInputs::All, elementwise::sub, ""),
    entry(&["Mul"], DiffInputs::All, elementwise::mul, ""),
    entry(&["Div"], DiffInputs::All, elementwise::div, ""),
    entry(&["Neg"], FIRST, elementwise::neg, ""),
    entry(&["Pow"], FIRST, elementwise::pow, "exponent independent of the input"),
    entry(&["Sqrt"], FIRST, elementwise::sqrt, ""),
    entry(&["Where"], DiffInputs::Only(&[1, 2]), elementwise::where_, "the condition gets no gradient"),
    entry(&["Sum"], DiffInputs::All, elementwise::sum, ""),
    entry(&["Mean"], DiffInputs::All, elementwise::mean, ""),
    entry(&["Max", "Min"], DiffInputs::All, elementwise::extremum, "ties share the gradient evenly"),
    entry(&["ReduceMean"], FIRST, reduce::reduce_mean, ""),
    entry(&["ReduceSum"], FIRST, reduce::reduce_sum, ""),
    entry(&["ReduceL2"], FIRST, reduce::reduce_l2, "0 where the norm is 0"),
    entry(&["ReduceL1"], FIRST, reduce::reduce_l1, ""),
    entry(&["ReduceSumSquare"], FIRST, reduce::reduce_sum_square, ""),
    entry(&["ReduceLogSumExp"], FIRST, reduce::reduce_log_sum_exp, ""),
    entry(&["ReduceProd"], FIRST, reduce::reduce_prod, "defined where no factor is 0"),
    entry(&["ReduceMax", "ReduceMin"], FIRST, reduce::reduce_extremum, "ties share the gradient evenly (as amax/amin)"),
    entry(&["GroupNormalization"], FIRST, norm::group_normalization, "scale per group (opset 18) or per channel (21); not over the batch axis"),
    entry(&["LpNormalization"], FIRST, norm::lp_normalization, "p = 1 or 2"),
    entry(&["Einsum"], DiffInputs::All, linalg::einsum, "no ellipsis, no letter repeated within an operand"),
    entry(&["QuantizeLinear"], FIRST, quant::quantize_linear, "straight-through estimator (BPDA), zero outside the quantized range for a per-tensor scale: approximate, flagged"),
    entry(&["DequantizeLinear"], FIRST, shape::identity, "straight-through estimator (BPDA): approximate, flagged"),
    entry(&["InstanceNormalization"], FIRST, norm::instance_normalization, "spatial axes present"),
    entry(&["GatherElements", "GatherND", "Tile"], FIRST, index::through_positions, "any indices or repeats"),
    entry(&["ScatterElements", "ScatterND"], DiffInputs::Only(&[0, 2]), index::scatter, "reduction none or add; data and updates differentiated"),
    entry(&["DepthToSpace"], FIRST, index::depth_to_space, "NCHW, DCR and CRD"),
    entry(&["SpaceToDepth"], FIRST, index::space_to_depth, "NCHW"),
    entry(&["CumSum"], FIRST, index::cum_sum, "exclusive and reverse"),
    entry(&["Flatten", "Reshape", "Squeeze", "Unsqueeze"], FIRST, shape::reshape_back, ""),
    entry(&["Identity", "Dropout", "Cast"], FIRST, shape::identity, "Dropout in inference; Cast between float types"),
    entry(&["Transpose"], FIRST, shape::transpose, ""),
    entry(&["Concat"], DiffInputs::All, shape::concat, "not along the batch axis"),
    entry(&["Split"], FIRST, shape::split, ""),
    entry(&["Slice"], FIRST, shape::slice, "any starts, ends, axes (negative too) and steps"),
    entry(&["Pad"], FIRST, shape::pad, "non-negative pads"),
    entry(&["Gather"], FIRST, shape::gather, "any indices, constant or computed"),
    entry(&["Expand"], FIRST, shape::expand, ""),
    entry(&["Resize"], FIRST, resize::resize, "nearest, linear and cubic, up and down, any scales or sizes; every coordinate transformation (tf_crop_and_resize given sizes); antialias (not with align_corners or tf_crop_and_resize); not the batch axis"),
];

/// Ops differentiated by the straight-through estimator (the identity, as
/// BPDA does; Athalye et al. 2018): their gradients are approximate, which
/// the audit flags. A QuantizeLinear's integer output carries the gradient
/// to the DequantizeLinear that reads it.
pub const STRAIGHT_THROUGH: &[&str] = &["QuantizeLinear", "DequantizeLinear"];

/// One line of [`RULES`].
pub struct RuleEntry {
    pub ops: &'static [&'static str],
    pub inputs: DiffInputs,
    pub backward: Backward,
    /// What the rule handles, where it is not everything the op allows.
    pub restrictions: &'static str,
}

const fn entry(
    ops: &'static [&'static str],
    inputs: DiffInputs,
    backward: Backward,
    restrictions: &'static str,
) -> RuleEntry {
    RuleEntry {
        ops,
        inputs,
        backward,
        restrictions,
    }
}

/// The rule for `op_type`, if there is one.
pub fn lookup(op_type: &str) -> Option<Rule> {
    RULES
        .iter()
        .find(|e| e.ops.contains(&op_type))
        .map(|e| rule(e.inputs, e.backward))
}

/// Adjusts a forward node before differentiation (MaxPool gains its Indices output).
pub fn prepare_forward(node: &mut pb::NodeProto, emit: &mut Emitter) {
    if node.op_type == "MaxPool" && node.output.get(1).is_none_or(|o| o.is_empty()) {
        node.output.truncate(1);
        node.output.push(emit.fresh("maxpool_indices"));
    }
}

/// Values of initializers and Constant nodes, for rules that need them
/// (Slice bounds, Pad amounts, Gather indices, Resize scales).
pub struct Constants(HashMap<String, pb::TensorProto>);

impl Constants {
    pub fn collect(graph: &pb::GraphProto) -> Self {
        // Integer tensors (indices, bounds) and small float ones (Resize
        // scales); never weights.
        // Small tensors of other types too: Resize scales, quantization
        // zero points (whose type gives the quantized range).
        let is_int = |t: &pb::TensorProto| {
            t.data_type == 6
                || t.data_type == 7
                || (matches!(t.data_type, 1..=5) && t.dims.iter().product::<i64>() <= 16)
        };
        let mut map: HashMap<String, pb::TensorProto> = graph
            .initializer
            .iter()
            .filter(|t| is_int(t))
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
            if let (Some(out), Some(t)) = (
                node.output.first(),
                node.attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.clone()),
            ) {
                if is_int(&t) {
                    map.insert(out.clone(), t);
                }
            }
        }
        Constants(map)
    }

    /// The ONNX element type of a collected constant.
    pub fn data_type(&self, name: &str) -> Option<i32> {
        self.0.get(name).map(|t| t.data_type)
    }

    /// Values of a small constant float tensor.
    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        let t = self.0.get(name).filter(|t| t.data_type == 1)?;
        Some(if t.float_data.is_empty() {
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        } else {
            t.float_data.clone()
        })
    }

    /// Integer values of a constant tensor (int64 or int32).
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.0.get(name)?;
        match t.data_type {
            7 if !t.int64_data.is_empty() => Some(t.int64_data.clone()),
            7 => Some(
                t.raw_data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            6 if !t.int32_data.is_empty() => {
                Some(t.int32_data.iter().map(|&v| i64::from(v)).collect())
            }
            6 => Some(
                t.raw_data
                    .chunks_exact(4)
                    .map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap())))
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// What a rule works with.
pub struct Ctx<'a> {
    pub emit: &'a mut Emitter,
    pub shapes: &'a Shapes,
    pub constants: &'a Constants,
    pub node: &'a pb::NodeProto,
    /// Per node input: is its gradient needed?
    pub wanted: &'a [bool],
}

/// A rule's complaint; the caller places it in the model and names the node
/// ([`Error::with_path`]).
pub fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::unplaced(message))
}

impl<'a> Ctx<'a> {
    pub fn input(&self, i: usize) -> &'a str {
        self.node.input.get(i).map_or("", String::as_str)
    }

    pub fn output(&self, i: usize) -> &'a str {
        self.node.output.get(i).map_or("", String::as_str)
    }

    pub fn wants(&self, i: usize) -> bool {
        self.wanted.get(i).copied().unwrap_or(false)
    }

    /// The static shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<&'a TensorShape> {
        self.shapes.get(name).map_or_else(
            || fail(format!("the shape of `{name}` could not be inferred")),
            Ok,
        )
    }

    fn attribute(&self, name: &str) -> Option<&'a pb::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub fn int_attr(&self, name: &str, default: i64) -> i64 {
        self.attribute(name).map_or(default, |a| a.i)
    }

    pub fn ints_attr(&self, name: &str) -> Option<Vec<i64>> {
        self.attribute(name).map(|a| a.ints.clone())
    }

    pub fn float_attr(&self, name: &str, default: f32) -> f32 {
        self.attribute(name).map_or(default, |a| a.f)
    }

    pub fn string_attr(&self, name: &str, default: &str) -> String {
        self.attribute(name).map_or(default.to_string(), |a| {
            String::from_utf8_lossy(&a.s).into_owned()
        })
    }

    /// The one output gradient of a single-output op.
    pub fn grad(&self, grads: &[Option<String>]) -> Result<String> {
        grads
            .first()
            .cloned()
            .flatten()
            .map_or_else(|| fail("no gradient reached the output"), Ok)
    }

    /// Integer values of constant input `i`.
    pub fn const_ints(&self, i: usize) -> Result<Vec<i64>> {
        let name = self.input(i);
        self.constants
            .ints(name)
            .or_else(|| self.shapes.int_value(name).map(<[i64]>::to_vec))
            .map_or_else(
                || {
                    fail(format!(
                        "input `{name}` must be a constant for this op to be differentiated"
                    ))
                },
                Ok,
            )
    }

    /// Sums `g` (shaped like the broadcast output) down to input `i`'s shape.
    pub fn unbroadcast(&mut self, g: &str, i: usize) -> Result<String> {
        let input = self.input(i).to_string();
        let out_shape = self.shape(self.output(0))?.clone();
        let in_shape = self.shape(&input)?.clone();
        if in_shape == out_shape {
            return Ok(g.to_string());
        }
        let lead = out_shape.rank() - in_shape.rank();
        let axes: Vec<i64> = (0..out_shape.rank())
            .filter(|&a| a < lead || (in_shape.dims[a - lead] == 1 && out_shape.dims[a] != 1))
            .map(|a| a as i64)
            .collect();
        let summed = if axes.is_empty() {
            g.to_string()
        } else {
            self.emit.reduce_sum(g, &axes, true)
        };
        Ok(self.emit.reshape_like(&summed, &input))
    }
}

/// `Some(g)` for wanted inputs, `None` otherwise.
pub fn only_first(g: String) -> Vec<Option<String>> {
    vec![Some(g)]
}
