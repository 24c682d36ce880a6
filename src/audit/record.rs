//! The recorder: the only code that writes an audit's outcomes, its
//! journal and its reports. It holds the outcomes and row descriptions in
//! report order, journals each row as it is recorded (so a killed audit can
//! be resumed), hands back the rows an earlier run finished, and — when
//! the audit is complete — publishes the reports and marks the journal
//! finished.

use super::drive::Judged;
use super::executors::clean::Clean;
use super::journal::{self, Fingerprint, Journal};
use super::outdir::OutputDir;
use super::plan::{AuditPlan, Job};
use super::{AuditOutcome, Gate};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::report::outcome::{RowMeta, SampleOutcome};
use std::path::Path;

/// Where the recorder keeps what it records.
#[derive(Debug)]
struct Directory {
    dir: OutputDir,
    journal: Journal,
}

/// How [`Recorder::open`] found the report directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new audit (an earlier one there, if any, was cleared).
    Fresh,
    /// `--resume`: an earlier run of this audit finished `rows` rows.
    Resumed { rows: usize },
    /// `--resume` on a directory that holds no audit: a new one starts.
    NothingToResume,
}

/// A row an earlier run finished, replayed.
pub struct Replayed {
    pub outcomes: Vec<SampleOutcome>,
    pub seconds: f64,
}

/// Records an audit's rows, in a report directory or only in memory.
#[derive(Debug, Default)]
pub struct Recorder {
    directory: Option<Directory>,
    outcomes: Vec<SampleOutcome>,
    metas: Vec<RowMeta>,
}

impl Recorder {
    /// Keeps the rows in memory only (no journal, nothing to publish).
    pub fn in_memory() -> Self {
        Recorder::default()
    }

    /// Claims `out` (refused while another audit holds it), starts the
    /// journal — with `resume`, the rows an earlier run of the same audit
    /// finished are kept for replay (none there: a new audit starts) — and
    /// removes the results an earlier run left there, so that results in
    /// `out` are only ever those of a complete audit.
    pub fn open(
        out: &Path,
        fingerprint: Fingerprint,
        gates: Vec<Gate>,
        resume: bool,
    ) -> Result<(Self, Start)> {
        let dir = OutputDir::claim(out)?;
        let resumable = resume && journal::holds_audit(out);
        // The journal first: a --resume it refuses leaves the earlier,
        // complete audit as it was; once it has marked the directory
        // incomplete, the earlier results go.
        let journal = Journal::start(out, fingerprint, gates, resumable)?;
        dir.remove_results()?;
        let start = match (resume, resumable) {
            (false, _) => Start::Fresh,
            (true, false) => Start::NothingToResume,
            (true, true) => Start::Resumed {
                rows: journal.pending(),
            },
        };
        let recorder = Recorder {
            directory: Some(Directory { dir, journal }),
            ..Recorder::default()
        };
        Ok((recorder, start))
    }

    /// Whether an earlier run finished `job`'s row.
    pub fn finished(&self, plan: &AuditPlan, job: &Job) -> bool {
        self.directory.as_ref().is_some_and(|d| {
            let (model, source) = names(plan, job);
            d.journal.has(&model, &job.attack_id, source.as_deref())
        })
    }

    /// Takes the row an earlier run finished for `job`, if any, and
    /// records it again as it was. `model` describes the model as opened
    /// now, `clean` its clean pass: a row made on other samples, another
    /// model file or another backend is refused.
    pub fn replay(
        &mut self,
        plan: &AuditPlan,
        job: &Job,
        model: &RowMeta,
        data: &Dataset,
        clean: &Clean,
    ) -> Result<Option<Replayed>> {
        let Some(directory) = self.directory.as_mut() else {
            return Ok(None);
        };
        let (model_name, source) = names(plan, job);
        let Some(entry) = directory
            .journal
            .take(&model_name, &job.attack_id, source.as_deref())
        else {
            return Ok(None);
        };
        let ours = clean.judged.iter().map(|j| data.ids[j.index]);
        let theirs = entry.outcomes.iter().map(|o| o.sample);
        if !ours.eq(theirs)
            || entry.meta.model_sha256 != model.model_sha256
            || entry.meta.backend != model.backend
        {
            return Err(Error::Usage(format!(
                "--resume: the journal's row `{}` of {model_name} was made on other samples, another model file or another backend; \
                 run without --resume to start over",
                job.attack_id
            )));
        }
        let seconds = entry.meta.seconds;
        self.outcomes.extend(entry.outcomes.iter().cloned());
        self.metas.push(entry.meta);
        Ok(Some(Replayed {
            outcomes: entry.outcomes,
            seconds,
        }))
    }

