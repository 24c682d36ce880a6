//! `--junit FILE`: the audit's gates and gradient-masking flags as JUnit
//! XML, which GitLab, Jenkins and GitHub's test reporters show as test
//! cases: one per (gate, model), failed with the measured figure and the
//! threshold; one per model for the masking checks, and one per raised
//! flag, failed when `--fail-on-flags` makes flags fail the run.

use super::{FlagRow, GateRow};
use std::fmt::Write;

/// How a test case ended: failed (of a type, with a message), or passed
/// with a note.
enum Verdict {
    Failed(&'static str, String),
    Passed(String),
}

/// Appends one `<testcase>`; returns whether it failed.
fn case(cases: &mut String, class: &str, name: &str, verdict: Verdict) -> bool {
    let _ = write!(
        cases,
        "    <testcase classname=\"{class}\" name=\"{}\">",
        escape(name)
    );
    let failed = matches!(verdict, Verdict::Failed(..));
    match verdict {
        Verdict::Failed(kind, message) => {
            let message = escape(&message);
            let _ = write!(
                cases,
                "<failure type=\"{kind}\" message=\"{message}\">{message}</failure>"
            );
        }
        Verdict::Passed(note) => {
            let _ = write!(cases, "<system-out>{}</system-out>", escape(&note));
        }
    }
    cases.push_str("</testcase>\n");
    failed
}

/// The XML document; `models` are the audited models, in report order.
pub fn junit_xml(
    gates: &[GateRow],
    flags: &[FlagRow],
    models: &[String],
    fail_on_flags: bool,
) -> String {
    let mut cases = String::new();
    let mut failures = 0;
    for g in gates {
        let name = format!(
            "{}: robust accuracy under {} >= {}",
            g.model, g.attack_id, g.threshold
        );
        let verdict = if g.passed {
            Verdict::Passed(format!(
                "measured {:.4}, required {:.4}",
                g.measured, g.threshold
            ))
        } else {
            Verdict::Failed(
                "gate",
                format!(
                    "robust accuracy under `{}` is {:.4}, below the required {:.4} (set by {})",
                    g.attack_id, g.measured, g.threshold, g.origin
                ),
            )
        };
        failures += usize::from(case(&mut cases, "upat.gates", &name, verdict));
    }
    for model in models {
        let raised: Vec<&FlagRow> = flags.iter().filter(|f| &f.model == model).collect();
        let summary = if raised.is_empty() {
            "no flag raised".to_string()
        } else {
            format!("{} flag(s) raised; see flags.csv", raised.len())
        };
        let name = format!("{model}: gradient-masking checks");
        case(&mut cases, "upat.flags", &name, Verdict::Passed(summary));
        for f in raised {
            let message = format!("{} (measured {:.4}): {}", f.flag, f.measured, f.detail);
            let verdict = if fail_on_flags {
                Verdict::Failed("flag", message)
            } else {
                Verdict::Passed(format!(
                    "{message} (not failing: --fail-on-flags is not set)"
                ))
            };
            let name = format!("{model}: flag {}", f.flag);
            failures += usize::from(case(&mut cases, "upat.flags", &name, verdict));
        }
    }
    let tests = cases.matches("<testcase ").count();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuites name=\"upat-audit\" tests=\"{tests}\" failures=\"{failures}\">\n  \
         <testsuite name=\"upat-audit\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">\n\
         {cases}  </testsuite>\n</testsuites>\n"
    )
}

/// Text for XML attributes and content; characters XML 1.0 cannot hold
/// (control characters in a model path, say) become `?`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(model: &str, measured: f64, threshold: f64) -> GateRow {
        GateRow {
            model: model.into(),
            attack_id: "pgd".into(),
            threshold,
            measured,
            passed: measured >= threshold,
            origin: "--fail-under".into(),
        }
    }

    #[test]
    fn gates_and_flags_become_test_cases_with_their_figures() {
        let flags = [FlagRow {
            model: "b<&>.onnx".into(),
            flag: "zero_gradients".into(),
            measured: 0.5,
            detail: "half \"zero\"".into(),
        }];
        let models = ["a.onnx".to_string(), "b<&>.onnx".to_string()];
        let gates = [gate("a.onnx", 0.5, 0.4), gate("b<&>.onnx", 0.25, 0.4)];
        let xml = junit_xml(&gates, &flags, &models, false);
        // 2 gates, 2 models' checks, 1 flag; only the failed gate fails.
        assert!(xml.contains("tests=\"5\" failures=\"1\""), "{xml}");
        assert!(
            xml.contains("is 0.2500, below the required 0.4000 (set by --fail-under)"),
            "{xml}"
        );
        assert!(xml.contains("b&lt;&amp;&gt;.onnx"), "{xml}");
        assert!(!xml.contains("b<&>"), "{xml}");
        let failing = junit_xml(&gates, &flags, &models, true);
        assert!(failing.contains("tests=\"5\" failures=\"2\""), "{failing}");
        assert!(failing.contains("half &quot;zero&quot;"), "{failing}");
        assert_eq!(escape("a\u{1}b"), "a?b");
    }
}
