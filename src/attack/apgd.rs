//! Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial
//! robustness with an ensemble of diverse parameter-free attacks"), ℓ∞ and
//! ℓ2: PGD with momentum whose step size adapts itself — no step size to
//! tune. The constants are the reference implementation's
//! (`autoattack/autopgd_base.py`):
//!
//! - start at x + ε·t/‖t‖ (ℓ∞: t uniform in [−1, 1]^d; ℓ2: t Gaussian), clipped to the box;
//! - initial step 2ε; momentum 0.75 (none on the first step);
//! - step-size checkpoints after 22% of the iterations, then each 3% sooner,
//!   never closer than 6% (100 iterations: after 22, 41, 57, 70, 80, 87, 93, 99);
//! - at a checkpoint the step halves, and the iterate and gradient return
//!   to the best point so far, when the loss rose in at most 75% of the steps
//!   since the last checkpoint (ρ = 0.75), or when the step was not halved
//!   last time and the best loss has not improved since.
//!
//! `apgd-ce` (this file) maximises cross-entropy (or DLR); `apgd-t`
//! (`apgd_t.rs`) the targeted DLR loss towards each of the highest-scoring
//! wrong classes in turn.
//!
//! Differences from the reference, none of which changes what is computed
//! for a sample: the random start comes from the sample's own stream (keyed
//! by seed, settings, sample id, restart) instead of a per-batch seed, so a
//! result does not depend on batching or sharding; a sample leaves the batch
//! once fooled (the reference keeps iterating it, and reports its last
//! fooling iterate rather than its first).
//!
//! Suite fields: `norm` (linf | l2), `eps`, `steps` (default 100),
//! `restarts` (default 1), `loss` (ce | dlr, default ce).

use super::active::ActiveSet;
use super::registry::{Entry, FieldError};
use super::rng::{hash_str, SampleRng};
use super::{Attack, Batch, Fields, Loss, Model, Norm, Oracle, Perturbed, Settings};
use crate::error::Result;
use std::sync::Arc;

pub const ENTRY: Entry = Entry {
    kind: "apgd-ce",
    build,
    fields: &["norm", "eps", "steps", "restarts", "loss"],
    about: "Auto-PGD on cross-entropy (or dlr): adaptive step size, momentum, 100 iterations (Croce & Hein 2020)",
};

/// The reference's iteration count.
pub const DEFAULT_STEPS: u32 = 100;
/// Momentum of every step but the first.
const MOMENTUM: f32 = 0.75;
/// A checkpoint halves the step when the loss rose in at most this share of the steps since the last.
const RHO: f32 = 0.75;

/// `kind = "apgd-ce"`.
pub fn build(fields: &Fields) -> Result<Arc<dyn Attack>, FieldError> {
    let loss = match fields.loss.unwrap_or(Loss::Ce) {
        l @ (Loss::Ce | Loss::Dlr) => l,
        other => {
            return Err(FieldError::new(
                "loss",
                format!(
                    "apgd-ce maximises ce or dlr, not {}; kind `apgd-t` runs the targeted dlr loss",
                    other.as_str()
                ),
            ))
        }
    };
    Ok(Arc::new(Apgd::new(
        "apgd-ce",
        apgd_norm(fields)?,
        fields.eps("apgd-ce")?,
        apgd_steps(fields)?,
        fields.restarts,
        Objective::Untargeted(loss),
    )))
}

/// The norm of an APGD kind: ℓ∞ or ℓ2.
pub(crate) fn apgd_norm(fields: &Fields) -> Result<Norm, FieldError> {
    match fields.norm {
        Norm::L1 => Err(FieldError::new(
            "norm",
            "APGD runs in linf or l2 here; use kind `pgd` for l1",
        )),
        norm => Ok(norm),
    }
}

