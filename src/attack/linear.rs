//! An analytic model for unit tests of attacks: a linear classifier
//! z = W x + b, whose gradients and minimal adversarial distances are known
//! in closed form. Counts the calls it gets.

use super::{Loss, Model};
use crate::error::{Error, Result};
use crate::runtime::{Logits, LossAndGrad};

#[derive(Debug, Clone)]
pub struct LinearModel {
    /// `[classes, d]`, row-major.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// `[C, H, W]` the weights' inputs are read as, if any.
    pub shape: Option<[usize; 3]>,
    pub logit_calls: usize,
    pub gradient_calls: usize,
}

impl LinearModel {
    pub fn new(weights: Vec<f32>, bias: Vec<f32>) -> Self {
        LinearModel {
            weights,
            bias,
            shape: None,
            logit_calls: 0,
            gradient_calls: 0,
        }
    }

    fn dim(&self) -> usize {
        self.weights.len() / self.bias.len()
    }

    fn forward(&self, images: &[f32]) -> Logits {
        let (k, d) = (self.bias.len(), self.dim());
        let values = images
            .chunks(d)
            .flat_map(|x| {
                (0..k).map(move |c| {
                    self.bias[c]
                        + self.weights[c * d..(c + 1) * d]
                            .iter()
                            .zip(x)
                            .map(|(w, v)| w * v)
                            .sum::<f32>()
                })
            })
            .collect();
        Logits { values, classes: k }
    }
}

impl Model for LinearModel {
    fn classes(&self) -> usize {
        self.bias.len()
    }

    fn image_shape(&self) -> Option<[usize; 3]> {
        self.shape
    }

    fn logits(&mut self, images: &[f32], _n: usize) -> Result<Logits> {
        self.logit_calls += 1;
        Ok(self.forward(images))
    }

    fn loss_and_grad(
        &mut self,
        loss: Loss,
        images: &[f32],
        labels: &[i64],
        targets: Option<&[i64]>,
    ) -> Result<LossAndGrad> {
        self.gradient_calls += 1;
        let (k, d) = (self.bias.len(), self.dim());
        let logits = self.forward(images);
        let mut losses = Vec::new();
        let mut input_grad = Vec::new();
        for (row, &y) in logits.rows().zip(labels) {
            let y = y as usize;
            // d loss / d z, then through W: d loss / d x = Wᵀ (d loss / d z).
            let (value, dz): (f32, Vec<f32>) = match loss {
                Loss::Ce => {
                    let max = row.iter().fold(f32::MIN, |m, v| m.max(*v));
                    let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
                    let sum: f32 = exp.iter().sum();
                    let dz = (0..k)
                        .map(|c| exp[c] / sum - f32::from(u8::from(c == y)))
                        .collect();
                    (sum.ln() + max - row[y], dz)
                }
                Loss::Margin => {
                    let other = (0..k)
                        .filter(|&c| c != y)
                        .fold(None, |best: Option<usize>, c| match best {
                            Some(b) if row[b] >= row[c] => Some(b),
                            _ => Some(c),
                        })
                        .expect("two classes at least");
                    let dz = (0..k)
                        .map(|c| f32::from(u8::from(c == other)) - f32::from(u8::from(c == y)))
                        .collect();
                    (row[other] - row[y], dz)
                }
                Loss::TargetMargin => {
                    let targets = targets
                        .ok_or_else(|| Error::Internal("target-margin needs targets".into()))?;
                    let t = targets[losses.len()] as usize;
                    let dz = (0..k)
                        .map(|c| f32::from(u8::from(c == t)) - f32::from(u8::from(c == y)))
                        .collect();
                    (row[t] - row[y], dz)
                }
                Loss::Cosine | Loss::L2 => {
                    return Err(Error::Internal(format!(
                        "the {} loss compares embeddings; this model is a classifier",
                        loss.as_str()
                    )))
                }
                Loss::Dlr | Loss::DlrTargeted => {
                    // −u/d, so d loss/dz = −(du/dz)/d + u·(dd/dz)/d².
                    let mut order: Vec<usize> = (0..k).collect();
                    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                    let one = |c: usize| -> Vec<f32> {
                        (0..k).map(|i| f32::from(u8::from(i == c))).collect()
                    };
                    let (other, d, dd) = if loss == Loss::Dlr {
                        let other = order
                            .iter()
                            .copied()
                            .find(|&c| c != y)
                            .expect("two classes at least");
                        let d = row[order[0]] - row[order[2]] + 1e-12;
                        let dd: Vec<f32> = (0..k)
                            .map(|i| one(order[0])[i] - one(order[2])[i])
                            .collect();
                        (other, d, dd)
                    } else {
                        let targets = targets
                            .ok_or_else(|| Error::Internal("dlr-targeted needs targets".into()))?;
                        let other = targets[losses.len()] as usize;
                        let d = row[order[0]] - 0.5 * (row[order[2]] + row[order[3]]) + 1e-12;
                        let dd: Vec<f32> = (0..k)
                            .map(|i| one(order[0])[i] - 0.5 * (one(order[2])[i] + one(order[3])[i]))
                            .collect();
                        (other, d, dd)
                    };
                    let u = row[y] - row[other];
                    let du: Vec<f32> = (0..k).map(|i| one(y)[i] - one(other)[i]).collect();
                    let dz = (0..k).map(|i| -du[i] / d + u * dd[i] / (d * d)).collect();
                    (-u / d, dz)
                }
            };
            losses.push(value);
            input_grad.extend(
                (0..d).map(|i| (0..k).map(|c| dz[c] * self.weights[c * d + i]).sum::<f32>()),
            );
        }
        Ok(LossAndGrad {
            logits,
            loss: losses,
            input_grad,
        })
    }

