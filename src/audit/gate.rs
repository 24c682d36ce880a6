//! Robust-accuracy gates: `--fail-under ATTACK_ID=ACC` and the suites'
//! `min_robust_acc`, checked against the report rows.

use crate::error::{Error, Result};
use crate::report::{GateRow, ReportRow};

/// A robust-accuracy threshold that fails the audit (exit 1) when not met.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// Every (gate, row) pair where the row's robust accuracy is below the gate's.
pub fn evaluate_gates(gates: &[Gate], rows: &[ReportRow]) -> Vec<GateFailure> {
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

/// Every (gate, model) pair's verdict: the measured figure against the
/// threshold, for report.md, audit.json and `--junit`.
pub fn judge_gates(gates: &[Gate], rows: &[ReportRow]) -> Vec<GateRow> {
    let mut verdicts = Vec::new();
    for gate in gates {
        for row in rows.iter().filter(|r| r.attack_id == gate.attack_id) {
            verdicts.push(GateRow {
                model: row.model.clone(),
                attack_id: gate.attack_id.clone(),
                threshold: gate.min_robust_acc,
                measured: row.robust_acc,
                passed: row.robust_acc >= gate.min_robust_acc,
                origin: gate.origin.clone(),
            });
        }
    }
    verdicts
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
}
