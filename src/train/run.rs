//! Run directories (DESIGN §5): `config.json` (everything needed to repeat
//! the run), `checkpoint.safetensors` (weights, optimizer state and the
//! number of completed epochs, in one file replaced atomically at the end of
//! every epoch), `metrics.csv` (one row per epoch) and `model.onnx` after
//! export.
//!
//! One file holds everything a resume needs so that its rename is the single
//! moment an epoch becomes complete: with weights, optimizer state and epoch
//! count in separate files, a run killed between two renames would resume
//! from mismatched pieces.

use super::instance_attack::AttackLoss;
use super::method::Method;
use super::model::{HeadFeatures, InputNormalization};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Which augmented view the instance-level attack perturbs (`--attack-view`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum AttackView {
    /// t(x)
    #[value(name = "t")]
    #[serde(rename = "t")]
    T,
    /// t'(x), the default
    #[value(name = "t'")]
    #[serde(rename = "t'")]
    TPrime,
    /// the clean image x
    #[value(name = "x")]
    #[serde(rename = "x")]
    X,
}

/// Everything a run needs to be repeated or resumed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    /// The command and method (written as `"command"` and `"method"`).
    #[serde(flatten)]
    pub method: Method,
    pub data: String,
    /// `--transform` for image collections (imagefolder:, images:).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    pub arch: String,
    pub width: i64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Training samples used (the first N of the train split, before the hold-out).
    pub samples: Option<usize>,
    /// Samples held out from training at the end of the split, for metrics.
    pub holdout: usize,
    pub eps: f64,
    pub alpha: f64,
    pub steps: i64,
    pub lambda: f64,
    pub tau: f64,
    pub attack_view: AttackView,
    pub attack_loss: AttackLoss,
    pub features: HeadFeatures,
    /// The head reads standardised features (fine-tuning runs).
    #[serde(default)]
    pub standardized_features: bool,
    /// The pre-training run a fine-tuning run starts from.
    pub encoder: Option<PathBuf>,
    pub image_shape: [i64; 3],
    pub classes: i64,
    pub normalization: InputNormalization,
}

/// A setting of a run config outside what training can use.
#[derive(Debug, Clone, PartialEq)]
pub struct BadSetting {
    /// The field of config.json.
    pub field: &'static str,
    /// The command-line flag that sets it (without `--`).
    pub flag: &'static str,
    /// What it must be.
    pub rule: &'static str,
}

/// The widest network accepted: a ResNet-18 of width 4096 already holds
/// about 45 billion parameters.
const MAX_WIDTH: i64 = 4096;

impl RunConfig {
    /// How image collections are read (`--transform`).
    pub fn image_options(&self) -> crate::Result<crate::data::images::ImageOptions> {
        crate::data::images::ImageOptions::new(self.transform.as_deref(), None)
    }

