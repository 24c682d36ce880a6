//! Static shapes of every tensor, from tract's shape analysis.
//!
//! The graph is analysed twice, with batch sizes 2 and 3 and the real image
//! size; a dimension that differs between the two scales with the batch
//! ("dynamic"), every other one is static. Rules use the batch-2 sizes to
//! decide broadcast axes and kernel arithmetic, and read dynamic sizes from
//! the running graph (`Shape`) rather than baking them in.

use crate::error::{Error, Result};
use crate::onnx::pb;
use std::collections::HashMap;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_hir::infer::{Factoid, InferenceModelExt};

/// The shape of a tensor: sizes at batch 2 and which dims follow the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorShape {
    pub dims: Vec<usize>,
    pub dynamic: Vec<bool>,
    /// Floating-point element type: the only kind of tensor gradients flow through.
    pub is_float: bool,
}

impl TensorShape {
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// True when no dimension depends on the batch size.
    pub fn is_static(&self) -> bool {
        !self.dynamic.iter().any(|&d| d)
    }
}

/// Shapes by tensor name, and the values of small integer tensors that the
/// analysis could compute and that do not depend on the batch size (pads,
/// slice bounds and indices that exporters build from shape arithmetic).
#[derive(Debug, Clone, Default)]
pub struct Shapes {
    shapes: HashMap<String, TensorShape>,
    int_values: HashMap<String, Vec<i64>>,
}

/// What one analysis yields per tensor: dims and float-ness.
type Analysed = (Vec<usize>, bool);

impl Shapes {
    pub fn get(&self, name: &str) -> Option<&TensorShape> {
        self.shapes.get(name)
    }

    /// The value of an integer tensor known before running the model.
    pub fn int_value(&self, name: &str) -> Option<&[i64]> {
        self.int_values.get(name).map(Vec::as_slice)
    }

    /// Analyses `proto` (one image input) for images of `image_shape`. A
    /// model exported with a fixed batch size is analysed at that size only.
    pub fn infer(
        proto: &pb::ModelProto,
        image_shape: [usize; 3],
        fixed_batch: Option<usize>,
    ) -> Result<Shapes> {
        let (b1, b2) = batch_sizes(fixed_batch);
        let at2 = concrete_shapes(proto, b1, image_shape)?;
        let at3 = if b2 == b1 {
            at2.clone()
        } else {
            concrete_shapes(proto, b2, image_shape)?
        };
        let mut shapes = HashMap::new();
        for (name, (dims, is_float)) in at2 {
            let Some((other, _)) = at3.get(&name) else {
                continue;
            };
            if other.len() != dims.len() {
                continue;
            }
            let dynamic = dims.iter().zip(other).map(|(a, b)| a != b).collect();
            shapes.insert(
                name,
                TensorShape {
                    dims,
                    dynamic,
                    is_float,
                },
            );
        }
        Ok(Shapes {
            shapes,
            int_values: HashMap::new(),
        })
    }

    /// Computes integer tensors (`names`) by running the graph up to them at
    /// batch sizes 2 and 3, and records those whose value does not change.
    pub fn evaluate_ints(
        &mut self,
        proto: &pb::ModelProto,
        names: &[String],
        image_shape: [usize; 3],
        fixed_batch: Option<usize>,
    ) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let (b1, b2) = batch_sizes(fixed_batch);
        let at2 = run_to(proto, names, b1, image_shape)?;
        let at3 = if b2 == b1 {
            at2.clone()
        } else {
            run_to(proto, names, b2, image_shape)?
        };
        for ((name, a), b) in names.iter().zip(at2).zip(at3) {
            if a == b {
                self.int_values.insert(name.clone(), a);
            }
        }
        Ok(())
    }
}

/// The two batch sizes the graph is analysed at.
fn batch_sizes(fixed_batch: Option<usize>) -> (usize, usize) {
    fixed_batch.map_or((2, 3), |b| (b, b))
}

fn analysis_error(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "tract",
        message: format!("shape analysis for the gradient graph failed: {e:#}"),
    }
}

fn concrete_shapes(
    proto: &pb::ModelProto,
    batch: usize,
    shape: [usize; 3],
) -> Result<HashMap<String, Analysed>> {
    crate::contain::contained("tract", "shape analysis for the gradient graph", || {
        concrete_shapes_uncontained(proto, batch, shape)
    })
}

fn concrete_shapes_uncontained(
    proto: &pb::ModelProto,
    batch: usize,
    [c, h, w]: [usize; 3],
) -> Result<HashMap<String, Analysed>> {
    let onnx = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true);
    let parsed = onnx.parse(proto, None).map_err(analysis_error)?;
    let mut model = parsed.model;
    model
        .set_input_fact(0, f32::fact([batch, c, h, w]).into())
        .map_err(analysis_error)?;
    model.analyse(false).map_err(analysis_error)?;
    let mut shapes = HashMap::new();
    for (name, outlet) in parsed.outlets_by_name {
        let Ok(fact) = model.outlet_fact(outlet) else {
            continue;
        };
        let Some(dims) = fact.shape.concretize() else {
            continue;
        };
        let dims: Option<Vec<usize>> = dims.iter().map(|d| d.to_usize().ok()).collect();
        let is_float = fact.datum_type.concretize().is_some_and(|t| t.is_float());
        if let Some(dims) = dims {
            shapes.insert(name, (dims, is_float));
        }
    }
    Ok(shapes)
}

/// Runs `proto` on zeros of batch `batch` with `names` as its outputs.
fn run_to(
    proto: &pb::ModelProto,
    names: &[String],
    batch: usize,
    shape: [usize; 3],
) -> Result<Vec<Vec<i64>>> {
    crate::contain::contained("tract", "shape analysis for the gradient graph", || {
        run_to_uncontained(proto, names, batch, shape)
    })
}

fn run_to_uncontained(
    proto: &pb::ModelProto,
    names: &[String],
    batch: usize,
    [c, h, w]: [usize; 3],
) -> Result<Vec<Vec<i64>>> {
    let mut truncated = proto.clone();
    let graph = truncated.graph.as_mut().expect("a graph");
    graph.output = names
        .iter()
        .map(|n| pb::ValueInfoProto {
            name: n.clone(),
            ..Default::default()
        })
        .collect();
    let onnx = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true);
    let outputs = onnx
        .model_for_proto_model(&truncated)
        .and_then(|m| m.with_input_fact(0, f32::fact([batch, c, h, w]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .and_then(|p| p.run(tvec!(Tensor::zero::<f32>(&[batch, c, h, w])?.into_tvalue())))
        .map_err(analysis_error)?;
    outputs
        .iter()
        .map(|t| {
            let t = t.cast_to::<i64>().map_err(analysis_error)?;
            Ok(t.to_plain_array_view::<i64>()
                .map_err(analysis_error)?
                .iter()
                .copied()
                .collect())
        })
        .collect()
}
