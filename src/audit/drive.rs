//! The one batching loop of an audit. Every step — the clean pass, an
//! attack, the evaluation of transferred examples, their crafting on a
//! source — runs through [`drive`]: it batches a pool of samples, gets each
//! batch's examples from the step, **re-predicts every example itself** on
//! the model under audit (an attack's own claim of success is never the
//! verdict, as in AutoAttack), and checks each against the ε-ball and the
//! `[0, 1]` box: a violation is an error, never a report row.

use crate::attack::project::norm_of;
use crate::attack::{Batch, Model, Norm, Perturbed};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// The verdict of the loop on one sample of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// Position in the dataset.
    pub index: usize,
    /// The model's prediction on the example.
    pub prediction: u32,
    /// Predicted the true label, with finite logits.
    pub correct: bool,
    /// Finite logits that look like probabilities (in [0, 1], summing to 1).
    pub probability_like: bool,
    pub finite: bool,
    /// ‖example − image‖ in the step's norm (`None` for the clean pass).
    pub norm: Option<f32>,
    pub queries: u32,
    /// The step claimed to have fooled the model on this sample.
    pub claimed_fooled: bool,
}

impl Judged {
    /// The verdict a journaled outcome records for the sample at `index`
    /// (a resumed cascade continues from it).
    pub fn replayed(index: usize, outcome: &crate::report::outcome::SampleOutcome) -> Self {
        Judged {
            index,
            prediction: outcome.adv_pred.unwrap_or(outcome.clean_pred),
            correct: outcome.robust,
            probability_like: false,
            finite: true,
            norm: outcome.norm,
            queries: outcome.queries,
            claimed_fooled: !outcome.robust,
        }
    }
}

/// How to run one step over a pool.
pub struct Drive<'s> {
    /// Names the step in messages and progress.
    pub label: &'s str,
    pub batch_size: usize,
    pub seed: u64,
    /// The threat model the examples must satisfy; `None` for the clean pass.
    pub budget: Option<(Norm, f32)>,
}

/// What makes the examples of one batch: given the model, the batch's
/// dataset positions and the batch itself.
pub type Perturb<'p> = dyn FnMut(&mut dyn Model, &[usize], &Batch) -> Result<Perturbed> + 'p;

/// Runs `perturb` on the samples of `data` at `pool` (dataset positions),
/// batch by batch, and judges every example on `victim` (the audited ONNX
/// model, or any other [`Model`]: executors are tested on the analytic
/// linear classifier). With `keep`, the
/// examples themselves are appended to it, in pool order.
pub fn drive(
    step: &Drive,
    victim: &mut dyn Model,
    data: &Dataset,
    pool: &[usize],
    perturb: &mut Perturb,
    mut keep: Option<&mut Vec<f32>>,
    progress: &mut dyn Progress,
) -> Result<Vec<Judged>> {
    let len = data.image_len();
    let mut judged = Vec::with_capacity(pool.len());
    progress.begin(step.label, pool.len() as u64);
    let chunks: Vec<&[usize]> = pool.chunks(step.batch_size.max(1)).collect();
    // Image files are decoded for the next batch while the model works on
    // this one; in-memory pixels are only copied.
    let prefetch = data.decodes_on_demand();
    std::thread::scope(|scope| -> Result<()> {
        let mut next = None;
        for (k, &chunk) in chunks.iter().enumerate() {
            let images: Vec<f32> = match next.take() {
                Some(decoding) => join(decoding)?,
                None => data.gather(chunk)?,
            };
            if let Some(&following) = chunks.get(k + 1).filter(|_| prefetch) {
                next = Some(scope.spawn(move || data.gather(following)));
            }
            let labels: Vec<i64> = chunk.iter().map(|&i| data.labels[i]).collect();
            let ids: Vec<u64> = chunk.iter().map(|&i| data.ids[i]).collect();
            let batch = Batch {
                images: &images,
                labels: &labels,
                ids: &ids,
                seed: step.seed,
                rows_per_call: step.batch_size.max(1),
                reference: None,
            };
            let out = perturb(victim, chunk, &batch)?;
            if out.adversarial.len() != images.len()
                || out.fooled.len() != chunk.len()
                || out.queries.len() != chunk.len()
            {
                return Err(Error::Internal(format!(
                "`{}` returned {} pixels, {} verdicts and {} query counts for a batch of {} images of {len} pixels",
                step.label,
                out.adversarial.len(),
                out.fooled.len(),
                out.queries.len(),
                chunk.len()
            )));
            }
            let logits = victim.logits(&out.adversarial, chunk.len())?;
            for (j, ((row, prediction), &index)) in
                logits.rows().zip(logits.argmax()).zip(chunk).enumerate()
            {
                let example = &out.adversarial[j * len..(j + 1) * len];
                let norm = check_example(step, example, batch.image(j), ids[j])?;
                let finite = row.iter().all(|v| v.is_finite());
                let sum: f32 = row.iter().sum();
                judged.push(Judged {
                    index,
                    prediction: prediction as u32,
                    correct: finite && prediction as i64 == labels[j],
                    probability_like: finite
                        && row.iter().all(|v| (0.0..=1.0).contains(v))
                        && (sum - 1.0).abs() < 1e-3,
                    finite,
                    norm,
                    queries: out.queries[j],
                    claimed_fooled: out.fooled[j],
                });
            }
            if let Some(keep) = keep.as_deref_mut() {
                keep.extend_from_slice(&out.adversarial);
            }
            progress.advance(chunk.len() as u64);
        }
        Ok(())
    })?;
    Ok(judged)
}

