//! Suite files: TOML lists of attacks (format in `docs/suite-format.md`).
//!
//! Parsing walks the TOML table by hand rather than through serde so that
//! every error names the file, the attack id and the field at fault.

use super::registry::{self, FieldError};
use super::{Attack, Loss, Norm, Oracle, Settings};
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// The reserved `attack_id` of the per-model row that counts a sample as
/// robust only when it survives every attack of the audit (AutoAttack's
/// rule); no suite entry may take it.
pub const WORST_CASE_ID: &str = "worst_case";

/// The built-in suites: the files in `audits/`, embedded.
pub const BUILTIN_SUITES: &[(&str, &str)] = &[
    ("smoke", include_str!("../../audits/smoke.toml")),
    ("whitebox", include_str!("../../audits/whitebox.toml")),
    ("unseen", include_str!("../../audits/unseen.toml")),
    ("blackbox", include_str!("../../audits/blackbox.toml")),
    (
        "fashion-mnist",
        include_str!("../../audits/fashion-mnist.toml"),
    ),
    ("scorebased", include_str!("../../audits/scorebased.toml")),
    ("autoattack", include_str!("../../audits/autoattack.toml")),
    (
        "fashion-mnist-aa",
        include_str!("../../audits/fashion-mnist-aa.toml"),
    ),
];

/// The fields of a suite entry, type-checked; what each kind makes of them
/// is that kind's build function's business (`registry.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    /// Default `linf`.
    pub norm: Norm,
    /// Budget in `[0, 1]` pixel units, in `norm`.
    pub eps: Option<f32>,
    pub steps: Option<u32>,
    pub step_size: Option<f32>,
    /// Default 1, never 0.
    pub restarts: u32,
    pub random_start: Option<bool>,
    pub loss: Option<Loss>,
    /// Query budget of score-based attacks.
    pub queries: Option<u32>,
    /// How many target classes a targeted attack tries (the suite's
    /// `targets`; "targets" alone, in code, means target labels).
    pub target_classes: Option<u32>,
    /// The white-box kind a transfer step crafts with (default `pgd`).
    pub craft: Option<String>,
    /// The AutoAttack version of an `autoattack` step (`standard`).
    pub version: Option<String>,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            norm: Norm::Linf,
            eps: None,
            steps: None,
            step_size: None,
            restarts: 1,
            random_start: None,
            loss: None,
            queries: None,
            target_classes: None,
            craft: None,
            version: None,
        }
    }
}

impl Fields {
    /// The required budget of an attack of `kind`.
    pub fn eps(&self, kind: &str) -> Result<f32, FieldError> {
        self.eps
            .ok_or_else(|| FieldError::new("eps", format!("is required for kind `{kind}`")))
    }

    /// The loss of an attack of `kind` that chooses no target classes
    /// (default ce).
    pub fn untargeted_loss(&self, kind: &str) -> Result<Loss, FieldError> {
        match self.loss.unwrap_or(Loss::Ce) {
            l if l.is_targeted() => Err(FieldError::new(
                "loss",
                format!(
                    "{} needs target classes, which kind `{kind}` does not choose (targeted kinds such as apgd-t do); use ce, margin or dlr",
                    l.as_str()
                ),
            )),
            l => Ok(l),
        }
    }
}

/// What a suite entry does in the audit.
#[derive(Debug, Clone)]
pub enum Step {
    /// Accuracy on the unperturbed data.
    Clean,
    /// A registered attack on each audited model.
    Attack(Arc<dyn Attack>),
    /// Examples crafted by this white-box attack on each `--source` model,
    /// evaluated on each audited model.
    Transfer(Arc<dyn Attack>),
    /// Attacks run in turn, each on the samples still robust, each from the
    /// clean image (AutoAttack's cascade); `(kind, attack)` in order.
    Cascade(Components),
}

