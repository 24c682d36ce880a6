//! The one list of attack kinds. A suite's `kind` is looked up here; `--help`
//! and the kinds table of `docs/suite-format.md` come from here (a test
//! checks the docs against it). Each entry's build function owns that kind's
//! suite-field rules. Adding an attack: its file (which defines its `ENTRY`)
//! and one line in [`ATTACKS`].

use super::{Attack, Fields};
use std::sync::Arc;

/// Builds an attack from its suite fields, or says which field is wrong.
pub type Build = fn(&Fields) -> Result<Arc<dyn Attack>, FieldError>;

/// A registered attack kind.
pub struct Entry {
    /// The suite's `kind` string.
    pub kind: &'static str,
    pub build: Build,
    /// The suite fields this kind reads (beyond `id`, `kind`, `min_robust_acc`);
    /// a suite setting any other is refused rather than silently ignored.
    pub fields: &'static [&'static str],
    /// One line for `--help` and the docs.
    pub about: &'static str,
}

/// Every registered attack: each file's `ENTRY`, one line each.
#[rustfmt::skip]
pub const ATTACKS: &[Entry] = &[
    super::fgsm::ENTRY,
    super::pgd::ENTRY,
    super::noise::ENTRY,
    super::apgd::ENTRY,
    super::apgd_t::ENTRY,
    super::fab::ENTRY,
    super::square::ENTRY,
];

/// Suite kinds that are steps of the audit rather than attacks.
pub const AUDIT_STEPS: &[(&str, &str)] = &[
    ("clean", "accuracy on the unperturbed data"),
    (
        "transfer",
        "examples crafted white-box on each --source model by the attack `craft` names (default pgd, with this entry's fields), evaluated on the audited models",
    ),
    (
        "autoattack",
        "AutoAttack standard: apgd-ce, apgd-t, fab-t and square in turn, each on the samples still robust (Croce & Hein 2020)",
    ),
];

/// The registered attack of `kind`.
pub fn lookup(kind: &str) -> Option<&'static Entry> {
    ATTACKS.iter().find(|e| e.kind == kind)
}

/// Every kind a suite may name, with its one-line description, in the order
/// `--help` and the docs list them.
pub fn kinds() -> Vec<(&'static str, &'static str)> {
    std::iter::once(AUDIT_STEPS[0])
        .chain(ATTACKS.iter().map(|e| (e.kind, e.about)))
        .chain(AUDIT_STEPS[1..].iter().copied())
        .collect()
}

/// A suite field an attack's build function refused, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the kinds table in docs/suite-format.md: kind, the
    /// backticked names of its fields column, and its description.
    fn documented_kinds() -> Vec<(String, Vec<String>, String)> {
        let doc = include_str!("../../docs/suite-format.md");
        let start = doc.find("<!-- kinds:").expect("kinds table start marker");
        let end = doc
            .find("<!-- end kinds -->")
            .expect("kinds table end marker");
        doc[start..end]
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                let ticked = |cell: &str| -> Vec<String> {
                    cell.split('`')
                        .skip(1)
                        .step_by(2)
                        .map(str::to_string)
                        .collect()
                };
                (
                    cells[0].trim_matches('`').to_string(),
                    ticked(cells[1]),
                    cells[2].to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn the_docs_kinds_table_is_the_registry() {
        let documented = documented_kinds();
        let kinds: Vec<_> = kinds()
            .iter()
            .map(|(k, a)| (k.to_string(), a.to_string()))
            .collect();
        let listed: Vec<_> = documented
            .iter()
            .map(|(k, _, a)| (k.clone(), a.clone()))
            .collect();
        assert_eq!(
            listed, kinds,
            "docs/suite-format.md's kinds table differs from the registry"
        );
        for entry in ATTACKS {
            let (_, fields, _) = documented.iter().find(|(k, _, _)| k == entry.kind).unwrap();
            assert_eq!(
                fields, entry.fields,
                "fields of `{}` in docs/suite-format.md",
                entry.kind
            );
        }
    }

    #[test]
    fn kinds_are_unique() {
        let all = kinds();
        for (i, (kind, _)) in all.iter().enumerate() {
            assert!(!all[i + 1..].iter().any(|(k, _)| k == kind), "{kind} twice");
        }
    }
}
