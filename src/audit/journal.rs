//! The audit's journal, kept in its report directory so that a killed audit
//! can be resumed (`--resume`) instead of started over:
//!
//! - `audit.json`: the audit's [`Fingerprint`] (what makes two runs'
//!   outcomes combinable) and whether the audit finished (`complete`);
//! - `journal/<key>.json`: one entry per finished report row (model ×
//!   attack id × source), its [`RowMeta`] and its per-sample outcomes,
//!   written atomically as soon as the row's step finishes.
//!
//! A resumed audit replays the entries it finds instead of running their
//! steps again; everything else (the clean pass, the gradient-masking
//! checks) is recomputed, which is cheap and deterministic.

use super::shard::Shard;
use crate::atomic::write_atomic;
use crate::audit::{AuditPlan, Gate, RowMeta, SampleOutcome};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::onnx::hex;
use crate::report::{FlagRow, GateRow};
use crate::runtime::RuntimeOptions;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The file that says what an audit is and whether it finished.
pub const AUDIT_FILE: &str = "audit.json";
/// The folder of finished rows.
pub const ENTRIES_DIR: &str = "journal";
/// Bumped when the journal's layout changes; an older journal is refused.
/// 2: the fingerprint records how the models are read (`preparation`).
/// 3: the fingerprint's `runtime` is fields (`backend`, `device`), not text.
const FORMAT: u32 = 3;
/// No journal file of a sane audit comes near this; a larger one is refused
/// before it is read (a report directory is input too).
const MAX_FILE_BYTES: u64 = 4 << 30;

/// What makes the outcomes of two runs combinable: the same program, the
/// same attacks, seed and data, the same model files and backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub format: u32,
    pub upat_version: String,
    /// SHA-256 of every attack's id, kind and resolved settings, in order.
    pub attacks_sha256: String,
    pub seed: u64,
    /// The dataset's name (`fashion-mnist`, `npz:FILE`, ...).
    pub data: String,
    pub samples: usize,
    /// SHA-256 of the audited samples' ids, labels and pixels.
    pub data_sha256: String,
    pub models: Vec<FileHash>,
    pub sources: Vec<FileHash>,
    /// The backend and device asked for.
    pub runtime: RuntimeKey,
    /// How the models are read: `--normalize`, `--layout`, `--input`,
    /// `--output` (they change every figure).
    #[serde(default)]
    pub preparation: String,
    /// The shard this run audits (`--shard`); `data`, `samples` and
    /// `data_sha256` describe the whole, unsharded data.
    pub shard: Option<Shard>,
}

/// The runtime choices that can change outcomes: the backend and device
/// asked for (`auto` stays `auto`). `--threads` is left out: shards of one
/// audit may run with different thread counts, and their results do not
/// depend on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeKey {
    pub backend: String,
    pub device: String,
}

impl From<RuntimeOptions> for RuntimeKey {
    fn from(runtime: RuntimeOptions) -> Self {
        RuntimeKey {
            backend: runtime.backend.as_str().to_string(),
            device: runtime.device.as_str().to_string(),
        }
    }
}

/// A model file as given on the command line and the hash of its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHash {
    pub path: String,
    pub sha256: String,
}

impl Fingerprint {
    /// The fingerprint of running `plan` on `data` (the whole data, before
    /// any sharding), as shard `shard` (reads every model file).
    pub fn of(plan: &AuditPlan, data: &Dataset, shard: Option<Shard>) -> Result<Self> {
        let mut attacks = Sha256::new();
        for spec in plan.attacks() {
            attacks.update(format!("{}\n{}\n{:?}\n", spec.id, spec.kind, spec.step));
        }
        let mut samples = Sha256::new();
        data.hash_into(&mut samples)?;
        let hash_files = |paths: &[PathBuf]| -> Result<Vec<FileHash>> {
            paths
                .iter()
                .map(|p| {
                    Ok(FileHash {
                        path: p.display().to_string(),
                        sha256: crate::onnx::OnnxModel::sha256_of(p)?,
                    })
                })
                .collect()
        };
        Ok(Fingerprint {
            format: FORMAT,
            upat_version: env!("CARGO_PKG_VERSION").to_string(),
            attacks_sha256: hex(&attacks.finalize()),
            seed: plan.seed(),
            data: data.name.clone(),
            samples: data.len(),
            data_sha256: hex(&samples.finalize()),
            models: hash_files(plan.models())?,
            sources: hash_files(plan.sources())?,
            runtime: plan.runtime().into(),
            preparation: plan.preparation(),
            shard,
        })
    }