/// A cascade's attacks, `(kind, attack)` in the order they run.
pub type Components = Vec<(&'static str, Arc<dyn Attack>)>;

/// One entry of a suite, validated and built.
#[derive(Debug, Clone)]
pub struct AttackSpec {
    /// Unique within the suite; names the attack in reports and gates.
    pub id: String,
    /// The suite's `kind`: a registered attack, `clean` or `transfer`.
    pub kind: String,
    pub fields: Fields,
    /// Gate: the audit fails (exit 1) when robust accuracy is below this.
    pub min_robust_acc: Option<f32>,
    pub step: Step,
}

/// Two entries are the same attack when they built the same step: the
/// same kind with the same effective settings, whether a default was
/// written out (`random_start = true`) or left implicit. Attacks are
/// compared by their `Debug` form, which shows every setting they hold.
impl PartialEq for AttackSpec {
    fn eq(&self, other: &Self) -> bool {
        (&self.id, &self.kind, self.min_robust_acc)
            == (&other.id, &other.kind, other.min_robust_acc)
            && format!("{:?}", self.step) == format!("{:?}", other.step)
    }
}

impl AttackSpec {
    /// Resolves `kind` (a registered attack, `clean` or `transfer`) and builds
    /// its step from `fields`. `set` names the fields the suite gave, which
    /// must all be read by the kind. The error names the field at fault.
    pub fn build(
        id: &str,
        kind: &str,
        fields: Fields,
        set: &[&str],
    ) -> Result<AttackSpec, FieldError> {
        let unread = |reads: &[&str]| -> Result<(), FieldError> {
            match set.iter().find(|f| !reads.contains(f)) {
                None => Ok(()),
                Some(f) => Err(FieldError::new(
                    *f,
                    format!(
                        "kind `{kind}` does not use this field{}; remove it or choose another kind",
                        if reads.is_empty() {
                            String::new()
                        } else {
                            format!(" (it reads {})", reads.join(", "))
                        }
                    ),
                )),
            }
        };
        let step = match kind {
            "clean" => {
                unread(&[])?;
                Step::Clean
            }
            "transfer" => {
                let craft = fields.craft.as_deref().unwrap_or("pgd");
                let entry = registry::lookup(craft).ok_or_else(|| {
                    FieldError::new(
                        "craft",
                        format!(
                            "`{craft}` is not a registered attack kind; use one of {}",
                            registered()
                        ),
                    )
                })?;
                let mut reads = entry.fields.to_vec();
                reads.push("craft");
                unread(&reads)?;
                let attack = (entry.build)(&fields)?;
                if attack.oracle() == Oracle::Scores {
                    return Err(FieldError::new(
                        "craft",
                        format!("`{craft}` needs no gradients; transfer crafts with a white-box attack such as pgd"),
                    ));
                }
                Step::Transfer(attack)
            }
            "autoattack" => {
                unread(&["norm", "eps", "version"])?;
                Step::Cascade(autoattack_standard(&fields)?)
            }
            _ => {
                let entry = registry::lookup(kind).ok_or_else(|| {
                    FieldError::new(
                        "kind",
                        format!(
                            "attack kind `{kind}` is not available in this version of upat-audit; use one of {}",
                            registered()
                        ),
                    )
                })?;
                unread(entry.fields)?;
                Step::Attack((entry.build)(&fields)?)
            }
        };
        Ok(AttackSpec {
            id: id.to_string(),
            kind: kind.to_string(),
            fields,
            min_robust_acc: None,
            step,
        })
    }

    /// The settings of the attack (of the crafting attack, for transfer;
    /// the threat model alone, for a cascade); `None` for `clean`.
    pub fn settings(&self) -> Option<Settings> {
        match &self.step {
            Step::Clean => None,
            Step::Attack(a) | Step::Transfer(a) => Some(a.settings()),
            Step::Cascade(attacks) => attacks.first().map(|(_, a)| {
                let settings = a.settings();
                Settings::threat(settings.norm, settings.eps)
            }),
        }
    }

    /// The report ids of a cascade's component rows, `<id>:<kind>`.
    pub fn component_ids(&self) -> Vec<String> {
        match &self.step {
            Step::Cascade(attacks) => attacks
                .iter()
                .map(|(kind, _)| format!("{}:{kind}", self.id))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// AutoAttack's standard version (Croce & Hein 2020, `set_version('standard')`):
/// APGD-CE (100 iterations, 1 restart), APGD-T (9 targets), FAB-T (9
/// targets), Square (5000 queries), in that order, at the entry's norm and ε.
fn autoattack_standard(fields: &Fields) -> Result<Components, FieldError> {
    match fields.version.as_deref().unwrap_or("standard") {
        "standard" => {}
        other => {
            return Err(FieldError::new(
                "version",
                format!("`{other}` is not an AutoAttack version upat runs; use \"standard\""),
            ))
        }
    }
    if fields.norm == Norm::L1 {
        return Err(FieldError::new(
            "norm",
            "AutoAttack standard runs in linf or l2",
        ));
    }
    let base = Fields {
        norm: fields.norm,
        eps: Some(fields.eps("autoattack")?),
        ..Fields::default()
    };
    ["apgd-ce", "apgd-t", "fab-t", "square"]
        .into_iter()
        .map(|kind| {
            let entry = registry::lookup(kind).expect("AutoAttack's components are registered");
            Ok((entry.kind, (entry.build)(&base)?))
        })
        .collect()
}

fn registered() -> String {
    registry::kinds()
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A named list of attacks.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    pub name: String,
    pub description: String,
    /// `built-in NAME` or the file path, for messages.
    pub origin: String,
    pub attacks: Vec<AttackSpec>,
}

const ATTACK_FIELDS: &[&str] = &[
    "id",
    "kind",
    "norm",
    "eps",
    "steps",
    "step_size",
    "restarts",
    "random_start",
    "loss",
    "queries",
    "targets",
    "craft",
    "version",
    "min_robust_acc",
];

/// Resolves `--suite NAME|FILE.toml`.
pub fn builtin_suite(name: &str) -> Option<&'static str> {
    BUILTIN_SUITES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// Suites are a few kilobytes; a larger file is not one.
const MAX_SUITE_BYTES: u64 = 1 << 20;

impl Suite {
    /// A built-in name, or a path to a TOML file.
    pub fn resolve(name_or_path: &str) -> Result<Suite> {
        if let Some(text) = builtin_suite(name_or_path) {
            return Suite::parse(text, &format!("built-in {name_or_path}"));
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "toml") || path.exists() {
            let (file, len) = crate::limits::open_regular(path)?;
            if len > MAX_SUITE_BYTES {
                return Err(Error::data(
                    path,
                    format!(
                        "is {len} bytes; a suite file is text of at most {MAX_SUITE_BYTES} bytes"
                    ),
                ));
            }
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(file, MAX_SUITE_BYTES),
                &mut text,
            )
            .map_err(|e| Error::data(path, format!("is not a UTF-8 text file ({e})")))?;
            return Suite::parse(&text, &path.display().to_string());
        }
        let names: Vec<_> = BUILTIN_SUITES.iter().map(|(n, _)| *n).collect();
        Err(Error::Usage(format!(
            "--suite {name_or_path}: no built-in suite of that name and no such file; built-in suites are {}, or pass a path to a .toml file",
            names.join(", ")
        )))
    }

    /// Parses suite TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Suite> {
        let err = |attack: Option<&str>, field: Option<&str>, message: String| Error::Suite {
            file: origin.to_string(),
            attack: attack.map(str::to_string),
            field: field.map(str::to_string),
            message,
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err(None, None, format!("not valid TOML: {e}")))?;
        for key in table.keys() {
            if !["name", "description", "attack"].contains(&key.as_str()) {
                return Err(err(
                    None,
                    Some(key),
                    "unknown top-level field; expected name, description and [[attack]] tables"
                        .into(),
                ));
            }
        }
        let text_field = |key: &str| -> Result<String> {
            match table.get(key) {
                None => Ok(String::new()),
                Some(toml::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(err(None, Some(key), "must be a string".into())),
            }
        };
        let name = text_field("name")?;
        let description = text_field("description")?;
        let entries = match table.get("attack") {
            Some(toml::Value::Array(a)) if !a.is_empty() => a,
            _ => {
                return Err(err(
                    None,
                    Some("attack"),
                    "a suite needs at least one [[attack]] table".into(),
                ))
            }
        };
        let mut attacks: Vec<AttackSpec> = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let toml::Value::Table(entry) = entry else {
                return Err(err(
                    None,
                    Some("attack"),
                    format!("entry {} is not a table; use [[attack]]", index + 1),
                ));
            };
            let spec = parse_attack(entry, index, &err)?;
            if attacks.iter().any(|a| a.id == spec.id) {
                return Err(err(
                    Some(&spec.id),
                    Some("id"),
                    "is used by another attack of this suite; ids must be unique".into(),
                ));
            }
            attacks.push(spec);
        }
        Ok(Suite {
            name,
            description,
            origin: origin.to_string(),
            attacks,
        })
    }
}

type ErrFn<'a> = dyn Fn(Option<&str>, Option<&str>, String) -> Error + 'a;

fn parse_attack(entry: &toml::Table, index: usize, err: &ErrFn) -> Result<AttackSpec> {
    let id = match entry.get("id") {
        Some(toml::Value::String(s)) if !s.trim().is_empty() && !s.contains(['=', ',', '\n']) => {
            s.clone()
        }
        Some(_) => {
            return Err(err(
                None,
                Some("id"),
                format!(
                    "attack {} has an id that is not a non-empty string without `=` or `,`",
                    index + 1
                ),
            ))
        }
        None => {
            return Err(err(
                None,
                Some("id"),
                format!("attack {} has no id", index + 1),
            ))
        }
    };
    let fail = |field: &str, message: String| err(Some(&id), Some(field), message);
    // Report rows are named by id: `worst_case` is the row computed from all
    // the others, `clean` the clean-accuracy row that summary.csv and gates
    // read, and `<id>:<kind>` a cascade's component rows.
    let kind_field = entry.get("kind").and_then(toml::Value::as_str);
    if id == WORST_CASE_ID || (id == "clean" && kind_field != Some("clean")) {
        return Err(fail(
            "id",
            format!("`{id}` is reserved for the report's own `{id}` row; choose another id"),
        ));
    }
    if id.contains(':') {
        return Err(fail(
            "id",
            "contains `:`, which names a cascade's component rows (`aa:apgd-ce`); choose another id"
                .into(),
        ));
    }
    if let Some(key) = entry.keys().find(|k| !ATTACK_FIELDS.contains(&k.as_str())) {
        return Err(fail(
            key,
            format!(
                "unknown field; known fields are {}",
                ATTACK_FIELDS.join(", ")
            ),
        ));
    }
    let string = |field: &str| -> Result<Option<&str>> {
        match entry.get(field) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(fail(field, "must be a string".into())),
        }
    };
    let kind = string("kind")?.ok_or_else(|| fail("kind", "is missing".into()))?;
    let norm = match string("norm")? {
        None => Norm::Linf,
        Some(n) => Norm::parse(n)
            .ok_or_else(|| fail("norm", format!("`{n}` is not a norm; use linf, l2 or l1")))?,
    };
    let loss = match string("loss")? {
        None => None,
        Some(l) => Some(Loss::parse(l).ok_or_else(|| {
            fail(
                "loss",
                format!(
                    "`{l}` is not a loss; use {}",
                    Loss::ALL.map(Loss::as_str).join(", ")
                ),
            )
        })?),
    };
    let number = |field: &str| -> Result<Option<f32>> {
        match entry.get(field) {
            None => Ok(None),
            Some(v) => parse_number(v).map(Some).map_err(|m| fail(field, m)),
        }
    };
    let count = |field: &str| -> Result<Option<u32>> {
        match entry.get(field) {
            None => Ok(None),
            Some(v) => parse_count(v).map(Some).map_err(|m| fail(field, m)),
        }
    };
    let random_start = match entry.get("random_start") {
        None => None,
        Some(toml::Value::Boolean(b)) => Some(*b),
        Some(_) => return Err(fail("random_start", "must be true or false".into())),
    };
    let eps = number("eps")?;
    if let Some(eps) = eps {
        if eps < 0.0 {
            return Err(fail("eps", format!("{eps} is negative")));
        }
        if norm == Norm::Linf && eps > 1.0 {
            return Err(fail(
                "eps",
                format!("{eps} exceeds 1: budgets are in [0,1] pixel units (write 8/255, not 8)"),
            ));
        }
    }
    let restarts = count("restarts")?.unwrap_or(1);
    if restarts == 0 {
        return Err(fail("restarts", "must be at least 1".into()));
    }
    let min_robust_acc = number("min_robust_acc")?;
    if let Some(acc) = min_robust_acc {
        if !(0.0..=1.0).contains(&acc) {
            return Err(fail(
                "min_robust_acc",
                format!("{acc} is not a fraction in [0, 1]"),
            ));
        }
    }
    let fields = Fields {
        norm,
        eps,
        steps: count("steps")?,
        step_size: number("step_size")?,
        restarts,
        random_start,
        loss,
        queries: count("queries")?,
        target_classes: count("targets")?,
        craft: string("craft")?.map(str::to_string),
        version: string("version")?.map(str::to_string),
    };
    let set: Vec<&str> = entry
        .keys()
        .map(String::as_str)
        .filter(|k| !["id", "kind", "min_robust_acc"].contains(k))
        .collect();
    let mut spec =
        AttackSpec::build(&id, kind, fields, &set).map_err(|e| fail(&e.field, e.message))?;
    spec.min_robust_acc = min_robust_acc;
    Ok(spec)
}

/// A number, or a string fraction such as `"8/255"`, finite as an `f32`.
pub fn parse_number(value: &toml::Value) -> std::result::Result<f32, String> {
    let parsed = match value {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        toml::Value::String(s) => parse_fraction(s),
        _ => None,
    };
    match parsed {
        Some(v) if v.is_finite() && (v as f32).is_finite() => Ok(v as f32),
        Some(v) if v.is_nan() => Err(format!("`{value}` is not a number (NaN)")),
        Some(_) => Err(format!(
            "`{value}` is out of range: numbers here are 32-bit floats, at most {:e} in size",
            f32::MAX
        )),
        None => Err(format!(
            "`{value}` is not a number; write 0.03, 8, or a fraction like \"8/255\""
        )),
    }
}

/// A count (steps, restarts, queries, targets): a whole number from 0 to
/// `u32::MAX`.
pub fn parse_count(value: &toml::Value) -> std::result::Result<u32, String> {
    let limit = u32::MAX;
    match value {
        toml::Value::Integer(i) if (0..=i64::from(limit)).contains(i) => Ok(*i as u32),
        toml::Value::Integer(i) if *i < 0 => Err(format!("{i} is negative; a count is 0 or more")),
        toml::Value::Integer(i) => Err(format!("{i} is more than the largest count, {limit}")),
        toml::Value::Float(f) => Err(format!(
            "{f} is not a whole number; write a count from 0 to {limit} without a decimal point or exponent"
        )),
        other => Err(format!("`{other}` is not a count; write a whole number from 0 to {limit}")),
    }
}

fn parse_fraction(s: &str) -> Option<f64> {
    match s.split_once('/') {
        Some((num, den)) => {
            let (num, den) = (
                num.trim().parse::<f64>().ok()?,
                den.trim().parse::<f64>().ok()?,
            );
            (den != 0.0).then(|| num / den)
        }
        None => s.trim().parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_suite_parses_with_unique_ids() {
        for (name, text) in BUILTIN_SUITES {
            let suite = Suite::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&suite.name, name);
            assert!(!suite.attacks.is_empty());
        }
    }

    #[test]
    fn builtin_ids_follow_the_contract() {
        let ids = |name: &str| -> Vec<String> {
            Suite::resolve(name)
                .unwrap()
                .attacks
                .into_iter()
                .map(|a| a.id)
                .collect()
        };
        assert_eq!(
            ids("whitebox"),
            [
                "clean",
                "fgsm-linf-8",
                "pgd20-linf-8",
                "pgd20-linf-16",
                "pgd100-linf-8",
                "cw20-linf-8"
            ]
        );
        assert_eq!(
            ids("unseen"),
            [
                "pgd20-linf-8",
                "pgd-l2-0.5",
                "pgd-l2-1.0",
                "pgd-l1-12",
                "pgd-l1-24"
            ]
        );
        assert_eq!(
            ids("blackbox"),
            ["transfer-pgd20-linf-8", "transfer-pgd20-linf-16"]
        );
        assert_eq!(ids("scorebased"), ["square-linf-8", "square-l2-0.5"]);
        assert_eq!(ids("autoattack"), ["aa-linf-8"]);
        assert_eq!(ids("fashion-mnist-aa"), ["aa-linf-0.1", "aa-l2-1.5"]);
        let aa = &Suite::resolve("autoattack").unwrap().attacks[0];
        assert_eq!(
            aa.component_ids(),
            [
                "aa-linf-8:apgd-ce",
                "aa-linf-8:apgd-t",
                "aa-linf-8:fab-t",
                "aa-linf-8:square"
            ]
        );
        let pgd = Suite::resolve("whitebox").unwrap().attacks[2]
            .settings()
            .unwrap();
        assert_eq!(
            (pgd.eps, pgd.step_size, pgd.steps),
            (8.0 / 255.0, Some(2.0 / 256.0), Some(20))
        );
        assert_eq!(
            Suite::resolve("whitebox").unwrap().attacks[5]
                .settings()
                .unwrap()
                .loss,
            Some(Loss::Margin)
        );
    }

    #[test]
    fn fractions_and_numbers() {
        assert_eq!(
            parse_number(&toml::Value::String("8/255".into())).unwrap(),
            8.0 / 255.0
        );
        assert_eq!(parse_number(&toml::Value::Integer(3)).unwrap(), 3.0);
        assert_eq!(parse_number(&toml::Value::Float(0.5)).unwrap(), 0.5);
        assert!(parse_number(&toml::Value::String("8/0".into())).is_err());
        assert!(parse_number(&toml::Value::String("eight".into())).is_err());
        assert!(parse_number(&toml::Value::Boolean(true)).is_err());
    }

    fn error_of(text: &str) -> String {
        Suite::parse(text, "my.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_attack_and_field() {
        let msg = error_of(
            "name='s'\n[[attack]]\nid='a1'\nkind='pgd'\neps='8/25x'\nsteps=10\nstep_size=0.01\n",
        );
        assert!(
            msg.contains("my.toml") && msg.contains("`a1`") && msg.contains("`eps`"),
            "{msg}"
        );
        let msg = error_of("[[attack]]\nid='a1'\nkind='pgd'\neps=8\nsteps=10\nstep_size=0.01\n");
        assert!(msg.contains("exceeds 1"), "{msg}");
        let msg = error_of("[[attack]]\nid='a1'\nkind='pgd'\neps=0.03\nstep_size=0.01\n");
        assert!(msg.contains("`steps`"), "{msg}");
        let msg = error_of("[[attack]]\nid='a1'\nkind='clean'\nepsilon=0.03\n");
        assert!(
            msg.contains("`epsilon`") && msg.contains("unknown field"),
            "{msg}"
        );
        let msg = error_of("[[attack]]\nid='a'\nkind='clean'\n[[attack]]\nid='a'\nkind='clean'\n");
        assert!(msg.contains("unique"), "{msg}");
        let msg = error_of("[[attack]]\nid='t'\nkind='pgd'\neps=0.1\nsteps=2\nstep_size=0.1\nloss='dlr-targeted'\n");
        assert!(msg.contains("apgd-t") && msg.contains("`loss`"), "{msg}");
        let msg = error_of("[[attack]]\nid='a'\nkind='deepfool'\n");
        assert!(msg.contains("deepfool") && msg.contains("`kind`"), "{msg}");
        let msg = error_of(
            "[[attack]]\nid='a'\nkind='pgd'\neps=0.1\nsteps=2\nstep_size=0.1\nqueries=10\n",
        );
        assert!(msg.contains("`queries`") && msg.contains("pgd"), "{msg}");
        let msg = error_of("[[attack]]\nid='a'\nkind='fgsm'\neps=0.1\nstep_size=0.01\n");
        assert!(msg.contains("`step_size`"), "{msg}");
        let msg = error_of("[[attack]]\nid='a'\nkind='transfer'\ncraft='noise'\neps=0.1\n");
        assert!(
            msg.contains("`craft`") && msg.contains("white-box"),
            "{msg}"
        );
        let msg = error_of("[[attack]]\nid='a'\nkind='pgd'\neps=1e39\nsteps=2\nstep_size=0.1\n");
        assert!(
            msg.contains("`eps`") && msg.contains("out of range"),
            "{msg}"
        );
        let msg = error_of("[[attack]]\nid='a'\nkind='pgd'\neps=0.1\nsteps=1e12\nstep_size=0.1\n");
        assert!(
            msg.contains("`steps`")
                && msg.contains("not a whole number")
                && msg.contains("4294967295"),
            "{msg}"
        );
        let msg = error_of(
            "[[attack]]\nid='a'\nkind='pgd'\neps=0.1\nsteps=1000000000000\nstep_size=0.1\n",
        );
        assert!(msg.contains("largest count, 4294967295"), "{msg}");
        let msg = error_of("[[attack]]\nid='a'\nkind='pgd'\neps=0.1\nsteps=-3\nstep_size=0.1\n");
        assert!(msg.contains("negative"), "{msg}");
        let msg = error_of("[[attack]]\nid='clean'\nkind='fgsm'\neps=0.1\n");
        assert!(msg.contains("reserved"), "{msg}");
        let msg = error_of("[[attack]]\nid='worst_case'\nkind='clean'\n");
        assert!(msg.contains("reserved"), "{msg}");
        let msg = error_of("[[attack]]\nid='aa:square'\nkind='fgsm'\neps=0.1\n");
        assert!(msg.contains("`:`"), "{msg}");
        assert!(error_of("name = \n").contains("not valid TOML"));
        assert!(error_of("name='x'\n").contains("at least one"));
        let msg = error_of("[[attack]]\nid='a'\nkind='clean'\nmin_robust_acc=40\n");
        assert!(msg.contains("min_robust_acc"), "{msg}");
    }

    #[test]
    fn unknown_kinds_are_refused_with_the_registered_ones() {
        let msg = error_of("[[attack]]\nid = 'sq'\nkind = 'deepfool'\neps = 0.03\n");
        assert!(
            msg.contains("not available") && msg.contains("`sq`"),
            "{msg}"
        );
        for (kind, _) in registry::kinds() {
            assert!(msg.contains(kind), "{kind} missing from: {msg}");
        }
    }

    #[test]
    fn transfer_crafts_with_the_kind_it_names() {
        let suite = Suite::parse(
            "[[attack]]\nid='t'\nkind='transfer'\ncraft='fgsm'\neps=0.1\n[[attack]]\nid='u'\nkind='transfer'\neps=0.1\nsteps=3\nstep_size=0.01\n",
            "t.toml",
        )
        .unwrap();
        let crafts: Vec<_> = suite
            .attacks
            .iter()
            .map(|a| match &a.step {
                Step::Transfer(craft) => craft.kind(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(crafts, ["fgsm", "pgd"]);
    }

    #[test]
    fn unknown_builtin_name_lists_the_builtins() {
        let msg = Suite::resolve("whitebxo").unwrap_err().to_string();
        assert!(msg.contains("smoke") && msg.contains("unseen"), "{msg}");
    }
}
