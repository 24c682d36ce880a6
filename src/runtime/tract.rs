//! The pure-Rust backend: tract, with inputs fixed to concrete shapes so that
//! it can optimise the graph (one plan per set of input shapes seen).

use super::{Device, Feed, Fetched, Session};
use crate::error::{Error, Result};
use crate::onnx::pb;
use std::collections::HashMap;
use std::sync::Arc;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

/// A model running on tract.
pub struct TractSession {
    proto: pb::ModelProto,
    /// Plans per set of input shapes.
    plans: HashMap<Vec<Vec<usize>>, Arc<TypedRunnableModel>>,
    /// What the user should know about how the model runs.
    notes: Vec<String>,
    /// tract's matrix products run on this pool (single-threaded by default).
    executor: Executor,
}

fn tract_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "tract",
        message: format!("{context}: {e:#}"),
    }
}

impl TractSession {
    /// Parses the graph now, so that a model tract cannot read fails early;
    /// plans are optimised on first use of each input shape.
    pub fn new(proto: &pb::ModelProto, threads: Option<std::num::NonZeroUsize>) -> Result<Self> {
        crate::contain::contained("tract", "cannot load the model", || {
            onnx()
                .model_for_proto_model(proto)
                .map(|_| ())
                .map_err(|e| tract_error("cannot load the model (an op or attribute tract does not support?); try --backend ort", e))
        })?;
        // One thread unless told otherwise: tract's pool only splits matrix
        // products, and on the Fashion-MNIST CNNs two threads were slower
        // than one (APGD-T on 64 images: 24.6 s against 17.2 s).
        let executor = match threads.map_or(1, |n| n.get()) {
            1 => Executor::SingleThread,
            n => Executor::multithread_with_name(n, "upat-tract"),
        };
        let mut proto = proto.clone();
        spell_out_celu(&mut proto);
        Ok(TractSession {
            proto,
            plans: HashMap::new(),
            notes: Vec::new(),
            executor,
        })
    }