    /// The names of the fields in which `self` and `other` differ.
    fn differences(&self, other: &Fingerprint) -> Vec<&'static str> {
        let mut fields = Vec::new();
        let mut check = |differs: bool, name| {
            if differs {
                fields.push(name)
            }
        };
        check(self.format != other.format, "journal format");
        check(self.upat_version != other.upat_version, "upat version");
        check(
            self.attacks_sha256 != other.attacks_sha256,
            "attacks (suites)",
        );
        check(self.seed != other.seed, "--seed");
        check(
            self.data != other.data
                || self.samples != other.samples
                || self.data_sha256 != other.data_sha256,
            "data (--data, --samples)",
        );
        check(self.models != other.models, "models (paths or contents)");
        check(self.sources != other.sources, "--source models");
        check(self.runtime != other.runtime, "--backend/--device");
        check(
            self.preparation != other.preparation,
            "--normalize/--layout/--input/--output",
        );
        check(self.shard != other.shard, "--shard");
        fields
    }

    /// Whether two shards' outcomes combine: everything equal but the
    /// shard's index. The names of the fields that differ.
    pub fn combinable_with(&self, other: &Fingerprint) -> Vec<&'static str> {
        let mut theirs = other.clone();
        if let (Some(ours), Some(t)) = (self.shard, theirs.shard.as_mut()) {
            t.index = ours.index;
        }
        self.differences(&theirs)
    }
}

/// What a finished audit records in `audit.json` besides its rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Found<'a> {
    pub flags: &'a [FlagRow],
    pub verdicts: &'a [GateRow],
    pub warnings: &'a [String],
    pub skipped: &'a [u64],
}

/// `audit.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditFile {
    pub fingerprint: Fingerprint,
    /// Every report was written: the directory holds a finished audit.
    pub complete: bool,
    /// The audit's gates (suites' and `--fail-under`), for `merge`.
    #[serde(default)]
    pub gates: Vec<Gate>,
    /// Each gate's verdict on each model (threshold, measured, passed),
    /// once complete.
    #[serde(default)]
    pub verdicts: Vec<GateRow>,
    /// The gradient-masking flags raised, once complete.
    #[serde(default)]
    pub flags: Vec<FlagRow>,
    /// The warnings report.md lists (skipped images, say), once complete,
    /// for `merge` to carry over.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Samples of the data this audit could not use (bad images skipped).
    #[serde(default)]
    pub skipped: Vec<u64>,
}

/// One finished report row: the row's description and its outcomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The row's position among the audit's rows (report order).
    #[serde(default)]
    pub order: usize,
    pub meta: RowMeta,
    pub outcomes: Vec<SampleOutcome>,
}

/// What names a row: model (as given), attack id, transfer source.
type Key = (String, String, Option<String>);

/// The journal of one audit in its report directory.
#[derive(Debug)]
pub struct Journal {
    out: PathBuf,
    fingerprint: Fingerprint,
    gates: Vec<Gate>,
    /// Rows finished by an earlier run, not yet replayed.
    finished: HashMap<Key, Entry>,
}