/// The images a prefetching thread decoded (its panic, if any, goes on).
fn join(decoding: std::thread::ScopedJoinHandle<'_, Result<Vec<f32>>>) -> Result<Vec<f32>> {
    decoding
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The example's perturbation size, after checking it is finite, in the box
/// and in the ball (up to float rounding: 1e-6, relative and absolute).
fn check_example(step: &Drive, example: &[f32], image: &[f32], id: u64) -> Result<Option<f32>> {
    if let Some(v) = example.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(Error::Internal(format!(
            "`{}` produced an example for sample {id} with pixel value {v}, outside the [0, 1] box",
            step.label
        )));
    }
    let Some((norm, eps)) = step.budget else {
        return Ok(None);
    };
    let size = norm_of(example.iter().zip(image).map(|(a, b)| a - b), norm);
    if size > eps * (1.0 + 1e-6) + 1e-6 {
        return Err(Error::Internal(format!(
            "`{}` produced an example for sample {id} of {} size {size}, outside its budget {eps}",
            step.label,
            norm.as_str()
        )));
    }
    Ok(Some(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(budget: Option<(Norm, f32)>) -> Drive<'static> {
        Drive {
            label: "pgd-x",
            batch_size: 4,
            seed: 0,
            budget,
        }
    }

    #[test]
    fn examples_outside_the_ball_or_the_box_are_errors() {
        let image = [0.5, 0.5, 0.5, 0.5];
        let linf = step(Some((Norm::Linf, 0.1)));
        let size = check_example(&linf, &[0.6, 0.4, 0.5, 0.55], &image, 7).unwrap();
        assert!((size.unwrap() - 0.1).abs() < 1e-6);
        let err = check_example(&linf, &[0.61, 0.5, 0.5, 0.5], &image, 7)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pgd-x") && err.contains("sample 7") && err.contains("budget"),
            "{err}"
        );
        let l2 = step(Some((Norm::L2, 0.1)));
        assert!(check_example(&l2, &[0.58, 0.58, 0.5, 0.5], &image, 0).is_err());
        assert!(check_example(&l2, &[0.57, 0.57, 0.5, 0.5], &image, 0).is_ok());
        for bad in [f32::NAN, 1.01, -0.01] {
            let err = check_example(&step(None), &[bad, 0.5, 0.5, 0.5], &image, 3)
                .unwrap_err()
                .to_string();
            assert!(err.contains("[0, 1] box"), "{err}");
        }
    }
}
