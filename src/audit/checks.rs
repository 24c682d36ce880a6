//! Gradient-masking flags, after AutoAttack's own checks (`checks.py`) and
//! the "obfuscated gradients" checklist (Athalye et al. 2018; Carlini et al.
//! 2019). A flag says the figures may overstate robustness; it never
//! changes one. Each check is one small function, called by the audit at a
//! fixed point: after the clean pass, or once a model's rows are known.

use crate::attack::{Attack, Batch, Guarded, Loss, Model, Norm, Oracle, Pgd, Step};
use crate::error::Result;
use crate::report::ReportRow;

/// Robust accuracy a black-box attack may beat the white-box ones by
/// before it is a flag (AutoAttack's `check_square_sr`: 0.2 points).
pub const BLACK_BOX_MARGIN: f64 = 0.002;
/// How far normalised logits of repeated passes may drift (AutoAttack's 1e-4).
const RANDOMIZED_TOLERANCE: f32 = 1e-4;
/// Forward passes compared by the randomisation check (AutoAttack's 5).
const REPEATED_PASSES: usize = 5;
/// Samples the zero-gradient and unbounded-attack checks look at.
pub const CHECKED_SAMPLES: usize = 100;

/// A reason to distrust a model's figures.
#[derive(Debug, Clone, PartialEq)]
pub enum Flag {
    /// Outputs change across repeated forward passes of the same images.
    Randomized { max_change: f32 },
    /// Outputs are probabilities (in [0, 1], summing to 1), not logits.
    Probabilities,
    /// Samples whose input gradient of the cross-entropy is exactly zero.
    ZeroGradients { samples: usize, of: usize },
    /// A targeted attack asks for more target classes than the model has.
    TooFewClasses {
        attack: String,
        classes: usize,
        targets: u32,
    },
    /// A score-based or transfer attack beat every white-box attack of the same budget.
    BlackBoxBeatsWhiteBox {
        black: String,
        white: String,
        by: f64,
    },
    /// Robust accuracy stays above 0 under ℓ∞ ε = 1, where every image can
    /// be turned into any other.
    UnboundedAttackFails { robust: f64 },
    /// White-box attacks used gradients through ops differentiated by the
    /// straight-through estimator (quantization): approximate gradients.
    ApproximateGradients { ops: Vec<String> },
}

impl Flag {
    /// The `flag` column of `flags.csv`.
    pub fn name(&self) -> &'static str {
        match self {
            Flag::Randomized { .. } => "randomized",
            Flag::Probabilities => "probabilities",
            Flag::ZeroGradients { .. } => "zero_gradients",
            Flag::TooFewClasses { .. } => "too_few_classes",
            Flag::BlackBoxBeatsWhiteBox { .. } => "black_box_beats_white_box",
            Flag::UnboundedAttackFails { .. } => "unbounded_attack_fails",
            Flag::ApproximateGradients { .. } => "approximate_gradients",
        }
    }

    /// The `measured` column: the figure that raised the flag.
    pub fn measured(&self) -> f64 {
        match self {
            Flag::Randomized { max_change } => f64::from(*max_change),
            Flag::Probabilities => 1.0,
            Flag::ZeroGradients { samples, of } => *samples as f64 / (*of).max(1) as f64,
            Flag::TooFewClasses { classes, .. } => *classes as f64,
            Flag::BlackBoxBeatsWhiteBox { by, .. } => *by,
            Flag::UnboundedAttackFails { robust } => *robust,
            Flag::ApproximateGradients { ops } => ops.len() as f64,
        }
    }

    /// The `detail` column: what it means and what to do.
    pub fn detail(&self) -> String {
        match self {
            Flag::Randomized { max_change } => format!(
                "repeated forward passes of the same images differ (normalised logits by up to {max_change:.2e}): \
                 a randomised model needs expectation-over-transformation attacks; its figures here are unreliable"
            ),
            Flag::Probabilities => "the outputs are probabilities, not logits: a saturated softmax weakens gradient attacks; \
                 export the model without its final softmax"
                .into(),
            Flag::ZeroGradients { samples, of } => format!(
                "{samples} of {of} clean samples have an exactly zero input gradient: gradient attacks cannot move them, \
                 so their robustness may be an artefact (gradient masking)"
            ),
            Flag::TooFewClasses { attack, classes, targets } => format!(
                "`{attack}` asks for {targets} target classes but the model has only {} wrong classes; \
                 it runs with {}",
                classes.saturating_sub(1),
                (*targets as usize).min(classes.saturating_sub(1))
            ),
            Flag::BlackBoxBeatsWhiteBox { black, white, by } => format!(
                "`{black}` lowered robust accuracy {:.2} points below the best white-box attack of the same budget (`{white}`): \
                 the gradients may be masked; trust the lower figure",
                by * 100.0
            ),
            Flag::UnboundedAttackFails { robust } => format!(
                "PGD at l-inf eps = 1 (any image reachable) leaves {:.1}% of the checked samples robust: \
                 the gradients do not lead the attack, so bounded figures may be too high",
                robust * 100.0
            ),
            Flag::ApproximateGradients { ops } => format!(
                "white-box attacks differentiated {} by the straight-through estimator (BPDA, Athalye et al. 2018): \
                 the forward pass is the quantized one but its gradients are approximate, so white-box figures may be \
                 too high; compare with score-based attacks (--suite scorebased)",
                ops.join(" and ")
            ),
        }
    }
}

