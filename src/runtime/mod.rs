//! Inference backends behind one seam, [`Classifier`].
//!
//! A backend runs a [`ClassifierGraph`] (one image input, one logits output)
//! on batches of images. `ort` is ONNX Runtime, loaded at run time; `tract` is
//! pure Rust and always available.

mod kernels;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "ort")]
mod ort_ops;
pub mod tract;
mod tract_ops;

use crate::error::{Error, Result};
use crate::onnx::grad::specialise::{for_onnx_runtime, for_tract, Kernels};
use crate::onnx::ClassifierGraph;

/// Which backend the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// ONNX Runtime when its library loads, else tract.
    Auto,
    Ort,
    Tract,
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

/// Where the user asked inference to run (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Cpu,
    /// A GPU through ONNX Runtime's CUDA provider, or an error saying why not.
    Cuda,
    /// The GPU where ONNX Runtime's CUDA provider registers, else the CPU.
    Auto,
}

/// The device `choice` resolves to with `backend`, and a line for the user
/// saying which it is and, for `auto`, why. `cuda` is taken as asked: a
/// session that cannot use it fails (never a quiet fallback).
pub fn resolve_device(choice: DeviceChoice, backend: BackendChoice) -> (Device, String) {
    match choice {
        DeviceChoice::Cpu => (Device::Cpu, "cpu".into()),
        DeviceChoice::Cuda => (Device::Cuda, "cuda".into()),
        DeviceChoice::Auto => {
            let options = RuntimeOptions {
                backend,
                device: Device::Cpu,
                threads: None,
            };
            match resolve_backend(options) {
                #[cfg(feature = "ort")]
                Ok(Backend::Ort) => match ort::cuda_usable() {
                    Ok(()) => (Device::Cuda, "cuda (ONNX Runtime's CUDA provider)".into()),
                    Err(_) => (
                        Device::Cpu,
                        "cpu (ONNX Runtime's CUDA provider is not usable here; --device cuda says why)"
                            .into(),
                    ),
                },
                _ => (Device::Cpu, "cpu (tract runs on the CPU only)".into()),
            }
        }
    }
}

/// A backend that runs: what [`BackendChoice`] resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ort,
    Tract,
}

impl Backend {
    /// As reports and messages name it (`report.csv`'s `backend`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Ort => "ort",
            Backend::Tract => "tract",
        }
    }
}

impl BackendChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Ort => "ort",
            BackendChoice::Tract => "tract",
        }
    }
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// Logits of a batch, row-major `[n, classes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub values: Vec<f32>,
    pub classes: usize,
}

impl Logits {
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.values.chunks_exact(self.classes)
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.classes..(i + 1) * self.classes]
    }

    /// Index of the largest logit of each row (first one on ties, like argmax in PyTorch).
    pub fn argmax(&self) -> Vec<usize> {
        self.rows()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold(0, |best, (i, v)| if *v > row[best] { i } else { best })
            })
            .collect()
    }
}

/// An image classifier that can be run on batches.
pub trait Classifier {
    /// Runs one batch of exactly `n` images (`n` equals the fixed batch size
    /// when the model has one). Returns the output and its shape.
    fn run_batch(&mut self, images: &[f32], n: usize) -> Result<(Vec<f32>, Vec<usize>)>;

    /// The fixed batch size the model was exported with, if any.
    fn fixed_batch(&self) -> Option<usize>;

    /// `"ort"` or `"tract"`.
    fn backend_name(&self) -> &'static str;

    fn device(&self) -> Device;

    /// The session's notes ([`Session::notes`]).
    fn notes(&self) -> &[String] {
        &[]
    }

