//! An audit: models × attacks on one dataset, producing per-sample outcomes,
//! the report rows computed from them, and gate verdicts. The CLI builds an
//! [`AuditPlan`] from an [`AuditRequest`]; everything here is callable (and
//! tested) without spawning a process.
//!
//! - `plan`: this file — the validated request and the per-model schedule;
//! - [`drive`]: the one batching loop (re-predicts, checks ε-ball and box);
//! - [`victim`]: the ONNX model as attacks see it;
//! - [`crate::report::outcome`]: per-sample outcomes, tallies, report rows;
//! - [`gate`]: robust-accuracy gates;
//! - [`checks`]: gradient-masking flags.

pub mod checks;
pub mod drive;
pub mod gate;
pub mod journal;
pub mod merge;
pub mod shard;
pub mod victim;

pub use crate::report::outcome::{summarise, RowMeta, SampleOutcome, Tally};
pub use checks::Flag;
pub use gate::{evaluate_gates, Gate, GateFailure};
pub use journal::{Fingerprint, Journal};
pub use merge::{merge, Merged};
pub use shard::Shard;

use crate::attack::{Attack, AttackSpec, Guarded, Perturbed, Step, Suite};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::onnx::{ClassifierGraph, Layout, Normalization, OnnxModel};
use crate::progress::Progress;
use crate::report::{ReportRow, WORST_CASE_ID};
use crate::runtime::RuntimeOptions;
use drive::{drive, Drive, Judged};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use victim::Victim;

/// What the caller asks for; [`AuditPlan::new`] checks it.
#[derive(Debug, Clone)]
pub struct AuditRequest {
    pub models: Vec<PathBuf>,
    /// Source models of transfer attacks (`--source`).
    pub sources: Vec<PathBuf>,
    pub suites: Vec<Suite>,
    /// `--fail-under` gates (the suites' own are added by the plan).
    pub gates: Vec<Gate>,
    pub runtime: RuntimeOptions,
    pub normalization: Option<Normalization>,
    /// The image input's axis order (`--layout`).
    pub layout: Layout,
    pub input: Option<String>,
    pub output: Option<String>,
    pub batch_size: usize,
    pub seed: u64,
}

/// A validated audit: every invariant the library owns holds.
#[derive(Debug, Clone)]
pub struct AuditPlan {
    models: Vec<PathBuf>,
    sources: Vec<PathBuf>,
    attacks: Vec<AttackSpec>,
    gates: Vec<Gate>,
    runtime: RuntimeOptions,
    normalization: Option<Normalization>,
    layout: Layout,
    input: Option<String>,
    output: Option<String>,
    batch_size: usize,
    seed: u64,
}

impl AuditPlan {
    /// Checks the request: at least one model, a positive batch size, suites
    /// that agree on shared ids, gates that name attacks of the audit, and
    /// `--source` models exactly when a transfer attack needs them.
    pub fn new(request: AuditRequest) -> Result<Self> {
        if request.models.is_empty() {
            return Err(Error::Usage(
                "no model given: upat-audit MODEL.onnx... --data SPEC (see --help)".into(),
            ));
        }
        if request.batch_size == 0 {
            return Err(Error::Usage("--batch-size must be at least 1".into()));
        }
        let (attacks, gates) = Self::attacks_from_suites(&request.suites, request.gates)?;
        let has_transfer = attacks.iter().any(|a| matches!(a.step, Step::Transfer(_)));
        if has_transfer && request.sources.is_empty() {
            return Err(Error::Usage(
                "the transfer attacks of this suite need at least one --source MODEL.onnx to craft adversarial examples on".into(),
            ));
        }
        if !has_transfer && !request.sources.is_empty() {
            return Err(Error::Usage("--source is only used by transfer attacks (e.g. --suite blackbox), and this audit has none".into()));
        }
        Ok(AuditPlan {
            models: request.models,
            sources: request.sources,
            attacks,
            gates,
            runtime: request.runtime,
            normalization: request.normalization,
            layout: request.layout,
            input: request.input,
            output: request.output,
            batch_size: request.batch_size,
            seed: request.seed,
        })
    }

