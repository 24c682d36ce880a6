//! The attack layer: one [`Attack`] trait, one file per attack, one
//! [`registry`] of kinds, and the suites (TOML) that name them.
//!
//! An attack talks to the model under attack only through [`Model`] (classes,
//! logits, loss and input gradient), so it can be unit-tested on an analytic
//! model written in Rust as well as run on an ONNX model. It declares what it
//! needs of that model ([`Oracle`]); the audit hands a scores-only attack a
//! model that refuses gradient calls, so the declaration is enforced.
//!
//! Adding an attack: its file under `src/attack/` (a type implementing
//! [`Attack`] and a build function owning its suite-field rules) and one line
//! in [`registry::ATTACKS`]. See `docs/architecture.md`.

pub mod active;
pub mod apgd;
pub mod apgd_t;
pub mod fab;
pub mod fgsm;
#[cfg(test)]
pub(crate) mod linear;
pub mod noise;
pub mod pgd;
pub mod project;
pub mod registry;
pub mod rng;
pub mod rows;
pub mod square;
pub mod suite;

pub use crate::onnx::grad::Loss;
pub use crate::runtime::{Logits, LossAndGrad};
pub use pgd::Pgd;
pub use registry::{Entry, ATTACKS};
pub use suite::{builtin_suite, AttackSpec, Fields, Step, Suite, BUILTIN_SUITES, WORST_CASE_ID};

use crate::error::{Error, Result};

/// The threat model's norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Norm {
    Linf,
    L2,
    L1,
}

impl Norm {
    pub const ALL: [Norm; 3] = [Norm::Linf, Norm::L2, Norm::L1];

    pub fn as_str(self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
            Norm::L1 => "l1",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.as_str() == s)
    }
}

/// What an attack may ask of the model under attack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Oracle {
    /// Logits only: the attack never asks for a gradient.
    Scores,
    /// Logits, and loss-and-gradient for these losses.
    Gradients(Vec<Loss>),
}

/// An attack's settings: the threat model and the report's columns (`norm,
/// eps, steps, step_size, restarts, loss`). `None` is an empty cell.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub norm: Norm,
    /// Budget in `[0, 1]` pixel units, in `norm`.
    pub eps: f32,
    pub steps: Option<u32>,
    pub step_size: Option<f32>,
    pub restarts: Option<u32>,
    pub loss: Option<Loss>,
    /// Query budget per sample, for attacks that have one (not a report
    /// column: the report's `queries` is what was spent).
    pub query_budget: Option<u32>,
}

impl Settings {
    /// The threat model alone (norm and budget), every other setting unset:
    /// attacks fill in what they have with `..Settings::threat(norm, eps)`.
    pub fn threat(norm: Norm, eps: f32) -> Self {
        Settings {
            norm,
            eps,
            steps: None,
            step_size: None,
            restarts: None,
            loss: None,
            query_budget: None,
        }
    }
}

/// A batch of samples to attack.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// NCHW in `[0, 1]`, `len()` images.
    pub images: &'a [f32],
    /// True labels.
    pub labels: &'a [i64],
    /// Each sample's global id (its index in its data file): with `seed`, it
    /// keys the sample's random streams, so a result does not depend on the
    /// batch a sample lands in, or on the shard.
    pub ids: &'a [u64],
    /// The audit's `--seed`.
    pub seed: u64,
    /// The most images an attack puts in one model call (`--batch-size`):
    /// attacks that run several times per sample fill their calls up to it
    /// ([`rows::Rows`]).
    pub rows_per_call: usize,
    /// The samples' clean embeddings `[len, width]`, when the model is an
    /// encoder: what the embedding losses measure an attacked embedding
    /// against.
    pub reference: Option<&'a [f32]>,
}

impl<'a> Batch<'a> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn image_len(&self) -> usize {
        self.images.len() / self.len().max(1)
    }

    /// The pixels of sample `i`.
    pub fn image(&self, i: usize) -> &'a [f32] {
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }
}

