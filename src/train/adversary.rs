//! Training-time adversaries: the ℓ∞ ascent loop every training-time attack
//! runs, PGD on the classifier (adversarial training, the held-out PGD
//! accuracy) and TRADES's inner maximisation. The instance-level attack of
//! UPAT (`instance_attack.rs`) uses the same loop.

use super::model::Network;
use tch::{Kind, Tensor};

/// ℓ∞ projected sign-gradient ascent of `objective` from `start`, within ε
/// of `x` and inside [0, 1]: the inner loop of every training-time attack.
pub fn linf_ascent(
    x: &Tensor,
    start: Tensor,
    eps: f64,
    alpha: f64,
    steps: i64,
    objective: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    let mut adv = start
        .maximum(&(x - eps))
        .minimum(&(x + eps))
        .clamp(0.0, 1.0);
    for _ in 0..steps {
        let xg = adv.detach().set_requires_grad(true);
        let grad = Tensor::run_backward(&[objective(&xg)], &[&xg], false, false)
            .pop()
            .expect("one gradient");
        let stepped = adv.detach() + grad.sign() * alpha;
        adv = stepped
            .maximum(&(x - eps))
            .minimum(&(x + eps))
            .clamp(0.0, 1.0);
    }
    adv.detach()
}

/// ℓ∞ PGD with a uniform random start on the cross-entropy of the classifier
/// (Madry et al.), for adversarial training and the held-out PGD accuracy.
pub fn class_pgd(
    net: &Network,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    alpha: f64,
    steps: i64,
) -> Tensor {
    let start = x + (Tensor::rand_like(x) * (2.0 * eps) - eps);
    linf_ascent(x, start, eps, alpha, steps, |xg| {
        net.logits_t(xg, false).cross_entropy_for_logits(y)
    })
}

/// TRADES's inner maximisation (Zhang et al. 2019): from a small Gaussian
/// start, ℓ∞ PGD on KL(f(x) ‖ f(x′)), the model in inference mode.
pub fn trades_adversary(net: &Network, x: &Tensor, eps: f64, alpha: f64, steps: i64) -> Tensor {
    let clean = tch::no_grad(|| net.logits_t(x, false).softmax(1, Kind::Float));
    let start = x + Tensor::randn_like(x) * 0.001;
    linf_ascent(x, start, eps, alpha, steps, |xg| {
        net.logits_t(xg, false).log_softmax(1, Kind::Float).kl_div(
            &clean,
            tch::Reduction::Sum,
            false,
        )
    })
}