    /// The same rules for a config typed on the command line and one read
    /// from a run directory (which may have been edited or damaged): the
    /// first setting that would crash libtorch or train nothing.
    pub fn check(&self) -> std::result::Result<(), BadSetting> {
        let finite_at_least = |v: f64, min: f64| v.is_finite() && v >= min;
        let rules: [(bool, &'static str, &'static str, &'static str); 14] = [
            (
                (1..=MAX_WIDTH).contains(&self.width),
                "width",
                "width",
                "must be from 1 to 4096",
            ),
            (
                self.batch_size >= 2,
                "batch_size",
                "batch-size",
                "must be at least 2 (contrastive losses and BatchNorm need pairs)",
            ),
            (
                (1..=1_000_000).contains(&self.epochs),
                "epochs",
                "epochs",
                "must be from 1 to 1000000",
            ),
            (
                self.lr.is_finite() && self.lr > 0.0,
                "lr",
                "lr",
                "must be a number > 0",
            ),
            (
                (0.0..1.0).contains(&self.momentum),
                "momentum",
                "momentum",
                "must be in [0, 1)",
            ),
            (
                finite_at_least(self.weight_decay, 0.0),
                "weight_decay",
                "weight-decay",
                "must be ≥ 0",
            ),
            (
                finite_at_least(self.eps, 0.0) && self.eps <= 1.0,
                "eps",
                "eps",
                "must be in [0, 1] (pixels are in [0, 1])",
            ),
            (
                self.alpha.is_finite() && self.alpha > 0.0,
                "alpha",
                "alpha",
                "must be > 0",
            ),
            (
                (0..=10_000).contains(&self.steps),
                "steps",
                "steps",
                "must be from 0 to 10000",
            ),
            (
                self.tau.is_finite() && self.tau > 0.0,
                "tau",
                "tau",
                "must be > 0",
            ),
            (
                finite_at_least(self.lambda, 0.0),
                "lambda",
                "lambda",
                "must be ≥ 0",
            ),
            (
                self.samples != Some(0),
                "samples",
                "samples",
                "must be at least 1",
            ),
            (
                self.image_shape.iter().all(|&d| (1..=65_536).contains(&d)),
                "image_shape",
                "data",
                "must be three sizes from 1 to 65536 (the data's channels, height, width)",
            ),
            (
                (2..=1_000_000).contains(&self.classes),
                "classes",
                "data",
                "must be from 2 to 1000000 (the data's classes)",
            ),
        ];
        match rules.into_iter().find(|(ok, ..)| !ok) {
            Some((_, field, flag, rule)) => Err(BadSetting { field, flag, rule }),
            None => Ok(()),
        }
    }
}

/// Name of the completed-epoch count among a checkpoint's tensors (model
/// variables are dotted paths, the optimizer's start `optimizer/`).
const COMPLETED_EPOCHS: &str = "run/completed_epochs";

/// What a run directory's checkpoint holds.
pub struct Checkpoint {
    pub completed_epochs: usize,
    /// Model variables and optimizer state, by name.
    pub tensors: Vec<(String, tch::Tensor)>,
}

impl Checkpoint {
    /// Copies every variable of `vs` from the checkpoint; `source` names it
    /// in errors.
    pub fn restore_variables(&self, vs: &tch::nn::VarStore, source: &Path) -> Result<()> {
        for (name, mut variable) in vs.variables() {
            let (_, value) = self
                .tensors
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| {
                    Error::data(
                        source,
                        format!("no `{name}` in the checkpoint; the run directory does not match this network"),
                    )
                })?;
            if value.size() != variable.size() {
                return Err(Error::data(
                    source,
                    format!(
                        "`{name}` has shape {:?} in the checkpoint, {:?} in this network",
                        value.size(),
                        variable.size()
                    ),
                ));
            }
            tch::no_grad(|| variable.copy_(value));
        }
        Ok(())
    }
}

/// One line of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    /// Accuracy on the held-out slice of the training split (never the test set).
    pub clean_acc: Option<f64>,
    /// Accuracy under PGD (ℓ∞, the run's ε, 10 steps) on the held-out slice.
    pub pgd_acc: Option<f64>,
    pub seconds: f64,
    /// Pre-training runs: held-out accuracy of a k-nearest-neighbour vote on
    /// encoder features (labels used for this measurement only).
    pub knn_acc: Option<f64>,
}

/// Paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.csv")
    }
    pub fn model(&self) -> PathBuf {
        self.0.join("model.onnx")
    }

    /// The run's config, held to the same rules as the command line's.
    pub fn read_config(&self) -> Result<RunConfig> {
        let path = self.config();
        let bytes = crate::limits::read_regular(&path)?;
        let config: RunConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::data(&path, format!("not a upat run config: {e}")))?;
        config.check().map_err(|bad| {
            Error::data(
                &path,
                format!(
                    "`{}` {} (it is --{} on the command line); the run directory was edited or damaged",
                    bad.field, bad.rule, bad.flag
                ),
            )
        })?;
        Ok(config)
    }

    /// The last complete epoch's checkpoint, or `None` before the first.
    pub fn read_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let path = self.checkpoint();
        if !path.exists() {
            return Ok(None);
        }
        // A regular file under the memory ceiling; safetensors checks that
        // every tensor lies inside it.
        crate::limits::open_regular(&path)?;
        let tensors = tch::Tensor::read_safetensors(&path).map_err(|e| {
            Error::data(
                &path,
                format!(
                    "not a readable checkpoint: {}",
                    super::command::torch_message(&e)
                ),
            )
        })?;
        let completed_epochs = tensors
            .iter()
            .find(|(name, _)| name == COMPLETED_EPOCHS)
            .and_then(|(_, t)| t.f_int64_value(&[]).ok())
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                Error::data(
                    &path,
                    "the checkpoint has no epoch count: it was not written by this version of upat-train",
                )
            })?;
        Ok(Some(Checkpoint {
            completed_epochs,
            tensors,
        }))
    }

    /// Epochs completed so far (0 for a new run).
    pub fn completed_epochs(&self) -> Result<usize> {
        Ok(self.read_checkpoint()?.map_or(0, |c| c.completed_epochs))
    }

    /// Creates the directory and writes the config of a new run.
    pub fn start(&self, config: &RunConfig) -> Result<()> {
        std::fs::create_dir_all(&self.0).map_err(|e| Error::io(&self.0, e))?;
        let json = serde_json::to_vec_pretty(config).expect("configs serialise");
        crate::atomic::write_atomic(&self.config(), &json)
    }

    /// Records a finished epoch: its metrics row first, then the checkpoint
    /// (weights, optimizer state, epoch count) by one atomic rename, which is
    /// the moment the epoch counts as complete. A run killed before it
    /// resumes from the previous epoch, and the metrics row of the epoch in
    /// flight is dropped then.
    pub fn save_epoch(
        &self,
        vs: &tch::nn::VarStore,
        sgd: &super::sgd::Sgd,
        metrics: &EpochMetrics,
    ) -> Result<()> {
        self.append_metrics(metrics)?;
        let mut named: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
        named.extend(sgd.state());
        named.push((
            COMPLETED_EPOCHS.to_string(),
            tch::Tensor::from(metrics.epoch as i64),
        ));
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let refs: Vec<(&str, &tch::Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        crate::atomic::write_atomic_with(&self.checkpoint(), |tmp| {
            tch::Tensor::write_safetensors(&refs, tmp).map_err(std::io::Error::other)
        })
    }

    /// Rewrites metrics.csv with the rows of completed epochs plus `row`
    /// (a resumed run drops any row of the epoch that was in flight).
    fn append_metrics(&self, row: &EpochMetrics) -> Result<()> {
        let mut kept = String::new();
        if let Ok(text) = std::fs::read_to_string(self.metrics()) {
            for line in text.lines().skip(1) {
                let epoch: usize = line
                    .split(',')
                    .next()
                    .and_then(|e| e.parse().ok())
                    .unwrap_or(usize::MAX);
                if epoch < row.epoch {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.serialize(row).map_err(|e| Error::Format {
            what: "metrics",
            message: e.to_string(),
        })?;
        let bytes = writer.into_inner().map_err(|e| Error::Format {
            what: "metrics",
            message: e.to_string(),
        })?;
        let text = String::from_utf8(bytes).expect("csv is utf-8");
        let (header, line) = text.split_once('\n').expect("header and row");
        crate::atomic::write_atomic(
            &self.metrics(),
            format!("{header}\n{kept}{line}").as_bytes(),
        )
    }
}

/// A run directory that must already hold a run.
pub fn existing(dir: &Path) -> Result<RunDir> {
    let run = RunDir(dir.to_path_buf());
    if !run.config().is_file() {
        return Err(Error::Usage(format!(
            "{} is not a run directory (no config.json)",
            dir.display()
        )));
    }
    Ok(run)
}
