//! The active set every iterative attack needs: the samples of a batch not
//! fooled yet, their current iterates and random streams.
//!
//! A sample counts as fooled as soon as one evaluated iterate is
//! misclassified (AutoAttack's rule); it keeps that iterate as its
//! adversarial example and leaves the set, since further steps could not
//! make it robust again. Queries are counted per sample. Restarts are
//! folded in by starting a new set from the same [`Perturbed`].

use super::rng::SampleRng;
use super::{Batch, Perturbed};
use crate::runtime::Logits;

/// The not-yet-fooled samples of a batch under attack, each with an
/// attack-specific state `S` (APGD's step size and best point, say) that
/// stays with its sample when others leave.
#[derive(Debug)]
pub struct ActiveSet<'b, S = ()> {
    batch: &'b Batch<'b>,
    /// Positions in the batch of the active samples, ascending.
    rows: Vec<usize>,
    /// Their current iterates, NCHW.
    x: Vec<f32>,
    rngs: Vec<SampleRng>,
    states: Vec<S>,
}

impl<'b> ActiveSet<'b, ()> {
    /// The samples of `batch` that `results` does not mark fooled yet, at
    /// their original images, each with its random stream of
    /// (batch seed, `attack_key`, sample id, `restart`).
    pub fn unfooled(
        batch: &'b Batch<'b>,
        results: &Perturbed,
        attack_key: u64,
        restart: u32,
    ) -> Self {
        let rows: Vec<usize> = (0..batch.len()).filter(|&i| !results.fooled[i]).collect();
        let x = rows
            .iter()
            .flat_map(|&i| batch.image(i).iter().copied())
            .collect();
        let rngs = rows
            .iter()
            .map(|&i| SampleRng::new(batch.seed, attack_key, batch.ids[i], u64::from(restart)))
            .collect();
        let states = vec![(); rows.len()];
        ActiveSet {
            batch,
            rows,
            x,
            rngs,
            states,
        }
    }
}

impl<'b, S> ActiveSet<'b, S> {
    /// The same samples with state `states[j]` for active sample `j`.
    pub fn with_states<T>(self, states: Vec<T>) -> ActiveSet<'b, T> {
        assert_eq!(states.len(), self.rows.len(), "one state per active sample");
        ActiveSet {
            batch: self.batch,
            rows: self.rows,
            x: self.x,
            rngs: self.rngs,
            states,
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The current iterates of the active samples, NCHW.
    pub fn x(&self) -> &[f32] {
        &self.x
    }

    /// The true labels of the active samples.
    pub fn labels(&self) -> Vec<i64> {
        self.rows.iter().map(|&i| self.batch.labels[i]).collect()
    }

    /// Active sample `j`: its iterate, its original image and its random stream.
    pub fn sample(&mut self, j: usize) -> (&mut [f32], &'b [f32], &mut SampleRng) {
        let len = self.batch.image_len();
        (
            &mut self.x[j * len..(j + 1) * len],
            self.batch.image(self.rows[j]),
            &mut self.rngs[j],
        )
    }

    /// Active sample `j` with its state.
    pub fn sample_state(&mut self, j: usize) -> (&mut [f32], &'b [f32], &mut SampleRng, &mut S) {
        let len = self.batch.image_len();
        (
            &mut self.x[j * len..(j + 1) * len],
            self.batch.image(self.rows[j]),
            &mut self.rngs[j],
            &mut self.states[j],
        )
    }

    /// Records one evaluation of the current iterates (`logits`, one row per
    /// active sample): counts a query for each, marks the misclassified (or
    /// non-finite) ones fooled and keeps their iterate in `results`. With
    /// `keep_all`, every iterate is kept (the last restart's last iterate is
    /// the example reported for a sample never fooled). Returns, per active
    /// sample, whether this evaluation fooled it.
    pub fn record(&self, results: &mut Perturbed, logits: &Logits, keep_all: bool) -> Vec<bool> {
        let fooled = misclassified(logits, self.rows.iter().map(|&i| self.batch.labels[i]));
        self.keep(results, &fooled, keep_all);
        fooled
    }

    fn keep(&self, results: &mut Perturbed, fooled: &[bool], keep_all: bool) {
        let len = self.batch.image_len();
        for (j, &i) in self.rows.iter().enumerate() {
            results.queries[i] += 1;
            if fooled[j] || keep_all {
                results.adversarial[i * len..(i + 1) * len]
                    .copy_from_slice(&self.x[j * len..(j + 1) * len]);
            }
            results.fooled[i] |= fooled[j];
        }
    }

    /// Drops the samples `fooled` marks (one flag per active sample).
    pub fn retain_unfooled(&mut self, fooled: &[bool]) {
        let len = self.batch.image_len();
        let mut kept = 0;
        for (j, _) in fooled.iter().enumerate().filter(|(_, &f)| !f) {
            if kept != j {
                self.rows[kept] = self.rows[j];
                self.rngs.swap(kept, j);
                self.states.swap(kept, j);
                self.x.copy_within(j * len..(j + 1) * len, kept * len);
            }
            kept += 1;
        }
        self.rows.truncate(kept);
        self.rngs.truncate(kept);
        self.states.truncate(kept);
        self.x.truncate(kept * len);
    }
}

/// Per row of `logits`, whether it misses its label (one per row) or is
/// not finite: AutoAttack's rule for a fooled sample.
pub(crate) fn misclassified(logits: &Logits, labels: impl Iterator<Item = i64>) -> Vec<bool> {
    logits
        .rows()
        .zip(logits.argmax())
        .zip(labels)
        .map(|((row, prediction), label)| {
            prediction as i64 != label || row.iter().any(|v| !v.is_finite())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fooled_samples_leave_with_their_iterate_and_queries_are_per_sample() {
        let images = [0.1, 0.2, 0.3];
        let labels = [0, 0, 1];
        let ids = [10, 11, 12];
        let batch = Batch {
            images: &images,
            labels: &labels,
            ids: &ids,
            seed: 3,
            rows_per_call: 3,
            reference: None,
        };
        let mut results = Perturbed::unperturbed(&batch);
        let mut active = ActiveSet::unfooled(&batch, &results, 1, 0);
        active.sample(1).0[0] = 0.25;
        // Sample 1 is now classified 1 (wrong); 0 and 2 stay right.
        let logits = Logits {
            values: vec![1.0, 0.0, 0.0, 1.0, 0.0, 1.0],
            classes: 2,
        };
        let fooled = active.record(&mut results, &logits, false);
        assert_eq!(fooled, [false, true, false]);
        assert_eq!(results.fooled, [false, true, false]);
        assert_eq!(results.adversarial, [0.1, 0.25, 0.3]);
        active.retain_unfooled(&fooled);
        assert_eq!((active.len(), active.x()), (2, &[0.1f32, 0.3][..]));
        assert_eq!(active.labels(), [0, 1]);
        active.sample(1).0[0] = 0.35;
        let logits = Logits {
            values: vec![1.0, 0.0, f32::NAN, 1.0],
            classes: 2,
        };
        let fooled = active.record(&mut results, &logits, true);
        assert_eq!(fooled, [false, true], "a non-finite row counts as fooled");
        assert_eq!(results.queries, [2, 1, 2]);
        assert_eq!(results.adversarial, [0.1, 0.25, 0.35]);
        // A restart starts only the samples not fooled, from their originals.
        let restarted = ActiveSet::unfooled(&batch, &results, 1, 1);
        assert_eq!(restarted.x(), &[0.1]);
    }
}