    /// The model as a linear encoder z = W x + b: the embedding losses in
    /// closed form, as the gradient graph's heads define them.
    fn embedding_loss_and_grad(
        &mut self,
        loss: Loss,
        images: &[f32],
        reference: &[f32],
    ) -> Result<LossAndGrad> {
        self.gradient_calls += 1;
        let (k, d) = (self.bias.len(), self.dim());
        let embeddings = self.forward(images);
        let (mut losses, mut input_grad) = (Vec::new(), Vec::new());
        for (z, r) in embeddings.rows().zip(reference.chunks(k)) {
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            let (value, dz): (f32, Vec<f32>) = match loss {
                Loss::Cosine => {
                    let (nz, nr) = (dot(z, z).sqrt().max(1e-8), dot(r, r).sqrt().max(1e-8));
                    let cos = dot(z, r) / (nz * nr);
                    let dz = (0..k)
                        .map(|c| cos * z[c] / (nz * nz) - r[c] / (nz * nr))
                        .collect();
                    (1.0 - cos, dz)
                }
                Loss::L2 => {
                    let diff: Vec<f32> = z.iter().zip(r).map(|(a, b)| a - b).collect();
                    let distance = dot(&diff, &diff).sqrt();
                    let dz = diff
                        .iter()
                        .map(|v| v / distance.max(f32::MIN_POSITIVE))
                        .collect();
                    (distance, dz)
                }
                _ => {
                    return Err(Error::Internal(format!(
                        "the {} loss is a classifier's",
                        loss.as_str()
                    )))
                }
            };
            losses.push(value);
            input_grad.extend(
                (0..d).map(|i| (0..k).map(|c| dz[c] * self.weights[c * d + i]).sum::<f32>()),
            );
        }
        Ok(LossAndGrad {
            logits: embeddings,
            loss: losses,
            input_grad,
        })
    }
}

/// A test problem: a `classes`-class linear model with Gaussian weights,
/// 64 samples in [0.3, 0.7]^`dim` labelled with the model's own prediction
/// (so all clean-correct), and each sample's exact distance to the nearest
/// decision boundary in ℓ∞ and in ℓ2 — min over j ≠ y of the margin
/// z_y − z_j over the dual norm (ℓ1, ℓ2) of w_y − w_j. The box is never
/// reached within these distances' scale.
pub struct LinearProblem {
    pub model: LinearModel,
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub ids: Vec<u64>,
    pub d_inf: Vec<f32>,
    pub d_2: Vec<f32>,
}

