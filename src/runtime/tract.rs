//! The pure-Rust backend: tract, with the input fixed to concrete shapes so
//! that it can optimise the graph (one plan per batch size seen, usually two:
//! the full batch and the remainder).

use super::{Classifier, Device};
use crate::error::{Error, Result};
use crate::onnx::{pb, ClassifierGraph};
use std::collections::HashMap;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// A [`ClassifierGraph`] running on tract.
pub struct TractClassifier {
    proto: pb::ModelProto,
    image_shape: [usize; 3],
    fixed_batch: Option<usize>,
    plans: HashMap<usize, Arc<TypedRunnableModel>>,
}

fn tract_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend { backend: "tract", message: format!("{context}: {e:#}") }
}

impl TractClassifier {
    /// Parses the graph now (so a model tract cannot read fails early) and
    /// optimises it lazily per batch size.
    pub fn new(graph: &ClassifierGraph, image_shape: [usize; 3]) -> Result<Self> {
        let mut classifier =
            TractClassifier { proto: graph.proto.clone(), image_shape, fixed_batch: graph.input.fixed_batch, plans: HashMap::new() };
        classifier.plan(graph.input.fixed_batch.unwrap_or(1))?;
        Ok(classifier)
    }

    fn plan(&mut self, batch: usize) -> Result<Arc<TypedRunnableModel>> {
        if let Some(plan) = self.plans.get(&batch) {
            return Ok(plan.clone());
        }
        let [c, h, w] = self.image_shape;
        let plan = tract_onnx::onnx()
            // Exporters annotate intermediate values with a symbolic batch; the
            // concrete input fact below must not be unified against those.
            .with_ignore_value_info(true)
            .with_ignore_output_shapes(true)
            .model_for_proto_model(&self.proto)
            .map_err(|e| tract_error("cannot load the model (an op or attribute tract does not support?); try --backend ort", e))?
            .with_input_fact(0, f32::fact([batch, c, h, w]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| tract_error(&format!("cannot prepare the model for input [{batch},{c},{h},{w}]"), e))?;
        self.plans.insert(batch, plan.clone());
        Ok(plan)
    }
}

impl Classifier for TractClassifier {
    fn run_batch(&mut self, images: &[f32], n: usize) -> Result<(Vec<f32>, Vec<usize>)> {
        let plan = self.plan(n)?;
        let [c, h, w] = self.image_shape;
        let input = Tensor::from_shape(&[n, c, h, w], images).map_err(|e| tract_error("bad input batch", e))?;
        let outputs = plan.run(tvec!(input.into_tvalue())).map_err(|e| tract_error("inference failed", e))?;
        let output = outputs[0].cast_to::<f32>().map_err(|e| tract_error("logits are not float", e))?;
        let view = output.to_plain_array_view::<f32>().map_err(|e| tract_error("logits are not float", e))?;
        Ok((view.iter().copied().collect(), view.shape().to_vec()))
    }

    fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    fn backend_name(&self) -> &'static str {
        "tract"
    }

    fn device(&self) -> Device {
        Device::Cpu
    }
}
