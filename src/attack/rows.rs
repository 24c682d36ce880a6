//! Full batches for attacks that run several times per sample (APGD's
//! restarts, APGD-T's and FAB-T's target classes).
//!
//! Run in order, such an attack runs stream 0 (the first restart, or the
//! first target) on every sample, then stream 1 on the samples not fooled
//! yet, and so on; its batch shrinks as samples are fooled. Here each
//! (sample, stream) is a row, and a model call holds up to
//! [`Batch::rows_per_call`] rows: when rows leave (fooled, or done), rows of
//! later streams take their places, ahead of their turn.
//!
//! Running ahead must not change what is reported. A sample's outcome is
//! that of its lowest fooling stream, as in order: a row that fools its
//! sample cancels the sample's rows of later streams, and replaces an
//! example found by a later stream that ran ahead. Its queries are those
//! the ordered run would have spent: every stream up to the reported one
//! (all of them when none fooled), none of the rows that ran ahead in vain.
//! Each row draws from its own random stream (seed, attack, sample id,
//! stream), so neither the company a row keeps in a call nor the moment it
//! starts changes its iterates.

use super::rng::SampleRng;
use super::{Batch, Perturbed};
use crate::runtime::Logits;

/// A row being started: its sample and stream, its iterate (the clean
/// image until the attack sets its start) and random stream.
pub struct Start<'r> {
    pub sample: usize,
    pub stream: u32,
    pub x: &'r mut [f32],
    pub x0: &'r [f32],
    pub rng: &'r mut SampleRng,
}

/// The rows of a batch under attack, each with an attack-specific state `S`.
pub struct Rows<'b, S> {
    batch: &'b Batch<'b>,
    key: u64,
    streams: u32,
    capacity: usize,
    /// Start stream k only once no row of an earlier stream runs: the
    /// ordered run, as a reference for tests.
    in_order: bool,
    /// Queries a row has spent when it starts (a targeted attack's clean
    /// pass, which the ordered run makes once per stream).
    initial_queries: u32,
    // Per active row, in the order they started.
    sample: Vec<usize>,
    stream: Vec<u32>,
    x: Vec<f32>,
    rngs: Vec<SampleRng>,
    states: Vec<S>,
    queries: Vec<u32>,
    // Per sample of the batch.
    /// The next stream to start.
    next: Vec<u32>,
    /// The lowest stream that fooled the sample so far.
    winner: Vec<Option<u32>>,
    /// Queries spent by each of its streams that ended (fooled or done).
    spent: Vec<Vec<u32>>,
}

impl<'b, S> Rows<'b, S> {
    /// No rows yet; `streams` per sample, keyed by `key` (the attack's).
    pub fn new(batch: &'b Batch<'b>, key: u64, streams: u32, initial_queries: u32) -> Self {
        Rows {
            batch,
            key,
            streams,
            capacity: batch.rows_per_call.max(1),
            in_order: false,
            initial_queries,
            sample: Vec::new(),
            stream: Vec::new(),
            x: Vec::new(),
            rngs: Vec::new(),
            states: Vec::new(),
            queries: Vec::new(),
            next: vec![0; batch.len()],
            winner: vec![None; batch.len()],
            spent: vec![vec![0; streams as usize]; batch.len()],
        }
    }

    /// The ordered run: each stream starts once the previous one has ended
    /// on every sample, with no bound on the rows per call.
    #[cfg(test)]
    pub fn in_order(mut self) -> Self {
        self.in_order = true;
        self.capacity = usize::MAX;
        self
    }

    /// Starts rows until a call is full or none is left to start, the
    /// lowest streams first: `start` sets each one's starting iterate and
    /// returns its state.
    pub fn admit(&mut self, mut start: impl FnMut(Start) -> S) {
        let len = self.batch.image_len();
        while self.sample.len() < self.capacity {
            let Some(sample) = self.next_to_start() else {
                break;
            };
            let stream = self.next[sample];
            self.next[sample] += 1;
            let x0 = self.batch.image(sample);
            self.x.extend_from_slice(x0);
            let mut rng = SampleRng::new(
                self.batch.seed,
                self.key,
                self.batch.ids[sample],
                u64::from(stream),
            );
            let at = self.x.len() - len;
            let state = start(Start {
                sample,
                stream,
                x: &mut self.x[at..],
                x0,
                rng: &mut rng,
            });
            self.sample.push(sample);
            self.stream.push(stream);
            self.rngs.push(rng);
            self.states.push(state);
            self.queries.push(self.initial_queries);
        }
    }