    /// Logits for `n` images (NCHW, `[0, 1]`). Splits or pads the batch to the
    /// model's fixed batch size, and checks the output is `[n, K]`.
    fn logits(&mut self, images: &[f32], n: usize) -> Result<Logits> {
        if n == 0 {
            return Ok(Logits {
                values: Vec::new(),
                classes: 0,
            });
        }
        let image_len = images.len() / n;
        let chunk = self.fixed_batch().unwrap_or(n);
        let mut values = Vec::new();
        let mut classes = 0;
        for start in (0..n).step_by(chunk) {
            let take = chunk.min(n - start);
            let batch = padded_chunk(images, image_len, start, take, chunk);
            let (out, shape) = self.run_batch(&batch, chunk)?;
            if shape.len() != 2
                || shape[0] != chunk
                || shape[1] == 0
                || out.len() != shape[0] * shape[1]
            {
                return Err(Error::Backend {
                    backend: self.backend_name(),
                    message: format!("the model returned an output of shape {shape:?} for a batch of {chunk}; upat-audit needs logits [N, K]"),
                });
            }
            classes = shape[1];
            values.extend_from_slice(&out[..take * classes]);
        }
        Ok(Logits { values, classes })
    }
}

/// An input batch for a [`Session`]: values and shape.
#[derive(Debug, Clone, Copy)]
pub enum Feed<'a> {
    F32(&'a [f32], &'a [usize]),
    I64(&'a [i64], &'a [usize]),
}

impl Feed<'_> {
    pub fn shape(&self) -> &[usize] {
        match self {
            Feed::F32(_, s) | Feed::I64(_, s) => s,
        }
    }

    /// Bytes of one row along the first axis.
    pub fn row_bytes(&self) -> usize {
        let row: usize = self.shape().iter().skip(1).product();
        match self {
            Feed::F32(..) => row * 4,
            Feed::I64(..) => row * 8,
        }
    }
}

/// An output of a [`Session`] run, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub values: Vec<f32>,
    pub shape: Vec<usize>,
}

/// A loaded ONNX graph on one backend: feeds in graph-input order, outputs
/// in graph-output order. [`Classifier`] and [`GradientModel`] are built on it.
pub trait Session {
    fn run(&mut self, feeds: &[Feed]) -> Result<Vec<Fetched>>;
    fn backend_name(&self) -> &'static str;
    fn device(&self) -> Device;
    /// What the user should know about how the model runs (tract running
    /// a graph unoptimised, say); none by default.
    fn notes(&self) -> &[String] {
        &[]
    }
}

/// Rows `start..start + take` of `rows` (each `row_len` long: an image, a
/// label) as a batch of `chunk`, padded with copies of the last one;
/// fixed-batch models need whole batches, and the padding's outputs are
/// dropped by the caller. The one place batches are chunked and padded.
fn padded_chunk<T: Copy>(
    rows: &[T],
    row_len: usize,
    start: usize,
    take: usize,
    chunk: usize,
) -> Vec<T> {
    let mut batch = rows[start * row_len..(start + take) * row_len].to_vec();
    while batch.len() < chunk * row_len {
        batch.extend_from_within((take - 1) * row_len..take * row_len);
    }
    batch
}

/// How to open a backend.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeOptions {
    pub backend: BackendChoice,
    pub device: Device,
    /// Intra-op threads (`--threads`); `None` keeps the backend's default:
    /// one per core (tract: one unless the batch can be cut into parts,
    /// [`tract::Threads`]). Results do not
    /// depend on it, so audits with different counts are combinable.
    pub threads: Option<std::num::NonZeroUsize>,
}

/// Opens a graph on the backend `options` resolve to.
pub fn open_session(
    proto: &crate::onnx::pb::ModelProto,
    options: RuntimeOptions,
) -> Result<Box<dyn Session>> {
    open_any_session(proto, options, Rows::Mixed)
}

/// Whether a graph's batch rows are independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Every input and output leads with a free batch axis and rows do not
    /// interact: a classifier or its gradient graph with no fixed batch.
    Independent,
    /// Anything else.
    Mixed,
}