/// What an attack returns for a batch, per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Perturbed {
    /// The fooling iterate, or the attack's last iterate when none fooled; NCHW.
    pub adversarial: Vec<f32>,
    /// Misclassified at some iterate, by the attack's own evaluation (the
    /// audit re-predicts every example itself before it believes this).
    pub fooled: Vec<bool>,
    /// Model evaluations (forward, or forward and gradient) spent on the sample.
    pub queries: Vec<u32>,
}

impl Perturbed {
    /// Every sample unperturbed, unfooled, with no queries spent: where an
    /// attack starts.
    pub fn unperturbed(batch: &Batch) -> Self {
        Perturbed {
            adversarial: batch.images.to_vec(),
            fooled: vec![false; batch.len()],
            queries: vec![0; batch.len()],
        }
    }
}

/// The model under attack, as an attack sees it.
pub trait Model {
    /// Number of classes (the logits' width).
    fn classes(&self) -> usize;

    /// `[C, H, W]` of the images, where the model knows it (attacks that
    /// work on image windows need it).
    fn image_shape(&self) -> Option<[usize; 3]> {
        None
    }

    /// Logits of `n` images (NCHW, `[0, 1]`).
    fn logits(&mut self, images: &[f32], n: usize) -> Result<Logits>;

    /// Logits, per-sample loss and d(Σ loss)/d(images) for `labels.len()`
    /// images. `targets` is given exactly when `loss.is_targeted()`.
    fn loss_and_grad(
        &mut self,
        loss: Loss,
        images: &[f32],
        labels: &[i64],
        targets: Option<&[i64]>,
    ) -> Result<LossAndGrad>;

    /// The embedding form of [`Model::loss_and_grad`]: for an encoder, each
    /// image's embedding (`logits` holds them), its `loss` (an embedding
    /// loss) against `reference` `[n, width]`, and d(Σ loss)/d(images).
    fn embedding_loss_and_grad(
        &mut self,
        loss: Loss,
        _images: &[f32],
        _reference: &[f32],
    ) -> Result<LossAndGrad> {
        Err(Error::Internal(format!(
            "the {} loss compares embeddings; this model is audited as a classifier",
            loss.as_str()
        )))
    }
}

/// An attack, configured and ready to run on batches.
pub trait Attack: std::fmt::Debug + Send + Sync {
    /// The registry kind that built it (the report's `attack` column).
    fn kind(&self) -> &'static str;

    /// What it asks of the model; enforced by [`Guarded`].
    fn oracle(&self) -> Oracle;

    fn settings(&self) -> Settings;

    /// How many target classes a targeted attack tries, if it is one.
    fn targets(&self) -> Option<u32> {
        None
    }

    /// Attacks `batch`. Must leave every example in the ε-ball and the
    /// `[0, 1]` box (the audit checks, and a violation is an error), and
    /// depend on randomness only through streams keyed by sample id.
    fn run(&self, model: &mut dyn Model, batch: &Batch) -> Result<Perturbed>;
}

/// A model that answers only what an attack's [`Oracle`] declared: a
/// scores-only attack that asks for a gradient, or a gradient attack that
/// asks for an undeclared loss, gets an error naming it.
pub struct Guarded<'m> {
    inner: &'m mut dyn Model,
    attack: &'static str,
    oracle: Oracle,
}

impl<'m> Guarded<'m> {
    pub fn new(inner: &'m mut dyn Model, attack: &dyn Attack) -> Self {
        Guarded {
            inner,
            attack: attack.kind(),
            oracle: attack.oracle(),
        }
    }
}