    /// The sample whose next stream is the lowest among those still to
    /// start (ties: the first sample).
    fn next_to_start(&self) -> Option<usize> {
        let running_min = self.stream.iter().copied().min();
        (0..self.batch.len())
            .filter(|&s| self.winner[s].is_none() && self.next[s] < self.streams)
            .filter(|&s| !self.in_order || running_min.is_none_or(|m| self.next[s] <= m))
            .min_by_key(|&s| self.next[s])
    }

    pub fn len(&self) -> usize {
        self.sample.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sample.is_empty()
    }

    /// The iterates of the rows, NCHW.
    pub fn x(&self) -> &[f32] {
        &self.x
    }

    /// The rows' true labels.
    pub fn labels(&self) -> Vec<i64> {
        self.sample.iter().map(|&s| self.batch.labels[s]).collect()
    }

    pub fn states(&self) -> &[S] {
        &self.states
    }

    /// Row `j`: its iterate, its sample's clean image, its state.
    pub fn row(&mut self, j: usize) -> (&mut [f32], &'b [f32], &mut S) {
        let len = self.batch.image_len();
        (
            &mut self.x[j * len..(j + 1) * len],
            self.batch.image(self.sample[j]),
            &mut self.states[j],
        )
    }

    /// Counts `n` more queries for every row (evaluations whose verdicts
    /// the attack does not take).
    pub fn charge(&mut self, n: u32) {
        self.queries.iter_mut().for_each(|q| *q += n);
    }

    /// Which rows `logits` (one evaluation of their iterates, one row
    /// each) finds misclassified or non-finite.
    pub fn misclassified(&self, logits: &Logits) -> Vec<bool> {
        super::active::misclassified(logits, self.sample.iter().map(|&s| self.batch.labels[s]))
    }

    /// Records one evaluation of every row's iterate: a query each, and
    /// for the `fooled` ones their iterate as their sample's example where
    /// no earlier stream has fooled it.
    pub fn record(&mut self, results: &mut Perturbed, fooled: &[bool]) {
        let len = self.batch.image_len();
        self.charge(1);
        for j in (0..self.len()).filter(|&j| fooled[j]) {
            let (s, stream) = (self.sample[j], self.stream[j]);
            if self.winner[s].is_none_or(|w| stream < w) {
                self.winner[s] = Some(stream);
                results.adversarial[s * len..(s + 1) * len]
                    .copy_from_slice(&self.x[j * len..(j + 1) * len]);
                results.fooled[s] = true;
            }
        }
    }

    /// Ends the rows that `fooled` or `done` mark (one flag per row), and
    /// those whose sample an earlier stream has fooled.
    pub fn retire(&mut self, fooled: &[bool], done: &[bool]) {
        let len = self.batch.image_len();
        let mut kept = 0;
        for j in 0..self.len() {
            let (s, stream) = (self.sample[j], self.stream[j]);
            let overtaken = self.winner[s].is_some_and(|w| w < stream);
            if fooled[j] || done[j] || overtaken {
                if !overtaken {
                    self.spent[s][stream as usize] = self.queries[j];
                }
                continue;
            }
            if kept != j {
                self.sample[kept] = self.sample[j];
                self.stream[kept] = self.stream[j];
                self.queries[kept] = self.queries[j];
                self.rngs.swap(kept, j);
                self.states.swap(kept, j);
                self.x.copy_within(j * len..(j + 1) * len, kept * len);
            }
            kept += 1;
        }
        self.sample.truncate(kept);
        self.stream.truncate(kept);
        self.queries.truncate(kept);
        self.rngs.truncate(kept);
        self.states.truncate(kept);
        self.x.truncate(kept * len);
    }

    /// Adds to `results` the queries the ordered run would have spent:
    /// each sample's streams up to the one reported. Every row must have
    /// ended.
    pub fn finish(self, results: &mut Perturbed) {
        debug_assert!(self.is_empty(), "rows still running");
        for (s, spent) in self.spent.iter().enumerate() {
            let last = self.winner[s].map_or(spent.len(), |w| w as usize + 1);
            results.queries[s] += spent[..last].iter().sum::<u32>();
        }
    }
}
