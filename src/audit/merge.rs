//! `merge`: the shards of one audit combined into the report a single
//! machine would have written. Every figure of a report is a count over
//! per-sample outcomes (`report::outcome`), so concatenating the shards'
//! outcomes row by row and summarising them with the same code is exact.

use super::journal::{read_finished, Entry, Fingerprint};
use super::{evaluate_gates, summarise, Gate, GateFailure, RowMeta, SampleOutcome};
use crate::error::{Error, Result};
use crate::report::{FlagRow, ReportRow};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

/// The combined audit.
#[derive(Debug)]
pub struct Merged {
    pub rows: Vec<ReportRow>,
    pub outcomes: Vec<SampleOutcome>,
    pub gates: Vec<Gate>,
    pub gate_failures: Vec<GateFailure>,
    /// Every gate's verdict on every model it applies to.
    pub verdicts: Vec<crate::report::GateRow>,
    /// Every flag any shard raised (the checks ran on each shard's samples).
    pub flags: Vec<FlagRow>,
    /// Every shard's warnings, each once, shard by shard.
    pub warnings: Vec<String>,
    /// The audit's fingerprint, without a shard.
    pub fingerprint: Fingerprint,
}

type Key = (String, String, Option<String>);

/// Reads, checks and combines the shard directories `dirs`; `extra_gates`
/// (`--fail-under`) join the audit's own.
pub fn merge(dirs: &[PathBuf], extra_gates: Vec<Gate>) -> Result<Merged> {
    if dirs.is_empty() {
        return Err(Error::Usage(
            "merge needs the shard directories: upat-audit merge DIR... --out DIR".into(),
        ));
    }
    let mut shards = Vec::new();
    for dir in dirs {
        let (file, entries) = read_finished(dir)?;
        let Some(shard) = file.fingerprint.shard else {
            return Err(Error::Usage(format!(
                "{} holds an audit made without --shard; merge combines shards (--shard K/N)",
                dir.display()
            )));
        };
        if !file.complete {
            return Err(Error::Usage(format!(
                "{}: shard {shard} did not finish (killed, still running, or failed); \
                 rerun it with the same arguments and --resume, then merge",
                dir.display()
            )));
        }
        shards.push((dir, shard, file, entries));
    }
    shards.sort_by_key(|(_, shard, _, _)| shard.index);
    let first = &shards[0].2.fingerprint;
    for (dir, _, file, _) in &shards[1..] {
        let differences = first.combinable_with(&file.fingerprint);
        if !differences.is_empty() {
            return Err(Error::Usage(format!(
                "{} is a shard of another audit than {}: they differ in {}",
                dir.display(),
                shards[0].0.display(),
                differences.join(", ")
            )));
        }
    }
    let count = shards[0].1.count;
    let mut by_index: BTreeMap<usize, &PathBuf> = BTreeMap::new();
    for (dir, shard, _, _) in &shards {
        if let Some(other) = by_index.insert(shard.index, dir) {
            return Err(Error::Usage(format!(
                "{} and {} are both shard {shard}: give each shard once",
                other.display(),
                dir.display()
            )));
        }
    }
    let missing: Vec<String> = (0..count)
        .filter(|k| !by_index.contains_key(k))
        .map(|k| format!("{k}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "shard(s) {} missing: merge needs all {count}",
            missing.join(", ")
        )));
    }
    // Rows by key, in each shard; every shard must hold the same rows.
    let keyed: Vec<HashMap<Key, Entry>> = shards
        .iter()
        .map(|(_, _, _, entries)| {
            entries
                .iter()
                .map(|e| {
                    let key = (
                        e.meta.model.clone(),
                        e.meta.attack_id.clone(),
                        e.meta.source.clone(),
                    );
                    (key, e.clone())
                })
                .collect()
        })
        .collect();
    let mut order: Vec<(&Key, usize)> = keyed[0].iter().map(|(k, e)| (k, e.order)).collect();
    order.sort_by_key(|&(_, o)| o);
    for ((dir, shard, _, _), rows) in shards.iter().zip(&keyed) {
        if rows.len() != keyed[0].len() || order.iter().any(|(k, _)| !rows.contains_key(*k)) {
            return Err(Error::Usage(format!(
                "{} (shard {shard}) does not hold the same rows as {}; its journal is incomplete or damaged",
                dir.display(),
                shards[0].0.display()
            )));
        }
    }

    // Disjoint and complete samples: one row per sample per shard.
    let mut seen: HashSet<u64> = HashSet::new();
    for ((dir, shard, _, _), rows) in shards.iter().zip(&keyed) {
        let row = &rows[order[0].0];
        for outcome in &row.outcomes {
            if !seen.insert(outcome.sample) {
                return Err(Error::Usage(format!(
                    "{} (shard {shard}) holds sample {} that another shard holds too",
                    dir.display(),
                    outcome.sample
                )));
            }
        }
    }
    // Samples a shard could not use (bad images it skipped) count as held.
    for (dir, shard, file, _) in &shards {
        for &id in &file.skipped {
            if !seen.insert(id) {
                return Err(Error::Usage(format!(
                    "{} (shard {shard}) skipped sample {id}, which another shard holds or skipped",
                    dir.display()
                )));
            }
        }
    }
    if seen.len() != first.samples {
        return Err(Error::Usage(format!(
            "the shards hold {} samples, the audit {}: a shard is incomplete",
            seen.len(),
            first.samples
        )));
    }

    let mut outcomes = Vec::new();
    let mut metas: Vec<RowMeta> = Vec::new();
    for (key, _) in &order {
        let mut meta = keyed[0][*key].meta.clone();
        meta.seconds = keyed.iter().map(|rows| rows[*key].meta.seconds).sum();
        for rows in &keyed {
            outcomes.extend(rows[*key].outcomes.iter().cloned());
        }
        metas.push(meta);
    }
    let rows = summarise(&outcomes, &metas);
    let mut gates = shards[0].2.gates.clone();
    gates.extend(extra_gates);
    let gate_failures = evaluate_gates(&gates, &rows);
    let verdicts = super::judge_gates(&gates, &rows);
    let mut flags: Vec<FlagRow> = Vec::new();
    for (_, _, file, _) in &shards {
        for flag in &file.flags {
            if !flags
                .iter()
                .any(|f| f.model == flag.model && f.flag == flag.flag)
            {
                flags.push(flag.clone());
            }
        }
    }
    let mut warnings: Vec<String> = Vec::new();
    for (_, shard, file, _) in &shards {
        for warning in &file.warnings {
            let warning = format!("shard {shard}: {warning}");
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
    }
    let mut fingerprint = first.clone();
    fingerprint.shard = None;
    Ok(Merged {
        rows,
        outcomes,
        gates,
        gate_failures,
        verdicts,
        flags,
        warnings,
        fingerprint,
    })
}