    /// Records a clean row: every sample, attacked when clean-correct.
    pub fn clean(&mut self, meta: RowMeta, data: &Dataset, clean: &Clean) -> Result<()> {
        let outcomes = clean.judged.iter().map(|j| SampleOutcome {
            model: meta.model.clone(),
            model_sha256: meta.model_sha256.clone(),
            attack_id: meta.attack_id.clone(),
            source: None,
            sample: data.ids[j.index],
            label: data.labels[j.index],
            clean_pred: j.prediction,
            adv_pred: None,
            attacked: j.correct,
            robust: j.correct,
            norm: None,
            queries: 0,
            file: data.file_name(j.index).map(str::to_string),
        });
        let outcomes: Vec<SampleOutcome> = outcomes.collect();
        self.push(meta, outcomes)
    }

    /// Records an attack row: every sample, with the verdict of `judged`
    /// (the clean-correct samples', in dataset order) where it has one.
    /// Returns the robust accuracy.
    pub fn attack(
        &mut self,
        meta: RowMeta,
        data: &Dataset,
        clean: &Clean,
        judged: &[Judged],
    ) -> Result<f64> {
        let mut attacked = judged.iter().peekable();
        let mut outcomes = Vec::with_capacity(clean.judged.len());
        for c in &clean.judged {
            let verdict = attacked.next_if(|j| j.index == c.index);
            outcomes.push(SampleOutcome {
                model: meta.model.clone(),
                model_sha256: meta.model_sha256.clone(),
                attack_id: meta.attack_id.clone(),
                source: meta.source.clone(),
                sample: data.ids[c.index],
                label: data.labels[c.index],
                clean_pred: c.prediction,
                adv_pred: verdict.map(|v| v.prediction),
                attacked: verdict.is_some(),
                robust: verdict.is_some_and(|v| v.correct),
                norm: verdict.and_then(|v| v.norm),
                queries: verdict.map_or(0, |v| v.queries),
                file: data.file_name(c.index).map(str::to_string),
            });
        }
        let robust = robust_accuracy(&outcomes);
        self.push(meta, outcomes)?;
        Ok(robust)
    }

    /// Journals a row, then keeps it.
    fn push(&mut self, meta: RowMeta, outcomes: Vec<SampleOutcome>) -> Result<()> {
        if let Some(directory) = &self.directory {
            directory
                .journal
                .record(self.metas.len(), &meta, &outcomes)?;
        }
        self.outcomes.extend(outcomes);
        self.metas.push(meta);
        Ok(())
    }

    /// Rows recorded so far (their number marks where a model's rows start).
    pub fn rows(&self) -> usize {
        self.metas.len()
    }

    /// The outcomes of `model` (as given on the command line) and the
    /// descriptions of the rows from `first` on: one model's rows.
    pub fn model_rows(&self, model: &str, first: usize) -> (Vec<SampleOutcome>, &[RowMeta]) {
        let outcomes = self
            .outcomes
            .iter()
            .filter(|o| o.model == model)
            .cloned()
            .collect();
        (outcomes, &self.metas[first..])
    }

    /// Everything recorded, leaving the recorder empty but still holding
    /// its directory (for [`Recorder::publish`]).
    pub fn take(&mut self) -> (Vec<SampleOutcome>, Vec<RowMeta>) {
        (
            std::mem::take(&mut self.outcomes),
            std::mem::take(&mut self.metas),
        )
    }

    /// Writes the complete audit's reports (`samples.csv` with
    /// `per_sample`), then marks the journal finished. An in-memory
    /// recorder has nothing to publish to.
    pub fn publish(&self, outcome: &AuditOutcome, per_sample: bool) -> Result<()> {
        let Some(directory) = &self.directory else {
            return Err(Error::Internal(
                "an in-memory audit has no report directory to publish to".into(),
            ));
        };
        let flags = outcome.flag_rows();
        crate::report::write_reports(
            directory.dir.path(),
            &outcome.rows,
            per_sample.then_some(outcome.outcomes.as_slice()),
            &flags,
            &outcome.gates,
            &outcome.warnings,
        )?;
        directory.journal.finish(super::journal::Found {
            flags: &flags,
            verdicts: &outcome.gates,
            warnings: &outcome.warnings,
            skipped: &outcome.skipped,
        })
    }
}

/// The journal's names of a job's model and source: as given on the
/// command line.
fn names(plan: &AuditPlan, job: &Job) -> (String, Option<String>) {
    (
        plan.models()[job.model].display().to_string(),
        job.source.map(|s| plan.sources()[s].display().to_string()),
    )
}

fn robust_accuracy(outcomes: &[SampleOutcome]) -> f64 {
    let robust = outcomes.iter().filter(|o| o.robust).count();
    robust as f64 / outcomes.len().max(1) as f64
}