impl Journal {
    /// Starts the journal in `out` (created if missing). With `resume`, the
    /// finished rows of the earlier run are kept for replay, provided that
    /// run's fingerprint is this one's; without, an earlier journal there is
    /// cleared. Fails before any attack runs when `out` cannot be written.
    pub fn start(
        out: &Path,
        fingerprint: Fingerprint,
        gates: Vec<Gate>,
        resume: bool,
    ) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let entries = out.join(ENTRIES_DIR);
        refuse_symlink(&entries)?;
        let finished = if resume {
            let earlier = read_audit_file(out)?;
            let differences = fingerprint.differences(&earlier.fingerprint);
            if !differences.is_empty() {
                return Err(Error::Usage(format!(
                    "--resume: the audit in {} differs from this one in its {}; \
                     run it again with the same arguments, or without --resume to start over",
                    out.display(),
                    differences.join(", ")
                )));
            }
            read_entries(&entries)?
        } else {
            clear_entries(&entries)?;
            HashMap::new()
        };
        std::fs::create_dir_all(&entries).map_err(|e| Error::io(&entries, e))?;
        let journal = Journal {
            out: out.to_path_buf(),
            fingerprint,
            gates,
            finished,
        };
        journal.write_audit_file(false, Found::default())?;
        Ok(journal)
    }

    /// Rows an earlier run finished that have not been replayed yet.
    pub fn pending(&self) -> usize {
        self.finished.len()
    }

    /// Whether an earlier run finished this row.
    pub fn has(&self, model: &str, attack_id: &str, source: Option<&str>) -> bool {
        self.finished.contains_key(&key(model, attack_id, source))
    }

    /// Takes the row an earlier run finished, if any.
    pub fn take(&mut self, model: &str, attack_id: &str, source: Option<&str>) -> Option<Entry> {
        self.finished.remove(&key(model, attack_id, source))
    }

    /// Records a finished row, the `order`-th of the audit.
    pub fn record(&self, order: usize, meta: &RowMeta, outcomes: &[SampleOutcome]) -> Result<()> {
        let entry = Entry {
            order,
            meta: meta.clone(),
            outcomes: outcomes.to_vec(),
        };
        let bytes = serde_json::to_vec(&entry)
            .map_err(|e| Error::Internal(format!("cannot serialise a journal entry: {e}")))?;
        let name = entry_name(&meta.model, &meta.attack_id, meta.source.as_deref());
        write_atomic(&self.out.join(ENTRIES_DIR).join(name), &bytes)
    }

    /// Marks the audit finished: every report has been written; `found`
    /// is what it recorded besides its rows.
    pub fn finish(&self, found: Found) -> Result<()> {
        self.write_audit_file(true, found)
    }

    fn write_audit_file(&self, complete: bool, found: Found) -> Result<()> {
        let file = AuditFile {
            fingerprint: self.fingerprint.clone(),
            complete,
            gates: self.gates.clone(),
            verdicts: found.verdicts.to_vec(),
            flags: found.flags.to_vec(),
            warnings: found.warnings.to_vec(),
            skipped: found.skipped.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Internal(format!("cannot serialise audit.json: {e}")))?;
        write_atomic(&self.out.join(AUDIT_FILE), &bytes)
    }
}

fn key(model: &str, attack_id: &str, source: Option<&str>) -> Key {
    (
        model.to_string(),
        attack_id.to_string(),
        source.map(str::to_string),
    )
}

/// A file name for a row: a hash of its key, so that any attack id or
/// model path makes a safe name.
fn entry_name(model: &str, attack_id: &str, source: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(model);
    h.update([0]);
    h.update(attack_id);
    h.update([0]);
    if let Some(source) = source {
        h.update([1]);
        h.update(source);
    }
    format!("{}.json", &hex(&h.finalize())[..32])
}

