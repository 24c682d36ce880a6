//! AutoAttack's cascade: each component attacks only the samples still
//! robust, from the clean image. Its rows are one per component, with the
//! cumulative verdicts (`<id>:<kind>`), and the final row `<id>`. A
//! resumed audit feeds the components an earlier run finished back in
//! ([`Cascade::replayed`]) and runs the rest.

use super::clean::Clean;
use super::Context;
use crate::attack::{Attack, Model};
use crate::audit::drive::Judged;
use crate::error::Result;
use crate::progress::Progress;
use crate::report::outcome::SampleOutcome;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// A cascade in progress on one model.
pub struct Cascade {
    /// The latest verdict of every clean-correct sample attacked so far
    /// (the fooling one, once fooled).
    verdicts: HashMap<usize, Judged>,
    /// Queries spent on each sample by all components so far.
    spent: HashMap<usize, u32>,
    /// The samples still robust: what the next component attacks.
    pool: Vec<usize>,
    /// The components' seconds, those of an earlier run included.
    seconds: f64,
}

/// What one component did.
pub struct Component {
    /// Its own verdicts, on the samples it attacked.
    pub judged: Vec<Judged>,
    /// Its row: every clean-correct sample's latest verdict, in dataset
    /// order, with this component's queries.
    pub row: Vec<Judged>,
    pub seconds: f64,
}

impl Cascade {
    pub fn new(clean: &Clean) -> Self {
        Cascade {
            verdicts: HashMap::new(),
            spent: HashMap::new(),
            pool: clean.correct.clone(),
            seconds: 0.0,
        }
    }

    /// A component an earlier run finished: the samples it attacked (those
    /// still robust before it) take its journaled verdicts, the others
    /// keep theirs.
    pub fn replayed(&mut self, clean: &Clean, outcomes: &[SampleOutcome], seconds: f64) {
        let attacked: HashSet<usize> = self.pool.iter().copied().collect();
        for (outcome, c) in outcomes.iter().zip(&clean.judged) {
            if !attacked.contains(&c.index) {
                continue;
            }
            let verdict = Judged::replayed(c.index, outcome);
            *self.spent.entry(c.index).or_default() += verdict.queries;
            self.verdicts.insert(c.index, verdict);
        }
        self.retain_robust();
        self.seconds += seconds;
    }

    /// Runs the next component, `attack` (its row named `id`), on the
    /// samples still robust.
    pub fn run(
        &mut self,
        ctx: &Context,
        victim: &mut dyn Model,
        id: &str,
        attack: &dyn Attack,
        clean: &Clean,
        progress: &mut dyn Progress,
    ) -> Result<Component> {
        let started = Instant::now();
        let judged = super::attack::run(ctx, victim, id, attack, &self.pool, progress)?;
        let mut this: HashMap<usize, u32> = HashMap::new();
        for j in &judged {
            *self.spent.entry(j.index).or_default() += j.queries;
            this.insert(j.index, j.queries);
            self.verdicts.insert(j.index, j.clone());
        }
        self.retain_robust();
        let row = self.row(clean, &this);
        let seconds = started.elapsed().as_secs_f64();
        self.seconds += seconds;
        Ok(Component {
            judged,
            row,
            seconds,
        })
    }

    /// The final row's verdicts (with every component's queries) and the
    /// cascade's seconds.
    pub fn total(&self, clean: &Clean) -> (Vec<Judged>, f64) {
        (self.row(clean, &self.spent), self.seconds)
    }

    fn retain_robust(&mut self) {
        let verdicts = &self.verdicts;
        self.pool.retain(|i| verdicts[i].correct);
    }

    /// Per clean-correct sample, in dataset order: its latest verdict with
    /// `queries` as the query count.
    fn row(&self, clean: &Clean, queries: &HashMap<usize, u32>) -> Vec<Judged> {
        clean
            .correct
            .iter()
            .filter_map(|i| self.verdicts.get(i))
            .map(|v| Judged {
                queries: queries.get(&v.index).copied().unwrap_or(0),
                ..v.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::linear::{median, LinearProblem};
    use crate::attack::Fields;
    use crate::audit::executors::clean;
    use crate::audit::record::Recorder;
    use crate::data::Dataset;
    use crate::progress::Lines;
    use crate::report::outcome::RowMeta;
    use std::path::Path;
    use std::sync::Arc;

    fn meta(id: &str) -> RowMeta {
        RowMeta {
            model: "linear".into(),
            model_sha256: String::new(),
            dataset: "linear".into(),
            attack_id: id.into(),
            attack: "cascade".into(),
            settings: None,
            source: None,
            seconds: 0.0,
            backend: "test".into(),
            device: "cpu".into(),
            seed: 3,
        }
    }

    /// Runs the cascade `parts` on the linear problem, replaying the first
    /// `replayed` components from an uninterrupted run's rows; the rows'
    /// outcomes as the recorder keeps them.
    fn outcomes(
        parts: &[Arc<dyn Attack>],
        replayed: &[Vec<SampleOutcome>],
    ) -> Vec<Vec<SampleOutcome>> {
        let problem = LinearProblem::new(10, 16);
        let data = Dataset::new(
            "linear",
            [1, 4, 4],
            problem.images.clone(),
            problem.labels.clone(),
            10,
            Path::new("linear"),
        )
        .unwrap();
        let ctx = Context {
            data: &data,
            batch_size: 16,
            seed: 3,
        };
        let mut model = problem.model.clone();
        let mut progress = Lines(|_: &str| {});
        let clean = clean::run(&ctx, &mut model, Path::new("linear"), &mut progress).unwrap();
        let mut recorder = Recorder::in_memory();
        let mut cascade = Cascade::new(&clean);
        let mut rows = Vec::new();
        for (i, attack) in parts.iter().enumerate() {
            let id = format!("aa:{i}");
            if let Some(outcomes) = replayed.get(i) {
                cascade.replayed(&clean, outcomes, 0.0);
                rows.push(outcomes.clone());
                continue;
            }
            let done = cascade
                .run(
                    &ctx,
                    &mut model,
                    &id,
                    attack.as_ref(),
                    &clean,
                    &mut progress,
                )
                .unwrap();
            recorder
                .attack(meta(&id), &data, &clean, &done.row)
                .unwrap();
            rows.push(recorder.take().0);
        }
        let (total, _) = cascade.total(&clean);
        recorder.attack(meta("aa"), &data, &clean, &total).unwrap();
        rows.push(recorder.take().0);
        rows
    }

    #[test]
    fn a_resumed_cascade_ends_where_an_uninterrupted_one_does() {
        let eps = median(&LinearProblem::new(10, 16).d_inf);
        let noise = Fields {
            eps: Some(eps),
            ..Fields::default()
        };
        let pgd = Fields {
            steps: Some(10),
            step_size: Some(eps / 4.0),
            ..noise.clone()
        };
        let parts = vec![
            crate::attack::noise::build(&noise).unwrap(),
            crate::attack::pgd::build(&pgd).unwrap(),
        ];
        let whole = outcomes(&parts, &[]);
        let robust = |row: &[SampleOutcome]| row.iter().filter(|o| o.robust).count();
        // The second component finds what the first missed: a real cascade.
        assert!(
            robust(&whole[1]) < robust(&whole[0]),
            "{} {}",
            robust(&whole[0]),
            robust(&whole[1])
        );
        assert!(robust(&whole[1]) > 0);
        // Killed after the first component, resumed from its row.
        let resumed = outcomes(&parts, &whole[..1]);
        assert_eq!(resumed, whole);
    }
}