    /// Merges suites (an id used twice must mean the same attack), and checks
    /// that every gate names an attack of the audit.
    pub fn attacks_from_suites(
        suites: &[Suite],
        mut gates: Vec<Gate>,
    ) -> Result<(Vec<AttackSpec>, Vec<Gate>)> {
        let mut attacks: Vec<AttackSpec> = Vec::new();
        for suite in suites {
            for attack in &suite.attacks {
                match attacks.iter().find(|a| a.id == attack.id) {
                    Some(existing) if existing != attack => {
                        return Err(Error::Suite {
                            file: suite.origin.clone(),
                            attack: Some(attack.id.clone()),
                            field: Some("id".into()),
                            message: "another suite of this audit defines a different attack with the same id".into(),
                        })
                    }
                    Some(_) => {}
                    None => attacks.push(attack.clone()),
                }
                if let Some(acc) = attack.min_robust_acc {
                    gates.push(Gate {
                        attack_id: attack.id.clone(),
                        min_robust_acc: f64::from(acc),
                        origin: suite.origin.clone(),
                    });
                }
            }
        }
        for gate in &gates {
            let known = gate.attack_id == WORST_CASE_ID
                || gate.attack_id == "clean"
                || attacks
                    .iter()
                    .any(|a| a.id == gate.attack_id || a.component_ids().contains(&gate.attack_id));
            if !known {
                let ids: Vec<_> = attacks
                    .iter()
                    .map(|a| a.id.as_str())
                    .chain(["clean", WORST_CASE_ID])
                    .collect();
                return Err(Error::Usage(format!(
                    "{} names attack `{}`, which this audit does not run; its attack ids are {}",
                    gate.origin,
                    gate.attack_id,
                    ids.join(", ")
                )));
            }
        }
        Ok((attacks, gates))
    }

    pub fn runtime(&self) -> RuntimeOptions {
        self.runtime
    }

    pub fn attacks(&self) -> &[AttackSpec] {
        &self.attacks
    }

    pub fn gates(&self) -> &[Gate] {
        &self.gates
    }

