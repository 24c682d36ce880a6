//! The epoch loop shared by every training command, and the per-batch
//! objectives: supervised CE and PGD adversarial training, SimCLR, UPAT
//! (paper Eq. 6), and linear or adversarial fine-tuning of a frozen encoder.

use super::adversary::{class_pgd, trades_adversary};
use super::augment::Augmentations;
use super::instance_attack::InstanceAttack;
use super::losses::{nt_xent, upat_loss};
use super::method::{Command, Method};
use super::model::Network;
use super::run::{AttackView, EpochMetrics, RunConfig, RunDir};
use super::sgd::Sgd;
use crate::attack::rng::{hash_str, SampleRng};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::progress::Progress;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Images `[n, C, H, W]` and labels of samples `ids`, on `device`.
fn batch(data: &Dataset, ids: &[usize], device: Device) -> Result<(Tensor, Tensor)> {
    let [c, h, w] = data.image_shape.map(|d| d as i64);
    let pixels = data.gather(ids)?;
    let labels: Vec<i64> = ids.iter().map(|&i| data.labels[i]).collect();
    Ok((
        Tensor::from_slice(&pixels)
            .view([ids.len() as i64, c, h, w])
            .to_device(device),
        Tensor::from_slice(&labels).to_device(device),
    ))
}

/// TRADES weight β of the robustness term (the paper's value).
const TRADES_BETA: f64 = 6.0;
/// Adversarial logit pairing weight (Kannan et al. 2018).
const ALP_WEIGHT: f64 = 0.5;

/// The training objective of one batch, per the run's command and method.
pub fn batch_loss(
    config: &RunConfig,
    net: &Network,
    augment: &Augmentations,
    x: &Tensor,
    y: &Tensor,
) -> Result<Tensor> {
    let attack = InstanceAttack {
        eps: config.eps,
        alpha: config.alpha,
        steps: config.steps,
        loss: config.attack_loss,
        tau: config.tau,
    };
    // A fine-tuned encoder is frozen, BatchNorm statistics included
    // (trades-full fine-tunes everything).
    let train_encoder = config.method.trains_encoder();
    Ok(match config.method {
        Method::Ce | Method::Linear => net.logits_t(x, train_encoder).cross_entropy_for_logits(y),
        Method::At | Method::FinetuneAt => {
            let adv = class_pgd(net, x, y, config.eps, config.alpha, config.steps);
            net.logits_t(&adv, train_encoder)
                .cross_entropy_for_logits(y)
        }
        // TRADES: CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)); trades-full trains the whole network.
        Method::Trades | Method::TradesFull => {
            let adv = trades_adversary(net, x, config.eps, config.alpha, config.steps);
            let logits = net.logits_t(x, true);
            let robust = net.logits_t(&adv, true).log_softmax(1, Kind::Float).kl_div(
                &logits.softmax(1, Kind::Float),
                tch::Reduction::Sum,
                false,
            ) / x.size()[0] as f64;
            logits.cross_entropy_for_logits(y) + robust * TRADES_BETA
        }
        // ALP: CE on clean and PGD examples, plus the squared distance of their logits.
        Method::Alp => {
            let adv = class_pgd(net, x, y, config.eps, config.alpha, config.steps);
            let (clean, attacked) = (net.logits_t(x, true), net.logits_t(&adv, true));
            let pairing = (&clean - &attacked)
                .square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .mean(Kind::Float);
            (clean.cross_entropy_for_logits(y) + attacked.cross_entropy_for_logits(y)) * 0.5
                + pairing * ALP_WEIGHT
        }
        Method::Simclr => nt_xent(
            &net.project_t(&augment.view(x), true),
            &net.project_t(&augment.view(x), true),
            config.tau,
        ),
        Method::Upat => {
            let (t, t_prime) = (augment.view(x), augment.view(x));
            // Algorithm 1: perturb one view (or x) against the other view's
            // embedding. That embedding is the loss's too: computed once, with
            // its graph, and held fixed during the attack.
            let (z_t, z_t_prime, adv) = match config.attack_view {
                AttackView::T => {
                    let z_t_prime = net.project_t(&t_prime, true);
                    let adv = attack.perturb(net, &t, &z_t_prime, true);
                    (net.project_t(&t, true), z_t_prime, adv)
                }
                AttackView::TPrime | AttackView::X => {
                    let z_t = net.project_t(&t, true);
                    let origin = if config.attack_view == AttackView::X {
                        x
                    } else {
                        &t_prime
                    };
                    let adv = attack.perturb(net, origin, &z_t, true);
                    (z_t, net.project_t(&t_prime, true), adv)
                }
            };
            let z_adv = net.project_t(&adv, true);
            upat_loss(&z_t, &z_t_prime, &z_adv, config.lambda, config.tau)
        }
    })
}