/// The iteration count of an APGD kind (default 100).
pub(crate) fn apgd_steps(fields: &Fields) -> Result<u32, FieldError> {
    match fields.steps.unwrap_or(DEFAULT_STEPS) {
        0 => Err(FieldError::new("steps", "APGD needs steps >= 1")),
        steps => Ok(steps),
    }
}

/// What APGD maximises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    Untargeted(Loss),
    /// Targeted DLR towards each of the `classes` highest-scoring wrong
    /// classes in turn (fewer when the model has fewer classes).
    Targeted {
        classes: u32,
    },
}

/// An APGD attack, ready to run.
#[derive(Debug, Clone)]
pub struct Apgd {
    kind: &'static str,
    norm: Norm,
    eps: f32,
    steps: u32,
    restarts: u32,
    objective: Objective,
    key: u64,
}

/// The step-size schedule: iterations between checkpoints start at 22% of
/// the budget and shrink by 3% of it each time, to a floor of 6% (each at
/// least 1).
#[derive(Debug, Clone, Copy)]
struct Schedule {
    first: usize,
    shrink: usize,
    floor: usize,
}

impl Schedule {
    fn new(steps: u32) -> Self {
        let share = |p: f64| ((p * f64::from(steps)) as usize).max(1);
        Schedule {
            first: share(0.22),
            shrink: share(0.03),
            floor: share(0.06),
        }
    }
}

/// One sample's APGD state.
#[derive(Debug, Clone)]
struct State {
    /// The iterate before the last step (the momentum term).
    x_old: Vec<f32>,
    /// The iterate of highest loss, its loss and gradient.
    x_best: Vec<f32>,
    loss_best: f32,
    grad_best: Vec<f32>,
    /// The gradient the next step follows.
    grad: Vec<f32>,
    /// Every iterate's loss, for the oscillation test.
    losses: Vec<f32>,
    step: f32,
    /// Whether the last checkpoint halved the step, and the best loss then.
    halved_last: bool,
    loss_best_last: f32,
    /// The target class (targeted objective only).
    target: i64,
}

impl Apgd {
    pub(crate) fn new(
        kind: &'static str,
        norm: Norm,
        eps: f32,
        steps: u32,
        restarts: u32,
        objective: Objective,
    ) -> Self {
        let key = hash_str(&format!(
            "{kind}|{}|{eps}|{steps}|{restarts}|{objective:?}",
            norm.as_str()
        ));
        Apgd {
            kind,
            norm,
            eps,
            steps,
            restarts,
            objective,
            key,
        }
    }

    fn loss(&self) -> Loss {
        match self.objective {
            Objective::Untargeted(loss) => loss,
            Objective::Targeted { .. } => Loss::DlrTargeted,
        }
    }

    /// The random start: x + ε·t/‖t‖, clipped to the box.
    fn start(&self, x: &mut [f32], x0: &[f32], rng: &mut SampleRng) {
        let t: Vec<f32> = match self.norm {
            Norm::L2 => (0..x.len()).map(|_| rng.normal()).collect(),
            _ => (0..x.len()).map(|_| rng.symmetric()).collect(),
        };
        let scale = self.eps / (norm(&t, self.norm) + 1e-12);
        for ((v, &c), &ti) in x.iter_mut().zip(x0).zip(&t) {
            *v = (c + scale * ti).clamp(0.0, 1.0);
        }
    }

    /// One APGD step of `x` (in place), with momentum from `x_old`.
    fn step(&self, x: &mut [f32], x0: &[f32], state: &mut State, momentum: f32) {
        let previous = x.to_vec();
        let mut z: Vec<f32> = match self.norm {
            Norm::L2 => {
                let g = norm(&state.grad, Norm::L2) + 1e-12;
                x.iter()
                    .zip(&state.grad)
                    .map(|(v, d)| v + state.step * d / g)
                    .collect()
            }
            _ => x
                .iter()
                .zip(&state.grad)
                .map(|(v, d)| v + state.step * sign(*d))
                .collect(),
        };
        self.project(&mut z, x0);
        for (((v, zi), old), prev) in x.iter_mut().zip(&z).zip(&state.x_old).zip(&previous) {
            *v = prev + (zi - prev) * momentum + (prev - old) * (1.0 - momentum);
        }
        self.project(x, x0);
        state.x_old = previous;
    }

