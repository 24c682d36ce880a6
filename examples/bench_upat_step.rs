//! UPAT training-step throughput (images/s): augment two views, instance
//! attack of K steps, UPAT loss, backward, SGD step — on random 3×32×32 data.
//!
//! `cargo run --example bench_upat_step -- WIDTH BATCH K ITERATIONS [cpu|cuda]`
//! prints `images_per_second=<value>`; scripts/bench/upat_step.py runs it next to the
//! PyTorch implementation of the same step and prints the ratio.

use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};
use upat::train::augment::Augmentations;
use upat::train::instance_attack::AttackLoss;
use upat::train::method::Method;
use upat::train::model::{HeadFeatures, InputNormalization, Network};
use upat::train::run::{AttackView, RunConfig};
use upat::train::sgd::Sgd;
use upat::train::trainer::batch_loss;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let device = match args.len() {
        5 => match args.pop().as_deref() {
            Some("cuda") => Device::Cuda(0),
            Some("cpu") => Device::Cpu,
            other => anyhow::bail!("device {other:?}: use cpu or cuda"),
        },
        4 => Device::Cpu,
        _ => anyhow::bail!("usage: bench_upat_step WIDTH BATCH K ITERATIONS [cpu|cuda]"),
    };
    let args: Vec<i64> = args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let (width, batch, steps, iterations) = (args[0], args[1], args[2], args[3]);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let normalization = InputNormalization {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let net = Network::new(
        &vs.root(),
        3,
        width,
        10,
        HeadFeatures::Projector,
        normalization.clone(),
    );
    let config = RunConfig {
        method: Method::Upat,
        data: "synthetic".into(),
        transform: None,
        arch: "resnet18".into(),
        width,
        epochs: 1,
        batch_size: batch as usize,
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-3,
        seed: 0,
        samples: None,
        holdout: 0,
        eps: 0.03,
        alpha: 2.0 / 256.0,
        steps,
        lambda: 1.0 / 256.0,
        tau: 0.5,
        attack_view: AttackView::TPrime,
        attack_loss: AttackLoss::Contrastive,
        features: HeadFeatures::Projector,
        standardized_features: false,
        encoder: None,
        image_shape: [3, 32, 32],
        classes: 10,
        normalization,
    };
    let mut sgd = Sgd::new(&vs, config.lr, config.momentum, config.weight_decay);
    let augment = Augmentations::default();
    let x = Tensor::rand([batch, 3, 32, 32], (Kind::Float, device));
    let y = Tensor::zeros([batch], (Kind::Int64, device));
    // CUDA kernels run asynchronously: time to the end of the last one.
    let synchronize = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    let mut step = || -> anyhow::Result<()> {
        let loss = batch_loss(&config, &net, &augment, &x, &y)?;
        sgd.zero_grad();
        loss.backward();
        sgd.step();
        Ok(())
    };
    step()?; // warm-up
    synchronize();
    let started = Instant::now();
    for _ in 0..iterations {
        step()?;
    }
    synchronize();
    println!(
        "images_per_second={}",
        (batch * iterations) as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
