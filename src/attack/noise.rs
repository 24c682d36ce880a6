//! Random noise: the baseline every attack must beat, and a check that a
//! model is not fooled by chance. Each draw puts a random perturbation of
//! size ε on the image (ℓ∞: every pixel uniform in [−ε, ε]; ℓ2 and ℓ1: a
//! random direction — Gaussian, Laplace — scaled to ε), clipped to the box.
//! A sample is fooled when any of its draws is misclassified.
//!
//! Suite fields: `norm`, `eps`, `restarts` (the number of draws, default 1).
//! Needs scores only.

use super::active::ActiveSet;
use super::project::{norm_of, project};
use super::registry::{Entry, FieldError};
use super::rng::{hash_str, SampleRng};
use super::{Attack, Batch, Fields, Model, Norm, Oracle, Perturbed, Settings};
use crate::error::Result;
use std::sync::Arc;

pub const ENTRY: Entry = Entry {
    kind: "noise",
    build,
    fields: &["norm", "eps", "restarts"],
    about: "random noise of size eps, `restarts` draws: a baseline that needs scores only",
};

/// `kind = "noise"`.
pub fn build(fields: &Fields) -> Result<Arc<dyn Attack>, FieldError> {
    let eps = fields.eps("noise")?;
    Ok(Arc::new(Noise {
        norm: fields.norm,
        eps,
        draws: fields.restarts,
        key: hash_str(&format!("noise|{}|{eps}", fields.norm.as_str())),
    }))
}

#[derive(Debug, Clone)]
pub struct Noise {
    norm: Norm,
    eps: f32,
    draws: u32,
    key: u64,
}

impl Noise {
    fn perturb(&self, x: &mut [f32], x0: &[f32], rng: &mut SampleRng) {
        let raw: Vec<f32> = match self.norm {
            Norm::Linf => (0..x.len()).map(|_| rng.symmetric()).collect(),
            Norm::L2 => (0..x.len()).map(|_| rng.normal()).collect(),
            Norm::L1 => (0..x.len())
                .map(|_| -rng.uniform().max(1e-12).ln() * rng.symmetric().signum())
                .collect(),
        };
        let scale = match self.norm {
            Norm::Linf => self.eps,
            _ => self.eps / norm_of(raw.iter().copied(), self.norm).max(1e-12),
        };
        x.iter_mut().zip(&raw).for_each(|(v, r)| *v += scale * r);
        project(x, x0, self.eps, self.norm);
    }
}

impl Attack for Noise {
    fn kind(&self) -> &'static str {
        "noise"
    }

    fn oracle(&self) -> Oracle {
        Oracle::Scores
    }

    fn settings(&self) -> Settings {
        Settings {
            restarts: Some(self.draws),
            query_budget: Some(self.draws),
            ..Settings::threat(self.norm, self.eps)
        }
    }

    fn run(&self, model: &mut dyn Model, batch: &Batch) -> Result<Perturbed> {
        let mut results = Perturbed::unperturbed(batch);
        for draw in 0..self.draws {
            let mut active = ActiveSet::unfooled(batch, &results, self.key, draw);
            if active.is_empty() {
                break;
            }
            for j in 0..active.len() {
                let (x, x0, rng) = active.sample(j);
                self.perturb(x, x0, rng);
            }
            let logits = model.logits(active.x(), active.len())?;
            active.record(&mut results, &logits, draw + 1 == self.draws);
        }
        Ok(results)
    }
}
