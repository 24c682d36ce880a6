//! The contrastive objectives of UPAT (paper §3.2).

use tch::{Kind, Reduction, Tensor};

/// NT-Xent (SimCLR, paper Eq. 4) between two batches of embeddings that are
/// positives row by row: over the 2N points, each one's positive is its
/// partner and its negatives are the other 2N − 2; cosine similarity over
/// temperature τ. Averaged over the 2N points (Eq. 4 sums them; the mean only
/// rescales the learning rate and keeps losses comparable across batch sizes).
pub fn nt_xent(a: &Tensor, b: &Tensor, tau: f64) -> Tensor {
    let n = a.size()[0];
    let z = Tensor::cat(&[a, b], 0);
    let z = &z / z.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    let similarity = z.matmul(&z.transpose(0, 1)) / tau;
    // A point is never its own negative.
    let self_mask = Tensor::eye(2 * n, (Kind::Bool, a.device()));
    let similarity = similarity.masked_fill(&self_mask, f64::NEG_INFINITY);
    let positives = Tensor::cat(
        &[
            Tensor::arange_start(n, 2 * n, (Kind::Int64, a.device())),
            Tensor::arange(n, (Kind::Int64, a.device())),
        ],
        0,
    );
    similarity.cross_entropy_loss::<Tensor>(&positives, None, Reduction::Mean, -100, 0.0)
}

/// The UPAT objective (paper Eq. 6): the adversarial example's embedding is
/// pulled towards both clean views, L_cont(t(x), x_adv) + λ·L_cont(t'(x), x_adv).
pub fn upat_loss(
    z_t: &Tensor,
    z_t_prime: &Tensor,
    z_adv: &Tensor,
    lambda: f64,
    tau: f64,
) -> Tensor {
    nt_xent(z_t, z_adv, tau) + lambda * nt_xent(z_t_prime, z_adv, tau)
}

/// Mean squared distance between embeddings, the MSE attack metric of Eq. 3.
pub fn embedding_mse(a: &Tensor, b: &Tensor) -> Tensor {
    a.mse_loss(b, Reduction::Mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        Tensor::from_slice(&rows.concat()).view([rows.len() as i64, 2])
    }

    fn value(x: Tensor) -> f64 {
        x.double_value(&[])
    }

    #[test]
    fn nt_xent_matches_a_hand_computation() {
        // Views a=[1,0], b=[0,1] twice. For every point the candidates are one
        // positive (cos 1) and two negatives (cos 0): with τ = 0.5 the loss is
        // −log(e² / (e² + 2)) = log(1 + 2e⁻²) = 0.2395923...
        let z = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let expected = (1.0 + 2.0 * (-2.0f64).exp()).ln();
        assert!((value(nt_xent(&z, &z, 0.5)) - expected).abs() < 1e-6);
        // Scale does not matter (cosine similarity).
        let scaled = t(&[[3.0, 0.0], [0.0, 0.5]]);
        assert!((value(nt_xent(&scaled, &z, 0.5)) - expected).abs() < 1e-6);
        // Swapping the partners makes every positive orthogonal:
        // −log(1 / (1 + e² + 1)) = log(2 + e²).
        let swapped = t(&[[0.0, 1.0], [1.0, 0.0]]);
        assert!((value(nt_xent(&z, &swapped, 0.5)) - (2.0 + 2.0f64.exp()).ln()).abs() < 1e-5);
        assert_eq!(nt_xent(&z, &z, 0.5).device(), Device::Cpu);
    }

    #[test]
    fn upat_loss_is_eq_6() {
        let z = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let swapped = t(&[[0.0, 1.0], [1.0, 0.0]]);
        // L(t, adv) with adv = t, plus λ·L(t', adv) with t' swapped.
        let lambda = 1.0 / 256.0;
        let expected = (1.0 + 2.0 * (-2.0f64).exp()).ln() + lambda * (2.0 + 2.0f64.exp()).ln();
        assert!((value(upat_loss(&z, &swapped, &z, lambda, 0.5)) - expected).abs() < 1e-5);
    }

    #[test]
    fn mse_metric() {
        let a = t(&[[1.0, 0.0]]);
        let b = t(&[[0.0, 2.0]]);
        assert!((value(embedding_mse(&a, &b)) - 2.5).abs() < 1e-6);
    }
}
