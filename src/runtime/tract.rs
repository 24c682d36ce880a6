//! The pure-Rust backend: tract, with the inputs' shapes given so that it can
//! optimise the graph: once for every batch size (the batch axis a symbol)
//! where its optimiser can, else once per set of input shapes seen.

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
    /// Whether one plan serves every batch size (decided on first use).
    batched: Option<Batched>,
    /// Plans per set of input shapes, where no batched plan could be made.
    plans: HashMap<Vec<Vec<usize>>, Arc<TypedRunnableModel>>,
    /// What the user should know about how the model runs.
    notes: Vec<String>,
    /// tract's matrix products run on this pool (one thread per core by
    /// default).
    executor: Executor,
}

/// How plans are kept.
enum Batched {
    /// One plan, its batch axis symbolic: attacks whose batches shrink as
    /// samples are fooled optimise the graph once, not once per size.
    Plan(Arc<TypedRunnableModel>),
    /// The graph needs concrete shapes: one plan per set of input shapes.
    PerShape,
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
        // One thread per core unless told otherwise, as ONNX Runtime does.
        let threads = threads
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, |n| n.get());
        let executor = match threads {
            1 => Executor::SingleThread,
            n => Executor::multithread_with_name(n, "upat-tract"),
        };
        let mut proto = proto.clone();
        spell_out_celu(&mut proto);
        Ok(TractSession {
            proto,
            batched: None,
            plans: HashMap::new(),
            notes: Vec::new(),
            executor,
        })
    }

    /// The plan for `feeds`: one plan for every batch size (the inputs'
    /// first axis symbolic), built once, where tract can optimise the graph
    /// that way; else one per set of input shapes.
    fn plan(&mut self, feeds: &[Feed]) -> Result<Arc<TypedRunnableModel>> {
        if let Some(Batched::Plan(plan)) = &self.batched {
            return Ok(plan.clone());
        }
        if self.batched.is_none() {
            let batch = feeds.first().and_then(|f| f.shape().first().copied());
            let shared = feeds.iter().all(|f| f.shape().first().copied() == batch);
            self.batched = Some(match (batch, shared) {
                (Some(_), true) => match self.optimised(feeds, true) {
                    Ok(plan) => Batched::Plan(plan),
                    Err(_) => Batched::PerShape,
                },
                _ => Batched::PerShape,
            });
            if let Some(Batched::Plan(plan)) = &self.batched {
                return Ok(plan.clone());
            }
        }
        let key: Vec<Vec<usize>> = feeds.iter().map(|f| f.shape().to_vec()).collect();
        if let Some(plan) = self.plans.get(&key) {
            return Ok(plan.clone());
        }
        let plan = self.optimised(feeds, false)?;
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Optimises the graph for the shapes of `feeds` (with `symbolic_batch`,
    /// their first axis left as a symbol). Where tract's optimiser fails on
    /// a graph it can otherwise run, the unoptimised model runs — the same
    /// values, more slowly — and a note says so.
    fn optimised(
        &mut self,
        feeds: &[Feed],
        symbolic_batch: bool,
    ) -> Result<Arc<TypedRunnableModel>> {
        let shapes: Vec<Vec<usize>> = feeds.iter().map(|f| f.shape().to_vec()).collect();
        let mut model = onnx()
            .model_for_proto_model(&self.proto)
            .map_err(|e| tract_error("cannot load the model", e))?;
        let batch = model.symbols.sym("N");
        for (i, (feed, shape)) in feeds.iter().zip(&shapes).enumerate() {
            let dims: TVec<TDim> = shape
                .iter()
                .enumerate()
                .map(|(axis, &d)| match axis {
                    0 if symbolic_batch => batch.to_dim(),
                    _ => d.to_dim(),
                })
                .collect();
            let fact = match feed {
                Feed::F32(..) => f32::fact(dims),
                Feed::I64(..) => i64::fact(dims),
            };
            model = model
                .with_input_fact(i, fact.into())
                .map_err(|e| tract_error("bad input", e))?;
        }
        let described = if symbolic_batch {
            "any batch size".to_string()
        } else {
            format!("inputs {shapes:?}")
        };
        // tract's optimiser has defects on some graphs (a strided Slice after a
        // Reshape, in LeViT: "Pulling Downsample over Reshape: Invalid axis").
        match model.clone().into_optimized() {
            Ok(optimized) => optimized.into_runnable(),
            // A symbolic batch the optimiser cannot handle: per-shape plans.
            Err(optimizer) if symbolic_batch => Err(optimizer),
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
        .map_err(|e| tract_error(&format!("cannot prepare the model for {described}"), e))
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
        match self.run_plan(feeds) {
            // A batched plan that cannot run this batch: per-shape plans
            // from now on.
            Err(_) if matches!(self.batched, Some(Batched::Plan(_))) => {
                self.batched = Some(Batched::PerShape);
                self.run_plan(feeds)
            }
            result => result,
        }
    }

    fn run_plan(&mut self, feeds: &[Feed]) -> Result<Vec<Fetched>> {
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
