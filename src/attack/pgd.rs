//! Projected gradient descent (Madry et al. 2018) in ℓ∞, ℓ2 and ℓ1 (the
//! sparse steps of Maini et al. 2020), with random starts and restarts.
//! FGSM (`fgsm.rs`) is its single-step, zero-start special case.
//!
//! Suite fields: `norm`, `eps`, `steps` (≥ 1), `step_size` (> 0),
//! `restarts`, `random_start` (default true), `loss` (ce, margin or dlr).

use super::active::ActiveSet;
use super::project::{direction, norm_of, project};
use super::registry::{Entry, FieldError};
use super::rng::{hash_str, SampleRng};
use super::{Attack, Batch, Fields, Loss, Model, Norm, Oracle, Perturbed, Settings};
use crate::error::Result;
use std::sync::Arc;

/// A PGD (or FGSM) attack, ready to run.
#[derive(Debug, Clone)]
pub struct Pgd {
    /// `pgd` or `fgsm`.
    kind: &'static str,
    pub norm: Norm,
    pub eps: f32,
    pub steps: u32,
    pub step_size: f32,
    pub restarts: u32,
    pub random_start: bool,
    pub loss: Loss,
    /// Keys the random streams by the attack's settings rather than its id,
    /// so that a transfer attack from a model to itself repeats the white-box
    /// attack with the same settings exactly.
    settings_hash: u64,
}

/// ℓ1 steps spread their mass over k coordinates, k drawn from this range.
const L1_K: (usize, usize) = (5, 20);

pub const ENTRY: Entry = Entry {
    kind: "pgd",
    build,
    fields: &[
        "norm",
        "eps",
        "steps",
        "step_size",
        "restarts",
        "random_start",
        "loss",
    ],
    about: "projected gradient descent, linf/l2/l1, random starts and restarts (Madry et al. 2018)",
};

/// `kind = "pgd"`.
pub fn build(fields: &Fields) -> Result<Arc<dyn Attack>, FieldError> {
    let eps = fields.eps("pgd")?;
    let steps = fields.steps.unwrap_or(0);
    if steps == 0 {
        return Err(FieldError::new("steps", "kind `pgd` needs steps >= 1"));
    }
    let step_size = match fields.step_size {
        Some(s) if s > 0.0 => s,
        _ => {
            return Err(FieldError::new(
                "step_size",
                "kind `pgd` needs a positive step_size",
            ))
        }
    };
    Ok(Arc::new(Pgd::new(
        "pgd",
        fields.norm,
        eps,
        steps,
        step_size,
        fields.restarts,
        fields.random_start.unwrap_or(true),
        fields.untargeted_loss("pgd")?,
    )))
}

impl Pgd {
    /// A configured attack; `kind` is `pgd` or `fgsm` (it keys the random streams).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: &'static str,
        norm: Norm,
        eps: f32,
        steps: u32,
        step_size: f32,
        restarts: u32,
        random_start: bool,
        loss: Loss,
    ) -> Self {
        // The stream key has kept this exact form since PGD first landed: a
        // change would re-draw every random start and change reports.
        let settings_hash = hash_str(&format!(
            "{kind}|{}|{eps}|{steps}|{step_size}|{restarts}|{random_start}",
            norm.as_str()
        ));
        Pgd {
            kind,
            norm,
            eps,
            steps,
            step_size,
            restarts,
            random_start,
            loss,
            settings_hash,
        }
    }

    /// FGSM as PGD: one step of size ε from the clean image, no restarts.
    pub(crate) fn fgsm(norm: Norm, eps: f32, loss: Loss) -> Self {
        Pgd::new("fgsm", norm, eps, 1, eps, 1, false, loss)
    }

    /// A uniformly random point of the ε-ball (ℓ∞), or a random direction at a
    /// random radius (ℓ2, ℓ1 with Laplace directions), projected into the box.
    fn random_init(&self, x: &mut [f32], x0: &[f32], rng: &mut SampleRng) {
        match self.norm {
            Norm::Linf => x.iter_mut().for_each(|v| *v += self.eps * rng.symmetric()),
            Norm::L2 | Norm::L1 => {
                let raw: Vec<f32> = match self.norm {
                    Norm::L2 => (0..x.len()).map(|_| rng.normal()).collect(),
                    _ => (0..x.len())
                        .map(|_| -rng.uniform().max(1e-12).ln() * rng.symmetric().signum())
                        .collect(),
                };
                let length = norm_of(raw.iter().copied(), self.norm).max(1e-12);
                let radius = self.eps * rng.uniform();
                x.iter_mut()
                    .zip(&raw)
                    .for_each(|(v, r)| *v += radius * r / length);
            }
        }
        project(x, x0, self.eps, self.norm);
    }
}