impl LinearProblem {
    pub fn new(classes: usize, dim: usize) -> Self {
        use super::project::norm_of;
        use super::rng::SampleRng;
        use super::Norm;
        let mut rng = SampleRng::new(1, 2, 3, classes as u64);
        let weights: Vec<f32> = (0..classes * dim).map(|_| rng.normal()).collect();
        let bias: Vec<f32> = (0..classes).map(|c| 0.1 * c as f32).collect();
        let mut model = LinearModel::new(weights.clone(), bias);
        let side = (dim as f64).sqrt() as usize;
        model.shape = (side * side == dim).then_some([1, side, side]);
        let n = 64;
        let images: Vec<f32> = (0..n * dim).map(|_| 0.3 + 0.4 * rng.uniform()).collect();
        let logits = model.forward(&images);
        let labels: Vec<i64> = logits.argmax().iter().map(|&p| p as i64).collect();
        let (mut d_inf, mut d_2) = (Vec::new(), Vec::new());
        for (row, &y) in logits.rows().zip(&labels) {
            let y = y as usize;
            let (mut best_inf, mut best_2) = (f32::MAX, f32::MAX);
            for o in (0..classes).filter(|&o| o != y) {
                let margin = row[y] - row[o];
                let diff: Vec<f32> = (0..dim)
                    .map(|i| weights[y * dim + i] - weights[o * dim + i])
                    .collect();
                best_inf = best_inf.min(margin / norm_of(diff.iter().copied(), Norm::L1));
                best_2 = best_2.min(margin / norm_of(diff.iter().copied(), Norm::L2));
            }
            d_inf.push(best_inf);
            d_2.push(best_2);
        }
        LinearProblem {
            model,
            images,
            labels,
            ids: (0..n as u64).collect(),
            d_inf,
            d_2,
        }
    }

    pub fn batch(&self, seed: u64) -> super::Batch<'_> {
        super::Batch {
            images: &self.images,
            labels: &self.labels,
            ids: &self.ids,
            seed,
            rows_per_call: self.labels.len(),
            reference: None,
        }
    }
}

/// The median of `v`.
pub fn median(v: &[f32]) -> f32 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted[sorted.len() / 2]
}

/// Runs `attack` on `problem` and checks it fools exactly the samples
/// closer to the boundary than ε (outside a band of `tolerance`·ε around
/// it), and that the problem has samples on both sides.
pub fn fools_exactly_those_within_eps(
    attack: &dyn super::Attack,
    problem: &LinearProblem,
    distances: &[f32],
    tolerance: f32,
) {
    let mut model = problem.model.clone();
    let out = attack.run(&mut model, &problem.batch(5)).unwrap();
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

/// Runs `attack` on `problem` at 1, 7, 64 and 1000 rows per call and
/// checks each outcome against `ordered` (the ordered run's, which made
/// `ordered_calls` gradient calls, fooling some samples but not all); 64
/// rows per call must take fewer calls.
pub fn full_batches_match(
    attack: &dyn super::Attack,
    problem: &LinearProblem,
    ordered: &super::Perturbed,
    ordered_calls: usize,
) {
    let fooled = ordered.fooled.iter().filter(|&&f| f).count();
    assert!(
        fooled > 0 && fooled < problem.labels.len(),
        "{attack:?}: {fooled} fooled"
    );
    for capacity in [1, 7, 64, 1000] {
        let mut model = problem.model.clone();
        let batch = super::Batch {
            rows_per_call: capacity,
            reference: None,
            ..problem.batch(0)
        };
        let got = attack.run(&mut model, &batch).unwrap();
        assert_eq!(&got, ordered, "{attack:?}, {capacity} rows per call");
        if capacity == 64 {
            assert!(
                model.gradient_calls < ordered_calls,
                "{attack:?}: {} calls, {ordered_calls} in order",
                model.gradient_calls
            );
        }
    }
}
