//! Run directories (DESIGN §5): `config.json` (everything needed to repeat
//! the run), `checkpoint.safetensors` and `optimizer.safetensors` (written
//! atomically at the end of every epoch), `state.json` (completed epochs),
//! `metrics.csv` (one row per epoch) and `model.onnx` after export.

use super::instance_attack::AttackLoss;
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
    /// `supervised`, `pretrain` or `finetune`.
    pub command: String,
    /// ce | at | trades | alp (supervised), upat | simclr (pretrain), linear | at | trades-full (finetune).
    pub method: String,
    pub data: String,
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
    /// The head reads unit-norm features (fine-tuning runs).
    #[serde(default)]
    pub unit_features: bool,
    /// The pre-training run a fine-tuning run starts from.
    pub encoder: Option<PathBuf>,
    pub image_shape: [i64; 3],
    pub classes: i64,
    pub normalization: InputNormalization,
}

/// How far a run got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    pub completed_epochs: usize,
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
    pub fn optimizer(&self) -> PathBuf {
        self.0.join("optimizer.safetensors")
    }
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.csv")
    }
    pub fn model(&self) -> PathBuf {
        self.0.join("model.onnx")
    }

    pub fn read_config(&self) -> Result<RunConfig> {
        let text =
            std::fs::read_to_string(self.config()).map_err(|e| Error::io(self.config(), e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::data(self.config(), format!("not a upat run config: {e}")))
    }

    pub fn read_state(&self) -> Result<RunState> {
        match std::fs::read_to_string(self.state()) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::data(self.state(), format!("corrupt run state: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RunState {
                completed_epochs: 0,
            }),
            Err(e) => Err(Error::io(self.state(), e)),
        }
    }

    /// Creates the directory and writes the config of a new run.
    pub fn start(&self, config: &RunConfig) -> Result<()> {
        std::fs::create_dir_all(&self.0).map_err(|e| Error::io(&self.0, e))?;
        let json = serde_json::to_vec_pretty(config).expect("configs serialise");
        crate::atomic::write_atomic(&self.config(), &json)
    }

    /// Writes weights, optimizer state, metrics and state after an epoch; the
    /// state file goes last, so an interrupted write leaves the previous epoch
    /// in force.
    pub fn save_epoch(
        &self,
        vs: &tch::nn::VarStore,
        sgd: &super::sgd::Sgd,
        metrics: &EpochMetrics,
    ) -> Result<()> {
        let tmp_weights = self.0.join(".checkpoint.tmp.safetensors");
        vs.save(&tmp_weights)
            .map_err(|e| Error::Usage(format!("cannot write {}: {e}", tmp_weights.display())))?;
        std::fs::rename(&tmp_weights, self.checkpoint())
            .map_err(|e| Error::io(self.checkpoint(), e))?;
        let tmp_optimizer = self.0.join(".optimizer.tmp.safetensors");
        sgd.save(&tmp_optimizer)?;
        std::fs::rename(&tmp_optimizer, self.optimizer())
            .map_err(|e| Error::io(self.optimizer(), e))?;
        self.append_metrics(metrics)?;
        let state = serde_json::to_vec(&RunState {
            completed_epochs: metrics.epoch,
        })
        .expect("state serialises");
        crate::atomic::write_atomic(&self.state(), &state)
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
        writer
            .serialize(row)
            .map_err(|e| Error::Usage(format!("cannot format metrics: {e}")))?;
        let bytes = writer
            .into_inner()
            .map_err(|e| Error::Usage(format!("cannot format metrics: {e}")))?;
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
