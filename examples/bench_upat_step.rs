//! UPAT training-step throughput (images/s): augment two views, instance
//! attack of K steps, UPAT loss, backward, SGD step — on random 3×32×32 data.
//!
//! `cargo run --example bench_upat_step -- WIDTH BATCH K ITERATIONS` prints
//! `images_per_second=<value>`; scripts/bench/upat_step.py runs it next to the
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
    let args: Vec<i64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        args.len() == 4,
        "usage: bench_upat_step WIDTH BATCH K ITERATIONS"
    );
    let (width, batch, steps, iterations) = (args[0], args[1], args[2], args[3]);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
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
    let x = Tensor::rand([batch, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::zeros([batch], (Kind::Int64, Device::Cpu));
    let mut step = || -> anyhow::Result<()> {
        let loss = batch_loss(&config, &net, &augment, &x, &y)?;
        sgd.zero_grad();
        loss.backward();
        sgd.step();
        Ok(())
    };
    step()?; // warm-up
    let started = Instant::now();
    for _ in 0..iterations {
        step()?;
    }
    println!(
        "images_per_second={}",
        (batch * iterations) as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
