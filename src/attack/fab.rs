//! FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein 2020,
//! "Minimally distorted adversarial examples with a fast adaptive boundary
//! attack"), ℓ∞ and ℓ2, as AutoAttack's standard version runs it. A
//! minimum-norm attack: each iteration linearises the target margin
//! z_t − z_y at the iterate, projects both the iterate and the clean image
//! onto that hyperplane (intersected with the box), moves to a convex
//! combination of the two projections with overshoot η, and, once
//! adversarial, steps back towards the clean image by β to look for a
//! closer example. A sample counts as fooled when an adversarial iterate
//! lies within ε. Constants (`autoattack/fab_base.py`): 100 iterations,
//! α_max 0.1, η 1.05, β 0.9, targets the 9 highest-scoring wrong classes
//! of the clean image (fewer when the model has fewer classes), no random
//! start on the first restart and a start at half of ε after.
//!
//! Differences from the reference: a sample leaves the batch as soon as it
//! has an adversarial example within ε (further iterations would only find
//! a smaller one, which cannot change the verdict), so the reported example
//! is the first within ε rather than the smallest found; random restarts
//! draw from the sample's own stream. The projection onto the hyperplane ∩
//! box is computed exactly by sorting the coordinates' breakpoints (the
//! reference bisects over the same breakpoints); where the box does not
//! reach the hyperplane it returns the box point closest to it.
//!
//! Suite fields: `norm` (linf | l2), `eps`, `steps` (default 100),
//! `restarts` (per target, default 1), `targets` (default 9).

use super::apgd::{apgd_norm, ranked, target_count};
use super::apgd_t::DEFAULT_TARGETS;
use super::registry::{Entry, FieldError};
use super::rng::{hash_str, SampleRng};
use super::rows::Rows;
use super::{Attack, Batch, Fields, Loss, Model, Norm, Oracle, Perturbed, Settings};
use crate::error::Result;
use std::sync::Arc;

pub const ENTRY: Entry = Entry {
    kind: "fab-t",
    build,
    fields: &["norm", "eps", "steps", "restarts", "targets"],
    about: "targeted Fast Adaptive Boundary attack: minimum-norm steps towards the 9 highest-scoring wrong classes (Croce & Hein 2020)",
};

/// The reference's iteration count.
const DEFAULT_STEPS: u32 = 100;
/// Largest weight of the clean image's projection in the next iterate.
const ALPHA_MAX: f64 = 0.1;
/// Overshoot of the projections.
const ETA: f64 = 1.05;
/// Step back towards the clean image once adversarial.
const BETA: f32 = 0.9;

/// `kind = "fab-t"`.
pub fn build(fields: &Fields) -> Result<Arc<dyn Attack>, FieldError> {
    let targets = fields.target_classes.unwrap_or(DEFAULT_TARGETS);
    if targets == 0 {
        return Err(FieldError::new("targets", "fab-t needs targets >= 1"));
    }
    let steps = fields.steps.unwrap_or(DEFAULT_STEPS);
    if steps == 0 {
        return Err(FieldError::new("steps", "fab-t needs steps >= 1"));
    }
    let norm = apgd_norm(fields)?;
    let eps = fields.eps("fab-t")?;
    Ok(Arc::new(Fab {
        norm,
        eps,
        steps,
        restarts: fields.restarts,
        targets,
        key: hash_str(&format!(
            "fab-t|{}|{eps}|{steps}|{}|{targets}",
            norm.as_str(),
            fields.restarts
        )),
    }))
}

#[derive(Debug, Clone)]
pub struct Fab {
    norm: Norm,
    eps: f32,
    steps: u32,
    restarts: u32,
    targets: u32,
    key: u64,
}

/// One row's FAB state.
#[derive(Debug, Clone)]
struct State {
    target: i64,
    /// Steps taken.
    steps: u32,
}

