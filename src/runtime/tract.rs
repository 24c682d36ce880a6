//! The pure-Rust backend: tract, with inputs fixed to concrete shapes so that
//! it can optimise the graph (one plan per set of input shapes seen).
//!
//! tract runs a graph's ops on one thread; its pool only splits matrix
//! products, which on image classifiers was slower with two threads than
//! with one (APGD-T on 64 images of the Fashion-MNIST CNN: 24.6 s against
//! 17.2 s). Where every input and output leads with the batch axis and rows
//! do not interact (a classifier, its gradient graph), a batch is instead cut
//! into one part per thread, the parts run side by side through one shared
//! plan, and their outputs are stacked again: [`Threads::Rows`].

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
    /// tract's matrix products run on this pool (single-threaded unless
    /// [`Threads::MatMul`] asked for more).
    executor: Executor,
    /// With [`Threads::Rows`]: how many threads run a batch's parts.
    row_workers: Option<usize>,
}

/// Input bytes per part of a batch cut into parts. tract's throughput falls
/// with the batch it runs once intermediate tensors outgrow the caches (the
/// gradient of the Fashion-MNIST CNN at one thread: 4,300 images/s in
/// batches of 32, 2,630 of 128, 1,280 of 256); parts of about 128 KiB of
/// input (41 of its images, 10 of ResNet-18's CIFAR images, one ImageNet
/// image) keep it near its best.
const PART_BYTES: usize = 128 << 10;

/// How a [`TractSession`] uses threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Cut each batch into parts of about [`PART_BYTES`] (at least one per
    /// thread), run by this many threads side by side. Only for graphs whose
    /// inputs and outputs all lead with the batch axis and whose rows do not
    /// interact; a part's values are those the whole batch gives.
    Rows(std::num::NonZeroUsize),
    /// The whole batch at once, matrix products split over this many
    /// threads: for any graph.
    MatMul(std::num::NonZeroUsize),
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
    pub fn new(proto: &pb::ModelProto, threads: Threads) -> Result<Self> {
        crate::contain::contained("tract", "cannot load the model", || {
            onnx()
                .model_for_proto_model(proto)
                .map(|_| ())
                .map_err(|e| tract_error("cannot load the model (an op or attribute tract does not support?); try --backend ort", e))
        })?;
        keep_freed_memory_for_reuse();
        let (executor, row_workers) = match threads {
            Threads::Rows(n) => (Executor::SingleThread, Some(n.get())),
            Threads::MatMul(n) if n.get() == 1 => (Executor::SingleThread, None),
            Threads::MatMul(n) => (Executor::multithread_with_name(n.get(), "upat-tract"), None),
        };
        let mut proto = proto.clone();
        spell_out_celu(&mut proto);
        super::tract_ops::fast_max_pools(&mut proto);
        Ok(TractSession {
            proto,
            plans: HashMap::new(),
            notes: Vec::new(),
            executor,
            row_workers,
        })
    }

    /// The plan for `feeds`, one per set of input shapes. (One plan with a
    /// symbolic batch axis for every size was measured slower: 22.6 s
    /// against 17.2 s for APGD-T on 64 images of the adversarially trained
    /// CNN, whose batches shrink as samples are fooled; the optimiser's
    /// concrete-shape kernels more than pay for the re-optimisation.)
    fn plan(&mut self, inputs: &[Tensor]) -> Result<Arc<TypedRunnableModel>> {
        let key: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        if let Some(plan) = self.plans.get(&key) {
            return Ok(plan.clone());
        }
        let plan = self.optimised(inputs)?;
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Optimises the graph for the shapes of `feeds`. Where tract's
    /// optimiser fails on a graph it can otherwise run, the unoptimised
    /// model runs — the same values, more slowly — and a note says so.
    fn optimised(&mut self, inputs: &[Tensor]) -> Result<Arc<TypedRunnableModel>> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let mut model = onnx()
            .model_for_proto_model(&self.proto)
            .map_err(|e| tract_error("cannot load the model", e))?;
        for (i, (input, shape)) in inputs.iter().zip(&shapes).enumerate() {
            let fact = TypedFact::dt_shape(input.datum_type(), shape.as_slice());
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

/// tract allocates every intermediate tensor afresh on each run, and glibc
/// hands freed memory at the top of a heap back to the system at once, so
/// the next run faults every page in again; with a batch cut into parts, the
/// threads' heaps do so side by side, contending for the process's memory
/// map. Keeping 64 MiB of slack on each heap made tract's gradient of the
/// Fashion-MNIST CNN at 2 threads 3,700 → 6,000 images/s (1 thread:
/// unchanged). Process-wide and harmless elsewhere: ONNX Runtime and
/// libtorch pool their own memory.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets a glibc tuning parameter; a value
            // it does not take is refused (returns 0) and changes nothing.
            unsafe {
                libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            }
        });
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
/// intermediate values with (symbolic batch): the concrete input facts rule;
/// with upat's own gradient kernels.
fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true);
    super::tract_ops::register(&mut onnx);
    onnx
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
        let rows = feeds.first().and_then(|f| f.shape().first().copied());
        if let (Some(workers), Some(n)) = (self.row_workers, rows) {
            if n > 1 {
                return self.run_in_parts(feeds, n, workers);
            }
        }
        let inputs = feeds
            .iter()
            .map(|feed| tensor(feed, 0, feed.shape().first().copied().unwrap_or(1), None))
            .collect::<Result<Vec<_>>>()?;
        let plan = self.plan(&inputs)?;
        let outputs = multithread_tract_scope(self.executor.clone(), || {
            plan.run(inputs.into_iter().map(Tensor::into_tvalue).collect())
        })
        .map_err(|e| tract_error("inference failed", e))?;
        outputs.iter().map(|o| fetched(o, None)).collect()
    }

    /// Runs `n` rows as parts of equal size (the last padded with copies of
    /// its last row, so that one plan serves every part) on `workers`
    /// threads, and stacks the parts' outputs without the padding.
    fn run_in_parts(&mut self, feeds: &[Feed], n: usize, workers: usize) -> Result<Vec<Fetched>> {
        if feeds.iter().any(|f| f.shape().first() != Some(&n)) {
            return Err(Error::Internal(
                "tract: a batch cut into parts needs every input to lead with the batch axis"
                    .into(),
            ));
        }
        let row_bytes: usize = feeds.iter().map(Feed::row_bytes).sum();
        let rows_per_part = (PART_BYTES / row_bytes.max(1)).clamp(1, n);
        let parts = n.div_ceil(rows_per_part).max(workers.min(n));
        let chunk = n.div_ceil(parts);
        let parts = n.div_ceil(chunk);
        let part_inputs = |p: usize| -> Result<Vec<Tensor>> {
            let start = p * chunk;
            feeds
                .iter()
                .map(|feed| tensor(feed, start, chunk.min(n - start), Some(chunk)))
                .collect()
        };
        let plan = self.plan(&part_inputs(0)?)?;
        // Worker k runs parts k, k + workers, …; worker 0 is this thread.
        let workers = workers.min(parts);
        let run_share = |k: usize| -> Vec<(usize, Result<TVec<TValue>>)> {
            (k..parts)
                .step_by(workers)
                .map(|p| {
                    let outputs = part_inputs(p).and_then(|inputs| {
                        crate::contain::contained("tract", "cannot run the model", || {
                            plan.run(inputs.into_iter().map(Tensor::into_tvalue).collect())
                                .map_err(|e| tract_error("inference failed", e))
                        })
                    });
                    (p, outputs)
                })
                .collect()
        };
        let mut results: Vec<(usize, Result<TVec<TValue>>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (1..workers)
                .map(|k| scope.spawn(move || run_share(k)))
                .collect();
            let mut results = run_share(0);
            for handle in handles {
                match handle.join() {
                    Ok(share) => results.extend(share),
                    Err(_) => results.push((
                        0,
                        Err(Error::Internal("a tract worker thread panicked".into())),
                    )),
                }
            }
            results
        });
        results.sort_by_key(|(p, _)| *p);
        let mut stacked: Vec<Fetched> = Vec::new();
        for (p, outputs) in results {
            let take = chunk.min(n - p * chunk);
            for (i, output) in outputs?.iter().enumerate() {
                let part = fetched(output, Some((chunk, take)))?;
                match stacked.get_mut(i) {
                    Some(whole) => {
                        whole.values.extend_from_slice(&part.values);
                        whole.shape[0] += take;
                    }
                    None => stacked.push(part),
                }
            }
        }
        Ok(stacked)
    }
}

