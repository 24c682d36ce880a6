//! `upat-train`: UPAT and SimCLR pre-training, fine-tuning, supervised
//! baselines and ONNX export, with libtorch. Parses arguments into a run
//! config, calls the library, maps errors to exit code 2.

use anyhow::Result;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use upat::attack::suite::parse_number;
use upat::data::{DataSpec, Split};
use upat::progress::TerminalProgress;
use upat::train::command::{channel_statistics, export, run_training};
use upat::train::instance_attack::AttackLoss;
use upat::train::method::{
    Command as TrainCommand, FinetuneMode, Method, PretrainMethod, SupervisedMethod,
};
use upat::train::model::HeadFeatures;
use upat::train::run::{AttackView, RunConfig};

#[derive(Debug, Parser)]
#[command(
    name = "upat-train",
    version,
    about = "Train robust image classifiers with libtorch and export them to ONNX",
    allow_negative_numbers = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Self-supervised pre-training without labels: UPAT (paper Algorithm 1, Eq. 6) or SimCLR.
    #[command(allow_negative_numbers = true)]
    Pretrain {
        #[arg(long, value_enum, default_value = "upat")]
        method: PretrainMethod,
        #[command(flatten)]
        common: Common,
    },
    /// Train a linear head on a frozen pre-trained encoder, plainly or adversarially.
    #[command(allow_negative_numbers = true)]
    Finetune {
        /// The pre-training run directory.
        #[arg(long)]
        encoder: PathBuf,
        #[arg(long, value_enum, default_value = "at")]
        mode: FinetuneMode,
        #[arg(long, value_enum, default_value = "projector")]
        features: HeadFeatures,
        #[command(flatten)]
        common: Common,
    },
    /// Supervised baselines: cross-entropy, PGD adversarial training (Madry et al.),
    /// TRADES (β = 6) or adversarial logit pairing.
    #[command(allow_negative_numbers = true)]
    Supervised {
        #[arg(long, value_enum, default_value = "at")]
        method: SupervisedMethod,
        #[command(flatten)]
        common: Common,
    },
    /// Write a run's classifier as ONNX.
    Export {
        run: PathBuf,
        #[arg(short = 'o', long = "output-file", value_name = "MODEL.onnx")]
        out: PathBuf,
    },
    /// Print the libtorch this binary runs against: threads and CUDA devices.
    Info,
}

/// Options every training command takes.
#[derive(Debug, Args)]
struct Common {
    /// Training data, its train split (the forms are added from the library
    /// at start-up).
    #[arg(long)]
    data: String,
    /// Preprocessing of imagefolder:/images: data (see upat-audit --help).
    #[arg(long, value_name = "SPEC")]
    transform: Option<String>,
    /// Run directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_parser = ["resnet18"], default_value = "resnet18")]
    arch: String,
    /// Channel width of ResNet-18 (default 64, the paper's; finetune takes the encoder run's).
    #[arg(long, value_parser = positive_i64)]
    width: Option<i64>,
    #[arg(long, value_parser = upat::cli::positive)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 256, value_parser = upat::cli::positive)]
    batch_size: usize,
    #[arg(long, value_parser = upat::cli::positive_number)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0.9, value_parser = upat::cli::non_negative)]
    momentum: f64,
    #[arg(long, default_value_t = 1e-3, value_parser = upat::cli::non_negative)]
    weight_decay: f64,
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 0, value_parser = upat::cli::seed)]
    seed: u64,
    /// Use the first N samples of the train split.
    #[arg(long, value_parser = upat::cli::positive)]
    samples: Option<usize>,
    /// Samples at the end of the (truncated) split held out for the per-epoch metrics.
    #[arg(long, default_value_t = 256, value_parser = upat::cli::whole)]
    holdout: usize,
    /// Continue the run in --out from its last complete epoch.
    #[arg(long)]
    resume: bool,
    /// ℓ∞ budget of the training attack (pre-training default 0.03, others 8/255).
    #[arg(long)]
    eps: Option<String>,
    /// Attack step size (default 2/256).
    #[arg(long)]
    alpha: Option<String>,
    /// Attack steps K (pre-training default 5, adversarial training 10).
    #[arg(long, value_parser = positive_i64)]
    steps: Option<i64>,
    /// Weight λ of the second UPAT term (Eq. 6).
    #[arg(long, default_value = "1/256")]
    lambda: String,
    /// NT-Xent temperature τ.
    #[arg(long, default_value_t = 0.5, value_parser = upat::cli::positive_number)]
    tau: f64,
    #[arg(long, value_enum, default_value = "t'")]
    attack_view: AttackView,
    #[arg(long, value_enum, default_value = "contrastive")]
    attack_loss: AttackLoss,
}

/// A whole number ≥ 1 as libtorch's i64.
fn positive_i64(text: &str) -> Result<i64, String> {
    let n = upat::cli::positive(text)?;
    i64::try_from(n).map_err(|_| format!("{text} is more than the largest accepted, {}", i64::MAX))
}

fn number(flag: &str, text: &str) -> upat::Result<f64> {
    parse_number(&toml::Value::String(text.into()))
        .map(f64::from)
        .map_err(|m| upat::Error::Usage(format!("--{flag} {text}: {m}")))
}