/// The smallest `d` in `norm` (ℓ∞ or ℓ2) with w·(t + d) = b and t + d in
/// [0, 1]^n; where the box does not reach the hyperplane, the box point
/// that gets closest. Written into `d`.
///
/// Both minimisers have the form d_i = s·sign(u_i)·min(λ|u_i|, room_i), with
/// u = sign(w) (ℓ∞) or w (ℓ2), room_i the distance to the box edge in that
/// direction and s the side of the hyperplane; Σ w_i d_i is piecewise
/// linear and monotone in λ, so sorting the breakpoints room_i/|u_i| gives λ.
pub(crate) fn project_onto_hyperplane(t: &[f32], w: &[f32], b: f64, norm: Norm, d: &mut [f32]) {
    let gap = b - w
        .iter()
        .zip(t)
        .map(|(&wi, &ti)| f64::from(wi) * f64::from(ti))
        .sum::<f64>();
    // Work on the side where the required w·d is positive.
    let side = if gap < 0.0 { -1.0 } else { 1.0 };
    let need = gap * side;
    // Per coordinate: the direction it moves in (u), how far it can (room),
    // and how much w·d gains per unit of λ until it saturates (rate).
    let direction: Vec<f64> = w
        .iter()
        .map(|&wi| {
            let wi = f64::from(wi) * side;
            match norm {
                Norm::L2 => wi,
                _ => wi.signum() * f64::from(u8::from(wi != 0.0)),
            }
        })
        .collect();
    let room: Vec<f64> = direction
        .iter()
        .zip(t)
        .map(|(&u, &ti)| {
            if u > 0.0 {
                1.0 - f64::from(ti)
            } else if u < 0.0 {
                f64::from(ti)
            } else {
                0.0
            }
        })
        .collect();
    let rate: Vec<f64> = w
        .iter()
        .zip(&direction)
        .map(|(&wi, &u)| f64::from(wi).abs() * u.abs())
        .collect();
    // Breakpoints λ_i = room_i / |u_i|, where coordinate i saturates.
    let mut order: Vec<(f64, usize)> = (0..t.len())
        .filter(|&i| direction[i] != 0.0)
        .map(|i| (room[i] / direction[i].abs(), i))
        .collect();
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut slope: f64 = order.iter().map(|&(_, i)| rate[i]).sum();
    let (mut lambda, mut reached) = (0.0f64, 0.0f64);
    let mut solution = f64::INFINITY;
    if need <= 0.0 {
        solution = 0.0;
    } else {
        for &(breakpoint, i) in &order {
            let next = reached + slope * (breakpoint - lambda);
            if next >= need && slope > 0.0 {
                solution = lambda + (need - reached) / slope;
                break;
            }
            reached = next;
            lambda = breakpoint;
            slope -= rate[i];
        }
    }
    for (i, di) in d.iter_mut().enumerate() {
        let u = direction[i];
        *di = if u == 0.0 {
            0.0
        } else {
            (u.signum() * (solution * u.abs()).min(room[i])) as f32
        };
    }
}

fn norm_of(v: &[f32], norm: Norm) -> f64 {
    match norm {
        Norm::L2 => v
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt(),
        _ => v.iter().fold(0.0f64, |m, &x| m.max(f64::from(x).abs())),
    }
}

impl Fab {
    /// The random start of later restarts: half of ε along a random direction.
    fn start(&self, x: &mut [f32], x0: &[f32], rng: &mut SampleRng) {
        let t: Vec<f32> = match self.norm {
            Norm::L2 => (0..x.len()).map(|_| rng.normal()).collect(),
            _ => (0..x.len()).map(|_| rng.symmetric()).collect(),
        };
        let length = norm_of(&t, self.norm) as f32;
        for ((v, &c), &ti) in x.iter_mut().zip(x0).zip(&t) {
            *v = (c + self.eps * ti / length * 0.5).clamp(0.0, 1.0);
        }
    }

    /// One FAB step of the iterate `x` of clean image `x0`, from the target
    /// margin `margin` and its gradient `w` at `x`.
    fn step(&self, x: &mut [f32], x0: &[f32], margin: f32, w: &[f32]) {
        // The linearised boundary: w·z = b, where the margin vanishes.
        let b = -f64::from(margin)
            + w.iter()
                .zip(x.iter())
                .map(|(&wi, &xi)| f64::from(wi) * f64::from(xi))
                .sum::<f64>();
        let mut d1 = vec![0.0f32; x.len()];
        let mut d2 = vec![0.0f32; x.len()];
        project_onto_hyperplane(x, w, b, self.norm, &mut d1);
        project_onto_hyperplane(x0, w, b, self.norm, &mut d2);
        let a1 = norm_of(&d1, self.norm).max(1e-8);
        let a2 = norm_of(&d2, self.norm).max(1e-8);
        let alpha = (a1 / (a1 + a2)).clamp(0.0, ALPHA_MAX);
        for (((v, &c), &s1), &s2) in x.iter_mut().zip(x0).zip(&d1).zip(&d2) {
            let from_iterate = f64::from(*v) + ETA * f64::from(s1);
            let from_clean = f64::from(c) + ETA * f64::from(s2);
            *v = (from_iterate * (1.0 - alpha) + from_clean * alpha).clamp(0.0, 1.0) as f32;
        }
    }

