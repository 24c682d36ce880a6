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
    use super::super::linear::{fools_exactly_those_within_eps, median, LinearProblem};
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
}