/// Outputs that change across repeated passes: the first `n` images run
/// [`REPEATED_PASSES`] times; logits compared after ℓ2 normalisation.
pub fn randomized(model: &mut dyn Model, images: &[f32], n: usize) -> Result<Option<Flag>> {
    let mut passes = Vec::with_capacity(REPEATED_PASSES);
    for _ in 0..REPEATED_PASSES {
        let logits = model.logits(images, n)?;
        let normalised: Vec<f32> = logits
            .rows()
            .flat_map(|row| {
                let length = row.iter().map(|v| v * v).sum::<f32>().sqrt() + 1e-10;
                row.iter().map(move |v| v / length)
            })
            .collect();
        passes.push(normalised);
    }
    let max_change = passes[1..]
        .iter()
        .flat_map(|p| p.iter().zip(&passes[0]).map(|(a, b)| (a - b).abs()))
        .filter(|d| !d.is_nan())
        .fold(0.0f32, f32::max);
    Ok((max_change > RANDOMIZED_TOLERANCE).then_some(Flag::Randomized { max_change }))
}

/// Samples (of a batch of clean-correct ones) whose cross-entropy input
/// gradient is exactly zero.
pub fn zero_gradients(
    model: &mut dyn Model,
    images: &[f32],
    labels: &[i64],
) -> Result<Option<Flag>> {
    if labels.is_empty() {
        return Ok(None);
    }
    let eval = model.loss_and_grad(Loss::Ce, images, labels, None)?;
    let len = images.len() / labels.len();
    let samples = eval
        .input_grad
        .chunks(len)
        .filter(|g| g.iter().all(|&v| v == 0.0))
        .count();
    Ok((samples > 0).then_some(Flag::ZeroGradients {
        samples,
        of: labels.len(),
    }))
}

/// Targeted attacks asking for more targets than the model has wrong classes.
pub fn too_few_classes(id: &str, step: &Step, classes: usize) -> Vec<Flag> {
    let attacks: Vec<(String, &dyn Attack)> = match step {
        Step::Attack(a) | Step::Transfer(a) => vec![(id.to_string(), a.as_ref())],
        Step::Cascade(components) => components
            .iter()
            .map(|(kind, a)| (format!("{id}:{kind}"), a.as_ref()))
            .collect(),
        Step::Clean => Vec::new(),
    };
    attacks
        .into_iter()
        .filter_map(|(id, attack)| {
            let targets = attack.targets()?;
            (targets as usize + 1 > classes).then_some(Flag::TooFewClasses {
                attack: id,
                classes,
                targets,
            })
        })
        .collect()
}

/// Robust accuracy above 0 under PGD at ℓ∞ ε = 1 (20 steps of 0.1 from a
/// random start), on a batch of clean-correct samples.
pub fn unbounded_attack_fails(model: &mut dyn Model, batch: &Batch) -> Result<Option<Flag>> {
    if batch.is_empty() {
        return Ok(None);
    }
    let pgd = Pgd::new("pgd", Norm::Linf, 1.0, 20, 0.1, 1, true, Loss::Ce);
    let out = pgd.run(&mut Guarded::new(model, &pgd), batch)?;
    let logits = model.logits(&out.adversarial, batch.len())?;
    let robust = logits
        .argmax()
        .iter()
        .zip(batch.labels)
        .filter(|(p, y)| **p as i64 == **y)
        .count() as f64
        / batch.len() as f64;
    Ok((robust > 0.0).then_some(Flag::UnboundedAttackFails { robust }))
}

/// What kind of evidence a row is, for comparing black-box with white-box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Evidence {
    WhiteBox,
    BlackBox,
    /// Clean, worst case, cascades: not compared.
    Other,
}

/// The evidence of an attack step.
pub fn evidence(step: &Step) -> Evidence {
    match step {
        Step::Attack(a) if a.oracle() == Oracle::Scores => Evidence::BlackBox,
        Step::Attack(_) => Evidence::WhiteBox,
        Step::Transfer(_) => Evidence::BlackBox,
        Step::Clean | Step::Cascade(_) => Evidence::Other,
    }
}

