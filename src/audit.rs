//! An audit: models × attacks on one dataset, producing report rows and
//! gate verdicts. The CLI builds an [`AuditPlan`]; everything here is callable
//! (and tested) without spawning a process.

use crate::attack::project::norm_of;
use crate::attack::transfer::{self, TransferSet};
use crate::attack::{AttackKind, AttackSpec, Loss, Pgd, Suite};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::onnx::{grad, ClassifierGraph, Normalization, OnnxModel};
use crate::progress::Progress;
use crate::report::{fraction, wilson_ci95_half_width, ReportRow, WORST_CASE_ID};
use crate::runtime::{self, Classifier, GradientModel, RuntimeOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// A robust-accuracy threshold that fails the audit (exit 1) when not met.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub attack_id: String,
    pub min_robust_acc: f64,
    /// `--fail-under` or the suite that set it, for the message.
    pub origin: String,
}

impl std::str::FromStr for Gate {
    type Err = Error;

    /// `ATTACK_ID=ACC`, ACC a fraction in `[0, 1]`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "--fail-under {s}: {why}; expected ATTACK_ID=ACC, e.g. pgd20-linf-8=0.40"
            ))
        };
        let (id, acc) = s.rsplit_once('=').ok_or_else(|| bad("missing `=`"))?;
        let acc: f64 = acc.trim().parse().map_err(|_| bad("ACC is not a number"))?;
        if !(0.0..=1.0).contains(&acc) {
            return Err(bad("ACC must be a fraction in [0, 1] (0.40, not 40)"));
        }
        Ok(Gate {
            attack_id: id.trim().to_string(),
            min_robust_acc: acc,
            origin: "--fail-under".into(),
        })
    }
}

/// A gate that a model did not pass.
#[derive(Debug, Clone, PartialEq)]
pub struct GateFailure {
    pub model: String,
    pub gate: Gate,
    pub measured: f64,
}

impl std::fmt::Display for GateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: robust accuracy under `{}` is {:.4}, below the required {:.4} (set by {})",
            self.model,
            self.gate.attack_id,
            self.measured,
            self.gate.min_robust_acc,
            self.gate.origin
        )
    }
}

/// A validated audit request.
#[derive(Debug, Clone)]
pub struct AuditPlan {
    pub models: Vec<PathBuf>,
    /// Source models of transfer attacks (`--source`).
    pub sources: Vec<PathBuf>,
    pub attacks: Vec<AttackSpec>,
    pub gates: Vec<Gate>,
    pub runtime: RuntimeOptions,
    pub normalization: Option<Normalization>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub batch_size: usize,
    pub seed: u64,
}