fn open_any_session(
    proto: &crate::onnx::pb::ModelProto,
    options: RuntimeOptions,
    rows: Rows,
) -> Result<Box<dyn Session>> {
    match resolve_backend(options)? {
        Backend::Tract => {
            if options.device == Device::Cuda {
                return Err(Error::Usage(
                    "--device cuda needs the ort backend (tract runs on the CPU only); use --backend ort".into(),
                ));
            }
            // Every core by default, as on ONNX Runtime, where batches can
            // be cut into parts; tract's matrix-product pool otherwise.
            let threads = match (rows, options.threads) {
                (Rows::Independent, threads) => {
                    tract::Threads::Rows(threads.unwrap_or_else(|| {
                        std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN)
                    }))
                }
                (Rows::Mixed, threads) => {
                    tract::Threads::MatMul(threads.unwrap_or(std::num::NonZeroUsize::MIN))
                }
            };
            Ok(Box::new(tract::TractSession::new(proto, threads)?))
        }
        #[cfg(feature = "ort")]
        Backend::Ort => Ok(Box::new(ort::OrtSession::new(
            proto,
            options.device,
            options.threads,
        )?)),
        #[cfg(not(feature = "ort"))]
        Backend::Ort => unreachable!("resolve_backend only returns ort when the feature is on"),
    }
}

/// How the rows of a classifier's graph (or its gradient graph) relate: a
/// model that fixes its batch size is run whole.
fn rows(fixed_batch: Option<usize>) -> Rows {
    match fixed_batch {
        None => Rows::Independent,
        Some(_) => Rows::Mixed,
    }
}

/// A [`ClassifierGraph`] on a backend.
pub struct ClassifierModel {
    session: Box<dyn Session>,
    image_shape: [usize; 3],
    fixed_batch: Option<usize>,
}

impl Classifier for ClassifierModel {
    fn run_batch(&mut self, images: &[f32], n: usize) -> Result<(Vec<f32>, Vec<usize>)> {
        let shape = [
            n,
            self.image_shape[0],
            self.image_shape[1],
            self.image_shape[2],
        ];
        let mut outputs = self.session.run(&[Feed::F32(images, &shape)])?;
        let first = outputs.swap_remove(0);
        Ok((first.values, first.shape))
    }

    fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    fn backend_name(&self) -> &'static str {
        self.session.backend_name()
    }

    fn device(&self) -> Device {
        self.session.device()
    }

    fn notes(&self) -> &[String] {
        self.session.notes()
    }
}

/// Opens `graph` on the requested backend for images of `image_shape`.
pub fn open(
    graph: &ClassifierGraph,
    image_shape: [usize; 3],
    options: RuntimeOptions,
) -> Result<Box<dyn Classifier>> {
    let session = open_any_session(&graph.proto, options, rows(graph.input.fixed_batch))?;
    Ok(Box::new(ClassifierModel {
        session,
        image_shape,
        fixed_batch: graph.input.fixed_batch,
    }))
}

/// What one gradient evaluation returns for a batch of `n` images.
#[derive(Debug, Clone, PartialEq)]
pub struct LossAndGrad {
    pub logits: Logits,
    /// Per-sample loss `[n]`.
    pub loss: Vec<f32>,
    /// d(Σ loss)/d(images), `[n, C, H, W]`.
    pub input_grad: Vec<f32>,
}

/// A [`GradientGraph`](crate::onnx::grad::GradientGraph) on a backend.
pub struct GradientModel {
    session: Box<dyn Session>,
    image_shape: [usize; 3],
    targeted: bool,
    /// The embedding width, for the embedding losses (a `reference` input).
    embedding: Option<usize>,
    fixed_batch: Option<usize>,
}

/// What a gradient graph reads beside the images.
#[derive(Debug, Clone, Copy)]
enum Given<'a> {
    /// Labels `[n]`, and targets `[n]` for the targeted losses.
    Labels(&'a [i64], Option<&'a [i64]>),
    /// Reference embeddings `[n, width]`, for the embedding losses.
    Reference(&'a [f32], usize),
}

