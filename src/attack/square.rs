//! Square Attack (Andriushchenko et al. 2020), ℓ∞ and ℓ2: a random search
//! that needs the model's scores only. Each query changes one square window
//! of the current best perturbation and keeps the change when it lowers the
//! margin z_y − max_{j≠y} z_j (or misclassifies). The constants are the
//! reference's as AutoAttack runs it (`autoattack/square.py`, `resc_schedule
//! = False`): 5,000 queries, p_init 0.8, the window's share p of the image
//! halving at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000;
//! ℓ∞ starts from vertical stripes of ±ε and updates windows to ±ε per
//! channel; ℓ2 starts from a 5×5 grid of "bumps" and moves mass between
//! two windows, keeping ‖δ‖₂ = ε.
//!
//! Differences from the reference: the reference draws one window (and its
//! signs) per iteration for the whole batch; here each sample draws its own
//! from its own stream (keyed by seed, settings, sample id and restart), so
//! a result does not depend on which samples share its batch, or on
//! sharding. And a window may start on any row and column it fits at: the
//! reference's draw stops one short, so its small windows never reach the
//! image's last row or column (on a linear model it then cannot find the
//! optimal vertex).
//!
//! Suite fields: `norm` (linf | l2), `eps`, `queries` (default 5000),
//! `restarts` (default 1). Needs scores only.

use super::active::ActiveSet;
use super::registry::{Entry, FieldError};
use super::rng::{hash_str, SampleRng};
use super::{Attack, Batch, Fields, Loss, Model, Norm, Oracle, Perturbed, Settings};
use crate::error::{Error, Result};
use std::sync::Arc;

pub const ENTRY: Entry = Entry {
    kind: "square",
    build,
    fields: &["norm", "eps", "queries", "restarts"],
    about: "Square Attack: score-based random search, 5000 queries, no gradients (Andriushchenko et al. 2020)",
};

/// AutoAttack's query budget.
pub const DEFAULT_QUERIES: u32 = 5000;
/// The initial share of the image a window covers.
const P_INIT: f32 = 0.8;

/// `kind = "square"`.
pub fn build(fields: &Fields) -> Result<Arc<dyn Attack>, FieldError> {
    let norm = match fields.norm {
        Norm::L1 => {
            return Err(FieldError::new(
                "norm",
                "square runs in linf or l2 here; use kind `pgd` for l1",
            ))
        }
        norm => norm,
    };
    let eps = fields.eps("square")?;
    let queries = fields.queries.unwrap_or(DEFAULT_QUERIES);
    if queries == 0 {
        return Err(FieldError::new("queries", "square needs queries >= 1"));
    }
    Ok(Arc::new(Square {
        norm,
        eps,
        queries,
        restarts: fields.restarts,
        key: hash_str(&format!(
            "square|{}|{eps}|{queries}|{}",
            norm.as_str(),
            fields.restarts
        )),
    }))
}

#[derive(Debug, Clone)]
pub struct Square {
    norm: Norm,
    eps: f32,
    queries: u32,
    restarts: u32,
    key: u64,
}

/// The window share of iteration `i` (the reference's schedule, not rescaled).
fn p_schedule(i: u32) -> f32 {
    let halvings = match i {
        0..=10 => 0,
        11..=50 => 1,
        51..=200 => 2,
        201..=500 => 3,
        501..=1000 => 4,
        1001..=2000 => 5,
        2001..=4000 => 6,
        4001..=6000 => 7,
        6001..=8000 => 8,
        _ => 9,
    };
    P_INIT / (1u32 << halvings) as f32
}

/// A window's first row (or column): uniform in `0..=span`, where `span`
/// is the image side less the window's. The reference draws from
/// `0..span`, so its windows never touch the last row or column once they
/// are smaller than the image; upat lets them (docs/attacks.md).
fn window_start(rng: &mut SampleRng, span: usize) -> usize {
    rng.integer(0, span)
}

/// ±1 with equal odds.
fn random_sign(rng: &mut SampleRng) -> f32 {
    if rng.symmetric() < 0.0 {
        -1.0
    } else {
        1.0
    }
}

/// The margin z_y − max_{j≠y} z_j of a logits row (negative: misclassified).
fn margin(row: &[f32], label: i64) -> f32 {
    let y = label as usize;
    let other = row
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != y)
        .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
    row[y] - other
}