    pub fn models(&self) -> &[PathBuf] {
        &self.models
    }

    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// How the models are read, for the audit's fingerprint.
    pub fn preparation(&self) -> String {
        format!(
            "normalize={:?} layout={:?} input={:?} output={:?}",
            self.normalization, self.layout, self.input, self.output
        )
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// What an audit produced.
#[derive(Debug, Clone)]
pub struct AuditOutcome {
    pub rows: Vec<ReportRow>,
    /// One per model × attack × source × sample: the rows of `samples.csv`.
    pub outcomes: Vec<SampleOutcome>,
    pub gate_failures: Vec<GateFailure>,
    /// Gradient-masking flags raised, per model (as in the report's `model`).
    pub flags: Vec<(String, Flag)>,
    /// Things the user should know that do not stop the audit.
    pub warnings: Vec<String>,
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

/// Runs the plan on `data`. With a `journal`, every finished row is
/// recorded there as it finishes, and the rows an earlier run finished are
/// replayed instead of run again. `progress` receives one line per step
/// worth telling.
pub fn run_audit(
    plan: &AuditPlan,
    data: &Dataset,
    journal: Option<&mut Journal>,
    progress: &mut dyn Progress,
) -> Result<AuditOutcome> {
    if data.is_empty() {
        return Err(Error::Usage(format!(
            "the dataset {} has no samples to audit",
            data.name
        )));
    }
    let mut audit = Audit {
        plan,
        data,
        journal,
        outcomes: Vec::new(),
        metas: Vec::new(),
        flags: Vec::new(),
        warnings: Vec::new(),
    };
    let transfer_sets = if audit.transfer_rows_finished() {
        Vec::new()
    } else {
        audit.craft_transfer_sets(progress)?
    };
    for path in &plan.models {
        let (model, graph) = prepare(plan, path, data)?;
        let mut victim = Victim::open(
            &model,
            &graph,
            data.image_shape,
            plan.runtime,
            data.pixels_of(0..1),
        )?;
        progress.line(&format!(
            "{}: {} backend on {}",
            model.display_name(),
            victim.backend_name(),
            victim.device()
        ));
        audit.model(&mut victim, &transfer_sets, progress)?;
    }
    let rows = summarise(&audit.outcomes, &audit.metas);
    let gate_failures = evaluate_gates(&plan.gates, &rows);
    Ok(AuditOutcome {
        rows,
        outcomes: audit.outcomes,
        gate_failures,
        flags: audit.flags,
        warnings: audit.warnings,
    })
}

/// Opens a model given on the command line as a classifier graph for `data`.
fn prepare(
    plan: &AuditPlan,
    path: &std::path::Path,
    data: &Dataset,
) -> Result<(OnnxModel, ClassifierGraph)> {
    let model = OnnxModel::load(path)?;
    let graph = ClassifierGraph::prepare_as(
        &model,
        plan.input.as_deref(),
        plan.output.as_deref(),
        plan.normalization.as_ref(),
        plan.layout,
    )?;
    graph.check_image_shape(&model, data.image_shape)?;
    Ok((model, graph))
}

/// Adversarial examples of one transfer attack crafted on one source model.
struct TransferSet {
    /// The source model, as given on the command line.
    source: String,
    attack_id: String,
    /// One example per dataset sample, NCHW.
    adversarial: Vec<f32>,
    /// Gradient evaluations on the source, per dataset sample.
    queries: Vec<u32>,
    seconds: f64,
}

/// An audit in progress: the outcomes and row descriptions gathered so far.
struct Audit<'p> {
    plan: &'p AuditPlan,
    data: &'p Dataset,
    journal: Option<&'p mut Journal>,
    outcomes: Vec<SampleOutcome>,
    metas: Vec<RowMeta>,
    flags: Vec<(String, Flag)>,
    warnings: Vec<String>,
}

/// What names a report row of an attack step.
struct RowOf<'a> {
    id: &'a str,
    /// The report's `attack` column.
    kind: &'a str,
    settings: Option<crate::attack::Settings>,
    source: Option<&'a str>,
}

impl<'a> RowOf<'a> {
    fn spec(spec: &'a AttackSpec, source: Option<&'a str>) -> Self {
        RowOf {
            id: &spec.id,
            kind: &spec.kind,
            settings: spec.settings(),
            source,
        }
    }
}

/// The clean verdicts of a model: per dataset sample.
struct Clean {
    judged: Vec<Judged>,
    /// Dataset positions of the clean-correct samples: what attacks attack.
    correct: Vec<usize>,
}

impl Audit<'_> {
    /// Whether an earlier run finished every transfer row, so that the
    /// examples need not be crafted again.
    fn transfer_rows_finished(&self) -> bool {
        let Some(journal) = self.journal.as_deref() else {
            return false;
        };
        let transfer_ids = self
            .plan
            .attacks
            .iter()
            .filter(|a| matches!(a.step, Step::Transfer(_)))
            .map(|a| a.id.as_str());
        transfer_ids.into_iter().all(|id| {
            self.plan.models.iter().all(|model| {
                self.plan.sources.iter().all(|source| {
                    journal.has(
                        &model.display().to_string(),
                        id,
                        Some(&source.display().to_string()),
                    )
                })
            })
        })
    }

    /// Replays the row an earlier run finished, if the journal has it:
    /// its outcomes and description join this audit's as they were.
    fn replay(
        &mut self,
        victim: &Victim,
        clean: &Clean,
        attack_id: &str,
        source: Option<&str>,
        progress: &mut dyn Progress,
    ) -> Result<Option<Vec<SampleOutcome>>> {
        let model = victim.model.path.display().to_string();
        let Some(entry) = self
            .journal
            .as_deref_mut()
            .and_then(|j| j.take(&model, attack_id, source))
        else {
            return Ok(None);
        };
        let ids: Vec<u64> = clean
            .judged
            .iter()
            .map(|j| self.data.ids[j.index])
            .collect();
        let theirs: Vec<u64> = entry.outcomes.iter().map(|o| o.sample).collect();
        let meta = &entry.meta;
        if ids != theirs
            || meta.model_sha256 != victim.model.sha256
            || meta.backend != victim.backend_name()
        {
            return Err(Error::Usage(format!(
                "--resume: the journal's row `{attack_id}` of {model} was made on other samples, another model file or another backend; \
                 run without --resume to start over"
            )));
        }
        let robust = entry.outcomes.iter().filter(|o| o.robust).count();
        progress.line(&format!(
            "  {attack_id:<24} robust {:.4} (finished by an earlier run)",
            robust as f64 / ids.len().max(1) as f64
        ));
        self.outcomes.extend(entry.outcomes.iter().cloned());
        self.metas.push(entry.meta);
        Ok(Some(entry.outcomes))
    }