    /// Onto the ε-ball around `x0`, then the box, as the reference writes it.
    fn project(&self, x: &mut [f32], x0: &[f32]) {
        match self.norm {
            Norm::L2 => {
                let delta: Vec<f32> = x.iter().zip(x0).map(|(a, b)| a - b).collect();
                let length = norm(&delta, Norm::L2);
                let scale = self.eps.min(length) / (length + 1e-12);
                for ((v, &c), d) in x.iter_mut().zip(x0).zip(&delta) {
                    *v = (c + d * scale).clamp(0.0, 1.0);
                }
            }
            _ => {
                for (v, &c) in x.iter_mut().zip(x0) {
                    *v = v.max(c - self.eps).min(c + self.eps).clamp(0.0, 1.0);
                }
            }
        }
    }

    /// One APGD run (one restart, one target rank) on the samples of
    /// `batch` not fooled yet in `results`. `rank` is the target's rank
    /// among the clean logits (2 = the highest wrong class) for the targeted
    /// objective.
    fn single_run(
        &self,
        model: &mut dyn Model,
        batch: &Batch,
        results: &mut Perturbed,
        stream: u32,
        rank: usize,
    ) -> Result<()> {
        let len = batch.image_len();
        let mut active = ActiveSet::unfooled(batch, results, self.key, stream);
        if active.is_empty() {
            return Ok(());
        }
        let targets: Option<Vec<i64>> = match self.objective {
            Objective::Untargeted(_) => None,
            Objective::Targeted { .. } => Some(ranked_targets(model, &active, results, rank)?),
        };
        for j in 0..active.len() {
            let (x, x0, rng) = active.sample(j);
            self.start(x, x0, rng);
        }
        let labels = active.labels();
        let eval = model.loss_and_grad(self.loss(), active.x(), &labels, targets.as_deref())?;
        let fooled = active.record(results, &eval.logits, false);
        let states: Vec<State> = (0..active.len())
            .map(|j| {
                let x = active.x()[j * len..(j + 1) * len].to_vec();
                let grad = eval.input_grad[j * len..(j + 1) * len].to_vec();
                State {
                    x_old: x.clone(),
                    x_best: x,
                    loss_best: eval.loss[j],
                    grad_best: grad.clone(),
                    grad,
                    losses: Vec::with_capacity(self.steps as usize),
                    step: 2.0 * self.eps,
                    halved_last: true,
                    loss_best_last: eval.loss[j],
                    target: targets.as_ref().map_or(-1, |t| t[j]),
                }
            })
            .collect();
        let mut active = active.with_states(states);
        active.retain_unfooled(&fooled);
        let schedule = Schedule::new(self.steps);
        let mut interval = schedule.first;
        let mut since_check = 0;
        for i in 0..self.steps as usize {
            if active.is_empty() {
                break;
            }
            let momentum = if i > 0 { MOMENTUM } else { 1.0 };
            for j in 0..active.len() {
                let (x, x0, _, state) = active.sample_state(j);
                self.step(x, x0, state, momentum);
            }
            let labels = active.labels();
            let targets: Option<Vec<i64>> = targets
                .as_ref()
                .map(|_| active.states().iter().map(|s| s.target).collect());
            let eval = model.loss_and_grad(self.loss(), active.x(), &labels, targets.as_deref())?;
            let fooled = active.record(results, &eval.logits, false);
            since_check += 1;
            let checkpoint = since_check == interval;
            for j in 0..active.len() {
                let (x, _, _, state) = active.sample_state(j);
                let loss = eval.loss[j];
                state
                    .grad
                    .copy_from_slice(&eval.input_grad[j * len..(j + 1) * len]);
                state.losses.push(loss);
                if loss > state.loss_best {
                    state.x_best.copy_from_slice(x);
                    state.grad_best.copy_from_slice(&state.grad);
                    state.loss_best = loss;
                }
                if checkpoint && halve(state, interval) {
                    state.step /= 2.0;
                    x.copy_from_slice(&state.x_best);
                    state.grad.copy_from_slice(&state.grad_best);
                }
            }
            if checkpoint {
                interval = interval.saturating_sub(schedule.shrink).max(schedule.floor);
                since_check = 0;
            }
            active.retain_unfooled(&fooled);
        }
        Ok(())
    }
}

