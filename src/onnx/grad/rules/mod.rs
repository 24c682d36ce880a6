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
mod reduce;
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

/// The rule for `op_type`, if there is one.
pub fn lookup(op_type: &str) -> Option<Rule> {
    use DiffInputs::{All, Only};
    Some(match op_type {
        "Conv" => rule(FIRST, conv::conv),
        "ConvTranspose" => rule(FIRST, conv::conv_transpose),
        "MaxPool" => rule(FIRST, pool::max_pool),
        "AveragePool" => rule(FIRST, pool::average_pool),
        "GlobalAveragePool" => rule(FIRST, pool::global_average_pool),
        "GlobalMaxPool" => rule(FIRST, pool::global_max_pool),
        "BatchNormalization" => rule(FIRST, norm::batch_normalization),
        "LayerNormalization" => rule(FIRST, norm::layer_normalization),
        "Softmax" => rule(FIRST, norm::softmax),
        "LogSoftmax" => rule(FIRST, norm::log_softmax),
        "Relu" => rule(FIRST, activation::relu),
        "LeakyRelu" => rule(FIRST, activation::leaky_relu),
        "PRelu" => rule(FIRST, activation::prelu),
        "Sigmoid" => rule(FIRST, activation::sigmoid),
        "Tanh" => rule(FIRST, activation::tanh),
        "Softplus" => rule(FIRST, activation::softplus),
        "Elu" => rule(FIRST, activation::elu),
        "Erf" => rule(FIRST, activation::erf),
        "Gelu" => rule(FIRST, activation::gelu),
        "HardSigmoid" => rule(FIRST, activation::hard_sigmoid),
        "HardSwish" => rule(FIRST, activation::hard_swish),
        "Clip" => rule(FIRST, activation::clip),
        "Exp" => rule(FIRST, activation::exp),
        "Log" => rule(FIRST, activation::log),
        "Abs" => rule(FIRST, activation::abs),
        "Reciprocal" => rule(FIRST, activation::reciprocal),
        "Softsign" => rule(FIRST, activation::softsign),
        "Selu" => rule(FIRST, activation::selu),
        "Celu" => rule(FIRST, activation::celu),
        "Mish" => rule(FIRST, activation::mish),
        "ThresholdedRelu" => rule(FIRST, activation::thresholded_relu),
        "Gemm" => rule(Only(&[0, 1, 2]), linalg::gemm),
        "MatMul" => rule(All, linalg::matmul),
        "Add" => rule(All, elementwise::add),
        "Sub" => rule(All, elementwise::sub),
        "Mul" => rule(All, elementwise::mul),
        "Div" => rule(All, elementwise::div),
        "Neg" => rule(FIRST, elementwise::neg),
        "Pow" => rule(FIRST, elementwise::pow),
        "Sqrt" => rule(FIRST, elementwise::sqrt),
        "Where" => rule(Only(&[1, 2]), elementwise::where_),
        "Sum" => rule(All, elementwise::sum),
        "Mean" => rule(All, elementwise::mean),
        "Max" | "Min" => rule(All, elementwise::extremum),
        "ReduceMean" => rule(FIRST, reduce::reduce_mean),
        "ReduceSum" => rule(FIRST, reduce::reduce_sum),
        "ReduceL2" => rule(FIRST, reduce::reduce_l2),
        "ReduceL1" => rule(FIRST, reduce::reduce_l1),
        "ReduceSumSquare" => rule(FIRST, reduce::reduce_sum_square),
        "ReduceLogSumExp" => rule(FIRST, reduce::reduce_log_sum_exp),
        "ReduceProd" => rule(FIRST, reduce::reduce_prod),
        "ReduceMax" | "ReduceMin" => rule(FIRST, reduce::reduce_extremum),
        "InstanceNormalization" => rule(FIRST, norm::instance_normalization),
        "GatherElements" | "GatherND" | "Tile" => rule(FIRST, index::through_positions),
        "DepthToSpace" => rule(FIRST, index::depth_to_space),
        "SpaceToDepth" => rule(FIRST, index::space_to_depth),
        "CumSum" => rule(FIRST, index::cum_sum),
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => rule(FIRST, shape::reshape_back),
        "Identity" | "Dropout" | "Cast" => rule(FIRST, shape::identity),
        "Transpose" => rule(FIRST, shape::transpose),
        "Concat" => rule(All, shape::concat),
        "Split" => rule(FIRST, shape::split),
        "Slice" => rule(FIRST, shape::slice),
        "Pad" => rule(FIRST, shape::pad),
        "Gather" => rule(FIRST, shape::gather),
        "Expand" => rule(FIRST, shape::expand),
        "Resize" => rule(FIRST, shape::resize),
        _ => return None,
    })
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
        // Only integer tensors: rules read indices and bounds, never weights.
        let is_int = |t: &pb::TensorProto| t.data_type == 6 || t.data_type == 7;
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

/// A rule's complaint, turned into a model error naming the node by the caller.
pub fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::Model {
        path: Default::default(),
        message: message.into(),
    })
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
