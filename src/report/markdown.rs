//! `report.md`: the audit for a human reader.

use super::{models_and_ids, summary_cell, FlagRow, GateRow, ReportRow, WORST_CASE_ID};
use std::fmt::Write;

fn settings(r: &ReportRow) -> String {
    match (&r.norm, r.eps) {
        (Some(norm), Some(eps)) => {
            let mut s = format!("{norm} ε={eps:.4}");
            if let Some(steps) = r.steps {
                let _ = write!(s, ", {steps} step(s)");
            }
            if let Some(alpha) = r.step_size {
                let _ = write!(s, " of {alpha:.4}");
            }
            if let Some(restarts) = r.restarts.filter(|&k| k > 1) {
                let _ = write!(s, ", {restarts} restarts");
            }
            if let Some(loss) = &r.loss {
                let _ = write!(s, ", {loss} loss");
            }
            s
        }
        _ => String::new(),
    }
}

/// A Markdown report: robust accuracy per model and attack, the attacks'
/// settings, and the warnings the audit raised.
pub fn report_md(
    rows: &[ReportRow],
    flags: &[FlagRow],
    gates: &[GateRow],
    warnings: &[String],
) -> String {
    let (models, ids) = models_and_ids(rows);
    let mut md = String::from("# Robustness audit\n\n");
    if let Some(first) = rows.first() {
        let _ = writeln!(
            md,
            "Dataset `{}`, {} samples, backend {} on {}, seed {}.\n",
            first.dataset, first.n, first.backend, first.device, first.seed
        );
    }
    md.push_str("Robust accuracy (± half-width of the 95% Wilson interval). `worst_case` counts a sample as robust only if it survives every attack.\n\n");
    let _ = writeln!(md, "| model | {} |", ids.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(ids.len()));
    for (model, _, _) in &models {
        let cells: Vec<String> = ids
            .iter()
            .map(|id| {
                summary_cell(rows, model, id).map_or(String::new(), |r| {
                    format!("{:.3} ± {:.3}", r.robust_acc, r.robust_acc_ci95)
                })
            })
            .collect();
        let _ = writeln!(md, "| `{model}` | {} |", cells.join(" | "));
    }
    md.push_str("\n## Attacks\n\n| attack | kind | settings | source |\n|---|---|---|---|\n");
    let mut seen = Vec::new();
    for r in rows.iter().filter(|r| r.attack_id != WORST_CASE_ID) {
        let key = (r.attack_id.clone(), r.source.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} |",
            r.attack_id,
            r.attack,
            settings(r),
            r.source.as_deref().unwrap_or("")
        );
    }
    md.push_str("\n## Gradient-masking flags\n\n");
    if flags.is_empty() {
        md.push_str("None raised (checks: repeated passes, probability outputs, zero gradients, target classes, black-box against white-box, an unbounded attack).\n");
    } else {
        md.push_str("A flag means the figures above may overstate robustness; it does not change them.\n\n| model | flag | measured | detail |\n|---|---|---:|---|\n");
        for f in flags {
            let _ = writeln!(
                md,
                "| `{}` | {} | {:.4} | {} |",
                f.model, f.flag, f.measured, f.detail
            );
        }
    }
    if !gates.is_empty() {
        md.push_str("\n## Gates\n\n| model | attack | required | measured | verdict | set by |\n|---|---|---:|---:|---|---|\n");
        for g in gates {
            let _ = writeln!(
                md,
                "| `{}` | `{}` | {:.4} | {:.4} | {} | {} |",
                g.model,
                g.attack_id,
                g.threshold,
                g.measured,
                if g.passed { "pass" } else { "**fail**" },
                g.origin
            );
        }
    }
    if !warnings.is_empty() {
        md.push_str("\n## Warnings\n\n");
        for w in warnings {
            let _ = writeln!(md, "- {w}");
        }
    }
    md
}
