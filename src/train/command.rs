//! What `upat-train`'s commands do, behind the CLI: open or resume a run
//! directory, build the network, train, export.

use super::export::{to_onnx, ExportInfo};
use super::model::{InputNormalization, Network};
use super::run::{existing, RunConfig, RunDir};
use super::trainer::train;
use crate::data::{DataSpec, Dataset, Split};
use crate::error::{Error, Result};
use crate::progress::Progress;
use std::path::Path;
use tch::{nn, Device};

/// Per-channel mean and standard deviation of a dataset, normalisation that
/// the exported model then carries inside its graph.
pub fn channel_statistics(data: &Dataset) -> Result<InputNormalization> {
    let [c, h, w] = data.image_shape;
    let plane = h * w;
    let (mut mean, mut std) = (Vec::new(), Vec::new());
    let (mut sum, mut square) = (vec![0f64; c], vec![0f64; c]);
    let positions: Vec<usize> = (0..data.len()).collect();
    for chunk in positions.chunks(256) {
        let pixels = data.gather(chunk)?;
        for image in pixels.chunks_exact(c * plane) {
            for (channel, values) in image.chunks_exact(plane).enumerate() {
                for &v in values {
                    sum[channel] += f64::from(v);
                    square[channel] += f64::from(v) * f64::from(v);
                }
            }
        }
    }
    let n = (data.len() * plane) as f64;
    for channel in 0..c {
        let (sum, square) = (sum[channel], square[channel]);
        let m = sum / n.max(1.0);
        mean.push(m as f32);
        std.push(((square / n.max(1.0) - m * m).max(1e-6)).sqrt() as f32);
    }
    Ok(InputNormalization { mean, std })
}

/// The first `samples` of the train split, less a held-out slice at its end.
pub fn training_split(config: &RunConfig) -> Result<(Dataset, Dataset)> {
    let spec: DataSpec = config.data.parse()?;
    let mut data = spec.load_with(Split::Train, &config.image_options()?)?;
    if let Some(n) = config.samples {
        data.truncate(n);
    }
    // Image collections: decoded once here, kept when they fit.
    data.prepare(false)?;
    if config.holdout >= data.len() {
        return Err(Error::Usage(format!(
            "--holdout {} leaves no training samples out of {}",
            config.holdout,
            data.len()
        )));
    }
    let cut = data.len() - config.holdout;
    let holdout = data.split_off(cut);
    Ok((data, holdout))
}

/// `--device auto|cpu|cuda`.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        "cuda" => Err(Error::Usage(
            "--device cuda: libtorch sees no CUDA device here; use --device cpu".into(),
        )),
        "auto" => Ok(Device::cuda_if_available()),
        other => Err(Error::Usage(format!(
            "--device {other}: use cpu, cuda or auto"
        ))),
    }
}

/// A device as the command line names it (`cpu`, `cuda:0`), for messages.
pub fn device_label(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

fn build(config: &RunConfig, vs: &nn::VarStore) -> Network {
    Network::new(
        &vs.root(),
        config.image_shape[0],
        config.width,
        config.classes,
        config.features,
        config.normalization.clone(),
    )
    .with_standardized_features(&vs.root(), config.standardized_features)
}

/// libtorch's error, reduced to its first line: the C++ stack frames that
/// follow it mean nothing to a user.
pub fn torch_message(e: &tch::TchError) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    first.to_string()
}

/// Starts (or, with `resume`, continues) the run in `dir`.
pub fn run_training(
    config: RunConfig,
    dir: &Path,
    resume: bool,
    device_name: &str,
    progress: &mut dyn Progress,
) -> Result<()> {
    let run = RunDir(dir.to_path_buf());
    let config = if resume {
        let saved = existing(dir)?.read_config()?;
        RunConfig {
            epochs: config.epochs.max(saved.epochs),
            ..saved
        }
    } else {
        if run.config().exists() {
            return Err(Error::Usage(format!(
                "{} already holds a run; pass --resume to continue it, or choose another --out",
                dir.display()
            )));
        }
        config
    };
    let (train_data, holdout) = training_split(&config)?;
    let device = device(device_name)?;
    // A resumed run may have been given more epochs.
    run.start(&config)?;
    // Initialised on the CPU, then moved: a seed names the same initial
    // weights on every device (CUDA's generator draws other values).
    let mut vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(config.seed as i64);
    let net = build(&config, &vs);
    vs.set_device(device);
    if let Some(encoder) = &config.encoder {
        let source = existing(encoder)?;
        if run.completed_epochs()? == 0 {
            if source.read_checkpoint()?.is_none() {
                return Err(Error::Usage(format!(
                    "--encoder {}: the run has no completed epoch, so no encoder to start from; \
                     let it finish an epoch (upat-train pretrain ... --out {} --resume) or give another run",
                    encoder.display(),
                    encoder.display()
                )));
            }
            let missing = vs.load_partial(source.checkpoint()).map_err(|e| {
                Error::data(
                    source.checkpoint(),
                    format!("cannot load the encoder: {}", torch_message(&e)),
                )
            })?;
            if missing.iter().any(|name| name.starts_with("encoder.")) {
                return Err(Error::Usage(format!(
                    "{} does not hold an encoder of this width and input",
                    encoder.display()
                )));
            }
        }
    }
    progress.line(&format!(
        "{}: {} training, {} held out, on {}",
        config.method,
        train_data.len(),
        holdout.len(),
        device_label(device)
    ));
    train(&config, &run, &vs, &net, &train_data, &holdout, progress)?;
    if config.method.makes_classifier() {
        export(dir, &run.model())?;
    }
    Ok(())
}

/// Writes the run's classifier as ONNX to `out`. A pre-training run's
/// head was never trained: exporting it would make a random classifier.
pub fn export(dir: &Path, out: &Path) -> Result<()> {
    let run = existing(dir)?;
    let config = run.read_config()?;
    if !config.method.makes_classifier() {
        return Err(Error::Usage(format!(
            "{} is a pre-training run ({}): it learned an encoder, not a classifier, and its head is untrained; \
             fine-tune it first (upat-train finetune --encoder {} ...) and export that run",
            dir.display(),
            config.method.label(),
            dir.display()
        )));
    }
    let checkpoint = run.read_checkpoint()?.ok_or_else(|| {
        Error::Usage(format!(
            "{} has no completed epoch to export",
            dir.display()
        ))
    })?;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(&config, &vs);
    checkpoint.restore_variables(&vs, &run.checkpoint())?;
    let info = ExportInfo {
        method: config.method.label(),
        dataset: config.data.clone(),
        image_shape: config.image_shape,
        train_config: serde_json::to_string(&config).expect("configs serialise"),
    };
    let proto = to_onnx(&net, &info);
    crate::atomic::write_atomic(out, &crate::onnx::encode(&proto))
}
