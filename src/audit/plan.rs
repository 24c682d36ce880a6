//! What an audit runs, decided before anything runs: the validated
//! [`AuditPlan`] and its [`Schedule`], one [`Job`] per report row in report
//! order. A resumed audit runs the jobs its journal lacks
//! ([`crate::audit::record::Recorder::finished`]); nothing else decides
//! what is replayed.

use crate::attack::{AttackSpec, Step, Suite, WORST_CASE_ID};
use crate::audit::gate::Gate;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::onnx::{ClassifierGraph, Layout, Normalization, OnnxModel};
use crate::runtime::RuntimeOptions;
use std::path::{Path, PathBuf};

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

impl AuditPlan {
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Opens a model given on the command line as a classifier graph for
    /// `data`, read as the plan says (`--input`, `--output`,
    /// `--normalize`, `--layout`).
    pub fn open_model(&self, path: &Path, data: &Dataset) -> Result<(OnnxModel, ClassifierGraph)> {
        let model = OnnxModel::load(path)?;
        let graph = ClassifierGraph::prepare_as(
            &model,
            self.input.as_deref(),
            self.output.as_deref(),
            self.normalization.as_ref(),
            self.layout,
        )?;
        graph.check_image_shape(&model, data.image_shape)?;
        Ok((model, graph))
    }
}

/// What a job does to make its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Records the clean pass (the suite's `clean` entry, or the row every
    /// audit has when its suites hold none).
    Clean,
    /// Runs the attack of `plan.attacks()[spec]`.
    Attack { spec: usize },
    /// Evaluates the examples that attack `spec` crafted on `--source`
    /// model `source`.
    Transfer { spec: usize, source: usize },
    /// Runs component `component` of cascade `spec` on the samples the
    /// components before it left robust.
    CascadeComponent { spec: usize, component: usize },
    /// The cascade's final row, from its components' verdicts.
    CascadeTotal { spec: usize },
}

/// One report row to make: of model `plan.models()[model]`, named by
/// `attack_id` (and `source`, for transfer rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub model: usize,
    pub attack_id: String,
    /// Index into `plan.sources()`, for transfer rows.
    pub source: Option<usize>,
    pub kind: JobKind,
}

/// Every job of an audit, in report order: per model, the clean row, then
/// each suite entry's rows in suite order (a cascade's components before
/// its final row; a transfer attack's rows by source).
#[derive(Debug, Clone)]
pub struct Schedule {
    jobs: Vec<Job>,
}

impl Schedule {
    pub fn of(plan: &AuditPlan) -> Schedule {
        let mut jobs = Vec::new();
        for model in 0..plan.models.len() {
            let mut job = |attack_id: &str, source, kind| {
                jobs.push(Job {
                    model,
                    attack_id: attack_id.to_string(),
                    source,
                    kind,
                })
            };
            if !plan.attacks.iter().any(|a| matches!(a.step, Step::Clean)) {
                job(CLEAN_ROW, None, JobKind::Clean);
            }
            for (spec, attack) in plan.attacks.iter().enumerate() {
                match &attack.step {
                    Step::Clean => job(&attack.id, None, JobKind::Clean),
                    Step::Attack(_) => job(&attack.id, None, JobKind::Attack { spec }),
                    Step::Transfer(_) => {
                        for source in 0..plan.sources.len() {
                            job(&attack.id, Some(source), JobKind::Transfer { spec, source });
                        }
                    }
                    Step::Cascade(_) => {
                        for (component, id) in attack.component_ids().iter().enumerate() {
                            job(id, None, JobKind::CascadeComponent { spec, component });
                        }
                        job(&attack.id, None, JobKind::CascadeTotal { spec });
                    }
                }
            }
        }
        Schedule { jobs }
    }

    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// The jobs of model `model`, in order.
    pub fn of_model(&self, model: usize) -> impl Iterator<Item = &Job> {
        self.jobs.iter().filter(move |j| j.model == model)
    }
}

/// The id of the clean row an audit records when its suites have no
/// `clean` entry.
pub const CLEAN_ROW: &str = "clean";

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

    fn request(suites: &[&str], models: usize, sources: usize) -> AuditRequest {
        AuditRequest {
            models: (0..models).map(|m| format!("m{m}.onnx").into()).collect(),
            sources: (0..sources).map(|s| format!("s{s}.onnx").into()).collect(),
            suites: suites.iter().map(|s| Suite::resolve(s).unwrap()).collect(),
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
        let err = AuditPlan::new(request(&["blackbox"], 1, 0)).unwrap_err();
        assert!(err.to_string().contains("--source"), "{err}");
        let err = AuditPlan::new(request(&["smoke"], 1, 1)).unwrap_err();
        assert!(err.to_string().contains("transfer"), "{err}");
        assert!(AuditPlan::new(request(&["blackbox"], 1, 1)).is_ok());
        let no_batch = AuditRequest {
            batch_size: 0,
            ..request(&["smoke"], 1, 0)
        };
        assert!(AuditPlan::new(no_batch).is_err());
    }

    fn ids(schedule: &Schedule, model: usize) -> Vec<String> {
        schedule
            .of_model(model)
            .map(|j| match j.source {
                Some(s) => format!("{}<s{s}", j.attack_id),
                None => j.attack_id.clone(),
            })
            .collect()
    }

    #[test]
    fn the_schedule_lists_every_row_in_report_order() {
        // blackbox has no clean entry: the clean row comes first.
        let plan = AuditPlan::new(request(&["blackbox", "autoattack"], 2, 2)).unwrap();
        let schedule = Schedule::of(&plan);
        let expected = [
            "clean",
            "transfer-pgd20-linf-8<s0",
            "transfer-pgd20-linf-8<s1",
            "transfer-pgd20-linf-16<s0",
            "transfer-pgd20-linf-16<s1",
            "aa-linf-8:apgd-ce",
            "aa-linf-8:apgd-t",
            "aa-linf-8:fab-t",
            "aa-linf-8:square",
            "aa-linf-8",
        ];
        assert_eq!(ids(&schedule, 0), expected);
        assert_eq!(ids(&schedule, 1), expected);
        assert_eq!(schedule.jobs().len(), 2 * expected.len());
        // smoke has its own clean entry: no second clean row.
        let plan = AuditPlan::new(request(&["smoke"], 1, 0)).unwrap();
        assert_eq!(
            ids(&Schedule::of(&plan), 0),
            ["clean", "fgsm-linf-8", "pgd5-linf-8"]
        );
    }
}