/// A black-box row that beats every white-box row of the same norm and ε
/// by more than [`BLACK_BOX_MARGIN`]; and, inside a cascade, a Square
/// component that lowers robust accuracy by more than that after the
/// gradient components (AutoAttack's `check_square_sr`).
pub fn black_box_beats_white_box(rows: &[(Evidence, &ReportRow)]) -> Vec<Flag> {
    let mut flags = Vec::new();
    for &(kind, black) in rows {
        if kind != Evidence::BlackBox {
            continue;
        }
        let best_white = rows
            .iter()
            .filter(|(k, r)| *k == Evidence::WhiteBox && r.norm == black.norm && r.eps == black.eps)
            .map(|(_, r)| *r)
            .min_by(|a, b| a.robust_acc.total_cmp(&b.robust_acc));
        if let Some(white) = best_white {
            let by = white.robust_acc - black.robust_acc;
            if by > BLACK_BOX_MARGIN {
                flags.push(Flag::BlackBoxBeatsWhiteBox {
                    black: black.attack_id.clone(),
                    white: white.attack_id.clone(),
                    by,
                });
            }
        }
    }
    for (_, square) in rows
        .iter()
        .filter(|(_, r)| r.attack_id.ends_with(":square"))
    {
        let cascade = square.attack_id.trim_end_matches(":square");
        let before = rows
            .iter()
            .filter(|(_, r)| {
                r.attack_id.starts_with(&format!("{cascade}:")) && r.attack_id != square.attack_id
            })
            .map(|(_, r)| r.robust_acc)
            .fold(f64::INFINITY, f64::min);
        let by = before - square.robust_acc;
        if before.is_finite() && by > BLACK_BOX_MARGIN {
            flags.push(Flag::BlackBoxBeatsWhiteBox {
                black: square.attack_id.clone(),
                white: format!("{cascade}:fab-t"),
                by,
            });
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, norm: &str, eps: f32, acc: f64) -> ReportRow {
        ReportRow {
            model: "m".into(),
            model_sha256: String::new(),
            dataset: "d".into(),
            n: 100,
            attack_id: id.into(),
            attack: id.into(),
            norm: Some(norm.into()),
            eps: Some(eps),
            steps: None,
            step_size: None,
            restarts: None,
            loss: None,
            source: None,
            clean_acc: 0.9,
            robust_acc: acc,
            robust_acc_ci95: 0.0,
            attack_success_rate: None,
            mean_norm: None,
            max_norm: None,
            queries: None,
            seconds: 0.0,
            backend: "tract".into(),
            device: "cpu".into(),
            seed: 0,
        }
    }

    #[test]
    fn a_black_box_attack_beating_white_box_ones_of_its_budget_is_flagged() {
        let pgd = row("pgd", "linf", 0.1, 0.50);
        let apgd = row("apgd", "linf", 0.1, 0.45);
        let square = row("square", "linf", 0.1, 0.40);
        let square_l2 = row("square-l2", "l2", 0.5, 0.10);
        let rows = [
            (Evidence::WhiteBox, &pgd),
            (Evidence::WhiteBox, &apgd),
            (Evidence::BlackBox, &square),
            (Evidence::BlackBox, &square_l2),
        ];
        let flags = black_box_beats_white_box(&rows);
        assert_eq!(flags.len(), 1, "{flags:?}");
        match &flags[0] {
            Flag::BlackBoxBeatsWhiteBox { black, white, by } => {
                assert_eq!((black.as_str(), white.as_str()), ("square", "apgd"));
                assert!((by - 0.05).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
        // Within the margin: no flag.
        let close = row("square", "linf", 0.1, 0.449);
        assert!(black_box_beats_white_box(&[
            (Evidence::WhiteBox, &apgd),
            (Evidence::BlackBox, &close)
        ])
        .is_empty());
    }

    #[test]
    fn targeted_attacks_on_too_few_classes_are_flagged() {
        let suite = crate::attack::Suite::resolve("fashion-mnist-aa").unwrap();
        let cascade = &suite.attacks[0];
        let flags = too_few_classes(&cascade.id, &cascade.step, 5);
        let names: Vec<String> = flags
            .iter()
            .map(|f| match f {
                Flag::TooFewClasses {
                    attack, targets, ..
                } => format!("{attack}/{targets}"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["aa-linf-0.1:apgd-t/9", "aa-linf-0.1:fab-t/9"]);
        assert!(too_few_classes(&cascade.id, &cascade.step, 10).is_empty());
    }

    #[test]
    fn square_lowering_a_cascade_after_the_gradient_attacks_is_flagged() {
        let ids = ["aa:apgd-ce", "aa:apgd-t", "aa:fab-t", "aa:square"];
        let accs = [0.60, 0.55, 0.55, 0.50];
        let rows: Vec<ReportRow> = ids
            .iter()
            .zip(accs)
            .map(|(id, a)| row(id, "linf", 0.1, a))
            .collect();
        let tagged: Vec<(Evidence, &ReportRow)> =
            rows.iter().map(|r| (Evidence::Other, r)).collect();
        let flags = black_box_beats_white_box(&tagged);
        assert_eq!(flags.len(), 1);
        assert_eq!(flags[0].name(), "black_box_beats_white_box");
        let honest: Vec<ReportRow> = ids
            .iter()
            .zip([0.6, 0.55, 0.55, 0.549])
            .map(|(id, a)| row(id, "linf", 0.1, a))
            .collect();
        let tagged: Vec<(Evidence, &ReportRow)> =
            honest.iter().map(|r| (Evidence::Other, r)).collect();
        assert!(black_box_beats_white_box(&tagged).is_empty());
    }
}