    /// Every target rank and restart of every sample of `batch`, as rows
    /// ([`Rows`]): stream k is restart k mod `restarts` towards the class
    /// of rank k / `restarts` + 2 among the clean logits.
    fn run_rows(
        &self,
        model: &mut dyn Model,
        batch: &Batch,
        rows: &mut Rows<State>,
        results: &mut Perturbed,
    ) -> Result<()> {
        let len = batch.image_len();
        let restarts = self.restarts.max(1);
        // The ordered run takes the clean logits once per stream, and each
        // stream is charged for it (`Rows::new`'s initial queries).
        let clean = model.logits(batch.images, batch.len())?;
        loop {
            rows.admit(|start| {
                if start.stream % restarts > 0 {
                    self.start(start.x, start.x0, start.rng);
                }
                let rank = (start.stream / restarts) as usize + 2;
                State {
                    target: ranked(clean.row(start.sample), rank) as i64,
                    steps: 0,
                }
            });
            if rows.is_empty() {
                return Ok(());
            }
            let labels = rows.labels();
            let targets: Vec<i64> = rows.states().iter().map(|s| s.target).collect();
            let eval =
                model.loss_and_grad(Loss::TargetMargin, rows.x(), &labels, Some(&targets))?;
            rows.charge(1);
            for j in 0..rows.len() {
                let (x, x0, state) = rows.row(j);
                self.step(
                    x,
                    x0,
                    eval.loss[j],
                    &eval.input_grad[j * len..(j + 1) * len],
                );
                state.steps += 1;
            }
            let predictions = model.logits(rows.x(), rows.len())?.argmax();
            let mut within = vec![false; rows.len()];
            for (j, (&p, &y)) in predictions.iter().zip(&labels).enumerate() {
                let (x, x0, _) = rows.row(j);
                if p as i64 != y {
                    let delta: Vec<f32> = x.iter().zip(x0).map(|(a, b)| a - b).collect();
                    within[j] = norm_of(&delta, self.norm) <= f64::from(self.eps);
                    if !within[j] {
                        // Adversarial but too far: look closer to the clean image.
                        for (v, &c) in x.iter_mut().zip(x0) {
                            *v = c + (*v - c) * BETA;
                        }
                    }
                }
            }
            rows.record(results, &within);
            let done: Vec<bool> = rows
                .states()
                .iter()
                .map(|s| s.steps >= self.steps)
                .collect();
            rows.retire(&within, &done);
        }
    }
}

