//! An audit: models × attacks on one dataset, producing per-sample outcomes,
//! the report rows computed from them, and gate verdicts. Everything here is
//! callable (and tested) without spawning a process. The pipeline:
//!
//! - [`plan`]: the validated request ([`AuditPlan`]) and its [`Schedule`],
//!   one job per report row, decided before anything runs;
//! - [`executors`]: one per kind of job (clean pass, attack, transfer,
//!   cascade), each returning verdicts through [`drive`], the one batching
//!   loop (it re-predicts every example and checks ε-ball and box);
//! - [`record`]: the [`Recorder`], the only writer of outcomes, journal and
//!   reports, in a report directory it holds ([`outdir`]);
//! - this file: [`run_audit`] walks the schedule and runs the checks
//!   ([`checks`]: gradient-masking flags; [`gate`]: robust-accuracy gates).

pub mod checks;
pub mod drive;
pub mod executors;
pub mod gate;
pub mod journal;
pub mod merge;
pub mod outdir;
pub mod plan;
pub mod record;
pub mod shard;
pub mod victim;

pub use crate::report::outcome::{summarise, RowMeta, SampleOutcome, Tally};
pub use checks::Flag;
pub use gate::{evaluate_gates, judge_gates, Gate, GateFailure};
pub use journal::{Fingerprint, Journal};
pub use merge::{merge, Merged};
pub use plan::{AuditPlan, AuditRequest, Job, JobKind, Schedule};
pub use record::{Recorder, Start};
pub use shard::Shard;

use crate::attack::{Attack, AttackSpec, Oracle, Step};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::report::ReportRow;
use drive::Judged;
use executors::cascade::Cascade;
use executors::clean::Clean;
use executors::transfer::TransferSet;
use executors::Context;
use std::collections::HashMap;
use std::sync::Arc;
use victim::Victim;

/// What an audit produced.
#[derive(Debug, Clone)]
pub struct AuditOutcome {
    pub rows: Vec<ReportRow>,
    /// One per model × attack × source × sample: the rows of `samples.csv`.
    pub outcomes: Vec<SampleOutcome>,
    pub gate_failures: Vec<GateFailure>,
    /// Every gate's verdict on every model it applies to.
    pub gates: Vec<crate::report::GateRow>,
    /// Gradient-masking flags raised, per model (as in the report's `model`).
    pub flags: Vec<(String, Flag)>,
    /// Things the user should know that do not stop the audit.
    pub warnings: Vec<String>,
    /// Ids of samples the data could not give (bad images skipped with
    /// `--skip-bad-images`), so `merge` can account for them.
    pub skipped: Vec<u64>,
}

impl AuditOutcome {
    /// The flags as `flags.csv` rows.
    pub fn flag_rows(&self) -> Vec<crate::report::FlagRow> {
        self.flags
            .iter()
            .map(|(model, flag)| crate::report::FlagRow {
                model: model.clone(),
                flag: flag.name().into(),
                measured: flag.measured(),
                detail: flag.detail(),
            })
            .collect()
    }
}

/// Runs the plan on `data`: every job of its schedule, in order, those the
/// recorder's journal holds replayed instead of run. `progress` receives
/// one line per row worth telling.
pub fn run_audit(
    plan: &AuditPlan,
    data: &Dataset,
    recorder: &mut Recorder,
    progress: &mut dyn Progress,
) -> Result<AuditOutcome> {
    if data.is_empty() {
        return Err(Error::Usage(format!(
            "the dataset {} has no samples to audit",
            data.name
        )));
    }
    let schedule = Schedule::of(plan);
    let ctx = Context {
        data,
        batch_size: plan.batch_size(),
        seed: plan.seed(),
    };
    let mut audit = Audit {
        plan,
        ctx,
        recorder,
        flags: Vec::new(),
        warnings: Vec::new(),
    };
    let transfer_sets = audit.craft_transfer_sets(&schedule, progress)?;
    for (index, path) in plan.models().iter().enumerate() {
        let (model, graph) = plan.open_model(path, data)?;
        let mut victim = Victim::open(
            &model,
            &graph,
            data.image_shape,
            plan.runtime(),
            &data.pixels_of(0..1)?,
        )?;
        progress.line(&format!(
            "{}: {} backend on {}",
            model.display_name(),
            victim.backend_name(),
            victim.device()
        ));
        let jobs: Vec<&Job> = schedule.of_model(index).collect();
        audit.model(&mut victim, &jobs, &transfer_sets, progress)?;
    }
    let (outcomes, metas) = audit.recorder.take();
    let rows = summarise(&outcomes, &metas);
    let gate_failures = evaluate_gates(plan.gates(), &rows);
    let gates = judge_gates(plan.gates(), &rows);
    Ok(AuditOutcome {
        rows,
        outcomes,
        gate_failures,
        gates,
        flags: audit.flags,
        warnings: audit.warnings,
        skipped: Vec::new(),
    })
}

