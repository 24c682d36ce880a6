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
            norm: self.norm,
            eps: self.eps,
            steps: Some(self.steps),
            step_size: Some(self.step_size),
            restarts: Some(self.restarts),
            loss: Some(self.loss),
            query_budget: None,
        }
    }

    fn run(&self, model: &mut dyn Model, batch: &Batch) -> Result<Perturbed> {
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

#[cfg(test)]
mod tests {
    use super::super::linear::LinearModel;
    use super::super::registry;
    use super::*;

    const DIM: usize = 16;

    /// A two-class linear model, 64 clean-correct samples in [0.3, 0.7]^d,
    /// and each sample's distance to the decision boundary in ℓ∞ and ℓ2
    /// (margin over the dual norm of the weight difference).
    fn linear_problem() -> (LinearModel, Vec<f32>, Vec<i64>, Vec<f32>, Vec<f32>) {
        let mut rng = SampleRng::new(1, 2, 3, 4);
        let weights: Vec<f32> = (0..2 * DIM).map(|_| rng.normal()).collect();
        let model = LinearModel::new(weights.clone(), vec![0.1, -0.1]);
        let images: Vec<f32> = (0..64 * DIM).map(|_| 0.3 + 0.4 * rng.uniform()).collect();
        let logits = model.clone().logits(&images, 64).unwrap();
        let labels: Vec<i64> = logits.argmax().iter().map(|&p| p as i64).collect();
        let (mut d_inf, mut d_2) = (Vec::new(), Vec::new());
        for (row, &y) in logits.rows().zip(&labels) {
            let (y, o) = (y as usize, 1 - y as usize);
            let margin = row[y] - row[o];
            let diff: Vec<f32> = (0..DIM)
                .map(|i| weights[y * DIM + i] - weights[o * DIM + i])
                .collect();
            d_inf.push(margin / norm_of(diff.iter().copied(), Norm::L1));
            d_2.push(margin / norm_of(diff.iter().copied(), Norm::L2));
        }
        (model, images, labels, d_inf, d_2)
    }

    fn median(v: &[f32]) -> f32 {
        let mut sorted = v.to_vec();
        sorted.sort_by(f32::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn build(kind: &str, fields: Fields) -> Arc<dyn Attack> {
        (registry::lookup(kind).unwrap().build)(&fields).unwrap()
    }

    /// Runs `attack` on the linear problem's samples; returns its results
    /// and the model, with its call counts.
    fn run_on_linear_problem(attack: &dyn Attack, seed: u64) -> (Perturbed, LinearModel) {
        let (mut model, images, labels, _, _) = linear_problem();
        let ids: Vec<u64> = (0..labels.len() as u64).collect();
        let batch = Batch {
            images: &images,
            labels: &labels,
            ids: &ids,
            seed,
        };
        let out = attack.run(&mut model, &batch).unwrap();
        (out, model)
    }

    /// Runs `attack` and checks it fools exactly the samples closer to the
    /// boundary than eps (outside a band of `tolerance` around eps).
    fn fools_exactly_those_within_eps(attack: &dyn Attack, distances: &[f32], tolerance: f32) {
        let (out, _) = run_on_linear_problem(attack, 5);
        let eps = attack.settings().eps;
        let mut decided = 0;
        for (i, &d) in distances.iter().enumerate() {
            if (d - eps).abs() > tolerance * eps {
                decided += 1;
                assert_eq!(
                    out.fooled[i],
                    d < eps,
                    "{attack:?}: sample {i} at distance {d}, eps {eps}"
                );
            }
        }
        assert!(decided > 48, "too few samples away from eps: {decided}");
        assert!(out.fooled.iter().any(|&f| f) && !out.fooled.iter().all(|&f| f));
    }

    #[test]
    fn pgd_on_a_linear_model_fools_exactly_the_samples_within_eps() {
        let (_, _, _, d_inf, d_2) = linear_problem();
        for loss in [Loss::Ce, Loss::Margin] {
            let eps = median(&d_inf);
            let linf = Pgd::new("pgd", Norm::Linf, eps, 20, eps / 4.0, 1, true, loss);
            fools_exactly_those_within_eps(&linf, &d_inf, 1e-3);
            let eps = median(&d_2);
            let l2 = Pgd::new("pgd", Norm::L2, eps, 40, eps / 4.0, 1, true, loss);
            fools_exactly_those_within_eps(&l2, &d_2, 2e-2);
        }
    }

    #[test]
    fn fgsm_on_a_linear_model_is_the_optimal_linf_step() {
        let (_, _, _, d_inf, _) = linear_problem();
        let eps = median(&d_inf);
        let fields = Fields {
            eps: Some(eps),
            ..Fields::default()
        };
        fools_exactly_those_within_eps(build("fgsm", fields).as_ref(), &d_inf, 1e-4);
    }

    #[test]
    fn queries_count_the_evaluations_each_sample_took_part_in() {
        let (_, _, labels, d_inf, _) = linear_problem();
        let eps = median(&d_inf);
        let steps = 10;
        let pgd = Pgd::new("pgd", Norm::Linf, eps, steps, eps / 4.0, 2, true, Loss::Ce);
        let (out, model) = run_on_linear_problem(&pgd, 0);
        for (i, (&q, &fooled)) in out.queries.iter().zip(&out.fooled).enumerate() {
            if fooled {
                assert!((1..=2 * (steps + 1)).contains(&q), "sample {i}: {q}");
            } else {
                assert_eq!(q, 2 * (steps + 1), "sample {i}: both restarts, every step");
            }
        }
        // Fooled samples leave the batch: fewer evaluations than the full budget.
        let spent: u32 = out.queries.iter().sum();
        assert!(spent < 2 * (steps + 1) * labels.len() as u32);
        assert_eq!(model.gradient_calls, 2 * (steps as usize + 1));
    }
}