impl Model for Guarded<'_> {
    fn classes(&self) -> usize {
        self.inner.classes()
    }

    fn image_shape(&self) -> Option<[usize; 3]> {
        self.inner.image_shape()
    }

    fn logits(&mut self, images: &[f32], n: usize) -> Result<Logits> {
        self.inner.logits(images, n)
    }

    fn loss_and_grad(
        &mut self,
        loss: Loss,
        images: &[f32],
        labels: &[i64],
        targets: Option<&[i64]>,
    ) -> Result<LossAndGrad> {
        match &self.oracle {
            Oracle::Gradients(losses) if losses.contains(&loss) => {
                self.inner.loss_and_grad(loss, images, labels, targets)
            }
            declared => Err(self.undeclared(declared, loss)),
        }
    }

    fn embedding_loss_and_grad(
        &mut self,
        loss: Loss,
        images: &[f32],
        reference: &[f32],
    ) -> Result<LossAndGrad> {
        match &self.oracle {
            Oracle::Gradients(losses) if losses.contains(&loss) => {
                self.inner.embedding_loss_and_grad(loss, images, reference)
            }
            declared => Err(self.undeclared(declared, loss)),
        }
    }
}

impl Guarded<'_> {
    fn undeclared(&self, declared: &Oracle, loss: Loss) -> Error {
        Error::Internal(format!(
            "attack `{}` declared {declared:?} but asked for the gradient of the {} loss; \
             its declaration is what lets gradient-free audits trust it, so this is a bug in the attack",
            self.attack,
            loss.as_str()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::linear::LinearModel;
    use super::*;

    /// Declares scores only, then asks for a gradient anyway.
    #[derive(Debug)]
    struct Cheat;

    impl Attack for Cheat {
        fn kind(&self) -> &'static str {
            "cheat"
        }
        fn oracle(&self) -> Oracle {
            Oracle::Scores
        }
        fn settings(&self) -> Settings {
            Settings::threat(Norm::Linf, 0.1)
        }
        fn run(&self, model: &mut dyn Model, batch: &Batch) -> Result<Perturbed> {
            model.loss_and_grad(Loss::Ce, batch.images, batch.labels, None)?;
            Ok(Perturbed::unperturbed(batch))
        }
    }

    #[test]
    fn a_scores_only_attack_that_asks_for_a_gradient_fails_loudly() {
        let mut model = LinearModel::new(vec![1.0, -1.0], vec![0.0, 0.0]);
        let batch = Batch {
            images: &[0.5],
            labels: &[0],
            ids: &[0],
            seed: 0,
            rows_per_call: 1,
            reference: None,
        };
        let err = Cheat
            .run(&mut Guarded::new(&mut model, &Cheat), &batch)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cheat") && err.contains("Scores"), "{err}");
        assert_eq!(model.gradient_calls, 0, "the call never reached the model");
        // The same model, unguarded, answers: the guard is what refused.
        assert!(Cheat.run(&mut model, &batch).is_ok());
    }

    #[test]
    fn a_gradient_attack_gets_only_the_losses_it_declared() {
        let mut model = LinearModel::new(vec![1.0, -1.0], vec![0.0, 0.0]);
        let pgd = Pgd::new("pgd", Norm::Linf, 0.1, 1, 0.1, 1, false, Loss::Ce);
        let mut guarded = Guarded::new(&mut model, &pgd);
        assert!(guarded.loss_and_grad(Loss::Ce, &[0.5], &[0], None).is_ok());
        assert!(guarded
            .loss_and_grad(Loss::Margin, &[0.5], &[0], None)
            .is_err());
    }

    #[test]
    fn every_registered_scores_only_attack_runs_without_gradients() {
        for entry in ATTACKS {
            let fields = Fields {
                eps: Some(0.1),
                ..Fields::default()
            };
            let Ok(attack) = (entry.build)(&fields) else {
                continue;
            };
            if attack.oracle() != Oracle::Scores {
                continue;
            }
            let mut model = LinearModel::new(vec![1.0, -1.0], vec![0.0, 0.0]);
            model.shape = Some([1, 1, 1]);
            let batch = Batch {
                images: &[0.5, 0.02],
                labels: &[0, 0],
                ids: &[0, 1],
                seed: 0,
                rows_per_call: 2,
                reference: None,
            };
            attack
                .run(&mut Guarded::new(&mut model, attack.as_ref()), &batch)
                .unwrap_or_else(|e| panic!("{}: {e}", entry.kind));
            assert_eq!(model.gradient_calls, 0, "{}", entry.kind);
        }
    }
}