/// Rows `start..start + take` of `feed` as a tensor, padded to `pad_to` rows
/// with copies of the last (all of `feed` when `pad_to` is `None`).
fn tensor(feed: &Feed, start: usize, take: usize, pad_to: Option<usize>) -> Result<Tensor> {
    fn rows<T: Datum + Copy>(
        data: &[T],
        shape: &[usize],
        start: usize,
        take: usize,
        pad_to: Option<usize>,
    ) -> TractResult<Tensor> {
        let Some(chunk) = pad_to else {
            return Tensor::from_shape(shape, data);
        };
        let row_len: usize = shape[1..].iter().product();
        let batch = super::padded_chunk(data, row_len, start, take, chunk);
        let mut part_shape = shape.to_vec();
        part_shape[0] = chunk;
        Tensor::from_shape(&part_shape, &batch)
    }
    match feed {
        Feed::F32(data, shape) => rows(data, shape, start, take, pad_to),
        Feed::I64(data, shape) => rows(data, shape, start, take, pad_to),
    }
    .map_err(|e| tract_error("bad input batch", e))
}

/// An output as f32; with `rows = Some((chunk, take))`, a part's output,
/// which must lead with its `chunk` rows, cut to the first `take`.
fn fetched(output: &TValue, rows: Option<(usize, usize)>) -> Result<Fetched> {
    let output = output
        .cast_to::<f32>()
        .map_err(|e| tract_error("output is not numeric", e))?;
    let view = output
        .to_plain_array_view::<f32>()
        .map_err(|e| tract_error("output is not float", e))?;
    let mut shape = view.shape().to_vec();
    let mut values: Vec<f32> = view.iter().copied().collect();
    if let Some((chunk, take)) = rows {
        if shape.first() != Some(&chunk) {
            return Err(Error::Internal(format!(
                "tract: an output of shape {shape:?} does not lead with the part's {chunk} rows"
            )));
        }
        values.truncate(values.len() / chunk * take);
        shape[0] = take;
    }
    Ok(Fetched { values, shape })
}