impl Attack for Fab {
    fn kind(&self) -> &'static str {
        "fab-t"
    }

    fn oracle(&self) -> Oracle {
        Oracle::Gradients(vec![Loss::TargetMargin])
    }

    fn targets(&self) -> Option<u32> {
        Some(self.targets)
    }

    fn settings(&self) -> Settings {
        Settings {
            steps: Some(self.steps),
            restarts: Some(self.restarts),
            loss: Some(Loss::TargetMargin),
            ..Settings::threat(self.norm, self.eps)
        }
    }

    fn run(&self, model: &mut dyn Model, batch: &Batch) -> Result<Perturbed> {
        let mut results = Perturbed::unperturbed(batch);
        let streams = target_count(self.targets, model) * self.restarts;
        // Each stream's clean pass counts as a query, as in the ordered run.
        let mut rows = Rows::new(batch, self.key, streams, 1);
        self.run_rows(model, batch, &mut rows, &mut results)?;
        rows.finish(&mut results);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::super::linear::{full_batches_match, median, LinearProblem};
    use super::*;

    /// Rows of later streams fill the calls as samples leave them, and the
    /// outcomes (examples, verdicts, queries) stay those of the ordered run.
    #[test]
    fn full_batches_report_what_the_ordered_run_reports() {
        let problem = LinearProblem::new(5, 16);
        for (norm, distances) in [(Norm::Linf, &problem.d_inf), (Norm::L2, &problem.d_2)] {
            let fab = Fab {
                norm,
                eps: 0.8 * median(distances),
                steps: 10,
                restarts: 2,
                targets: DEFAULT_TARGETS,
                key: 7,
            };
            let streams = target_count(DEFAULT_TARGETS, &problem.model) * 2;
            let mut model = problem.model.clone();
            let batch = problem.batch(0);
            let mut expected = Perturbed::unperturbed(&batch);
            let mut rows = Rows::new(&batch, fab.key, streams, 1).in_order();
            fab.run_rows(&mut model, &batch, &mut rows, &mut expected)
                .unwrap();
            rows.finish(&mut expected);
            full_batches_match(&fab, &problem, &expected, model.gradient_calls);
        }
    }

    #[test]
    fn projections_land_on_the_hyperplane_at_the_least_distance() {
        let t = [0.2f32, 0.5, 0.9, 0.5];
        let w = [1.0f32, -2.0, 0.5, 0.0];
        let b = 0.3;
        for norm in [Norm::Linf, Norm::L2] {
            let mut d = [0.0f32; 4];
            project_onto_hyperplane(&t, &w, b, norm, &mut d);
            let reached: f64 = t
                .iter()
                .zip(&d)
                .zip(&w)
                .map(|((&ti, &di), &wi)| f64::from(wi) * f64::from(ti + di))
                .sum();
            assert!((reached - b).abs() < 1e-6, "{norm:?}: w·(t+d) = {reached}");
            assert!(t
                .iter()
                .zip(&d)
                .all(|(a, b)| (0.0..=1.0).contains(&(a + b))));
            assert_eq!(d[3], 0.0, "a coordinate w ignores does not move");
        }
        // ℓ2 without the box in play: d = (b − w·t) w / ‖w‖².
        let mut d = [0.0f32; 4];
        project_onto_hyperplane(&t, &w, b, Norm::L2, &mut d);
        let gap = 0.3 - (0.2 - 1.0 + 0.45);
        let expected: Vec<f32> = w
            .iter()
            .map(|wi| (gap * f64::from(*wi) / 5.25) as f32)
            .collect();
        for (a, e) in d.iter().zip(&expected) {
            assert!((a - e).abs() < 1e-6, "{d:?} vs {expected:?}");
        }
        // ℓ∞: every coordinate moves by the same λ until it meets the box:
        // the third saturates at 0.1 (0.35 of the gap), the first two share
        // the remaining 0.30 at slope 3, so λ = 0.2.
        project_onto_hyperplane(&t, &w, b, Norm::Linf, &mut d);
        let expected = [0.2, -0.2, 0.1, 0.0];
        for (a, e) in d.iter().zip(&expected) {
            assert!((a - e).abs() < 1e-6, "{d:?} vs {expected:?}");
        }
    }

    #[test]
    fn an_unreachable_hyperplane_gives_the_nearest_corner() {
        let t = [0.5f32, 0.5];
        let w = [1.0f32, 1.0];
        let mut d = [0.0f32; 2];
        project_onto_hyperplane(&t, &w, 5.0, Norm::L2, &mut d);
        assert_eq!(d, [0.5, 0.5]);
    }

    #[test]
    fn fab_t_finds_nearly_the_minimal_perturbation_of_a_linear_model() {
        // FAB-T must find an example within 3% of each sample's exact
        // distance to the nearest boundary (all wrong classes are targets):
        // every sample closer than 0.97·ε is fooled, none beyond ε.
        let problem = LinearProblem::new(5, 16);
        for (norm, distances) in [(Norm::Linf, &problem.d_inf), (Norm::L2, &problem.d_2)] {
            let eps = median(distances);
            let fab = build(&Fields {
                norm,
                eps: Some(eps),
                ..Fields::default()
            })
            .unwrap();
            let mut model = problem.model.clone();
            let out = fab.run(&mut model, &problem.batch(0)).unwrap();
            for (i, &d) in distances.iter().enumerate() {
                if d < 0.97 * eps {
                    assert!(
                        out.fooled[i],
                        "{norm:?}: sample {i} at {d} (eps {eps}) not fooled"
                    );
                }
                if d > eps {
                    assert!(
                        !out.fooled[i],
                        "{norm:?}: sample {i} at {d} fooled beyond eps"
                    );
                }
            }
        }
    }
}
