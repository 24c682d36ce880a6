//! The instance-level unsupervised perturbation (paper §3.1, Algorithm 1,
//! Eq. 3): PGD on one augmented view that pushes its embedding away from the
//! other view's — no labels involved.

use super::adversary::linf_ascent;
use super::losses::{embedding_mse, nt_xent};
use super::model::Network;
use tch::Tensor;

/// The metric the perturbation maximises between the two views' embeddings.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AttackLoss {
    /// NT-Xent between the perturbed view and the other view.
    Contrastive,
    /// Mean squared distance of the embeddings (the paper's example metric).
    Mse,
}

/// ℓ∞ PGD settings of the instance-level attack (paper: ε 0.03, α 2/256).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InstanceAttack {
    pub eps: f64,
    pub alpha: f64,
    pub steps: i64,
    pub loss: AttackLoss,
    pub tau: f64,
}

impl InstanceAttack {
    /// The attack metric between the embeddings of `perturbed` and `other`.
    pub fn metric(
        &self,
        network: &Network,
        perturbed: &Tensor,
        other_embedding: &Tensor,
        train: bool,
    ) -> Tensor {
        let z = network.project_t(perturbed, train);
        match self.loss {
            AttackLoss::Contrastive => nt_xent(&z, other_embedding, self.tau),
            AttackLoss::Mse => embedding_mse(&z, other_embedding),
        }
    }

    /// Perturbs `view` within ‖δ‖∞ ≤ ε (and [0, 1]) to maximise the metric
    /// against the other view's embedding `other_embedding` (Eq. 3, ascent;
    /// the embedding is taken as fixed). `train` sets the network's mode
    /// during the attack's forward passes.
    pub fn perturb(
        &self,
        network: &Network,
        view: &Tensor,
        other_embedding: &Tensor,
        train: bool,
    ) -> Tensor {
        let target = other_embedding.detach();
        let origin = view.detach();
        linf_ascent(
            &origin,
            origin.shallow_clone(),
            self.eps,
            self.alpha,
            self.steps,
            |xg| self.metric(network, xg, &target, train),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::{HeadFeatures, InputNormalization};
    use tch::{nn, Device, Kind};

    #[test]
    fn the_perturbation_raises_the_metric_and_stays_in_the_ball() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = InputNormalization {
            mean: vec![0.5],
            std: vec![0.5],
        };
        let network = Network::new(&vs.root(), 1, 4, 10, HeadFeatures::Projector, norm);
        let view = Tensor::rand([8, 1, 12, 12], (Kind::Float, Device::Cpu));
        let noise: Tensor = Tensor::randn([8, 1, 12, 12], (Kind::Float, Device::Cpu)) * 0.05;
        let other = (&view + noise).clamp(0.0, 1.0);
        for loss in [AttackLoss::Contrastive, AttackLoss::Mse] {
            let attack = InstanceAttack {
                eps: 0.03,
                alpha: 2.0 / 256.0,
                steps: 5,
                loss,
                tau: 0.5,
            };
            let other_z = tch::no_grad(|| network.project_t(&other, false));
            let before =
                tch::no_grad(|| attack.metric(&network, &view, &other_z, false)).double_value(&[]);
            let adv = attack.perturb(&network, &view, &other_z, false);
            let after =
                tch::no_grad(|| attack.metric(&network, &adv, &other_z, false)).double_value(&[]);
            assert!(after > before, "{loss:?}: metric {before} -> {after}");
            let linf = (&adv - &view).abs().max().double_value(&[]);
            assert!(linf <= 0.03 + 1e-6, "{loss:?}: ‖δ‖∞ = {linf}");
            assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
        }
    }
}