/// The reference's `eta_rectangles(x, y)`: nested rectangles of weight
/// 1/(k+1)², centred, `rows × cols`, unit ℓ2 norm.
fn rectangles(rows: usize, cols: usize) -> Vec<f32> {
    let mut delta = vec![0.0f32; rows * cols];
    let (centre_r, centre_c) = (rows / 2 + 1, cols / 2 + 1);
    let (mut r0, mut c0) = (centre_r as i64 - 1, centre_c as i64 - 1);
    for k in 0..centre_r.max(centre_c) {
        let span = 2 * k as i64 + 1;
        let (r_lo, r_hi) = (
            r0.max(0) as usize,
            (r0 + span).min(rows as i64).max(0) as usize,
        );
        let (c_lo, c_hi) = (
            c0.max(0) as usize,
            (c0 + span).min(cols as i64).max(0) as usize,
        );
        let weight = 1.0 / ((k + 1) * (k + 1)) as f32;
        for r in r_lo..r_hi {
            for c in c_lo..c_hi {
                delta[r * cols + c] += weight;
            }
        }
        r0 -= 1;
        c0 -= 1;
    }
    normalise_l2(&mut delta);
    delta
}

/// The reference's ℓ2 `eta(s)`: a positive bump over the top half and a
/// negative one over the bottom, unit ℓ2 norm, transposed with odds ½.
fn bump(s: usize, rng: &mut SampleRng) -> Vec<f32> {
    let top = s / 2;
    let mut delta = rectangles(top, s);
    delta.extend(rectangles(s - top, s).into_iter().map(|v| -v));
    normalise_l2(&mut delta);
    if rng.uniform() > 0.5 {
        let mut transposed = vec![0.0; s * s];
        for r in 0..s {
            for c in 0..s {
                transposed[c * s + r] = delta[r * s + c];
            }
        }
        delta = transposed;
    }
    delta
}

fn normalise_l2(v: &mut [f32]) {
    let length = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if length > 0.0 {
        v.iter_mut().for_each(|x| *x /= length);
    }
}

/// One sample's search state: its best margin so far.
#[derive(Debug, Clone)]
struct State {
    x_best: Vec<f32>,
    margin_best: f32,
}

/// Image geometry.
#[derive(Debug, Clone, Copy)]
struct Shape {
    c: usize,
    h: usize,
    w: usize,
}

impl Shape {
    fn at(&self, ch: usize, r: usize, col: usize) -> usize {
        (ch * self.h + r) * self.w + col
    }
}

impl Square {
    /// The window side of iteration `i`.
    fn side(&self, i: u32, shape: Shape) -> usize {
        let features = (shape.c * shape.h * shape.w) as f32;
        let raw = (p_schedule(i) * features / shape.c as f32).sqrt().round() as usize;
        let side = match self.norm {
            Norm::L2 => {
                let s = raw.max(3);
                s + usize::from(s.is_multiple_of(2))
            }
            _ => raw.max(1),
        };
        side.min(shape.h.min(shape.w))
    }

    /// The starting point: ℓ∞ vertical stripes of ±ε per channel and column;
    /// ℓ2 a grid of bumps with a random sign per channel, scaled to ε.
    fn start(&self, x: &mut [f32], x0: &[f32], rng: &mut SampleRng, shape: Shape) {
        match self.norm {
            Norm::L2 => {
                let s = (shape.h / 5).max(1);
                let offset = (shape.h.saturating_sub(s * 5)) / 2;
                let mut delta = vec![0.0f32; x.len()];
                for gr in 0..shape.h / s {
                    for gc in 0..shape.w / s {
                        let (r0, c0) = (offset + gr * s, offset + gc * s);
                        let pattern = bump(s, rng);
                        for ch in 0..shape.c {
                            let sign = random_sign(rng);
                            for r in 0..s {
                                for col in 0..s {
                                    let (rr, cc) = (r0 + r, c0 + col);
                                    if rr < shape.h && cc < shape.w {
                                        delta[shape.at(ch, rr, cc)] += sign * pattern[r * s + col];
                                    }
                                }
                            }
                        }
                    }
                }
                self.place_l2(x, x0, &delta);
            }
            _ => {
                for ch in 0..shape.c {
                    for col in 0..shape.w {
                        let value = self.eps * random_sign(rng);
                        for r in 0..shape.h {
                            let i = shape.at(ch, r, col);
                            x[i] = (x0[i] + value).clamp(0.0, 1.0);
                        }
                    }
                }
            }
        }
    }

    /// x = clamp(x0 + ε·δ/‖δ‖₂).
    fn place_l2(&self, x: &mut [f32], x0: &[f32], delta: &[f32]) {
        let length = delta.iter().map(|d| d * d).sum::<f32>().sqrt() + 1e-12;
        for ((v, &c), &d) in x.iter_mut().zip(x0).zip(delta) {
            *v = (c + self.eps * d / length).clamp(0.0, 1.0);
        }
    }

