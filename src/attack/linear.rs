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
    pub logit_calls: usize,
    pub gradient_calls: usize,
}

impl LinearModel {
    pub fn new(weights: Vec<f32>, bias: Vec<f32>) -> Self {
        LinearModel {
            weights,
            bias,
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

    fn logits(&mut self, images: &[f32], _n: usize) -> Result<Logits> {
        self.logit_calls += 1;
        Ok(self.forward(images))
    }

    fn loss_and_grad(
        &mut self,
        loss: Loss,
        images: &[f32],
        labels: &[i64],
        _targets: Option<&[i64]>,
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
                other => {
                    return Err(Error::Internal(format!(
                        "the test model has no {} loss",
                        other.as_str()
                    )))
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
}
