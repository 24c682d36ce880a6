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
use tract_onnx::tract_hir::infer::{Factoid, InferenceModelExt};
use tract_onnx::tract_core::internal::DimLike;

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

/// Shapes by tensor name.
#[derive(Debug, Clone, Default)]
pub struct Shapes(HashMap<String, TensorShape>);

impl Shapes {
    pub fn get(&self, name: &str) -> Option<&TensorShape> {
        self.0.get(name)
    }

    /// Analyses `proto` (one image input) for images of `image_shape`.
    pub fn infer(proto: &pb::ModelProto, image_shape: [usize; 3]) -> Result<Shapes> {
        let at2 = concrete_shapes(proto, 2, image_shape)?;
        let at3 = concrete_shapes(proto, 3, image_shape)?;
        let mut shapes = HashMap::new();
        for (name, (dims, is_float)) in at2 {
            let Some((other, _)) = at3.get(&name) else { continue };
            if other.len() != dims.len() {
                continue;
            }
            let dynamic = dims.iter().zip(other).map(|(a, b)| a != b).collect();
            shapes.insert(name, TensorShape { dims, dynamic, is_float });
        }
        Ok(Shapes(shapes))
    }
}

fn analysis_error(e: impl std::fmt::Display) -> Error {
    Error::Backend { backend: "tract", message: format!("shape analysis for the gradient graph failed: {e:#}") }
}

type ShapeAndFloat = (Vec<usize>, bool);

fn concrete_shapes(proto: &pb::ModelProto, batch: usize, [c, h, w]: [usize; 3]) -> Result<HashMap<String, ShapeAndFloat>> {
    let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
    let parsed = onnx.parse(proto, None).map_err(analysis_error)?;
    let mut model = parsed.model;
    model.set_input_fact(0, f32::fact([batch, c, h, w]).into()).map_err(analysis_error)?;
    model.analyse(false).map_err(analysis_error)?;
    let mut shapes = HashMap::new();
    for (name, outlet) in parsed.outlets_by_name {
        let Ok(fact) = model.outlet_fact(outlet) else { continue };
        let Some(dims) = fact.shape.concretize() else { continue };
        let dims: Option<Vec<usize>> = dims.iter().map(|d| d.to_usize().ok()).collect();
        let is_float = fact.datum_type.concretize().is_some_and(|t| t.is_float());
        if let Some(dims) = dims {
            shapes.insert(name, (dims, is_float));
        }
    }
    Ok(shapes)
}
