//! Projected gradient descent (Madry et al. 2018) in ℓ∞, ℓ2 and ℓ1 (the
//! sparse steps of Maini et al. 2020), with random starts and restarts; FGSM
//! (Goodfellow et al. 2015) is its single-step, zero-start special case.
//!
//! Every iterate is checked: a sample counts as fooled as soon as one iterate
//! is misclassified (AutoAttack's rule), keeps that iterate as its
//! adversarial example, and leaves the batch — further steps could not make
//! it robust again, so dropping it changes nothing but the time taken.

use super::project::{direction, project};
use super::rng::{hash_str, SampleRng};
use super::{AttackKind, AttackSpec, Norm};
use crate::error::Result;
use crate::runtime::GradientModel;

/// The outcome of attacking a batch of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Perturbed {
    /// Per sample: the fooling iterate, or the last iterate when none fooled.
    pub adversarial: Vec<f32>,
    /// Per sample: misclassified at some iterate.
    pub fooled: Vec<bool>,
    /// Loss-and-gradient evaluations, summed over samples.
    pub gradient_calls: u64,
}

/// A PGD (or FGSM) attack, ready to run.
#[derive(Debug, Clone)]
pub struct Pgd {
    pub norm: Norm,
    pub eps: f32,
    pub steps: u32,
    pub step_size: f32,
    pub restarts: u32,
    pub random_start: bool,
    /// Seeds random starts and ℓ1 sparsity draws.
    pub seed: u64,
    /// Keys the random streams by the attack's settings rather than its id,
    /// so that a transfer attack from a model to itself repeats the white-box
    /// attack with the same settings exactly.
    settings_hash: u64,
}

/// ℓ1 steps spread their mass over k coordinates, k drawn from this range.
const L1_K: (usize, usize) = (5, 20);

impl Pgd {
    pub fn from_spec(spec: &AttackSpec, seed: u64) -> Self {
        let fgsm = spec.kind == AttackKind::Fgsm;
        let settings = format!(
            "{}|{}|{}|{}|{}|{}|{}",
            if fgsm { "fgsm" } else { "pgd" },
            spec.norm.as_str(),
            spec.eps,
            spec.steps,
            spec.step_size,
            spec.restarts,
            spec.random_start
        );
        Pgd {
            norm: spec.norm,
            eps: spec.eps,
            steps: if fgsm { 1 } else { spec.steps },
            step_size: if fgsm { spec.eps } else { spec.step_size },
            restarts: if fgsm { 1 } else { spec.restarts },
            random_start: spec.random_start && !fgsm,
            seed,
            settings_hash: hash_str(&settings),
        }
    }

    /// Attacks `images` (NCHW, `[0, 1]`) with true `labels`; `ids` are the
    /// samples' indices in the dataset, which key their random streams.
    pub fn run(
        &self,
        model: &mut GradientModel,
        images: &[f32],
        labels: &[i64],
        ids: &[u64],
    ) -> Result<Perturbed> {
        let n = labels.len();
        let len = images.len() / n.max(1);
        let mut adversarial = images.to_vec();
        let mut fooled = vec![false; n];
        let mut gradient_calls = 0u64;
        for restart in 0..self.restarts {
            let mut active: Vec<usize> = (0..n).filter(|&i| !fooled[i]).collect();
            if active.is_empty() {
                break;
            }
            let mut rngs: Vec<SampleRng> = active
                .iter()
                .map(|&i| SampleRng::new(self.seed, self.settings_hash, ids[i], u64::from(restart)))
                .collect();
            let mut x: Vec<f32> = active
                .iter()
                .flat_map(|&i| images[i * len..(i + 1) * len].iter().copied())
                .collect();
            if self.random_start {
                for (j, &i) in active.iter().enumerate() {
                    self.random_init(
                        &mut x[j * len..(j + 1) * len],
                        &images[i * len..(i + 1) * len],
                        &mut rngs[j],
                    );
                }
            }
            let mut dir = vec![0.0f32; len];
            for step in 0..=self.steps {
                let batch_labels: Vec<i64> = active.iter().map(|&i| labels[i]).collect();
                let out = model.loss_and_grad(&x, &batch_labels, None, active.len())?;
                gradient_calls += active.len() as u64;
                let predictions = out.logits.argmax();
                let wrong: Vec<bool> = out
                    .logits
                    .rows()
                    .zip(&predictions)
                    .zip(&batch_labels)
                    .map(|((row, &p), &y)| p as i64 != y || row.iter().any(|v| !v.is_finite()))
                    .collect();
                for (j, &i) in active.iter().enumerate() {
                    if wrong[j] || restart + 1 == self.restarts {
                        adversarial[i * len..(i + 1) * len]
                            .copy_from_slice(&x[j * len..(j + 1) * len]);
                    }
                    fooled[i] |= wrong[j];
                }
                if step == self.steps {
                    break;
                }
                // Keep the samples not fooled yet, and step them.
                let keep: Vec<usize> = (0..active.len()).filter(|&j| !wrong[j]).collect();
                if keep.is_empty() {
                    break;
                }
                let mut next_x = Vec::with_capacity(keep.len() * len);
                let mut next_active = Vec::with_capacity(keep.len());
                let mut next_rngs = Vec::with_capacity(keep.len());
                for &j in &keep {
                    let i = active[j];
                    let xj = &mut x[j * len..(j + 1) * len];
                    let k = if self.norm == Norm::L1 {
                        rngs[j].integer(L1_K.0, L1_K.1)
                    } else {
                        0
                    };
                    direction(
                        &out.input_grad[j * len..(j + 1) * len],
                        xj,
                        self.norm,
                        k,
                        &mut dir,
                    );
                    for (v, d) in xj.iter_mut().zip(&dir) {
                        *v += self.step_size * d;
                    }
                    project(xj, &images[i * len..(i + 1) * len], self.eps, self.norm);
                    next_x.extend_from_slice(xj);
                    next_active.push(i);
                    next_rngs.push(rngs[j].clone());
                }
                x = next_x;
                active = next_active;
                rngs = next_rngs;
            }
        }
        Ok(Perturbed {
            adversarial,
            fooled,
            gradient_calls,
        })
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
                let length = super::project::norm_of(raw.iter().copied(), self.norm).max(1e-12);
                let radius = self.eps * rng.uniform();
                x.iter_mut()
                    .zip(&raw)
                    .for_each(|(v, r)| *v += radius * r / length);
            }
        }
        project(x, x0, self.eps, self.norm);
    }
}