    /// The candidate of iteration `i` from the best point `best` (into `x`).
    fn candidate(
        &self,
        x: &mut [f32],
        x0: &[f32],
        best: &[f32],
        rng: &mut SampleRng,
        i: u32,
        shape: Shape,
    ) {
        let s = self.side(i, shape);
        let (vh, vw) = (
            window_start(rng, shape.h - s),
            window_start(rng, shape.w - s),
        );
        match self.norm {
            Norm::L2 => self.candidate_l2(x, x0, best, rng, s, (vh, vw), shape),
            _ => {
                x.copy_from_slice(best);
                for ch in 0..shape.c {
                    let value = 2.0 * self.eps * random_sign(rng);
                    for r in vh..vh + s {
                        for col in vw..vw + s {
                            let i = shape.at(ch, r, col);
                            x[i] = (best[i] + value)
                                .max(x0[i] - self.eps)
                                .min(x0[i] + self.eps)
                                .clamp(0.0, 1.0);
                        }
                    }
                }
            }
        }
    }

    /// ℓ2: a new bump in window 1 carrying window 1's old mass and whatever
    /// budget is left, window 2 emptied, the whole rescaled to ‖δ‖₂ = ε.
    #[allow(clippy::too_many_arguments)]
    fn candidate_l2(
        &self,
        x: &mut [f32],
        x0: &[f32],
        best: &[f32],
        rng: &mut SampleRng,
        s: usize,
        (vh, vw): (usize, usize),
        shape: Shape,
    ) {
        let (vh2, vw2) = (
            window_start(rng, shape.h - s),
            window_start(rng, shape.w - s),
        );
        let mut delta: Vec<f32> = best.iter().zip(x0).map(|(b, c)| b - c).collect();
        let norm_image = delta.iter().map(|d| d * d).sum::<f32>().sqrt();
        let in_window = |r: usize, col: usize, top: usize, left: usize| {
            (top..top + s).contains(&r) && (left..left + s).contains(&col)
        };
        let pattern = bump(s, rng);
        for ch in 0..shape.c {
            let (mut window1, mut windows) = (0.0f32, 0.0f32);
            for r in 0..shape.h {
                for col in 0..shape.w {
                    let d = delta[shape.at(ch, r, col)];
                    if in_window(r, col, vh, vw) {
                        window1 += d * d;
                    }
                    if in_window(r, col, vh, vw) || in_window(r, col, vh2, vw2) {
                        windows += d * d;
                    }
                }
            }
            let (window1, windows) = (window1.sqrt(), windows.sqrt());
            let sign = random_sign(rng);
            let mut fresh: Vec<f32> = (0..s * s)
                .map(|k| {
                    let (r, col) = (vh + k / s, vw + k % s);
                    sign * pattern[k] + delta[shape.at(ch, r, col)] / (1e-12 + window1)
                })
                .collect();
            let length = fresh.iter().map(|v| v * v).sum::<f32>().sqrt();
            let budget = ((self.eps * self.eps - norm_image * norm_image).max(0.0)
                / shape.c as f32
                + windows * windows)
                .sqrt();
            fresh
                .iter_mut()
                .for_each(|v| *v = *v / (1e-12 + length) * budget);
            for r in vh2..vh2 + s {
                for col in vw2..vw2 + s {
                    delta[shape.at(ch, r, col)] = 0.0;
                }
            }
            for (k, v) in fresh.into_iter().enumerate() {
                delta[shape.at(ch, vh + k / s, vw + k % s)] = v;
            }
        }
        self.place_l2(x, x0, &delta);
    }

