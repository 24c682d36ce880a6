//! Transfer attacks: examples crafted white-box on a `--source` model,
//! for every sample, then evaluated on each audited model.

use super::Context;
use crate::attack::{Attack, Guarded, Model, Perturbed};
use crate::audit::drive::{drive, Judged};
use crate::error::Result;
use crate::progress::Progress;
use std::time::Instant;

/// Adversarial examples of one transfer attack crafted on one source model.
pub struct TransferSet {
    /// `spec` and `source` of the schedule's transfer jobs it serves.
    pub spec: usize,
    pub source: usize,
    /// One example per dataset sample, NCHW.
    pub adversarial: Vec<f32>,
    /// Gradient evaluations on the source, per dataset sample.
    pub queries: Vec<u32>,
    pub seconds: f64,
}

/// Crafts the examples of `craft` on `source` for every sample of the data.
pub fn craft(
    ctx: &Context,
    source: &mut dyn Model,
    (spec, source_index): (usize, usize),
    label: &str,
    craft: &dyn Attack,
    progress: &mut dyn Progress,
) -> Result<TransferSet> {
    let started = Instant::now();
    let everything: Vec<usize> = (0..ctx.data.len()).collect();
    // Every sample's crafted example is kept for the models it transfers to.
    let count = crate::limits::product(&[ctx.data.len(), ctx.data.image_len()]);
    crate::limits::check_elements(
        std::path::Path::new(&ctx.data.name),
        "transferred examples for every sample",
        count,
        4,
    )?;
    let mut adversarial = Vec::with_capacity(count.unwrap_or(0));
    let judged = drive(
        &ctx.drive(label, Some(craft)),
        source,
        ctx.data,
        &everything,
        &mut |model, _, batch| craft.run(&mut Guarded::new(model, craft), batch),
        Some(&mut adversarial),
        progress,
    )?;
    Ok(TransferSet {
        spec,
        source: source_index,
        adversarial,
        queries: judged.iter().map(|j| j.queries).collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Judges the crafted examples of the samples at `pool` on `victim`
/// (`craft` gives the budget they are checked against).
pub fn evaluate(
    ctx: &Context,
    victim: &mut dyn Model,
    label: &str,
    craft: &dyn Attack,
    set: &TransferSet,
    pool: &[usize],
    progress: &mut dyn Progress,
) -> Result<Vec<Judged>> {
    let len = ctx.data.image_len();
    drive(
        &ctx.drive(label, Some(craft)),
        victim,
        ctx.data,
        pool,
        &mut |_, positions, _| {
            Ok(Perturbed {
                adversarial: positions
                    .iter()
                    .flat_map(|&i| set.adversarial[i * len..(i + 1) * len].iter().copied())
                    .collect(),
                fooled: vec![false; positions.len()],
                queries: positions.iter().map(|&i| set.queries[i]).collect(),
            })
        },
        None,
        progress,
    )
}
