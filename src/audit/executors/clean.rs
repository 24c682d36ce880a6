//! The clean pass: every sample's prediction on its unperturbed image.
//! Attacks attack the samples it finds correct.

use super::Context;
use crate::attack::{Model, Perturbed};
use crate::audit::drive::{drive, Judged};
use crate::error::{Error, Result};
use crate::progress::Progress;
use std::path::Path;
use std::time::Instant;

/// The clean verdicts of a model.
pub struct Clean {
    /// Per dataset sample, in dataset order.
    pub judged: Vec<Judged>,
    /// Dataset positions of the clean-correct samples: what attacks attack.
    pub correct: Vec<usize>,
    pub seconds: f64,
}

/// Predicts every sample of `ctx.data` on `victim` (read from `path`),
/// after checking that the model can output every label of the data.
pub fn run(
    ctx: &Context,
    victim: &mut dyn Model,
    path: &Path,
    progress: &mut dyn Progress,
) -> Result<Clean> {
    let started = Instant::now();
    let classes = victim.classes();
    if classes != ctx.data.num_classes && !ctx.data.classes_from_labels {
        return Err(Error::model(
            path,
            format!(
                "outputs {classes} values per image but the data {} has {} classes: a classifier audit needs one score per class. \
                 Audit it on the data it was trained for (for an image collection, with a --classes file naming the model's classes, one per line); \
                 a model whose output is an embedding rather than class scores cannot be audited as a classifier",
                ctx.data.name, ctx.data.num_classes
            ),
        ));
    }
    if let Some(&max_label) = ctx.data.labels.iter().max() {
        if max_label as usize >= classes {
            return Err(Error::model(
                path,
                format!(
                    "outputs {classes} classes but the data {} has labels up to {max_label}; is this the dataset the model was trained for?",
                    ctx.data.name
                ),
            ));
        }
    }
    let everything: Vec<usize> = (0..ctx.data.len()).collect();
    let judged = drive(
        &ctx.drive("clean", None),
        victim,
        ctx.data,
        &everything,
        &mut |_, _, batch| Ok(Perturbed::unperturbed(batch)),
        None,
        progress,
    )?;
    let correct = judged
        .iter()
        .filter(|j| j.correct)
        .map(|j| j.index)
        .collect();
    Ok(Clean {
        judged,
        correct,
        seconds: started.elapsed().as_secs_f64(),
    })
}
