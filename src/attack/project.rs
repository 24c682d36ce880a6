//! Threat-model geometry: steepest-ascent directions and exact projections
//! onto {‖x − x0‖ ≤ ε} ∩ [0, 1]^d for ℓ∞, ℓ2 and ℓ1. All per sample.

use super::Norm;

/// ‖v‖ in `norm`.
pub fn norm_of(v: impl Iterator<Item = f32>, norm: Norm) -> f32 {
    match norm {
        Norm::Linf => v.fold(0.0, |m, x| m.max(x.abs())),
        Norm::L2 => v.map(|x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32,
        Norm::L1 => v.map(|x| f64::from(x.abs())).sum::<f64>() as f32,
    }
}

/// Projects `x` (one sample) onto the ε-ball around `x0` in `norm`, intersected
/// with the [0, 1] box. ℓ∞ and ℓ2 clip to the box after the ball (the result
/// stays in both: clipping towards x0's box only shrinks the perturbation);
/// ℓ1 solves the joint projection exactly.
pub fn project(x: &mut [f32], x0: &[f32], eps: f32, norm: Norm) {
    match norm {
        Norm::Linf => {
            for (xi, &ci) in x.iter_mut().zip(x0) {
                *xi = xi.clamp(ci - eps, ci + eps).clamp(0.0, 1.0);
            }
        }
        Norm::L2 => {
            let length = norm_of(x.iter().zip(x0).map(|(a, b)| a - b), Norm::L2);
            let scale = if length > eps { eps / length } else { 1.0 };
            for (xi, &ci) in x.iter_mut().zip(x0) {
                *xi = (ci + (*xi - ci) * scale).clamp(0.0, 1.0);
            }
        }
        Norm::L1 => project_l1_box(x, x0, eps),
    }
}

/// Exact Euclidean projection of δ = x − x0 onto {‖δ‖₁ ≤ ε, x0 + δ ∈ [0, 1]}.
///
/// The solution is δᵢ(λ) = sign(zᵢ)·clip(|zᵢ| − λ, 0, uᵢ), uᵢ the room to the
/// box edge in zᵢ's direction, for the smallest λ ≥ 0 with Σ|δᵢ(λ)| ≤ ε; the
/// sum is continuous and non-increasing in λ, so bisection finds it.
fn project_l1_box(x: &mut [f32], x0: &[f32], eps: f32) {
    // Rounding each coordinate back to f32 can add up to half an ulp per
    // coordinate to the ℓ1 norm; shrink the radius by what was overshot.
    let target = f64::from(eps);
    let mut radius = target;
    let original = x.to_vec();
    for _ in 0..4 {
        x.copy_from_slice(&original);
        project_l1_box_once(x, x0, radius);
        let achieved: f64 = x
            .iter()
            .zip(x0)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum();
        if achieved <= target {
            return;
        }
        radius -= (achieved - target) + 1e-7 * target.max(1.0);
    }
}

fn project_l1_box_once(x: &mut [f32], x0: &[f32], eps: f64) {
    let z: Vec<f64> = x
        .iter()
        .zip(x0)
        .map(|(a, b)| f64::from(*a) - f64::from(*b))
        .collect();
    let room: Vec<f64> = z
        .iter()
        .zip(x0)
        .map(|(&d, &c)| {
            if d >= 0.0 {
                1.0 - f64::from(c)
            } else {
                f64::from(c)
            }
        })
        .collect();
    let mass = |lambda: f64| -> f64 {
        z.iter()
            .zip(&room)
            .map(|(d, u)| (d.abs() - lambda).clamp(0.0, *u))
            .sum()
    };
    let lambda = if mass(0.0) <= eps {
        0.0
    } else {
        let (mut low, mut high) = (0.0, z.iter().fold(0.0f64, |m, d| m.max(d.abs())));
        for _ in 0..100 {
            let mid = 0.5 * (low + high);
            if mass(mid) > eps {
                low = mid;
            } else {
                high = mid;
            }
        }
        high
    };
    for ((xi, &ci), (d, u)) in x.iter_mut().zip(x0).zip(z.iter().zip(&room)) {
        let step = (d.abs() - lambda).clamp(0.0, *u) * d.signum();
        *xi = ((f64::from(ci) + step) as f32).clamp(0.0, 1.0);
    }
}

/// Writes the step direction of one sample into `dir`: ℓ∞ sign(g); ℓ2 g/‖g‖₂;
/// ℓ1 the sparse direction of Maini et al. 2020 — sign(gᵢ)/k on the k
/// coordinates of largest |gᵢ| among those that can still move that way
/// (not pinned at 0 or 1 against the gradient), unit ℓ1 mass.
pub fn direction(grad: &[f32], x: &[f32], norm: Norm, k: usize, dir: &mut [f32]) {
    match norm {
        Norm::Linf => {
            for (d, g) in dir.iter_mut().zip(grad) {
                *d = if *g > 0.0 {
                    1.0
                } else if *g < 0.0 {
                    -1.0
                } else {
                    0.0
                };
            }
        }
        Norm::L2 => {
            let length = norm_of(grad.iter().copied(), Norm::L2).max(1e-12);
            for (d, g) in dir.iter_mut().zip(grad) {
                *d = g / length;
            }
        }
        Norm::L1 => {
            dir.iter_mut().for_each(|d| *d = 0.0);
            let mut movable: Vec<usize> = (0..grad.len())
                .filter(|&i| {
                    grad[i] != 0.0
                        && !(grad[i] > 0.0 && x[i] >= 1.0)
                        && !(grad[i] < 0.0 && x[i] <= 0.0)
                })
                .collect();
            let k = k.min(movable.len());
            if k == 0 {
                return;
            }
            movable.select_nth_unstable_by(k - 1, |&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
            for &i in &movable[..k] {
                dir[i] = grad[i].signum() / k as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_projection_lands_on_the_ball_inside_the_box() {
        let x0 = vec![0.5, 0.9, 0.1, 0.0, 1.0];
        let mut x = vec![1.5, 2.0, -1.0, 0.3, 0.2];
        project(&mut x, &x0, 0.6, Norm::L1);
        let l1 = norm_of(x.iter().zip(&x0).map(|(a, b)| a - b), Norm::L1);
        assert!((l1 - 0.6).abs() < 1e-5, "{l1}");
        assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
        // Inside both already: unchanged.
        let mut y = vec![0.55, 0.9, 0.1, 0.0, 1.0];
        project(&mut y, &x0, 0.6, Norm::L1);
        assert_eq!(y, vec![0.55, 0.9, 0.1, 0.0, 1.0]);
    }

    #[test]
    fn l1_projection_is_the_nearest_feasible_point() {
        // Compare with brute force on a 2-D grid.
        let x0 = [0.2f32, 0.7];
        let target = [0.9f32, 0.1];
        let mut x = target.to_vec();
        project(&mut x, &x0, 0.5, Norm::L1);
        let dist = |p: [f32; 2]| (p[0] - target[0]).powi(2) + (p[1] - target[1]).powi(2);
        let mut best = f32::MAX;
        for i in 0..=1000 {
            for j in 0..=1000 {
                let p = [i as f32 / 1000.0, j as f32 / 1000.0];
                if (p[0] - x0[0]).abs() + (p[1] - x0[1]).abs() <= 0.5 + 1e-6 {
                    best = best.min(dist(p));
                }
            }
        }
        assert!(dist([x[0], x[1]]) <= best + 1e-4, "{x:?}");
    }

    #[test]
    fn linf_and_l2_projections_respect_ball_and_box() {
        let x0 = vec![0.5; 4];
        let mut x = vec![0.9, 0.1, 0.52, 2.0];
        project(&mut x, &x0, 0.1, Norm::Linf);
        assert_eq!(x, vec![0.6, 0.4, 0.52, 0.6]);
        let mut y = vec![1.5, 0.5, 0.5, 0.5];
        project(&mut y, &x0, 0.3, Norm::L2);
        assert!((y[0] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn l1_direction_skips_pinned_coordinates_and_has_unit_mass() {
        let grad = [5.0, -4.0, 3.0, -2.0, 1.0];
        let x = [1.0, 0.0, 0.5, 0.5, 0.5];
        let mut dir = [0.0; 5];
        direction(&grad, &x, Norm::L1, 2, &mut dir);
        assert_eq!(dir, [0.0, 0.0, 0.5, -0.5, 0.0]);
    }
}