impl AuditPlan {
    /// Merges suites (an id used twice must mean the same attack), and checks
    /// that every gate names an attack of the audit.
    pub fn attacks_from_suites(
        suites: &[Suite],
        mut gates: Vec<Gate>,
    ) -> Result<(Vec<AttackSpec>, Vec<Gate>)> {
        let mut attacks: Vec<AttackSpec> = Vec::new();
        for suite in suites {
            suite.check_runnable()?;
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
                || attacks.iter().any(|a| a.id == gate.attack_id);
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
}

/// What an audit produced.
#[derive(Debug, Clone)]
pub struct AuditOutcome {
    pub rows: Vec<ReportRow>,
    pub gate_failures: Vec<GateFailure>,
    /// Things the user should know that do not stop the audit.
    pub warnings: Vec<String>,
}

/// Runs the plan on `data`. `progress` receives one line per step worth telling.
pub fn run_audit(
    plan: &AuditPlan,
    data: &Dataset,
    progress: &mut dyn Progress,
) -> Result<AuditOutcome> {
    if data.is_empty() {
        return Err(Error::Usage(format!(
            "the dataset {} has no samples to audit",
            data.name
        )));
    }
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    let transfer_sets = craft_transfer_sets(plan, data, progress)?;
    for path in &plan.models {
        let (model, graph) = prepare(plan, path, data)?;
        let mut classifier = runtime::open(&graph, data.image_shape, plan.runtime)?;
        progress.line(&format!(
            "{}: {} backend on {}",
            model.display_name(),
            classifier.backend_name(),
            classifier.device().as_str()
        ));
        let model_rows = audit_model(
            plan,
            (&model, &graph),
            classifier.as_mut(),
            data,
            &transfer_sets,
            &mut warnings,
            progress,
        )?;
        rows.extend(model_rows);
    }
    let gate_failures = evaluate_gates(&plan.gates, &rows);
    Ok(AuditOutcome {
        rows,
        gate_failures,
        warnings,
    })
}

/// Opens a model given on the command line as a classifier graph for `data`.
fn prepare(
    plan: &AuditPlan,
    path: &std::path::Path,
    data: &Dataset,
) -> Result<(OnnxModel, ClassifierGraph)> {
    let model = OnnxModel::load(path)?;
    let graph = ClassifierGraph::prepare(
        &model,
        plan.input.as_deref(),
        plan.output.as_deref(),
        plan.normalization.as_ref(),
    )?;
    graph.check_image_shape(&model, data.image_shape)?;
    Ok((model, graph))
}

/// Adversarial examples of every transfer attack on every `--source` model.
fn craft_transfer_sets(
    plan: &AuditPlan,
    data: &Dataset,
    progress: &mut dyn Progress,
) -> Result<Vec<TransferSet>> {
    let transfers: Vec<&AttackSpec> = plan
        .attacks
        .iter()
        .filter(|a| a.kind == AttackKind::Transfer)
        .collect();
    let mut sets = Vec::new();
    if transfers.is_empty() {
        return Ok(sets);
    }
    for path in &plan.sources {
        let (model, graph) = prepare(plan, path, data)?;
        let mut gradients = GradientModels {
            graph: &graph,
            model: &model,
            image_shape: data.image_shape,
            runtime: plan.runtime,
            by_loss: HashMap::new(),
        };
        for attack in &transfers {
            let source = gradients.get(attack.loss)?;
            progress.begin(
                &format!("crafting {} on {}", attack.id, model.display_name()),
                data.len() as u64,
            );
            let set = transfer::craft(
                &path.display().to_string(),
                source,
                attack,
                data,
                plan.batch_size,
                plan.seed,
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

/// Clean predictions of every sample: `correct[i]` and the number of classes.
fn clean_pass(
    model: &OnnxModel,
    classifier: &mut dyn Classifier,
    data: &Dataset,
    batch_size: usize,
    warnings: &mut Vec<String>,
) -> Result<Vec<bool>> {
    let mut correct = Vec::with_capacity(data.len());
    let mut looks_like_probabilities = true;
    let mut non_finite = 0usize;
    for start in (0..data.len()).step_by(batch_size) {
        let end = (start + batch_size).min(data.len());
        let logits = classifier.logits(data.pixels_of(start..end), end - start)?;
        if let Some(&max_label) = data.labels.iter().max() {
            if max_label as usize >= logits.classes {
                return Err(Error::model(
                    &model.path,
                    format!(
                        "outputs {} classes but the data {} has labels up to {max_label}; is this the dataset the model was trained for?",
                        logits.classes, data.name
                    ),
                ));
            }
        }
        for (row, (pred, &label)) in logits
            .rows()
            .zip(logits.argmax().into_iter().zip(&data.labels[start..end]))
        {
            let finite = row.iter().all(|v| v.is_finite());
            non_finite += usize::from(!finite);
            correct.push(finite && pred as i64 == label);
            let sum: f32 = row.iter().sum();
            looks_like_probabilities &=
                row.iter().all(|v| (0.0..=1.0).contains(v)) && (sum - 1.0).abs() < 1e-3;
        }
    }
    if non_finite > 0 {
        warnings.push(format!(
            "{}: {non_finite} sample(s) gave non-finite logits; they count as misclassified",
            model.display_name()
        ));
    }
    if looks_like_probabilities {
        warnings.push(format!(
            "{}: its outputs look like probabilities (rows in [0,1] summing to 1), not logits; \
             gradient-based attacks on a softmax output can be weakened by saturation — export the model without its final softmax",
            model.display_name()
        ));
    }
    Ok(correct)
}

/// What one attack measured on one model.
struct AttackMeasurement {
    robust: Vec<bool>,
    mean_norm: Option<f64>,
    max_norm: Option<f64>,
    queries: Option<f64>,
}

/// Gradient graphs of one model, one per loss, built on first use.
struct GradientModels<'a> {
    graph: &'a ClassifierGraph,
    model: &'a OnnxModel,
    image_shape: [usize; 3],
    runtime: crate::runtime::RuntimeOptions,
    by_loss: HashMap<Loss, GradientModel>,
}

impl GradientModels<'_> {
    fn get(&mut self, loss: Loss) -> Result<&mut GradientModel> {
        if !self.by_loss.contains_key(&loss) {
            let gradient = grad::build(self.graph, self.image_shape, loss)
                .map_err(|e| e.with_model_path(&self.model.path))?;
            self.by_loss.insert(
                loss,
                GradientModel::open(&gradient, self.image_shape, self.runtime)?,
            );
        }
        Ok(self.by_loss.get_mut(&loss).expect("inserted above"))
    }
}

/// Runs a gradient attack on the clean-correct samples, batch by batch.
fn gradient_attack(
    attack: &AttackSpec,
    models: &mut GradientModels,
    data: &Dataset,
    correct: &[bool],
    plan: &AuditPlan,
    progress: &mut dyn Progress,
) -> Result<AttackMeasurement> {
    let pgd = Pgd::from_spec(attack, plan.seed);
    let model = models.get(attack.loss)?;
    let targets: Vec<usize> = (0..data.len()).filter(|&i| correct[i]).collect();
    let len = data.image_len();
    let mut robust = correct.to_vec();
    let mut norms = Vec::new();
    let mut calls = 0u64;
    progress.begin(&attack.id, targets.len() as u64);
    for chunk in targets.chunks(plan.batch_size.max(1)) {
        let images: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| data.pixels_of(i..i + 1).iter().copied())
            .collect();
        let labels: Vec<i64> = chunk.iter().map(|&i| data.labels[i]).collect();
        let ids: Vec<u64> = chunk.iter().map(|&i| i as u64).collect();
        let out = pgd.run(model, &images, &labels, &ids)?;
        progress.advance(chunk.len() as u64);
        calls += out.gradient_calls;
        for (j, &i) in chunk.iter().enumerate() {
            if out.fooled[j] {
                robust[i] = false;
                let delta = out.adversarial[j * len..(j + 1) * len]
                    .iter()
                    .zip(&images[j * len..(j + 1) * len])
                    .map(|(a, b)| a - b);
                norms.push(f64::from(norm_of(delta, attack.norm)));
            }
        }
    }
    let mean_norm = (!norms.is_empty()).then(|| norms.iter().sum::<f64>() / norms.len() as f64);
    let max_norm = norms.iter().copied().reduce(f64::max);
    let queries = (!targets.is_empty()).then(|| calls as f64 / targets.len() as f64);
    Ok(AttackMeasurement {
        robust,
        mean_norm,
        max_norm,
        queries,
    })
}

/// Audits one model (`target`: the file and its classifier graph).
fn audit_model(
    plan: &AuditPlan,
    (model, graph): (&OnnxModel, &ClassifierGraph),
    classifier: &mut dyn Classifier,
    data: &Dataset,
    transfer_sets: &[TransferSet],
    warnings: &mut Vec<String>,
    progress: &mut dyn Progress,
) -> Result<Vec<ReportRow>> {
    let started = Instant::now();
    let correct = clean_pass(model, classifier, data, plan.batch_size.max(1), warnings)?;
    let clean_seconds = started.elapsed().as_secs_f64();
    let clean_acc = fraction(&correct);
    let correct_count = correct.iter().filter(|&&c| c).count();
    let (backend, device) = (classifier.backend_name(), classifier.device().as_str());
    let base = |id: &str, kind: &str, robust: &[bool], seconds: f64| ReportRow {
        model: model.path.display().to_string(),
        model_sha256: model.sha256.clone(),
        dataset: data.name.clone(),
        n: data.len(),
        attack_id: id.into(),
        attack: kind.into(),
        norm: None,
        eps: None,
        steps: None,
        step_size: None,
        restarts: None,
        loss: None,
        source: None,
        clean_acc,
        robust_acc: fraction(robust),
        robust_acc_ci95: wilson_ci95_half_width(
            robust.iter().filter(|&&b| b).count(),
            robust.len(),
        ),
        attack_success_rate: (correct_count > 0)
            .then(|| 1.0 - robust.iter().filter(|&&b| b).count() as f64 / correct_count as f64),
        mean_norm: None,
        max_norm: None,
        queries: None,
        seconds,
        backend: backend.into(),
        device: device.into(),
        seed: plan.seed,
    };
    let mut rows = Vec::new();
    let mut survivors = correct.clone();
    if !plan.attacks.iter().any(|a| a.kind == AttackKind::Clean) {
        rows.push(base("clean", "clean", &correct, clean_seconds));
    }
    let mut gradients = GradientModels {
        graph,
        model,
        image_shape: data.image_shape,
        runtime: plan.runtime,
        by_loss: HashMap::new(),
    };
    for attack in &plan.attacks {
        let attack_started = Instant::now();
        if attack.kind == AttackKind::Transfer {
            for set in transfer_sets.iter().filter(|s| s.attack_id == attack.id) {
                let robust = transfer_robustness(classifier, data, &correct, set, plan.batch_size)?;
                survivors.iter_mut().zip(&robust).for_each(|(s, r)| *s &= r);
                let mut row = base(
                    &attack.id,
                    attack.kind.as_str(),
                    &robust,
                    set.seconds + attack_started.elapsed().as_secs_f64(),
                );
                describe_attack(&mut row, attack);
                row.source = Some(set.source.clone());
                row.queries = Some(set.queries);
                let (mean, max) =
                    perturbation_norms(data, &set.adversarial, &robust, &correct, attack.norm);
                (row.mean_norm, row.max_norm) = (mean, max);
                progress.line(&format!(
                    "  {:<24} robust {:.4} (from {})",
                    attack.id, row.robust_acc, set.source
                ));
                rows.push(row);
            }
            continue;
        }
        let row = match attack.kind {
            AttackKind::Clean => base(&attack.id, "clean", &correct, clean_seconds),
            AttackKind::Fgsm | AttackKind::Pgd => {
                let measured =
                    gradient_attack(attack, &mut gradients, data, &correct, plan, progress)?;
                survivors
                    .iter_mut()
                    .zip(&measured.robust)
                    .for_each(|(s, r)| *s &= r);
                let mut row = base(
                    &attack.id,
                    attack.kind.as_str(),
                    &measured.robust,
                    attack_started.elapsed().as_secs_f64(),
                );
                describe_attack(&mut row, attack);
                row.mean_norm = measured.mean_norm;
                row.max_norm = measured.max_norm;
                row.queries = measured.queries;
                row
            }
            other => unreachable!(
                "suites are checked runnable before the audit; `{}` is not",
                other.as_str()
            ),
        };
        progress.line(&format!(
            "  {:<24} robust {:.4} ({:.1}s)",
            attack.id,
            row.robust_acc,
            attack_started.elapsed().as_secs_f64()
        ));
        rows.push(row);
    }
    let worst = base(
        WORST_CASE_ID,
        WORST_CASE_ID,
        &survivors,
        started.elapsed().as_secs_f64(),
    );
    rows.push(worst);
    Ok(rows)
}

/// Fills the attack-settings columns of a row.
fn describe_attack(row: &mut ReportRow, attack: &AttackSpec) {
    row.norm = Some(attack.norm.as_str().into());
    row.eps = Some(attack.eps);
    row.steps = Some(attack.steps.max(1));
    row.step_size = Some(if attack.kind == AttackKind::Fgsm {
        attack.eps
    } else {
        attack.step_size
    });
    row.restarts = Some(attack.restarts);
    row.loss = Some(attack.loss.as_str().into());
}

/// Per sample: correct on clean data and on the transferred example.
fn transfer_robustness(
    classifier: &mut dyn Classifier,
    data: &Dataset,
    correct: &[bool],
    set: &TransferSet,
    batch_size: usize,
) -> Result<Vec<bool>> {
    let len = data.image_len();
    let mut robust = Vec::with_capacity(data.len());
    for start in (0..data.len()).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(data.len());
        let logits = classifier.logits(&set.adversarial[start * len..end * len], end - start)?;
        for (k, (row, prediction)) in logits.rows().zip(logits.argmax()).enumerate() {
            let i = start + k;
            robust.push(
                correct[i]
                    && prediction as i64 == data.labels[i]
                    && row.iter().all(|v| v.is_finite()),
            );
        }
    }
    Ok(robust)
}

/// Mean and max perturbation size of the examples that fooled the model.
fn perturbation_norms(
    data: &Dataset,
    adversarial: &[f32],
    robust: &[bool],
    correct: &[bool],
    norm: crate::attack::Norm,
) -> (Option<f64>, Option<f64>) {
    let len = data.image_len();
    let norms: Vec<f64> = (0..data.len())
        .filter(|&i| correct[i] && !robust[i])
        .map(|i| {
            f64::from(norm_of(
                adversarial[i * len..(i + 1) * len]
                    .iter()
                    .zip(data.pixels_of(i..i + 1))
                    .map(|(a, b)| a - b),
                norm,
            ))
        })
        .collect();
    let mean = (!norms.is_empty()).then(|| norms.iter().sum::<f64>() / norms.len() as f64);
    (mean, norms.iter().copied().reduce(f64::max))
}

fn evaluate_gates(gates: &[Gate], rows: &[ReportRow]) -> Vec<GateFailure> {
    let mut failures = Vec::new();
    for gate in gates {
        for row in rows.iter().filter(|r| r.attack_id == gate.attack_id) {
            if row.robust_acc < gate.min_robust_acc {
                failures.push(GateFailure {
                    model: row.model.clone(),
                    gate: gate.clone(),
                    measured: row.robust_acc,
                });
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_and_reject() {
        let g: Gate = "pgd20-linf-8=0.4".parse().unwrap();
        assert_eq!(
            (g.attack_id.as_str(), g.min_robust_acc),
            ("pgd20-linf-8", 0.4)
        );
        assert!("pgd=40".parse::<Gate>().is_err());
        assert!("pgd".parse::<Gate>().is_err());
        assert!("pgd=x".parse::<Gate>().is_err());
    }

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

    #[test]
    fn suites_with_unavailable_attacks_are_refused_before_running() {
        let later = Suite::parse(
            "[[attack]]\nid = 'sq'\nkind = 'square'\neps = 0.03\n",
            "later.toml",
        )
        .unwrap();
        let err = AuditPlan::attacks_from_suites(&[later], vec![])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not available") && err.contains("`sq`"),
            "{err}"
        );
    }
}
