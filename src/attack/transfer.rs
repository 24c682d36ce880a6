//! Transfer (black-box) attacks: adversarial examples made white-box on a
//! source model, evaluated on other models (the UPAT paper's Table 2).

use super::{AttackKind, AttackSpec, Pgd};
use crate::data::Dataset;
use crate::error::Result;
use crate::progress::Progress;
use crate::runtime::GradientModel;

/// Adversarial examples crafted on one source model for one attack.
#[derive(Debug, Clone)]
pub struct TransferSet {
    /// The source model, as given on the command line.
    pub source: String,
    pub attack_id: String,
    /// One perturbed image per dataset sample, NCHW.
    pub adversarial: Vec<f32>,
    /// Gradient evaluations per sample on the source.
    pub queries: f64,
    pub seconds: f64,
}

/// Crafts PGD adversarial examples on `source` for every sample of `data`.
/// The attack runs exactly as the white-box PGD with the same settings does,
/// so a model used as its own source reproduces its white-box result.
pub fn craft(
    source_name: &str,
    source: &mut GradientModel,
    attack: &AttackSpec,
    data: &Dataset,
    batch_size: usize,
    seed: u64,
    progress: &mut dyn Progress,
) -> Result<TransferSet> {
    let started = std::time::Instant::now();
    let as_pgd = AttackSpec {
        kind: AttackKind::Pgd,
        ..attack.clone()
    };
    let pgd = Pgd::from_spec(&as_pgd, seed);
    let mut adversarial = Vec::with_capacity(data.pixels.len());
    let mut calls = 0u64;
    for start in (0..data.len()).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(data.len());
        let ids: Vec<u64> = (start as u64..end as u64).collect();
        let out = pgd.run(
            source,
            data.pixels_of(start..end),
            &data.labels[start..end],
            &ids,
        )?;
        calls += out.gradient_calls;
        adversarial.extend(out.adversarial);
        progress.advance((end - start) as u64);
    }
    Ok(TransferSet {
        source: source_name.to_string(),
        attack_id: attack.id.clone(),
        adversarial,
        queries: calls as f64 / data.len().max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
    })
}
