//! An attack on the clean-correct samples of the audited model.

use super::Context;
use crate::attack::{Attack, Guarded, Model};
use crate::audit::drive::{drive, Judged};
use crate::error::Result;
use crate::progress::Progress;

/// Runs `attack` on the samples at `pool` (dataset positions), held to its
/// oracle, and judges every example on the model.
pub fn run(
    ctx: &Context,
    victim: &mut dyn Model,
    label: &str,
    attack: &dyn Attack,
    pool: &[usize],
    progress: &mut dyn Progress,
) -> Result<Vec<Judged>> {
    drive(
        &ctx.drive(label, Some(attack)),
        victim,
        ctx.data,
        pool,
        &mut |model, _, batch| attack.run(&mut Guarded::new(model, attack), batch),
        None,
        progress,
    )
}

/// How often the attack's own verdicts differ from the audit's
/// re-prediction: (claimed fooled but classified correctly, not claimed
/// but misclassified). The report follows the re-prediction.
pub fn disagreements(judged: &[Judged]) -> (usize, usize) {
    let claimed_not_confirmed = judged
        .iter()
        .filter(|j| j.claimed_fooled && j.correct)
        .count();
    let unclaimed = judged
        .iter()
        .filter(|j| !j.claimed_fooled && !j.correct)
        .count();
    (claimed_not_confirmed, unclaimed)
}