/// The checkpoint test; records what it decided.
fn halve(state: &mut State, interval: usize) -> bool {
    let losses = &state.losses;
    let i = losses.len() - 1;
    // The loss before the first iterate counts as 0, as in the reference
    // (whose history starts zeroed).
    let before = |k: usize| if k == 0 { 0.0 } else { losses[k - 1] };
    let rises = (0..interval)
        .filter(|&c| losses[i - c] > before(i - c))
        .count();
    let oscillates = rises as f32 <= interval as f32 * RHO;
    let stalled = !state.halved_last && state.loss_best_last >= state.loss_best;
    let halve = oscillates || stalled;
    state.halved_last = halve;
    state.loss_best_last = state.loss_best;
    halve
}

/// The target class of each active sample: the class of rank `rank` among
/// the clean image's logits (2 = the highest-scoring wrong class of a
/// correctly classified sample). The clean pass counts as one query.
pub(crate) fn ranked_targets<S>(
    model: &mut dyn Model,
    active: &ActiveSet<'_, S>,
    results: &mut Perturbed,
    rank: usize,
) -> Result<Vec<i64>> {
    let clean = model.logits(&active.originals(), active.len())?;
    active.charge(results, 1);
    Ok(clean.rows().map(|row| ranked(row, rank) as i64).collect())
}

/// How many target classes a targeted attack can try: those asked for,
/// at most the model's classes less the true one.
pub(crate) fn target_count(asked: u32, model: &dyn Model) -> u32 {
    asked.min(model.classes().saturating_sub(1) as u32)
}

/// The class of rank `rank` among `row`'s scores (1 = the highest), ties
/// broken as a stable ascending sort does.
pub(crate) fn ranked(row: &[f32], rank: usize) -> usize {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
    order[row.len() - rank]
}

fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn norm(v: &[f32], norm: Norm) -> f32 {
    match norm {
        Norm::L2 => v.iter().map(|x| x * x).sum::<f32>().sqrt(),
        _ => v.iter().fold(0.0, |m, x| m.max(x.abs())),
    }
}

impl Attack for Apgd {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn oracle(&self) -> Oracle {
        Oracle::Gradients(vec![self.loss()])
    }

    fn targets(&self) -> Option<u32> {
        match self.objective {
            Objective::Targeted { classes } => Some(classes),
            Objective::Untargeted(_) => None,
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            steps: Some(self.steps),
            restarts: Some(self.restarts),
            loss: Some(self.loss()),
            ..Settings::threat(self.norm, self.eps)
        }
    }