impl GradientModel {
    pub fn open(
        graph: &crate::onnx::grad::GradientGraph,
        image_shape: [usize; 3],
        options: RuntimeOptions,
    ) -> Result<Self> {
        // ONNX Runtime runs the same gradients through faster kernels.
        let session = match resolve_backend(options)? {
            Backend::Ort => {
                // upat's own kernels are CPU kernels: on CUDA they would
                // move every pooled tensor to the host and back.
                let kernels = match options.device {
                    Device::Cpu => Kernels::WithUpatOps,
                    Device::Cuda => Kernels::Standard,
                };
                open_session(&for_onnx_runtime(graph, kernels), options)?
            }
            Backend::Tract => {
                open_any_session(&for_tract(graph), options, rows(graph.fixed_batch))?
            }
        };
        Ok(GradientModel {
            session,
            image_shape,
            targeted: graph.loss.is_targeted(),
            embedding: graph.loss.is_embedding().then_some(graph.classes),
            fixed_batch: graph.fixed_batch,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.session.backend_name()
    }

    /// The session's notes ([`Session::notes`]).
    pub fn notes(&self) -> &[String] {
        self.session.notes()
    }

    /// Logits, per-sample loss and input gradient of `n` images.
    /// `targets` is required by (and only by) the targeted losses. A
    /// fixed-batch model is run chunk by chunk, the last chunk padded with
    /// copies of the last image whose results are dropped.
    pub fn loss_and_grad(
        &mut self,
        images: &[f32],
        labels: &[i64],
        targets: Option<&[i64]>,
        n: usize,
    ) -> Result<LossAndGrad> {
        if self.embedding.is_some() {
            return Err(Error::Internal(
                "an embedding loss needs reference embeddings, not labels".into(),
            ));
        }
        self.run(images, Given::Labels(labels, targets), n)
    }

    /// The embedding losses' form of [`GradientModel::loss_and_grad`]: the
    /// loss of each image's embedding against `reference` `[n, width]`, and
    /// its input gradient (`logits` are the embeddings).
    pub fn embedding_loss_and_grad(
        &mut self,
        images: &[f32],
        reference: &[f32],
        n: usize,
    ) -> Result<LossAndGrad> {
        let Some(width) = self.embedding else {
            return Err(Error::Internal(
                "reference embeddings given to a classifier loss".into(),
            ));
        };
        if reference.len() != n * width {
            return Err(Error::Internal(format!(
                "{} reference values for {n} embeddings of width {width}",
                reference.len()
            )));
        }
        self.run(images, Given::Reference(reference, width), n)
    }

    fn run(&mut self, images: &[f32], given: Given, n: usize) -> Result<LossAndGrad> {
        let Some(chunk) = self.fixed_batch.filter(|&b| b != n) else {
            return self.run_exact(images, given, n);
        };
        let image_len = images.len() / n.max(1);
        let mut all = LossAndGrad {
            logits: Logits {
                values: Vec::new(),
                classes: 0,
            },
            loss: Vec::new(),
            input_grad: Vec::new(),
        };
        for start in (0..n).step_by(chunk) {
            let take = chunk.min(n - start);
            let pad = |v: &[i64]| padded_chunk(v, 1, start, take, chunk);
            let batch = padded_chunk(images, image_len, start, take, chunk);
            let (labels, targets, reference);
            let chunk_given = match given {
                Given::Labels(l, t) => {
                    labels = pad(l);
                    targets = t.map(pad);
                    Given::Labels(&labels, targets.as_deref())
                }
                Given::Reference(r, width) => {
                    reference = padded_chunk(r, width, start, take, chunk);
                    Given::Reference(&reference, width)
                }
            };
            let out = self.run_exact(&batch, chunk_given, chunk)?;
            all.logits.classes = out.logits.classes;
            all.logits
                .values
                .extend_from_slice(&out.logits.values[..take * out.logits.classes]);
            all.loss.extend_from_slice(&out.loss[..take]);
            all.input_grad
                .extend_from_slice(&out.input_grad[..take * image_len]);
        }
        Ok(all)
    }

    fn run_exact(&mut self, images: &[f32], given: Given, n: usize) -> Result<LossAndGrad> {
        let image = [
            n,
            self.image_shape[0],
            self.image_shape[1],
            self.image_shape[2],
        ];
        let vector = [n];
        let reference_shape;
        let mut feeds = vec![Feed::F32(images, &image)];
        match (given, self.targeted) {
            (Given::Reference(reference, width), _) => {
                reference_shape = [n, width];
                feeds.push(Feed::F32(reference, &reference_shape));
            }
            (Given::Labels(labels, Some(t)), true) => {
                feeds.push(Feed::I64(labels, &vector));
                feeds.push(Feed::I64(t, &vector));
            }
            (Given::Labels(labels, None), false) => feeds.push(Feed::I64(labels, &vector)),
            (Given::Labels(_, None), true) => {
                return Err(Error::Internal(
                    "a targeted loss needs target classes".into(),
                ))
            }
            (Given::Labels(_, Some(_)), false) => {
                return Err(Error::Internal(
                    "target classes given to an untargeted loss".into(),
                ))
            }
        }
        let outputs = self.session.run(&feeds)?;
        let backend = self.session.backend_name();
        let [logits, loss, input_grad]: [Fetched; 3] =
            outputs
                .try_into()
                .map_err(|o: Vec<Fetched>| Error::Backend {
                    backend,
                    message: format!(
                        "the gradient graph returned {} outputs, expected 3",
                        o.len()
                    ),
                })?;
        let classes = logits.shape.get(1).copied().unwrap_or(0);
        Ok(LossAndGrad {
            logits: Logits {
                values: logits.values,
                classes,
            },
            loss: loss.values,
            input_grad: input_grad.values,
        })
    }
}

/// The backend `options` resolves to.
pub fn resolve_backend(options: RuntimeOptions) -> Result<Backend> {
    match options.backend {
        BackendChoice::Tract => Ok(Backend::Tract),
        BackendChoice::Ort => {
            ort_available()?;
            Ok(Backend::Ort)
        }
        // CUDA only exists on ort, so auto must not quietly fall back to a
        // CPU backend; nor may it when the user named ONNX Runtime's
        // library (ORT_DYLIB_PATH) and that library does not load.
        BackendChoice::Auto
            if options.device == Device::Cuda || std::env::var_os("ORT_DYLIB_PATH").is_some() =>
        {
            ort_available()?;
            Ok(Backend::Ort)
        }
        BackendChoice::Auto => Ok(if ort_available().is_ok() {
            Backend::Ort
        } else {
            Backend::Tract
        }),
    }
}

#[cfg(feature = "ort")]
fn ort_available() -> Result<()> {
    ort::ensure_loaded().map(|_| ())
}

/// The ONNX Runtime library this process loaded, if it loaded one.
pub fn ort_library() -> Option<std::path::PathBuf> {
    #[cfg(feature = "ort")]
    {
        ort::ensure_loaded().ok().map(std::path::Path::to_path_buf)
    }
    #[cfg(not(feature = "ort"))]
    {
        None
    }
}

#[cfg(not(feature = "ort"))]
fn ort_available() -> Result<()> {
    Err(Error::Backend {
        backend: "ort",
        message: "this build has no ONNX Runtime support; rebuild with --features ort".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties() {
        let l = Logits {
            values: vec![1.0, 3.0, 3.0, -1.0, -2.0, -3.0],
            classes: 3,
        };
        assert_eq!(l.argmax(), vec![1, 0]);
    }

    /// A fake fixed-batch model: logits are (sum of pixels, batch position).
    struct FixedBatchEcho {
        batch: usize,
        calls: usize,
    }

    impl Classifier for FixedBatchEcho {
        fn run_batch(&mut self, images: &[f32], n: usize) -> Result<(Vec<f32>, Vec<usize>)> {
            assert_eq!(n, self.batch);
            self.calls += 1;
            let len = images.len() / n;
            let out = images
                .chunks(len)
                .flat_map(|img| [img.iter().sum::<f32>(), 0.0])
                .collect();
            Ok((out, vec![n, 2]))
        }
        fn fixed_batch(&self) -> Option<usize> {
            Some(self.batch)
        }
        fn backend_name(&self) -> &'static str {
            "fake"
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
    }

    #[test]
    fn fixed_batch_models_are_chunked_and_padded() {
        let mut m = FixedBatchEcho { batch: 2, calls: 0 };
        let images = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0];
        let logits = m.logits(&images, 3).unwrap();
        assert_eq!(m.calls, 2);
        assert_eq!(logits.values, vec![2.0, 0.0, 4.0, 0.0, 6.0, 0.0]);
    }
}