impl Attack for Pgd {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn oracle(&self) -> Oracle {
        Oracle::Gradients(vec![self.loss])
    }

    fn settings(&self) -> Settings {
        Settings {
            steps: Some(self.steps),
            step_size: Some(self.step_size),
            restarts: Some(self.restarts),
            loss: Some(self.loss),
            ..Settings::threat(self.norm, self.eps)
        }
    }

    fn run(&self, model: &mut dyn Model, batch: &Batch) -> Result<Perturbed> {
        if self.loss.is_embedding() {
            return self.run_on_embeddings(model, batch);
        }
        let len = batch.image_len();
        let mut results = Perturbed::unperturbed(batch);
        let mut dir = vec![0.0f32; len];
        for restart in 0..self.restarts {
            let mut active = ActiveSet::unfooled(batch, &results, self.settings_hash, restart);
            if active.is_empty() {
                break;
            }
            if self.random_start {
                for j in 0..active.len() {
                    let (x, x0, rng) = active.sample(j);
                    self.random_init(x, x0, rng);
                }
            }
            let last_restart = restart + 1 == self.restarts;
            for step in 0..=self.steps {
                let labels = active.labels();
                let eval = model.loss_and_grad(self.loss, active.x(), &labels, None)?;
                let fooled = active.record(&mut results, &eval.logits, last_restart);
                if step == self.steps {
                    break;
                }
                for j in (0..active.len()).filter(|&j| !fooled[j]) {
                    let (x, x0, rng) = active.sample(j);
                    let k = if self.norm == Norm::L1 {
                        rng.integer(L1_K.0, L1_K.1)
                    } else {
                        0
                    };
                    direction(
                        &eval.input_grad[j * len..(j + 1) * len],
                        x,
                        self.norm,
                        k,
                        &mut dir,
                    );
                    for (v, d) in x.iter_mut().zip(&dir) {
                        *v += self.step_size * d;
                    }
                    project(x, x0, self.eps, self.norm);
                }
                active.retain_unfooled(&fooled);
                if active.is_empty() {
                    break;
                }
            }
        }
        Ok(results)
    }
}

