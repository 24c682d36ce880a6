//! SGD with momentum and weight decay (PyTorch's semantics: no dampening, no
//! Nesterov), with momentum buffers that are saved and restored, so a resumed
//! run continues exactly where the interrupted one stopped.

use crate::error::{Error, Result};
use std::path::Path;
use tch::{nn, Tensor};

/// The optimiser of every training command (paper: momentum 0.9, weight decay 1e-3).
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    params: Vec<(String, Tensor)>,
    buffers: Vec<Tensor>,
}

impl Sgd {
    /// Optimises the trainable variables of `vs` (sorted by name, so the
    /// order, and hence the saved state, does not depend on hashing).
    pub fn new(vs: &nn::VarStore, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Sgd {
            lr,
            momentum,
            weight_decay,
            params,
            buffers,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    /// One update: g ← ∇ + wd·p; b ← m·b + g; p ← p − lr·b.
    pub fn step(&mut self) {
        tch::no_grad(|| {
            for ((_, p), buffer) in self.params.iter_mut().zip(&mut self.buffers) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let g = &grad + &*p * self.weight_decay;
                buffer.copy_(&(&*buffer * self.momentum + g));
                let _ = p
                    .f_sub_(&(&*buffer * self.lr))
                    .expect("in-place update of a parameter");
            }
        });
    }

    /// The momentum buffers, named `optimizer/<parameter>`, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .map(|((n, _), b)| (format!("{OPTIMIZER_PREFIX}{n}"), b.shallow_clone()))
            .collect()
    }

    /// Restores momentum buffers from the tensors of a checkpoint written
    /// with [`Sgd::state`]; `source` names it in errors.
    pub fn restore(&mut self, saved: &[(String, Tensor)], source: &Path) -> Result<()> {
        for ((name, _), buffer) in self.params.iter().zip(&mut self.buffers) {
            let key = format!("{OPTIMIZER_PREFIX}{name}");
            let (_, value) = saved
                .iter()
                .find(|(n, _)| *n == key)
                .ok_or_else(|| Error::data(source, format!("no momentum buffer for `{name}`; the run directory does not match this network")))?;
            tch::no_grad(|| buffer.copy_(value));
        }
        Ok(())
    }
}

/// Prefix of the optimizer's tensors in a checkpoint (model variables use dots).
const OPTIMIZER_PREFIX: &str = "optimizer/";

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn matches_the_momentum_formula() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1], nn::Init::Const(1.0));
        let mut sgd = Sgd::new(&vs, 0.1, 0.9, 0.01);
        // loss = 2w → ∇ = 2 every step.
        let mut expected = 1.0f64;
        let mut buffer = 0.0f64;
        for _ in 0..3 {
            sgd.zero_grad();
            (&w * 2.0).sum(Kind::Float).backward();
            sgd.step();
            buffer = 0.9 * buffer + 2.0 + 0.01 * expected;
            expected -= 0.1 * buffer;
        }
        assert!(
            (w.double_value(&[0]) - expected).abs() < 1e-6,
            "{} vs {expected}",
            w.double_value(&[0])
        );
    }
}