    /// The plan for `feeds`, one per set of input shapes. (One plan with a
    /// symbolic batch axis for every size was measured slower: 22.6 s
    /// against 17.2 s for APGD-T on 64 images of the adversarially trained
    /// CNN, whose batches shrink as samples are fooled; the optimiser's
    /// concrete-shape kernels more than pay for the re-optimisation.)
    fn plan(&mut self, feeds: &[Feed]) -> Result<Arc<TypedRunnableModel>> {
        let key: Vec<Vec<usize>> = feeds.iter().map(|f| f.shape().to_vec()).collect();
        if let Some(plan) = self.plans.get(&key) {
            return Ok(plan.clone());
        }
        let plan = self.optimised(feeds)?;
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Optimises the graph for the shapes of `feeds`. Where tract's
    /// optimiser fails on a graph it can otherwise run, the unoptimised
    /// model runs — the same values, more slowly — and a note says so.
    fn optimised(&mut self, feeds: &[Feed]) -> Result<Arc<TypedRunnableModel>> {
        let shapes: Vec<Vec<usize>> = feeds.iter().map(|f| f.shape().to_vec()).collect();
        let mut model = onnx()
            .model_for_proto_model(&self.proto)
            .map_err(|e| tract_error("cannot load the model", e))?;
        for (i, (feed, shape)) in feeds.iter().zip(&shapes).enumerate() {
            let fact = match feed {
                Feed::F32(..) => f32::fact(shape),
                Feed::I64(..) => i64::fact(shape),
            };
            model = model
                .with_input_fact(i, fact.into())
                .map_err(|e| tract_error("bad input", e))?;
        }
        // tract's optimiser has defects on some graphs (a strided Slice after a
        // Reshape, in LeViT: "Pulling Downsample over Reshape: Invalid axis").
        match model.clone().into_optimized() {
            Ok(optimized) => optimized.into_runnable(),
            Err(optimizer) => {
                let plan = model
                    .into_typed()
                    .and_then(|typed| typed.into_runnable())
                    .map_err(|_| optimizer);
                if plan.is_ok() {
                    self.note(
                        "tract's optimiser failed on this graph; it runs unoptimised (the same values, more slowly; --backend ort is faster)",
                    );
                }
                plan
            }
        }
        .map_err(|e| tract_error(&format!("cannot prepare the model for inputs {shapes:?}"), e))
    }

    fn note(&mut self, note: &str) {
        if !self.notes.iter().any(|n| n == note) {
            self.notes.push(note.to_string());
        }
    }
}

/// tract computes Celu as max(0, x) + min(0, e^(x/α) − 1), without the
/// factor α the ONNX definition has on the second term: the same for α = 1,
/// wrong otherwise. Celu nodes with another α are replaced by the definition
/// in elementary ops, writing the same output.
fn spell_out_celu(proto: &mut pb::ModelProto) {
    let Some(graph) = proto.graph.as_mut() else {
        return;
    };
    let alpha_of = |node: &pb::NodeProto| {
        node.attribute
            .iter()
            .find(|a| a.name == "alpha")
            .map_or(1.0, |a| a.f)
    };
    if !graph
        .node
        .iter()
        .any(|n| n.op_type == "Celu" && alpha_of(n) != 1.0)
    {
        return;
    }
    let scalar = |name: String, value: f32| pb::TensorProto {
        name,
        data_type: 1,
        float_data: vec![value],
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    };
    let mut nodes = Vec::with_capacity(graph.node.len());
    for old in std::mem::take(&mut graph.node) {
        let alpha = alpha_of(&old);
        if old.op_type != "Celu" || alpha == 1.0 {
            nodes.push(old);
            continue;
        }
        let (x, y) = (old.input[0].as_str(), old.output[0].as_str());
        let t = |part: &str| format!("{y}/upat_celu/{part}");
        graph.initializer.push(scalar(t("alpha"), alpha));
        graph.initializer.push(scalar(t("zero"), 0.0));
        graph.initializer.push(scalar(t("one"), 1.0));
        nodes.push(node("Div", &[x, &t("alpha")], &t("scaled")));
        nodes.push(node("Exp", &[&t("scaled")], &t("exp")));
        nodes.push(node("Sub", &[&t("exp"), &t("one")], &t("expm1")));
        nodes.push(node("Mul", &[&t("expm1"), &t("alpha")], &t("curve")));
        nodes.push(node("Min", &[&t("curve"), &t("zero")], &t("negative")));
        nodes.push(node("Max", &[x, &t("zero")], &t("positive")));
        nodes.push(node("Add", &[&t("positive"), &t("negative")], y));
    }
    graph.node = nodes;
}

/// tract's ONNX loader, told to ignore the shapes exporters annotate
/// intermediate values with (symbolic batch): the concrete input facts rule.
fn onnx() -> tract_onnx::Onnx {
    tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true)
}

impl Session for TractSession {
    fn run(&mut self, feeds: &[Feed]) -> Result<Vec<Fetched>> {
        crate::contain::contained("tract", "cannot run the model", || {
            self.run_uncontained(feeds)
        })
    }

    fn backend_name(&self) -> &'static str {
        "tract"
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl TractSession {
    fn run_uncontained(&mut self, feeds: &[Feed]) -> Result<Vec<Fetched>> {
        let plan = self.plan(feeds)?;
        let inputs = feeds
            .iter()
            .map(|feed| match feed {
                Feed::F32(data, shape) => Tensor::from_shape(shape, data),
                Feed::I64(data, shape) => Tensor::from_shape(shape, data),
            })
            .map(|t| t.map(|t| t.into_tvalue()))
            .collect::<TractResult<TVec<_>>>()
            .map_err(|e| tract_error("bad input batch", e))?;
        let outputs = multithread_tract_scope(self.executor.clone(), || plan.run(inputs))
            .map_err(|e| tract_error("inference failed", e))?;
        outputs
            .iter()
            .map(|o| {
                let o = o
                    .cast_to::<f32>()
                    .map_err(|e| tract_error("output is not numeric", e))?;
                let view = o
                    .to_plain_array_view::<f32>()
                    .map_err(|e| tract_error("output is not float", e))?;
                Ok(Fetched {
                    values: view.iter().copied().collect(),
                    shape: view.shape().to_vec(),
                })
            })
            .collect()
    }
}