/// Validated run config from what the user typed, with per-command defaults.
fn config(
    method: Method,
    common: &Common,
    encoder: Option<PathBuf>,
    features: HeadFeatures,
) -> upat::Result<RunConfig> {
    let command = method.command();
    let pretrain = command == TrainCommand::Pretrain;
    let spec: DataSpec = common.data.parse()?;
    if common.transform.is_some() && !spec.is_image_collection() {
        return Err(upat::Error::Usage(
            "--transform applies to imagefolder:DIR and images:LIST data".into(),
        ));
    }
    let options = upat::data::images::ImageOptions::new(common.transform.as_deref(), None)?;
    let mut data = spec.load_with(Split::Train, &options)?;
    if data.is_empty() {
        return Err(upat::Error::Usage(format!(
            "--data {}: the training split has no samples; give a data file that holds training images",
            common.data
        )));
    }
    if let Some(n) = common.samples {
        data.truncate(n);
    }
    let [c, h, w] = data.image_shape.map(|d| d as i64);
    let (epochs, lr) = match command {
        TrainCommand::Pretrain => (300, 0.1),
        TrainCommand::Finetune => (100, 0.5),
        TrainCommand::Supervised => (100, 0.1),
    };
    let config = RunConfig {
        method,
        data: common.data.clone(),
        transform: common.transform.clone(),
        arch: common.arch.clone(),
        width: network_width(common.width, encoder.as_deref())?,
        epochs: common.epochs.unwrap_or(epochs),
        batch_size: common.batch_size,
        lr: common.lr.unwrap_or(lr),
        momentum: common.momentum,
        weight_decay: common.weight_decay,
        seed: common.seed,
        samples: common.samples,
        holdout: common.holdout,
        eps: common
            .eps
            .as_deref()
            .map_or(Ok(if pretrain { 0.03 } else { 8.0 / 255.0 }), |e| {
                number("eps", e)
            })?,
        alpha: common
            .alpha
            .as_deref()
            .map_or(Ok(2.0 / 256.0), |a| number("alpha", a))?,
        steps: common.steps.unwrap_or(if pretrain { 5 } else { 10 }),
        lambda: number("lambda", &common.lambda)?,
        tau: common.tau,
        attack_view: common.attack_view,
        attack_loss: common.attack_loss,
        features,
        standardized_features: command == TrainCommand::Finetune,
        encoder,
        image_shape: [c, h, w],
        classes: data.num_classes as i64,
        normalization: channel_statistics(&data)?,
    };
    validate(&config)?;
    Ok(config)
}

/// The ResNet width: a fine-tuning run's is its encoder run's (repeating it
/// with --width is allowed, contradicting it is an error); otherwise
/// --width, 64 by default.
fn network_width(flag: Option<i64>, encoder: Option<&std::path::Path>) -> upat::Result<i64> {
    let Some(encoder) = encoder else {
        return Ok(flag.unwrap_or(64));
    };
    let encoder_config = upat::train::run::existing(encoder)?.read_config()?;
    match flag {
        Some(width) if width != encoder_config.width => Err(upat::Error::Usage(format!(
            "--width {width} differs from the width of the encoder in {} ({}); leave --width out to use the encoder's",
            encoder.display(),
            encoder_config.width
        ))),
        _ => Ok(encoder_config.width),
    }
}

/// Refuses settings that would crash libtorch or train nothing, naming the flag.
fn validate(config: &RunConfig) -> upat::Result<()> {
    config
        .check()
        .map_err(|bad| upat::Error::Usage(format!("--{} {}", bad.flag, bad.rule)))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Pretrain { method, common } => {
            let config = config(method.into(), &common, None, HeadFeatures::Projector)?;
            run_training(
                config,
                &common.out,
                common.resume,
                &common.device,
                &mut TerminalProgress::new("images"),
            )?;
        }
        Command::Finetune {
            encoder,
            mode,
            features,
            common,
        } => {
            let config = config(mode.into(), &common, Some(encoder), features)?;
            run_training(
                config,
                &common.out,
                common.resume,
                &common.device,
                &mut TerminalProgress::new("images"),
            )?;
            println!("model: {}", common.out.join("model.onnx").display());
        }
        Command::Supervised { method, common } => {
            let config = config(method.into(), &common, None, HeadFeatures::Backbone)?;
            run_training(
                config,
                &common.out,
                common.resume,
                &common.device,
                &mut TerminalProgress::new("images"),
            )?;
            println!("model: {}", common.out.join("model.onnx").display());
        }
        Command::Export { run, out } => {
            export(&run, &out)?;
            println!("wrote {}", out.display());
        }
        Command::Info => {
            println!("libtorch threads: {}", tch::get_num_threads());
            println!("cuda available: {}", tch::Cuda::is_available());
            println!("cuda devices: {}", tch::Cuda::device_count());
            let probe = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0])
                .sum(tch::Kind::Float)
                .double_value(&[]);
            println!("tensor check: sum([1,2,3]) = {probe}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The CLI, with `--data`'s forms from the library.
fn command() -> clap::Command {
    let mut command = Cli::command();
    for name in ["pretrain", "finetune", "supervised"] {
        command = command.mut_subcommand(name, |c| {
            c.mut_arg("data", |a| {
                a.help(format!(
                    "Training data (its train split): {}",
                    upat::data::DATA_FORMS
                ))
            })
        });
    }
    command
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // libtorch reports some failures by panicking through tch, with C++
    // stack frames: they end here as an error with their first line.
    let outcome = upat::contain::contained("libtorch", "training stopped", || {
        run(cli).map_err(|e| upat::Error::Usage(format!("{e:#}")))
    });
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