/// An audit in progress.
struct Audit<'a> {
    plan: &'a AuditPlan,
    ctx: Context<'a>,
    recorder: &'a mut Recorder,
    flags: Vec<(String, Flag)>,
    warnings: Vec<String>,
}

/// What one model's jobs share while they run.
struct ModelRun<'s> {
    /// The columns every row of the model shares.
    base: RowMeta,
    clean: Clean,
    /// Cascades in progress, by suite entry.
    cascades: HashMap<usize, Cascade>,
    transfer_sets: &'s [TransferSet],
}

impl ModelRun<'_> {
    /// Cascade `spec` on this model (started on first use), and the clean
    /// pass it started from.
    fn cascade(&mut self, spec: usize) -> (&mut Cascade, &Clean) {
        let clean = &self.clean;
        let cascade = self
            .cascades
            .entry(spec)
            .or_insert_with(|| Cascade::new(clean));
        (cascade, clean)
    }
}

impl Audit<'_> {
    /// Crafts the examples of every transfer job the journal lacks, on its
    /// source model (each (attack, source) pair once, whatever the number
    /// of audited models).
    fn craft_transfer_sets(
        &mut self,
        schedule: &Schedule,
        progress: &mut dyn Progress,
    ) -> Result<Vec<TransferSet>> {
        let mut needed: Vec<(usize, usize)> = Vec::new();
        for job in schedule.jobs() {
            if let JobKind::Transfer { spec, source } = job.kind {
                if !self.recorder.finished(self.plan, job) && !needed.contains(&(spec, source)) {
                    needed.push((spec, source));
                }
            }
        }
        // Sources in command-line order, each opened once.
        needed.sort_by_key(|&(spec, source)| (source, spec));
        let mut sets = Vec::new();
        for (source_index, path) in self.plan.sources().iter().enumerate() {
            let pairs: Vec<usize> = needed
                .iter()
                .filter(|p| p.1 == source_index)
                .map(|p| p.0)
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let (model, graph) = self.plan.open_model(path, self.ctx.data)?;
            let mut source = Victim::open(
                &model,
                &graph,
                self.ctx.data.image_shape,
                self.plan.runtime(),
                &self.ctx.data.pixels_of(0..1)?,
            )?;
            for spec in pairs {
                let attack = &self.plan.attacks()[spec];
                let Step::Transfer(craft) = &attack.step else {
                    return Err(Error::Internal(format!(
                        "transfer job for `{}`, which is not a transfer attack",
                        attack.id
                    )));
                };
                let label = format!("crafting {} on {}", attack.id, model.display_name());
                let set = executors::transfer::craft(
                    &self.ctx,
                    &mut source,
                    (spec, source_index),
                    &label,
                    craft.as_ref(),
                    progress,
                )?;
                progress.line(&format!(
                    "source {}: crafted {} ({:.1}s)",
                    model.display_name(),
                    attack.id,
                    set.seconds
                ));
                sets.push(set);
            }
        }
        Ok(sets)
    }

    /// Audits one model: the clean pass, then its jobs (each replayed from
    /// the journal or run by its executor), then the checks.
    fn model(
        &mut self,
        victim: &mut Victim,
        jobs: &[&Job],
        transfer_sets: &[TransferSet],
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let first_row = self.recorder.rows();
        let file = victim.model;
        let clean = executors::clean::run(&self.ctx, victim, &file.path, progress)?;
        self.checks_after_clean(victim, &clean)?;
        let mut run = ModelRun {
            base: self.row_meta(victim),
            clean,
            cascades: HashMap::new(),
            transfer_sets,
        };
        for job in jobs {
            let replayed =
                self.recorder
                    .replay(self.plan, job, &run.base, self.ctx.data, &run.clean)?;
            match replayed {
                Some(replayed) => {
                    let robust = replayed.outcomes.iter().filter(|o| o.robust).count();
                    progress.line(&format!(
                        "  {:<24} robust {:.4} (finished by an earlier run)",
                        job.attack_id,
                        robust as f64 / replayed.outcomes.len().max(1) as f64
                    ));
                    // A later component of its cascade starts from its verdicts.
                    if let JobKind::CascadeComponent { spec, .. } = job.kind {
                        let (cascade, clean) = run.cascade(spec);
                        cascade.replayed(clean, &replayed.outcomes, replayed.seconds);
                    }
                }
                None => self.run_job(victim, job, &mut run, progress)?,
            }
        }
        self.checks_after_attacks(victim, &run.clean, first_row)?;
        for note in victim.notes() {
            self.warnings
                .push(format!("{}: {note}", victim.model.display_name()));
        }
        Ok(())
    }

    /// Runs `job` through its executor and records its row.
    fn run_job(
        &mut self,
        victim: &mut Victim,
        job: &Job,
        run: &mut ModelRun,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let data = self.ctx.data;
        let mut meta = RowMeta {
            attack_id: job.attack_id.clone(),
            ..run.base.clone()
        };
        let started = std::time::Instant::now();
        let id = job.attack_id.as_str();
        let judged = match job.kind {
            JobKind::Clean => {
                let meta = RowMeta {
                    attack: "clean".into(),
                    seconds: run.clean.seconds,
                    ..meta
                };
                return self.recorder.clean(meta, data, &run.clean);
            }
            JobKind::Attack { spec } => {
                let (spec, attack) = self.step_attack(spec)?;
                meta.attack = spec.kind.clone();
                meta.settings = spec.settings();
                let judged = executors::attack::run(
                    &self.ctx,
                    victim,
                    id,
                    attack,
                    &run.clean.correct,
                    progress,
                )?;
                self.warn_on_disagreement(victim, id, &judged);
                judged
            }
            JobKind::Transfer { spec, source } => {
                let (spec_entry, craft) = self.step_attack(spec)?;
                let set = run
                    .transfer_sets
                    .iter()
                    .find(|s| s.spec == spec && s.source == source)
                    .ok_or_else(|| Error::Internal(format!("no crafted examples of `{id}`")))?;
                let judged = executors::transfer::evaluate(
                    &self.ctx,
                    victim,
                    id,
                    craft,
                    set,
                    &run.clean.correct,
                    progress,
                )?;
                let source = self.plan.sources()[source].display().to_string();
                let meta = RowMeta {
                    attack: spec_entry.kind.clone(),
                    settings: spec_entry.settings(),
                    source: Some(source.clone()),
                    seconds: set.seconds + started.elapsed().as_secs_f64(),
                    ..meta
                };
                let robust = self.recorder.attack(meta, data, &run.clean, &judged)?;
                progress.line(&format!("  {id:<24} robust {robust:.4} (from {source})"));
                return Ok(());
            }
            JobKind::CascadeComponent { spec, component } => {
                let (kind, attack) = self.cascade_component(spec, component)?;
                let (cascade, clean) = run.cascade(spec);
                let done = cascade.run(&self.ctx, victim, id, attack.as_ref(), clean, progress)?;
                self.warn_on_disagreement(victim, id, &done.judged);
                let meta = RowMeta {
                    attack: kind.to_string(),
                    settings: Some(attack.settings()),
                    seconds: done.seconds,
                    ..meta
                };
                let robust = self.recorder.attack(meta, data, &run.clean, &done.row)?;
                progress.line(&format!(
                    "  {id:<24} robust {robust:.4} ({:.1}s, cumulative)",
                    done.seconds
                ));
                return Ok(());
            }
            JobKind::CascadeTotal { spec } => {
                let entry = &self.plan.attacks()[spec];
                meta.attack = entry.kind.clone();
                meta.settings = entry.settings();
                let (cascade, clean) = run.cascade(spec);
                let (judged, seconds) = cascade.total(clean);
                meta.seconds = seconds;
                judged
            }
        };
        if !matches!(job.kind, JobKind::CascadeTotal { .. }) {
            meta.seconds = started.elapsed().as_secs_f64();
        }
        let seconds = meta.seconds;
        let robust = self.recorder.attack(meta, data, &run.clean, &judged)?;
        progress.line(&format!("  {id:<24} robust {robust:.4} ({seconds:.1}s)"));
        Ok(())
    }

    /// Suite entry `spec` and the attack its attack or transfer step runs.
    fn step_attack(&self, spec: usize) -> Result<(&AttackSpec, &dyn Attack)> {
        let entry = &self.plan.attacks()[spec];
        match &entry.step {
            Step::Attack(attack) | Step::Transfer(attack) => Ok((entry, attack.as_ref())),
            _ => Err(Error::Internal(format!(
                "`{}` is scheduled as an attack but is not one",
                entry.id
            ))),
        }
    }

    /// Component `component` of cascade `spec`: its kind and attack.
    fn cascade_component(
        &self,
        spec: usize,
        component: usize,
    ) -> Result<(&'static str, Arc<dyn Attack>)> {
        let entry = &self.plan.attacks()[spec];
        match &entry.step {
            Step::Cascade(parts) if component < parts.len() => Ok(parts[component].clone()),
            _ => Err(Error::Internal(format!(
                "`{}` has no cascade component {component}",
                entry.id
            ))),
        }
    }

    /// The columns every row of `victim` shares.
    fn row_meta(&self, victim: &Victim) -> RowMeta {
        RowMeta {
            model: victim.model.path.display().to_string(),
            model_sha256: victim.model.sha256.clone(),
            dataset: self.ctx.data.name.clone(),
            attack_id: String::new(),
            attack: String::new(),
            settings: None,
            source: None,
            seconds: 0.0,
            backend: victim.backend_name().to_string(),
            device: victim.device().to_string(),
            seed: self.plan.seed(),
        }
    }

    fn flag(&mut self, victim: &Victim, flag: Flag) {
        self.flags
            .push((victim.model.path.display().to_string(), flag));
    }

    /// Warns when an attack's own verdicts differ from the audit's
    /// re-prediction (the report follows the re-prediction).
    fn warn_on_disagreement(&mut self, victim: &Victim, id: &str, judged: &[Judged]) {
        let (claimed_not_confirmed, unclaimed) = executors::attack::disagreements(judged);
        if claimed_not_confirmed + unclaimed > 0 {
            self.warnings.push(format!(
                "{}: `{id}` claimed {claimed_not_confirmed} sample(s) fooled that the model classifies correctly, and missed {unclaimed} it misclassifies; \
                 the report counts the model's own predictions (the gradient graph and the model disagree near the decision boundary)",
                victim.model.display_name()
            ));
        }
    }

    /// The checks that need only the clean pass: non-finite logits,
    /// repeated passes, outputs that are probabilities, targeted attacks
    /// with too few classes.
    fn checks_after_clean(&mut self, victim: &mut Victim, clean: &Clean) -> Result<()> {
        let name = victim.model.display_name();
        let non_finite = clean.judged.iter().filter(|j| !j.finite).count();
        if non_finite > 0 {
            self.warnings.push(format!(
                "{name}: {non_finite} sample(s) gave non-finite logits; they count as misclassified"
            ));
        }
        let probabilities = clean.judged.iter().all(|j| j.probability_like);
        if probabilities {
            self.warnings.push(format!(
                "{name}: its outputs look like probabilities (rows in [0,1] summing to 1), not logits; \
                 gradient-based attacks on a softmax output can be weakened by saturation — export the model without its final softmax"
            ));
        }
        let data = self.ctx.data;
        let n = data.len().min(self.plan.batch_size()).min(250);
        if let Some(flag) = checks::randomized(victim, &data.pixels_of(0..n)?, n)? {
            self.flag(victim, flag);
        }
        if probabilities {
            self.flag(victim, Flag::Probabilities);
        }
        let classes = crate::attack::Model::classes(victim);
        for spec in self.plan.attacks() {
            for flag in checks::too_few_classes(&spec.id, &spec.step, classes) {
                self.flag(victim, flag);
            }
        }
        Ok(())
    }

    /// The checks that need gradients or the model's rows (those from
    /// `first_row` on): zero input gradients and an unbounded attack that
    /// fails (only when the audit runs white-box attacks on this model),
    /// and black-box attacks beating white-box ones.
    fn checks_after_attacks(
        &mut self,
        victim: &mut Victim,
        clean: &Clean,
        first_row: usize,
    ) -> Result<()> {
        let white_box = self.plan.attacks().iter().any(|a| match &a.step {
            Step::Attack(attack) => attack.oracle() != Oracle::Scores,
            Step::Cascade(_) => true,
            _ => false,
        });
        if white_box {
            let data = self.ctx.data;
            let checked: Vec<usize> = clean
                .correct
                .iter()
                .copied()
                .take(checks::CHECKED_SAMPLES)
                .collect();
            let images = data.gather(&checked)?;
            let labels: Vec<i64> = checked.iter().map(|&i| data.labels[i]).collect();
            let ids: Vec<u64> = checked.iter().map(|&i| data.ids[i]).collect();
            if let Some(flag) = checks::zero_gradients(victim, &images, &labels)? {
                self.flag(victim, flag);
            }
            let batch = crate::attack::Batch {
                images: &images,
                labels: &labels,
                ids: &ids,
                seed: self.plan.seed(),
                rows_per_call: labels.len().max(1),
                reference: None,
            };
            if let Some(flag) = checks::unbounded_attack_fails(victim, &batch)? {
                self.flag(victim, flag);
            }
            if !victim.approximated().is_empty() {
                let ops = victim.approximated().to_vec();
                self.flag(victim, Flag::ApproximateGradients { ops });
            }
        }
        let model = victim.model.path.display().to_string();
        let (outcomes, metas) = self.recorder.model_rows(&model, first_row);
        let rows = summarise(&outcomes, metas);
        let tagged: Vec<(checks::Evidence, &ReportRow)> = rows
            .iter()
            .map(|r| {
                let evidence = self
                    .plan
                    .attacks()
                    .iter()
                    .find(|a| a.id == r.attack_id)
                    .map_or(checks::Evidence::Other, |a| checks::evidence(&a.step));
                (evidence, r)
            })
            .collect();
        for flag in checks::black_box_beats_white_box(&tagged) {
            self.flag(victim, flag);
        }
        Ok(())
    }
}