/// Neighbours that vote in pre-training's kNN monitor.
const KNN_NEIGHBOURS: i64 = 20;

/// `features` `[n, D]` of every image of `data`, clean, batch by batch,
/// without gradients, concatenated to `[N, D]`.
fn features_of(
    config: &RunConfig,
    data: &Dataset,
    device: Device,
    features: impl Fn(&Tensor) -> Tensor,
) -> Result<Tensor> {
    let ids: Vec<usize> = (0..data.len()).collect();
    let chunks: Vec<Tensor> = ids
        .chunks(config.batch_size.max(1))
        .map(|chunk| {
            let (x, _) = batch(data, chunk, device)?;
            Ok(tch::no_grad(|| features(&x)))
        })
        .collect::<Result<_>>()?;
    Ok(Tensor::cat(&chunks, 0))
}

/// Pre-training's monitor: held-out accuracy of a vote among the k = 20
/// training images whose encoder features are nearest (cosine). The labels
/// serve this measurement only, never the training; a loss near chance
/// with a kNN accuracy that does not rise says the encoder is not learning.
fn knn_accuracy(
    config: &RunConfig,
    net: &Network,
    train_data: &Dataset,
    holdout: &Dataset,
    device: Device,
) -> Result<f64> {
    let unit_features = |data: &Dataset| -> Result<Tensor> {
        let h = features_of(config, data, device, |x| net.features_t(x, false))?;
        Ok(&h / h.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12))
    };
    let (bank, queries) = (unit_features(train_data)?, unit_features(holdout)?);
    let k = KNN_NEIGHBOURS.min(train_data.len() as i64);
    let (_, nearest) = queries
        .matmul(&bank.transpose(0, 1))
        .topk(k, 1, true, false);
    let labels = Tensor::from_slice(&train_data.labels).to_device(device);
    let votes = labels
        .index_select(0, &nearest.flatten(0, -1))
        .view([-1, k])
        .one_hot(train_data.num_classes as i64)
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
    let truth = Tensor::from_slice(&holdout.labels).to_device(device);
    let correct = votes
        .argmax(1, false)
        .eq_tensor(&truth)
        .sum(Kind::Int64)
        .int64_value(&[]);
    Ok(correct as f64 / holdout.len().max(1) as f64)
}

/// Accuracy, clean and under 10-step PGD, on the held-out slice.
fn holdout_accuracy(
    config: &RunConfig,
    net: &Network,
    holdout: &Dataset,
    device: Device,
) -> Result<(f64, f64)> {
    let (mut clean, mut robust) = (0i64, 0i64);
    let ids: Vec<usize> = (0..holdout.len()).collect();
    for chunk in ids.chunks(config.batch_size.max(1)) {
        let (x, y) = batch(holdout, chunk, device)?;
        clean += tch::no_grad(|| {
            net.logits_t(&x, false)
                .argmax(1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[])
        });
        let adv = class_pgd(net, &x, &y, config.eps, config.eps / 4.0, 10);
        robust += tch::no_grad(|| {
            net.logits_t(&adv, false)
                .argmax(1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[])
        });
    }
    let n = holdout.len().max(1) as f64;
    Ok((clean as f64 / n, robust as f64 / n))
}

/// The learning rate of `epoch` (1-based): fine-tuning drops it ×0.1 halfway (paper §4.1).
fn learning_rate(config: &RunConfig, epoch: usize) -> f64 {
    if config.method.command() == Command::Finetune
        && epoch > config.epochs / 2
        && config.epochs > 1
    {
        config.lr * 0.1
    } else {
        config.lr
    }
}

