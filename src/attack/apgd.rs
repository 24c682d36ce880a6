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

use super::registry::{Entry, FieldError};
use super::rng::{hash_str, SampleRng};
use super::rows::Rows;
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
    /// Evaluations so far: the start, then one per step.
    evaluated: u32,
    /// Steps since the last checkpoint, and the current spacing.
    since_check: usize,
    interval: usize,
}

impl State {
    /// A row about to be evaluated at its start.
    fn new(step: f32, target: i64, interval: usize) -> Self {
        State {
            x_old: Vec::new(),
            x_best: Vec::new(),
            loss_best: f32::NEG_INFINITY,
            grad_best: Vec::new(),
            grad: Vec::new(),
            losses: Vec::new(),
            step,
            halved_last: true,
            loss_best_last: f32::NEG_INFINITY,
            target,
            evaluated: 0,
            since_check: 0,
            interval,
        }
    }
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

    /// Every restart (and target rank) of every sample of `batch`, as rows
    /// ([`Rows`]): stream k is restart k, or for the targeted objective
    /// restart k mod `restarts` towards the class of rank k / `restarts` + 2
    /// among the clean logits (2 = the highest-scoring wrong class).
    fn run_rows(
        &self,
        model: &mut dyn Model,
        batch: &Batch,
        rows: &mut Rows<State>,
        results: &mut Perturbed,
    ) -> Result<()> {
        let len = batch.image_len();
        let schedule = Schedule::new(self.steps);
        // The targeted objective's classes come from the clean logits, taken
        // once; the ordered run takes them once per stream, and each stream
        // is charged for it (`Rows::new`'s initial queries).
        let clean = match self.objective {
            Objective::Targeted { .. } => Some(model.logits(batch.images, batch.len())?),
            Objective::Untargeted(_) => None,
        };
        loop {
            rows.admit(|start| {
                self.start(start.x, start.x0, start.rng);
                let target = clean.as_ref().map_or(-1, |clean| {
                    let rank = (start.stream / self.restarts.max(1)) as usize + 2;
                    ranked(clean.row(start.sample), rank) as i64
                });
                State::new(2.0 * self.eps, target, schedule.first)
            });
            if rows.is_empty() {
                return Ok(());
            }
            for j in 0..rows.len() {
                let (x, x0, state) = rows.row(j);
                if state.evaluated > 0 {
                    let momentum = if state.evaluated > 1 { MOMENTUM } else { 1.0 };
                    self.step(x, x0, state, momentum);
                }
            }
            let labels = rows.labels();
            let targets: Option<Vec<i64>> = clean
                .as_ref()
                .map(|_| rows.states().iter().map(|s| s.target).collect());
            let eval = model.loss_and_grad(self.loss(), rows.x(), &labels, targets.as_deref())?;
            let fooled = rows.misclassified(&eval.logits);
            rows.record(results, &fooled);
            let mut done = vec![false; rows.len()];
            for (j, done) in done.iter_mut().enumerate() {
                let (x, _, state) = rows.row(j);
                let loss = eval.loss[j];
                let grad = &eval.input_grad[j * len..(j + 1) * len];
                state.evaluated += 1;
                if state.evaluated == 1 {
                    state.x_old = x.to_vec();
                    state.x_best = x.to_vec();
                    state.loss_best = loss;
                    state.grad_best = grad.to_vec();
                    state.grad = grad.to_vec();
                    state.loss_best_last = loss;
                    state.losses.reserve(self.steps as usize);
                    continue;
                }
                state.grad.copy_from_slice(grad);
                state.losses.push(loss);
                if loss > state.loss_best {
                    state.x_best.copy_from_slice(x);
                    state.grad_best.copy_from_slice(&state.grad);
                    state.loss_best = loss;
                }
                state.since_check += 1;
                if state.since_check == state.interval {
                    let interval = state.interval;
                    if halve(state, interval) {
                        state.step /= 2.0;
                        x.copy_from_slice(&state.x_best);
                        state.grad.copy_from_slice(&state.grad_best);
                    }
                    state.interval = state
                        .interval
                        .saturating_sub(schedule.shrink)
                        .max(schedule.floor);
                    state.since_check = 0;
                }
                *done = state.evaluated > self.steps;
            }
            rows.retire(&fooled, &done);
        }
    }

    /// How many times each sample is attacked: restarts, times target
    /// classes for the targeted objective.
    fn streams(&self, model: &dyn Model) -> u32 {
        match self.objective {
            Objective::Untargeted(_) => self.restarts,
            // The model's classes, less the true one, bound the targets.
            Objective::Targeted { classes } => target_count(classes, model) * self.restarts,
        }
    }

    /// Queries a row has spent before its start: the targeted objective's
    /// clean pass.
    fn clean_pass(&self) -> u32 {
        u32::from(matches!(self.objective, Objective::Targeted { .. }))
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
        let mut rows = Rows::new(batch, self.key, self.streams(model), self.clean_pass());
        self.run_rows(model, batch, &mut rows, &mut results)?;
        rows.finish(&mut results);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::super::linear::{
        fools_exactly_those_within_eps, full_batches_match, median, LinearProblem,
    };
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

    /// Rows of later streams fill the calls as samples leave them, and the
    /// outcomes (examples, verdicts, queries) stay those of the ordered run.
    #[test]
    fn full_batches_report_what_the_ordered_run_reports() {
        let problem = LinearProblem::new(5, 16);
        for (norm, distances) in [(Norm::Linf, &problem.d_inf), (Norm::L2, &problem.d_2)] {
            let eps = 0.8 * median(distances);
            for objective in [
                Objective::Targeted { classes: 9 },
                Objective::Untargeted(Loss::Ce),
            ] {
                let apgd = Apgd::new("apgd", norm, eps, 10, 3, objective);
                let mut model = problem.model.clone();
                let batch = problem.batch(0);
                let mut expected = Perturbed::unperturbed(&batch);
                let mut rows =
                    Rows::new(&batch, apgd.key, apgd.streams(&model), apgd.clean_pass()).in_order();
                apgd.run_rows(&mut model, &batch, &mut rows, &mut expected)
                    .unwrap();
                rows.finish(&mut expected);
                full_batches_match(&apgd, &problem, &expected, model.gradient_calls);
            }
        }
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
            loss_best: 1.0,
            losses: vec![0.5, 0.4, 0.6, 0.3],
            loss_best_last: 1.0,
            ..State::new(1.0, -1, 4)
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