    /// How to drive a step labelled `label` that runs `attack` (none: clean).
    fn drive_step<'s>(&self, label: &'s str, attack: Option<&dyn Attack>) -> Drive<'s> {
        Drive {
            label,
            batch_size: self.plan.batch_size,
            seed: self.plan.seed,
            budget: attack.map(|a| {
                let s = a.settings();
                (s.norm, s.eps)
            }),
        }
    }

    /// Crafts every transfer attack's examples on every `--source` model,
    /// for every sample.
    fn craft_transfer_sets(&mut self, progress: &mut dyn Progress) -> Result<Vec<TransferSet>> {
        let transfers: Vec<(&str, Arc<dyn Attack>)> = self
            .plan
            .attacks
            .iter()
            .filter_map(|a| match &a.step {
                Step::Transfer(craft) => Some((a.id.as_str(), craft.clone())),
                _ => None,
            })
            .collect();
        let mut sets = Vec::new();
        let everything: Vec<usize> = (0..self.data.len()).collect();
        for path in &self.plan.sources {
            let (model, graph) = prepare(self.plan, path, self.data)?;
            let mut source = Victim::open(
                &model,
                &graph,
                self.data.image_shape,
                self.plan.runtime,
                self.data.pixels_of(0..1),
            )?;
            for (id, craft) in &transfers {
                let started = Instant::now();
                let label = format!("crafting {id} on {}", model.display_name());
                let step = self.drive_step(&label, Some(craft.as_ref()));
                let mut adversarial = Vec::with_capacity(self.data.pixels.len());
                let judged = drive(
                    &step,
                    &mut source,
                    self.data,
                    &everything,
                    &mut |model, _, batch| {
                        craft.run(&mut Guarded::new(model, craft.as_ref()), batch)
                    },
                    Some(&mut adversarial),
                    progress,
                )?;
                let seconds = started.elapsed().as_secs_f64();
                progress.line(&format!(
                    "source {}: crafted {id} ({seconds:.1}s)",
                    model.display_name()
                ));
                sets.push(TransferSet {
                    source: path.display().to_string(),
                    attack_id: id.to_string(),
                    adversarial,
                    queries: judged.iter().map(|j| j.queries).collect(),
                    seconds,
                });
            }
        }
        Ok(sets)
    }

    /// Audits one model: the clean pass, then every step of the plan.
    fn model(
        &mut self,
        victim: &mut Victim,
        transfer_sets: &[TransferSet],
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let started = Instant::now();
        let first_meta = self.metas.len();
        let clean = self.clean_pass(victim, progress)?;
        let clean_seconds = started.elapsed().as_secs_f64();
        self.checks_after_clean(victim, &clean)?;
        let has_clean_step = self
            .plan
            .attacks
            .iter()
            .any(|a| matches!(a.step, Step::Clean));
        if !has_clean_step {
            self.record_clean(victim, "clean", &clean, clean_seconds)?;
        }
        for spec in &self.plan.attacks {
            let attack_started = Instant::now();
            match &spec.step {
                Step::Clean => self.record_clean(victim, &spec.id, &clean, clean_seconds)?,
                Step::Attack(_)
                    if self
                        .replay(victim, &clean, &spec.id, None, progress)?
                        .is_some() => {}
                Step::Attack(attack) => {
                    let judged = self.run_attack(
                        victim,
                        &spec.id,
                        attack.as_ref(),
                        &clean.correct,
                        progress,
                    )?;
                    let seconds = attack_started.elapsed().as_secs_f64();
                    let row = RowOf::spec(spec, None);
                    let robust = self.record_attack(victim, row, &clean, &judged, seconds)?;
                    progress.line(&format!(
                        "  {:<24} robust {robust:.4} ({seconds:.1}s)",
                        spec.id
                    ));
                }
                Step::Cascade(components) => {
                    self.cascade(victim, spec, components, &clean, progress)?;
                }
                Step::Transfer(craft) => {
                    for source in &self.plan.sources {
                        let source = source.display().to_string();
                        if self
                            .replay(victim, &clean, &spec.id, Some(&source), progress)?
                            .is_some()
                        {
                            continue;
                        }
                        let set = transfer_sets
                            .iter()
                            .find(|s| s.attack_id == spec.id && s.source == source)
                            .ok_or_else(|| {
                                Error::Internal(format!(
                                    "no crafted examples of `{}` on {source}",
                                    spec.id
                                ))
                            })?;
                        let eval_started = Instant::now();
                        let step = self.drive_step(&spec.id, Some(craft.as_ref()));
                        let len = self.data.image_len();
                        let judged = drive(
                            &step,
                            victim,
                            self.data,
                            &clean.correct,
                            &mut |_, positions, _| {
                                Ok(Perturbed {
                                    adversarial: positions
                                        .iter()
                                        .flat_map(|&i| {
                                            set.adversarial[i * len..(i + 1) * len].iter().copied()
                                        })
                                        .collect(),
                                    fooled: vec![false; positions.len()],
                                    queries: positions.iter().map(|&i| set.queries[i]).collect(),
                                })
                            },
                            None,
                            progress,
                        )?;
                        let seconds = set.seconds + eval_started.elapsed().as_secs_f64();
                        let row = RowOf::spec(spec, Some(&set.source));
                        let robust = self.record_attack(victim, row, &clean, &judged, seconds)?;
                        progress.line(&format!(
                            "  {:<24} robust {robust:.4} (from {})",
                            spec.id, set.source
                        ));
                    }
                }
            }
        }
        self.checks_after_attacks(victim, &clean, first_meta)?;
        Ok(())
    }

    fn flag(&mut self, victim: &Victim, flag: Flag) {
        self.flags
            .push((victim.model.path.display().to_string(), flag));
    }

    /// The checks that need only the clean pass: repeated passes, outputs
    /// that are probabilities, targeted attacks with too few classes.
    fn checks_after_clean(&mut self, victim: &mut Victim, clean: &Clean) -> Result<()> {
        let n = self.data.len().min(self.plan.batch_size).min(250);
        if let Some(flag) = checks::randomized(victim, self.data.pixels_of(0..n), n)? {
            self.flag(victim, flag);
        }
        if clean.judged.iter().all(|j| j.probability_like) {
            self.flag(victim, Flag::Probabilities);
        }
        let classes = crate::attack::Model::classes(victim);
        for spec in &self.plan.attacks {
            for flag in checks::too_few_classes(&spec.id, &spec.step, classes) {
                self.flag(victim, flag);
            }
        }
        Ok(())
    }

    /// The checks that need gradients or the model's rows: zero input
    /// gradients and an unbounded attack that fails (only when the audit
    /// runs white-box attacks on this model), and black-box attacks beating
    /// white-box ones.
    fn checks_after_attacks(
        &mut self,
        victim: &mut Victim,
        clean: &Clean,
        first_meta: usize,
    ) -> Result<()> {
        let white_box = self.plan.attacks.iter().any(|a| match &a.step {
            Step::Attack(attack) => attack.oracle() != crate::attack::Oracle::Scores,
            Step::Cascade(_) => true,
            _ => false,
        });
        if white_box {
            let checked: Vec<usize> = clean
                .correct
                .iter()
                .copied()
                .take(checks::CHECKED_SAMPLES)
                .collect();
            let images: Vec<f32> = checked
                .iter()
                .flat_map(|&i| self.data.pixels_of(i..i + 1).iter().copied())
                .collect();
            let labels: Vec<i64> = checked.iter().map(|&i| self.data.labels[i]).collect();
            let ids: Vec<u64> = checked.iter().map(|&i| self.data.ids[i]).collect();
            if let Some(flag) = checks::zero_gradients(victim, &images, &labels)? {
                self.flag(victim, flag);
            }
            let batch = crate::attack::Batch {
                images: &images,
                labels: &labels,
                ids: &ids,
                seed: self.plan.seed,
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
        let outcomes: Vec<SampleOutcome> = self
            .outcomes
            .iter()
            .filter(|o| o.model == model)
            .cloned()
            .collect();
        let rows = summarise(&outcomes, &self.metas[first_meta..]);
        let tagged: Vec<(checks::Evidence, &ReportRow)> = rows
            .iter()
            .map(|r| {
                let evidence = self
                    .plan
                    .attacks
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

    /// Predictions on the clean data, with the checks that need them: labels
    /// the model can output, non-finite logits, probability-like outputs.
    fn clean_pass(&mut self, victim: &mut Victim, progress: &mut dyn Progress) -> Result<Clean> {
        let classes = crate::attack::Model::classes(victim);
        if let Some(&max_label) = self.data.labels.iter().max() {
            if max_label as usize >= classes {
                return Err(Error::model(
                    &victim.model.path,
                    format!(
                        "outputs {classes} classes but the data {} has labels up to {max_label}; is this the dataset the model was trained for?",
                        self.data.name
                    ),
                ));
            }
        }
        let everything: Vec<usize> = (0..self.data.len()).collect();
        let step = self.drive_step("clean", None);
        let judged = drive(
            &step,
            victim,
            self.data,
            &everything,
            &mut |_, _, batch| Ok(Perturbed::unperturbed(batch)),
            None,
            progress,
        )?;
        let name = victim.model.display_name();
        let non_finite = judged.iter().filter(|j| !j.finite).count();
        if non_finite > 0 {
            self.warnings.push(format!(
                "{name}: {non_finite} sample(s) gave non-finite logits; they count as misclassified"
            ));
        }
        if judged.iter().all(|j| j.probability_like) {
            self.warnings.push(format!(
                "{name}: its outputs look like probabilities (rows in [0,1] summing to 1), not logits; \
                 gradient-based attacks on a softmax output can be weakened by saturation — export the model without its final softmax"
            ));
        }
        let correct = judged
            .iter()
            .filter(|j| j.correct)
            .map(|j| j.index)
            .collect();
        Ok(Clean { judged, correct })
    }

    fn meta(&self, victim: &Victim, attack_id: &str, attack: &str) -> RowMeta {
        RowMeta {
            model: victim.model.path.display().to_string(),
            model_sha256: victim.model.sha256.clone(),
            dataset: self.data.name.clone(),
            attack_id: attack_id.to_string(),
            attack: attack.to_string(),
            settings: None,
            source: None,
            seconds: 0.0,
            backend: victim.backend_name().to_string(),
            device: victim.device().to_string(),
            seed: self.plan.seed,
        }
    }

    /// Journals the row about to be pushed: `meta` and the last `n` outcomes.
    fn journal_row(&self, meta: &RowMeta, n: usize) -> Result<()> {
        if let Some(journal) = self.journal.as_deref() {
            let first = self.outcomes.len() - n;
            journal.record(self.metas.len(), meta, &self.outcomes[first..])?;
        }
        Ok(())
    }

    fn record_clean(
        &mut self,
        victim: &Victim,
        id: &str,
        clean: &Clean,
        seconds: f64,
    ) -> Result<()> {
        let meta = RowMeta {
            seconds,
            ..self.meta(victim, id, "clean")
        };
        for j in &clean.judged {
            self.outcomes.push(SampleOutcome {
                model: meta.model.clone(),
                model_sha256: meta.model_sha256.clone(),
                attack_id: id.to_string(),
                source: None,
                sample: self.data.ids[j.index],
                label: self.data.labels[j.index],
                clean_pred: j.prediction,
                adv_pred: None,
                attacked: j.correct,
                robust: j.correct,
                norm: None,
                queries: 0,
            });
        }
        self.journal_row(&meta, clean.judged.len())?;
        self.metas.push(meta);
        Ok(())
    }

    /// Runs `attack` on the samples at `pool` (dataset positions), held to
    /// its oracle, and judges every example on the model.
    fn run_attack(
        &mut self,
        victim: &mut Victim,
        label: &str,
        attack: &dyn Attack,
        pool: &[usize],
        progress: &mut dyn Progress,
    ) -> Result<Vec<Judged>> {
        let step = self.drive_step(label, Some(attack));
        let judged = drive(
            &step,
            victim,
            self.data,
            pool,
            &mut |model, _, batch| attack.run(&mut Guarded::new(model, attack), batch),
            None,
            progress,
        )?;
        self.warn_on_disagreement(victim, label, &judged);
        Ok(judged)
    }

    /// AutoAttack's cascade: each component attacks only the samples still
    /// robust, from the clean image; a row per component with the
    /// cumulative robust accuracy (`<id>:<kind>`), and the final row `<id>`.
    fn cascade(
        &mut self,
        victim: &mut Victim,
        spec: &AttackSpec,
        components: &[(&'static str, Arc<dyn Attack>)],
        clean: &Clean,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        // The components' seconds, those of an earlier run included.
        let mut seconds_spent = 0.0;
        // The latest verdict of every clean-correct sample (the fooling one
        // once fooled), and the queries spent on it so far.
        let mut verdicts: HashMap<usize, Judged> = HashMap::new();
        let mut spent: HashMap<usize, u32> = HashMap::new();
        let mut pool = clean.correct.clone();
        for (kind, attack) in components {
            let component_started = Instant::now();
            let id = format!("{}:{kind}", spec.id);
            if let Some(outcomes) = self.replay(victim, clean, &id, None, progress)? {
                // The samples this component attacked (those still robust
                // before it) take its verdicts; the others keep theirs.
                let attacked: std::collections::HashSet<usize> = pool.iter().copied().collect();
                for (o, c) in outcomes.iter().zip(&clean.judged) {
                    if !attacked.contains(&c.index) {
                        continue;
                    }
                    let verdict = Judged::replayed(c.index, o);
                    *spent.entry(c.index).or_default() += verdict.queries;
                    verdicts.insert(c.index, verdict);
                }
                pool.retain(|i| verdicts[i].correct);
                seconds_spent += self.metas.last().map_or(0.0, |m| m.seconds);
                continue;
            }
            let judged = self.run_attack(victim, &id, attack.as_ref(), &pool, progress)?;
            let mut this: HashMap<usize, u32> = HashMap::new();
            for j in judged {
                *spent.entry(j.index).or_default() += j.queries;
                this.insert(j.index, j.queries);
                verdicts.insert(j.index, j);
            }
            pool.retain(|i| verdicts[i].correct);
            let cumulative = self.cascade_verdicts(clean, &verdicts, &this);
            let row = RowOf {
                id: &id,
                kind,
                settings: Some(attack.settings()),
                source: None,
            };
            let seconds = component_started.elapsed().as_secs_f64();
            seconds_spent += seconds;
            let robust = self.record_attack(victim, row, clean, &cumulative, seconds)?;
            progress.line(&format!(
                "  {id:<24} robust {robust:.4} ({seconds:.1}s, cumulative)"
            ));
        }
        if self
            .replay(victim, clean, &spec.id, None, progress)?
            .is_some()
        {
            return Ok(());
        }
        let final_verdicts = self.cascade_verdicts(clean, &verdicts, &spent);
        let seconds = seconds_spent;
        let robust = self.record_attack(
            victim,
            RowOf::spec(spec, None),
            clean,
            &final_verdicts,
            seconds,
        )?;
        progress.line(&format!(
            "  {:<24} robust {robust:.4} ({seconds:.1}s)",
            spec.id
        ));
        Ok(())
    }

    /// Per clean-correct sample, in dataset order: its latest verdict with
    /// `queries` as the query count.
    fn cascade_verdicts(
        &self,
        clean: &Clean,
        verdicts: &HashMap<usize, Judged>,
        queries: &HashMap<usize, u32>,
    ) -> Vec<Judged> {
        clean
            .correct
            .iter()
            .filter_map(|i| verdicts.get(i))
            .map(|v| Judged {
                queries: queries.get(&v.index).copied().unwrap_or(0),
                ..v.clone()
            })
            .collect()
    }

    /// Records the outcomes of an attack step (`judged`: the clean-correct
    /// samples' verdicts, in dataset order) for every sample, in the journal
    /// too; returns the robust accuracy, for the progress line.
    fn record_attack(
        &mut self,
        victim: &Victim,
        row: RowOf,
        clean: &Clean,
        judged: &[Judged],
        seconds: f64,
    ) -> Result<f64> {
        let meta = RowMeta {
            settings: row.settings,
            source: row.source.map(str::to_string),
            seconds,
            ..self.meta(victim, row.id, row.kind)
        };
        let mut attacked = judged.iter().peekable();
        let mut robust = 0usize;
        for c in &clean.judged {
            let verdict = attacked.next_if(|j| j.index == c.index);
            robust += usize::from(verdict.is_some_and(|v| v.correct));
            self.outcomes.push(SampleOutcome {
                model: meta.model.clone(),
                model_sha256: meta.model_sha256.clone(),
                attack_id: meta.attack_id.clone(),
                source: meta.source.clone(),
                sample: self.data.ids[c.index],
                label: self.data.labels[c.index],
                clean_pred: c.prediction,
                adv_pred: verdict.map(|v| v.prediction),
                attacked: verdict.is_some(),
                robust: verdict.is_some_and(|v| v.correct),
                norm: verdict.and_then(|v| v.norm),
                queries: verdict.map_or(0, |v| v.queries),
            });
        }
        self.journal_row(&meta, clean.judged.len())?;
        self.metas.push(meta);
        Ok(robust as f64 / clean.judged.len().max(1) as f64)
    }

    /// Warns when an attack's own verdicts differ from the audit's
    /// re-prediction (the report follows the re-prediction).
    fn warn_on_disagreement(&mut self, victim: &Victim, id: &str, judged: &[Judged]) {
        let claimed_not_confirmed = judged
            .iter()
            .filter(|j| j.claimed_fooled && j.correct)
            .count();
        let unclaimed = judged
            .iter()
            .filter(|j| !j.claimed_fooled && !j.correct)
            .count();
        if claimed_not_confirmed + unclaimed > 0 {
            self.warnings.push(format!(
                "{}: `{id}` claimed {claimed_not_confirmed} sample(s) fooled that the model classifies correctly, and missed {unclaimed} it misclassifies; \
                 the report counts the model's own predictions (the gradient graph and the model disagree near the decision boundary)",
                victim.model.display_name()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_must_name_an_attack_of_the_audit() {
        let smoke = Suite::resolve("smoke").unwrap();
        let ok = AuditPlan::attacks_from_suites(
            std::slice::from_ref(&smoke),
            vec!["worst_case=0.1".parse().unwrap()],
        );
        assert!(ok.is_ok());
        let err =
            AuditPlan::attacks_from_suites(&[smoke], vec!["pgd20-linf-8=0.1".parse().unwrap()])
                .unwrap_err();
        assert!(err.to_string().contains("pgd20-linf-8"), "{err}");
    }

    fn request(suite: &str, sources: Vec<PathBuf>) -> AuditRequest {
        AuditRequest {
            models: vec!["m.onnx".into()],
            sources,
            suites: vec![Suite::resolve(suite).unwrap()],
            gates: vec![],
            runtime: RuntimeOptions {
                backend: crate::runtime::BackendChoice::Tract,
                device: crate::runtime::Device::Cpu,
                threads: None,
            },
            normalization: None,
            layout: Layout::Auto,
            input: None,
            output: None,
            batch_size: 8,
            seed: 0,
        }
    }

    #[test]
    fn the_plan_owns_the_transfer_source_rule() {
        let err = AuditPlan::new(request("blackbox", vec![])).unwrap_err();
        assert!(err.to_string().contains("--source"), "{err}");
        let err = AuditPlan::new(request("smoke", vec!["s.onnx".into()])).unwrap_err();
        assert!(err.to_string().contains("transfer"), "{err}");
        assert!(AuditPlan::new(request("blackbox", vec!["s.onnx".into()])).is_ok());
        let no_batch = AuditRequest {
            batch_size: 0,
            ..request("smoke", vec![])
        };
        assert!(AuditPlan::new(no_batch).is_err());
    }
}