/// A journal path planted as a symlink would make the audit read or write
/// wherever it points.
fn refuse_symlink(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::Usage(format!(
            "{} is a symbolic link; upat-audit writes its journal there and does not follow links: remove it",
            path.display()
        ))),
        Ok(m) if !m.is_dir() => Err(Error::Usage(format!(
            "{} is not a directory; upat-audit keeps its journal there: remove it",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Reads a journal file no larger than [`MAX_FILE_BYTES`], refusing links.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::data(
            path,
            "is not a regular file (a link?); remove it, or run without --resume",
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::data(
            path,
            format!(
                "is {} bytes, more than any journal file of upat-audit ({MAX_FILE_BYTES}); remove it, or run without --resume",
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// A finished audit directory as `merge` reads it: its `audit.json` and
/// every journaled row.
pub fn read_finished(dir: &Path) -> Result<(AuditFile, Vec<Entry>)> {
    let path = dir.join(AUDIT_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Err(Error::Usage(format!(
            "{} holds no audit (no {AUDIT_FILE}): is it an output directory of upat-audit --shard?",
            dir.display()
        )));
    }
    let file = read_audit_file(dir)?;
    let entries = read_entries(&dir.join(ENTRIES_DIR))?
        .into_values()
        .collect();
    Ok((file, entries))
}

/// Whether `out` holds an audit (its `audit.json`, or something planted
/// under that name) that `--resume` could continue.
pub fn holds_audit(out: &Path) -> bool {
    std::fs::symlink_metadata(out.join(AUDIT_FILE)).is_ok()
}

fn read_audit_file(out: &Path) -> Result<AuditFile> {
    let path = out.join(AUDIT_FILE);
    let bytes = read_bounded(&path)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::data(
            &path,
            format!("is not an audit.json written by upat-audit ({e}); run without --resume to start over"),
        )
    })
}

/// The finished rows in `dir` (none when it does not exist).
fn read_entries(dir: &Path) -> Result<HashMap<Key, Entry>> {
    let mut finished = HashMap::new();
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(finished),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for item in listing {
        let path = item.map_err(|e| Error::io(dir, e))?.path();
        if !is_entry_name(&path) {
            continue;
        }
        let bytes = read_bounded(&path)?;
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| {
            Error::data(
                &path,
                format!("is not a journal entry of upat-audit ({e}); remove it, or run without --resume"),
            )
        })?;
        let meta = &entry.meta;
        let expected = entry_name(&meta.model, &meta.attack_id, meta.source.as_deref());
        let mismatched = entry
            .outcomes
            .iter()
            .any(|o| o.attack_id != meta.attack_id || o.model != meta.model);
        if path.file_name().is_none_or(|n| n != expected.as_str()) || mismatched {
            return Err(Error::data(
                &path,
                "does not hold the row its name says; remove it, or run without --resume",
            ));
        }
        finished.insert(
            key(&meta.model, &meta.attack_id, meta.source.as_deref()),
            entry,
        );
    }
    Ok(finished)
}

/// Removes the entries of an earlier journal (our own file names only).
fn clear_entries(dir: &Path) -> Result<()> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for item in listing {
        let path = item.map_err(|e| Error::io(dir, e))?.path();
        if is_entry_name(&path) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// `<32 hex digits>.json`, the names [`entry_name`] makes.
fn is_entry_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.strip_suffix(".json")
        .is_some_and(|stem| stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint() -> Fingerprint {
        Fingerprint {
            format: FORMAT,
            upat_version: "0.1.0".into(),
            attacks_sha256: "a".into(),
            seed: 0,
            data: "fashion-mnist".into(),
            samples: 10,
            data_sha256: "d".into(),
            models: vec![FileHash {
                path: "m.onnx".into(),
                sha256: "1".into(),
            }],
            sources: vec![],
            runtime: RuntimeKey {
                backend: "tract".into(),
                device: "cpu".into(),
            },
            preparation: "normalize=None layout=Auto input=None output=None".into(),
            shard: None,
        }
    }

    #[test]
    fn differences_name_the_fields_that_differ() {
        let a = fingerprint();
        assert!(a.differences(&a).is_empty());
        let mut b = fingerprint();
        b.seed = 1;
        b.models[0].sha256 = "2".into();
        assert_eq!(
            a.differences(&b),
            vec!["--seed", "models (paths or contents)"]
        );
        // A resumed audit must read its models the same way.
        let mut c = fingerprint();
        c.preparation = "normalize=Some(..) layout=Nhwc input=None output=None".into();
        assert_eq!(
            a.differences(&c),
            vec!["--normalize/--layout/--input/--output"]
        );
    }

    #[test]
    fn only_entry_names_are_read_or_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join(entry_name("m.onnx", "pgd", None));
        let theirs = dir.path().join("notes.json");
        std::fs::write(&ours, b"{}").unwrap();
        std::fs::write(&theirs, b"{}").unwrap();
        assert!(is_entry_name(&ours));
        assert!(!is_entry_name(&theirs));
        assert_ne!(
            entry_name("m.onnx", "pgd", None),
            entry_name("m.onnx", "pgd", Some(""))
        );
        clear_entries(dir.path()).unwrap();
        assert!(!ours.exists());
        assert!(theirs.exists());
    }

    #[test]
    fn a_new_journal_is_incomplete_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::start(dir.path(), fingerprint(), vec![], false).unwrap();
        assert!(!read_audit_file(dir.path()).unwrap().complete);
        journal.finish(Found::default()).unwrap();
        assert!(read_audit_file(dir.path()).unwrap().complete);
        let resumed = Journal::start(dir.path(), fingerprint(), vec![], true).unwrap();
        assert_eq!(resumed.pending(), 0);
        let mut other = fingerprint();
        other.samples = 11;
        let err = Journal::start(dir.path(), other, vec![], true).unwrap_err();
        assert!(
            err.to_string().contains("data (--data, --samples)"),
            "{err}"
        );
    }
}