/// Trains from the run directory's last complete epoch (0 for a new run) to
/// `config.epochs`, checkpointing after every epoch. Every epoch's shuffling
/// and randomness derive from (seed, epoch), so a resumed run repeats an
/// uninterrupted one.
pub fn train(
    config: &RunConfig,
    run: &RunDir,
    vs: &nn::VarStore,
    net: &Network,
    train_data: &Dataset,
    holdout: &Dataset,
    progress: &mut dyn Progress,
) -> Result<()> {
    let device = vs.device();
    if !config.method.trains_encoder() {
        for (name, t) in vs.variables() {
            if !name.starts_with("head.") {
                let _ = t.set_requires_grad(false);
            }
        }
    }
    let mut sgd = Sgd::new(vs, config.lr, config.momentum, config.weight_decay);
    let completed = match run.read_checkpoint()? {
        Some(checkpoint) => {
            checkpoint.restore_variables(vs, &run.checkpoint())?;
            sgd.restore(&checkpoint.tensors, &run.checkpoint())?;
            progress.line(&format!(
                "resuming after epoch {}",
                checkpoint.completed_epochs
            ));
            checkpoint.completed_epochs
        }
        None => {
            if net.standardization.is_some() {
                progress.line("fitting the head's feature standardisation on the training data");
                let features = features_of(config, train_data, device, |x| {
                    net.head_features_t(x, false)
                })?;
                net.fit_standardization(&features);
            }
            0
        }
    };
    let augment = Augmentations::default();
    for epoch in completed + 1..=config.epochs {
        let started = Instant::now();
        tch::manual_seed((config.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9)) as i64);
        let mut rng = SampleRng::new(config.seed, hash_str("shuffle"), epoch as u64, 0);
        let mut order: Vec<usize> = (0..train_data.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.integer(0, i));
        }
        sgd.lr = learning_rate(config, epoch);
        progress.begin(
            &format!("epoch {epoch}/{}", config.epochs),
            train_data.len() as u64,
        );
        let (mut total, mut seen) = (0.0, 0usize);
        // A last batch of one image is left out: BatchNorm's training
        // statistics and NT-Xent's negatives need at least two.
        for (b, chunk) in order
            .chunks(config.batch_size.max(2))
            .filter(|chunk| chunk.len() >= 2)
            .enumerate()
        {
            let (x, y) = batch(train_data, chunk, device)?;
            let loss = batch_loss(config, net, &augment, &x, &y)?;
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(Error::Training(format!(
                    "the loss became {value} at epoch {epoch}, batch {b}; training stopped and {} keeps the last complete epoch ({}). Lower --lr and resume",
                    run.0.display(),
                    epoch - 1
                )));
            }
            sgd.zero_grad();
            loss.backward();
            sgd.step();
            total += value * chunk.len() as f64;
            seen += chunk.len();
            progress.advance(chunk.len() as u64);
            progress.status(&format!("loss {:.4}", total / seen as f64));
        }
        let (clean_acc, pgd_acc, knn_acc) = if holdout.is_empty() {
            (None, None, None)
        } else if config.method.command() == Command::Pretrain {
            let knn = knn_accuracy(config, net, train_data, holdout, device)?;
            (None, None, Some(knn))
        } else {
            let (c, r) = holdout_accuracy(config, net, holdout, device)?;
            (Some(c), Some(r), None)
        };
        let metrics = EpochMetrics {
            epoch,
            loss: total / seen.max(1) as f64,
            lr: sgd.lr,
            clean_acc,
            pgd_acc,
            seconds: started.elapsed().as_secs_f64(),
            knn_acc,
        };
        run.save_epoch(vs, &sgd, &metrics)?;
        let accuracy = match (clean_acc, pgd_acc, knn_acc) {
            (Some(c), Some(r), _) => format!(", held-out clean {c:.3}, PGD {r:.3}"),
            (_, _, Some(k)) => format!(", held-out kNN {k:.3}"),
            _ => String::new(),
        };
        progress.line(&format!(
            "epoch {epoch}: loss {:.4}{accuracy} ({:.1}s)",
            metrics.loss, metrics.seconds
        ));
    }
    Ok(())
}