    fn run(&self, model: &mut dyn Model, batch: &Batch) -> Result<Perturbed> {
        let mut results = Perturbed::unperturbed(batch);
        match self.objective {
            Objective::Untargeted(_) => {
                for restart in 0..self.restarts {
                    self.single_run(model, batch, &mut results, restart, 0)?;
                }
            }
            Objective::Targeted { classes } => {
                // The model's classes, less the true one, bound the targets.
                let targets = target_count(classes, model);
                for t in 0..targets {
                    for restart in 0..self.restarts {
                        let stream = t * self.restarts + restart;
                        self.single_run(model, batch, &mut results, stream, t as usize + 2)?;
                    }
                }
            }
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::super::linear::{fools_exactly_those_within_eps, median, LinearProblem};
    use super::*;

    #[test]
    fn apgd_ce_on_a_linear_model_fools_exactly_the_samples_within_eps() {
        let problem = LinearProblem::new(2, 16);
        for (norm, distances, tolerance) in [
            (Norm::Linf, &problem.d_inf, 1e-3),
            (Norm::L2, &problem.d_2, 1e-2),
        ] {
            let eps = median(distances);
            let apgd = Apgd::new(
                "apgd-ce",
                norm,
                eps,
                100,
                1,
                Objective::Untargeted(Loss::Ce),
            );
            fools_exactly_those_within_eps(&apgd, &problem, distances, tolerance);
        }
    }

    #[test]
    fn apgd_t_on_a_multiclass_linear_model_fools_exactly_the_samples_within_eps() {
        let problem = LinearProblem::new(5, 16);
        for (norm, distances, tolerance) in [
            (Norm::Linf, &problem.d_inf, 1e-3),
            (Norm::L2, &problem.d_2, 2e-2),
        ] {
            let eps = median(distances);
            let apgd = Apgd::new(
                "apgd-t",
                norm,
                eps,
                100,
                1,
                Objective::Targeted { classes: 9 },
            );
            fools_exactly_those_within_eps(&apgd, &problem, distances, tolerance);
        }
    }

    #[test]
    fn apgd_t_targets_at_most_the_wrong_classes_and_charges_its_clean_pass() {
        let problem = LinearProblem::new(5, 16);
        let mut model = problem.model.clone();
        // ε = 0: nothing can be fooled, so every sample runs every target.
        let apgd = Apgd::new(
            "apgd-t",
            Norm::Linf,
            0.0,
            10,
            1,
            Objective::Targeted { classes: 9 },
        );
        let out = apgd.run(&mut model, &problem.batch(0)).unwrap();
        assert!(out.fooled.iter().all(|&f| !f));
        // 4 wrong classes × (1 clean pass + 1 start + 10 steps).
        assert!(
            out.queries.iter().all(|&q| q == 4 * 12),
            "{:?}",
            out.queries
        );
    }

    #[test]
    fn checkpoints_fall_where_the_reference_puts_them() {
        let schedule = Schedule::new(100);
        let (mut interval, mut at, mut checks) = (schedule.first, 0, Vec::new());
        while at + interval <= 100 {
            at += interval;
            checks.push(at);
            interval = interval.saturating_sub(schedule.shrink).max(schedule.floor);
        }
        assert_eq!(checks, [22, 41, 57, 70, 80, 87, 93, 99]);
    }

    #[test]
    fn ranks_count_from_the_highest_score() {
        let row = [0.1, 3.0, 2.0, -1.0];
        assert_eq!(ranked(&row, 1), 1);
        assert_eq!(ranked(&row, 2), 2);
        assert_eq!(ranked(&row, 4), 3);
    }

    #[test]
    fn the_step_halves_on_oscillation_and_on_a_stall() {
        let mut state = State {
            x_old: vec![],
            x_best: vec![],
            loss_best: 1.0,
            grad_best: vec![],
            grad: vec![],
            losses: vec![0.5, 0.4, 0.6, 0.3],
            step: 1.0,
            halved_last: true,
            loss_best_last: 1.0,
            target: -1,
        };
        // Rises in 2 of the last 4 steps (0.5 > 0, 0.6 > 0.4): 2 ≤ 3 → halve.
        assert!(halve(&mut state, 4));
        state.losses.extend([0.7, 0.8, 0.9, 1.0]);
        // Rose every step, and the step was halved last time: keep it.
        assert!(!halve(&mut state, 4));
        state.losses.extend([1.1, 1.2, 1.3, 1.4]);
        // Rising, not halved last time, but the best loss did not improve: halve.
        assert!(halve(&mut state, 4));
    }
}