impl Pgd {
    /// PGD on an encoder: ascends the embedding loss against each sample's
    /// clean embedding (`batch.reference`) and keeps, per sample, the iterate
    /// with the largest loss over every step and restart. No sample is
    /// "fooled": every one runs its whole budget, so batches stay full.
    fn run_on_embeddings(&self, model: &mut dyn Model, batch: &Batch) -> Result<Perturbed> {
        let reference = batch.reference.ok_or_else(|| {
            crate::error::Error::Internal(format!(
                "the {} loss needs the samples' clean embeddings",
                self.loss.as_str()
            ))
        })?;
        let len = batch.image_len();
        let mut results = Perturbed::unperturbed(batch);
        let mut best = vec![f32::NEG_INFINITY; batch.len()];
        let mut dir = vec![0.0f32; len];
        for restart in 0..self.restarts {
            let mut rngs: Vec<SampleRng> = batch
                .ids
                .iter()
                .map(|&id| SampleRng::new(batch.seed, self.settings_hash, id, u64::from(restart)))
                .collect();
            let mut x = batch.images.to_vec();
            if self.random_start {
                for (i, rng) in rngs.iter_mut().enumerate() {
                    let x0 = batch.image(i);
                    self.random_init(&mut x[i * len..(i + 1) * len], x0, rng);
                }
            }
            for step in 0..=self.steps {
                let eval = model.embedding_loss_and_grad(self.loss, &x, reference)?;
                for (i, &loss) in eval.loss.iter().enumerate() {
                    results.queries[i] += 1;
                    // NaN never counts as an improvement.
                    if loss > best[i] {
                        best[i] = loss;
                        results.adversarial[i * len..(i + 1) * len]
                            .copy_from_slice(&x[i * len..(i + 1) * len]);
                    }
                }
                if step == self.steps {
                    break;
                }
                for (i, rng) in rngs.iter_mut().enumerate() {
                    let xi = &mut x[i * len..(i + 1) * len];
                    let k = if self.norm == Norm::L1 {
                        rng.integer(L1_K.0, L1_K.1)
                    } else {
                        0
                    };
                    direction(
                        &eval.input_grad[i * len..(i + 1) * len],
                        xi,
                        self.norm,
                        k,
                        &mut dir,
                    );
                    for (v, d) in xi.iter_mut().zip(&dir) {
                        *v += self.step_size * d;
                    }
                    project(xi, batch.image(i), self.eps, self.norm);
                }
            }
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::super::linear::{
        fools_exactly_those_within_eps, median, LinearModel, LinearProblem,
    };
    use super::super::registry;
    use super::*;

    fn build(kind: &str, fields: Fields) -> Arc<dyn Attack> {
        (registry::lookup(kind).unwrap().build)(&fields).unwrap()
    }

    #[test]
    fn pgd_on_a_linear_model_fools_exactly_the_samples_within_eps() {
        let problem = LinearProblem::new(2, 16);
        for loss in [Loss::Ce, Loss::Margin] {
            let eps = median(&problem.d_inf);
            let linf = Pgd::new("pgd", Norm::Linf, eps, 20, eps / 4.0, 1, true, loss);
            fools_exactly_those_within_eps(&linf, &problem, &problem.d_inf, 1e-3);
            let eps = median(&problem.d_2);
            let l2 = Pgd::new("pgd", Norm::L2, eps, 40, eps / 4.0, 1, true, loss);
            fools_exactly_those_within_eps(&l2, &problem, &problem.d_2, 2e-2);
        }
    }

    #[test]
    fn fgsm_on_a_linear_model_is_the_optimal_linf_step() {
        let problem = LinearProblem::new(2, 16);
        let fields = Fields {
            eps: Some(median(&problem.d_inf)),
            ..Fields::default()
        };
        fools_exactly_those_within_eps(
            build("fgsm", fields).as_ref(),
            &problem,
            &problem.d_inf,
            1e-4,
        );
    }

    #[test]
    fn queries_count_the_evaluations_each_sample_took_part_in() {
        let problem = LinearProblem::new(2, 16);
        let eps = median(&problem.d_inf);
        let steps = 10;
        let pgd = Pgd::new("pgd", Norm::Linf, eps, steps, eps / 4.0, 2, true, Loss::Ce);
        let mut model = problem.model.clone();
        let out = pgd.run(&mut model, &problem.batch(0)).unwrap();
        for (i, (&q, &fooled)) in out.queries.iter().zip(&out.fooled).enumerate() {
            if fooled {
                assert!((1..=2 * (steps + 1)).contains(&q), "sample {i}: {q}");
            } else {
                assert_eq!(q, 2 * (steps + 1), "sample {i}: both restarts, every step");
            }
        }
        // Fooled samples leave the batch: fewer evaluations than the full budget.
        let spent: u32 = out.queries.iter().sum();
        assert!(spent < 2 * (steps + 1) * problem.labels.len() as u32);
        assert_eq!(model.gradient_calls, 2 * (steps as usize + 1));
    }

    /// A linear encoder z = W x + b and `n` samples in `[low, high]^d`, with
    /// their clean embeddings.
    fn encoder(
        k: usize,
        d: usize,
        n: usize,
        low: f32,
        high: f32,
    ) -> (LinearModel, Vec<f32>, Vec<f32>) {
        let mut rng = SampleRng::new(7, 8, k as u64, d as u64);
        let weights: Vec<f32> = (0..k * d).map(|_| rng.normal()).collect();
        // Centred on the box's middle, so the embeddings' angles move.
        let bias: Vec<f32> = (0..k)
            .map(|c| -0.5 * weights[c * d..(c + 1) * d].iter().sum::<f32>())
            .collect();
        let mut model = LinearModel::new(weights, bias);
        let images: Vec<f32> = (0..n * d)
            .map(|_| low + (high - low) * rng.uniform())
            .collect();
        let reference = model.logits(&images, n).unwrap().values;
        (model, images, reference)
    }

    fn encoder_batch<'a>(
        images: &'a [f32],
        ids: &'a [u64],
        labels: &'a [i64],
        reference: &'a [f32],
    ) -> Batch<'a> {
        Batch {
            images,
            labels,
            ids,
            seed: 3,
            rows_per_call: ids.len(),
            reference: Some(reference),
        }
    }