    fn single_run(
        &self,
        model: &mut dyn Model,
        batch: &Batch,
        results: &mut Perturbed,
        restart: u32,
        shape: Shape,
    ) -> Result<()> {
        let mut active = ActiveSet::unfooled(batch, results, self.key, restart);
        if active.is_empty() {
            return Ok(());
        }
        for j in 0..active.len() {
            let (x, x0, rng) = active.sample(j);
            self.start(x, x0, rng, shape);
        }
        let logits = model.logits(active.x(), active.len())?;
        let fooled = active.record(results, &logits, false);
        let labels = active.labels();
        let states: Vec<State> = logits
            .rows()
            .zip(&labels)
            .enumerate()
            .map(|(j, (row, &y))| State {
                x_best: active.x()[j * batch.image_len()..(j + 1) * batch.image_len()].to_vec(),
                margin_best: margin(row, y),
            })
            .collect();
        let mut active = active.with_states(states);
        active.retain_unfooled(&fooled);
        for i in 0..self.queries {
            if active.is_empty() {
                break;
            }
            for j in 0..active.len() {
                let (x, x0, rng, state) = active.sample_state(j);
                self.candidate(x, x0, &state.x_best, rng, i, shape);
            }
            let logits = model.logits(active.x(), active.len())?;
            let fooled = active.record(results, &logits, false);
            let labels = active.labels();
            for (j, (row, &y)) in logits.rows().zip(&labels).enumerate() {
                let (x, _, _, state) = active.sample_state(j);
                let m = margin(row, y);
                // Keep the candidate when it lowers the margin or misclassifies.
                if m < state.margin_best || m <= 0.0 {
                    state.margin_best = m;
                    state.x_best.copy_from_slice(x);
                } else {
                    x.copy_from_slice(&state.x_best);
                }
            }
            active.retain_unfooled(&fooled);
        }
        Ok(())
    }
}

impl Attack for Square {
    fn kind(&self) -> &'static str {
        "square"
    }

    fn oracle(&self) -> Oracle {
        Oracle::Scores
    }

    fn settings(&self) -> Settings {
        Settings {
            restarts: Some(self.restarts),
            loss: Some(Loss::Margin),
            query_budget: Some(self.queries),
            ..Settings::threat(self.norm, self.eps)
        }
    }

    fn run(&self, model: &mut dyn Model, batch: &Batch) -> Result<Perturbed> {
        let mut results = Perturbed::unperturbed(batch);
        let Some(shape) = image_shape(batch.image_len(), model) else {
            return Err(Error::Usage(format!(
                "square needs square-ish images of at least 1×1 pixels per channel; got {} values per image",
                batch.image_len()
            )));
        };
        for restart in 0..self.restarts {
            self.single_run(model, batch, &mut results, restart, shape)?;
        }
        Ok(results)
    }
}

/// Square needs the image's channels, height and width.
fn image_shape(len: usize, model: &dyn Model) -> Option<Shape> {
    let [c, h, w] = model.image_shape()?;
    (c * h * w == len && h > 0 && w > 0).then_some(Shape { c, h, w })
}

#[cfg(test)]
mod tests {
    use super::super::linear::{fools_exactly_those_within_eps, median, LinearProblem};
    use super::*;

    #[test]
    fn square_finds_the_linf_vertex_of_a_linear_model() {
        // On a linear model the best point of the ℓ∞ ball is a vertex; the
        // search must reach it for every sample closer to the boundary than ε.
        let problem = LinearProblem::new(2, 16);
        let eps = median(&problem.d_inf);
        let square = build(&Fields {
            eps: Some(eps),
            ..Fields::default()
        })
        .unwrap();
        fools_exactly_those_within_eps(square.as_ref(), &problem, &problem.d_inf, 1e-3);
    }

    #[test]
    fn square_l2_fools_the_samples_well_within_eps() {
        let problem = LinearProblem::new(2, 64);
        let eps = median(&problem.d_2);
        let square = build(&Fields {
            norm: Norm::L2,
            eps: Some(eps),
            ..Fields::default()
        })
        .unwrap();
        let mut model = problem.model.clone();
        let out = square.run(&mut model, &problem.batch(1)).unwrap();
        for (i, &d) in problem.d_2.iter().enumerate() {
            if d > eps {
                assert!(!out.fooled[i], "sample {i} beyond eps fooled");
            }
            if d < 0.5 * eps {
                assert!(out.fooled[i], "sample {i} at {d} (eps {eps}) not fooled");
            }
        }
        assert_eq!(model.gradient_calls, 0);
    }

    #[test]
    fn the_window_share_halves_on_the_reference_schedule() {
        assert_eq!(p_schedule(0), 0.8);
        assert_eq!(p_schedule(10), 0.8);
        assert_eq!(p_schedule(11), 0.4);
        assert_eq!(p_schedule(200), 0.2);
        assert_eq!(p_schedule(4999), 0.8 / 128.0);
        assert_eq!(p_schedule(9000), 0.8 / 512.0);
    }

    #[test]
    fn bumps_are_unit_and_antisymmetric() {
        let mut rng = SampleRng::new(0, 0, 0, 0);
        let b = bump(5, &mut rng);
        let length: f32 = b.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((length - 1.0).abs() < 1e-5);
        assert!(b.iter().any(|&v| v > 0.0) && b.iter().any(|&v| v < 0.0));
        // Rectangles peak at their centre.
        let r = rectangles(3, 5);
        let peak = r.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(r[7], peak);
    }
}