    #[test]
    fn pgd_on_a_linear_encoder_reaches_the_largest_l2_displacement() {
        let (k, d, n, eps) = (6, 16, 8, 0.1f32);
        let (mut model, images, reference) = encoder(k, d, n, 0.4, 0.6);
        // max ‖W δ‖ over ‖δ‖ ≤ ε is ε σ_max(W): power iteration on WᵀW.
        let w: Vec<f64> = model.weights.iter().map(|&v| f64::from(v)).collect();
        let mut v = vec![1.0f64; d];
        let mut sigma = 0.0;
        for _ in 0..500 {
            let wv: Vec<f64> = (0..k)
                .map(|c| (0..d).map(|i| w[c * d + i] * v[i]).sum())
                .collect();
            let wtwv: Vec<f64> = (0..d)
                .map(|i| (0..k).map(|c| w[c * d + i] * wv[c]).sum())
                .collect();
            let norm = wtwv.iter().map(|x| x * x).sum::<f64>().sqrt();
            sigma = norm.sqrt();
            v = wtwv.iter().map(|x| x / norm).collect();
        }
        let optimum = f64::from(eps) * sigma;
        let ids: Vec<u64> = (0..n as u64).collect();
        let labels = vec![0i64; n];
        let batch = encoder_batch(&images, &ids, &labels, &reference);
        let pgd = Pgd::new("pgd", Norm::L2, eps, 50, eps / 4.0, 1, true, Loss::L2);
        let out = pgd.run(&mut model, &batch).unwrap();
        for i in 0..n {
            let delta: Vec<f64> = (0..d)
                .map(|j| f64::from(out.adversarial[i * d + j]) - f64::from(images[i * d + j]))
                .collect();
            let length = delta.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!(
                length <= f64::from(eps) * (1.0 + 1e-5),
                "sample {i}: ‖δ‖ = {length}"
            );
            let moved = (0..k)
                .map(|c| (0..d).map(|j| w[c * d + j] * delta[j]).sum::<f64>().powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                moved >= 0.99 * optimum && moved <= optimum * (1.0 + 1e-4),
                "sample {i}: ‖W δ‖ = {moved}, the optimum {optimum}"
            );
            assert_eq!(out.queries[i], 51);
            assert!(!out.fooled[i]);
        }
        assert_eq!(model.gradient_calls, 51, "every sample in every call");
    }

    #[test]
    fn pgd_on_a_2d_linear_encoder_finds_the_brute_forced_cosine_worst_case() {
        let (n, eps) = (6, 0.03f32);
        // Samples at least 0.07 from the point the encoder maps to 0.
        let (mut model, images, reference) = encoder(2, 2, n, 0.57, 0.6);
        let ids: Vec<u64> = (0..n as u64).collect();
        let labels = vec![0i64; n];
        let batch = encoder_batch(&images, &ids, &labels, &reference);
        // Turning the embedding either way is a local maximum: restarts
        // from random points find the larger.
        let pgd = Pgd::new("pgd", Norm::L2, eps, 100, eps / 10.0, 8, true, Loss::Cosine);
        let out = pgd.run(&mut model, &batch).unwrap();
        let attacked = model.logits(&out.adversarial, n).unwrap().values;
        let cos = |a: &[f32], b: &[f32]| {
            let dot = |x: &[f32], y: &[f32]| {
                x.iter()
                    .zip(y)
                    .map(|(p, q)| f64::from(*p) * f64::from(*q))
                    .sum::<f64>()
            };
            dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
        };
        for i in 0..n {
            let (x0, z0) = (&images[2 * i..2 * i + 2], &reference[2 * i..2 * i + 2]);
            // Brute force over the disk: radii × angles.
            let mut worst = f64::MAX;
            for r in 0..=100 {
                for a in 0..3600 {
                    let (radius, angle) = (
                        eps * r as f32 / 100.0,
                        a as f32 * std::f32::consts::TAU / 3600.0,
                    );
                    let x = [x0[0] + radius * angle.cos(), x0[1] + radius * angle.sin()];
                    let z = model.logits(&x, 1).unwrap().values;
                    worst = worst.min(cos(&z, z0));
                }
            }
            let found = cos(&attacked[2 * i..2 * i + 2], z0);
            let (found_loss, worst_loss) = (1.0 - found, 1.0 - worst);
            assert!(
                worst_loss > 1e-3,
                "sample {i}: a test that proves nothing ({worst_loss})"
            );
            assert!(
                found_loss >= 0.99 * worst_loss && found_loss <= worst_loss * 1.001 + 1e-6,
                "sample {i}: PGD's cosine distance {found_loss}, brute force {worst_loss}"
            );
        }
    }
}
