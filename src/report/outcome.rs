//! Per-sample outcomes, and the report rows computed from them.
//!
//! Every figure of `report.csv` is a function of the outcomes (one per
//! model × attack × source × sample, the rows of `samples.csv`): rows are
//! built from counts ([`Tally`]), which add up exactly, so two sets of
//! outcomes (two shards of one audit, say) combine into the same report as
//! one run over both.

use super::{wilson_ci95_half_width, ReportRow, WORST_CASE_ID};
use crate::attack::Settings;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What one step of an audit did to one sample of one model: a row of
/// `samples.csv` (schema in `docs/csv-schema.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleOutcome {
    pub model: String,
    pub model_sha256: String,
    pub attack_id: String,
    /// The source model of a transfer attack.
    pub source: Option<String>,
    /// The sample's index in its data file.
    pub sample: u64,
    pub label: i64,
    /// The model's prediction on the clean image.
    pub clean_pred: u32,
    /// The model's prediction on the adversarial example, re-predicted by
    /// the audit; empty for clean rows and samples not attacked.
    pub adv_pred: Option<u32>,
    /// Correct on clean data (with finite logits), and so attacked.
    pub attacked: bool,
    /// Still correct after the attack (for clean rows: correct).
    pub robust: bool,
    /// Size of the perturbation in the attack's norm, for attacked samples.
    pub norm: Option<f32>,
    /// Model evaluations the attack spent on this sample.
    pub queries: u32,
    /// The sample's file, relative to its folder or list (image collections).
    #[serde(default)]
    pub file: Option<String>,
}

/// The columns of a report row that are not counts: who, what, how, how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowMeta {
    pub model: String,
    pub model_sha256: String,
    pub dataset: String,
    pub attack_id: String,
    /// The suite kind (`clean`, `pgd`, `transfer`, ...).
    pub attack: String,
    /// `None` for clean rows.
    pub settings: Option<Settings>,
    pub source: Option<String>,
    pub seconds: f64,
    pub backend: String,
    pub device: String,
    pub seed: u64,
}

/// Counts behind one report row; they add up, so tallies merge exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub n: u64,
    /// Clean-correct samples, and so attacked.
    pub attacked: u64,
    pub robust: u64,
    /// Attacked samples the attack fooled, and the sum and max of their
    /// perturbation norms.
    pub fooled: u64,
    pub fooled_norm_sum: f64,
    pub fooled_norm_max: Option<f64>,
    /// Queries summed over the attacked samples.
    pub queries: u64,
}

impl Tally {
    pub fn add(&mut self, o: &SampleOutcome) {
        self.n += 1;
        self.robust += u64::from(o.robust);
        if o.attacked {
            self.attacked += 1;
            self.queries += u64::from(o.queries);
            if let (false, Some(norm)) = (o.robust, o.norm) {
                let norm = f64::from(norm);
                self.fooled += 1;
                self.fooled_norm_sum += norm;
                self.fooled_norm_max = Some(self.fooled_norm_max.map_or(norm, |m| m.max(norm)));
            }
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.n += other.n;
        self.attacked += other.attacked;
        self.robust += other.robust;
        self.fooled += other.fooled;
        self.fooled_norm_sum += other.fooled_norm_sum;
        self.fooled_norm_max = match (self.fooled_norm_max, other.fooled_norm_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.queries += other.queries;
    }

    /// The report row of these counts. Norms and queries are left empty for
    /// clean and worst-case rows (`meta.settings` is `None`).
    pub fn row(&self, meta: &RowMeta) -> ReportRow {
        let fraction = |k: u64| {
            if self.n == 0 {
                0.0
            } else {
                k as f64 / self.n as f64
            }
        };
        let settings = meta.settings.as_ref();
        let describes = settings.is_some();
        ReportRow {
            model: meta.model.clone(),
            model_sha256: meta.model_sha256.clone(),
            dataset: meta.dataset.clone(),
            n: self.n as usize,
            attack_id: meta.attack_id.clone(),
            attack: meta.attack.clone(),
            norm: settings.map(|s| s.norm.as_str().to_string()),
            eps: settings.map(|s| s.eps),
            steps: settings.and_then(|s| s.steps),
            step_size: settings.and_then(|s| s.step_size),
            restarts: settings.and_then(|s| s.restarts),
            loss: settings
                .and_then(|s| s.loss)
                .map(|l| l.as_str().to_string()),
            source: meta.source.clone(),
            clean_acc: fraction(self.attacked),
            robust_acc: fraction(self.robust),
            robust_acc_ci95: wilson_ci95_half_width(self.robust as usize, self.n as usize),
            attack_success_rate: (self.attacked > 0)
                .then(|| 1.0 - self.robust as f64 / self.attacked as f64),
            mean_norm: (describes && self.fooled > 0)
                .then(|| self.fooled_norm_sum / self.fooled as f64),
            max_norm: self.fooled_norm_max.filter(|_| describes),
            queries: (describes && self.attacked > 0)
                .then(|| self.queries as f64 / self.attacked as f64),
            seconds: meta.seconds,
            backend: meta.backend.clone(),
            device: meta.device.clone(),
            seed: meta.seed,
        }
    }
}

/// The report rows of `outcomes`: one per entry of `metas`, in order, each
/// followed — after a model's last entry — by that model's `worst_case` row,
/// where a sample counts as robust only if it is robust in every one of the
/// model's outcomes (AutoAttack's rule).
pub fn summarise(outcomes: &[SampleOutcome], metas: &[RowMeta]) -> Vec<ReportRow> {
    type Key<'a> = (&'a str, &'a str, Option<&'a str>);
    let mut tallies: HashMap<Key, Tally> = HashMap::new();
    // Per model: samples in first-seen order, and sample → (attacked, robust everywhere).
    type Verdicts = (Vec<u64>, HashMap<u64, (bool, bool)>);
    let mut worst: HashMap<&str, Verdicts> = HashMap::new();
    for o in outcomes {
        tallies
            .entry((&o.model, &o.attack_id, o.source.as_deref()))
            .or_default()
            .add(o);
        let (order, samples) = worst.entry(&o.model).or_default();
        let verdict = samples.entry(o.sample).or_insert_with(|| {
            order.push(o.sample);
            (o.attacked, true)
        });
        verdict.1 &= o.robust;
    }
    let mut rows = Vec::new();
    for (k, meta) in metas.iter().enumerate() {
        let key = (
            meta.model.as_str(),
            meta.attack_id.as_str(),
            meta.source.as_deref(),
        );
        rows.push(tallies.get(&key).cloned().unwrap_or_default().row(meta));
        let last_of_model = metas.get(k + 1).is_none_or(|next| next.model != meta.model);
        if last_of_model {
            let mut tally = Tally::default();
            if let Some((order, samples)) = worst.get(meta.model.as_str()) {
                for sample in order {
                    let (attacked, robust) = samples[sample];
                    tally.n += 1;
                    tally.attacked += u64::from(attacked);
                    tally.robust += u64::from(robust);
                }
            }
            let seconds = metas
                .iter()
                .filter(|m| m.model == meta.model)
                .map(|m| m.seconds)
                .sum();
            rows.push(tally.row(&RowMeta {
                attack_id: WORST_CASE_ID.into(),
                attack: WORST_CASE_ID.into(),
                settings: None,
                source: None,
                seconds,
                ..meta.clone()
            }));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::Norm;

    fn outcome(id: &str, sample: u64, attacked: bool, robust: bool, norm: f32) -> SampleOutcome {
        SampleOutcome {
            model: "m".into(),
            model_sha256: "ab".into(),
            attack_id: id.into(),
            source: None,
            sample,
            label: 0,
            clean_pred: u32::from(!attacked),
            adv_pred: attacked.then_some(u32::from(!robust)),
            attacked,
            robust,
            norm: (id != "clean" && attacked).then_some(norm),
            queries: if id == "clean" { 0 } else { 3 },
            file: None,
        }
    }

    fn meta(id: &str) -> RowMeta {
        RowMeta {
            model: "m".into(),
            model_sha256: "ab".into(),
            dataset: "d".into(),
            attack_id: id.into(),
            attack: id.into(),
            settings: (id != "clean").then_some(Settings {
                norm: Norm::Linf,
                eps: 0.1,
                steps: Some(2),
                step_size: Some(0.05),
                restarts: Some(1),
                loss: None,
                query_budget: None,
            }),
            source: None,
            seconds: 1.0,
            backend: "tract".into(),
            device: "cpu".into(),
            seed: 0,
        }
    }

    fn sample_outcomes() -> Vec<SampleOutcome> {
        // 4 samples: 0..3 clean-correct; a fools 1, b fools 2; 3 survives both.
        let mut all = Vec::new();
        for s in 0..4 {
            all.push(outcome("clean", s, s < 3, s < 3, 0.0));
        }
        for s in 0..4 {
            all.push(outcome("a", s, s < 3, s < 3 && s != 1, 0.1));
            all.push(outcome(
                "b",
                s,
                s < 3,
                s < 3 && s != 2,
                0.05 * (s as f32 + 1.0),
            ));
        }
        all
    }

    #[test]
    fn rows_and_worst_case_come_from_the_counts() {
        let rows = summarise(&sample_outcomes(), &[meta("clean"), meta("a"), meta("b")]);
        let by_id = |id: &str| rows.iter().find(|r| r.attack_id == id).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(by_id("clean").robust_acc, 0.75);
        assert_eq!(by_id("clean").queries, None);
        assert_eq!(by_id("a").robust_acc, 0.5);
        assert_eq!(by_id("a").clean_acc, 0.75);
        assert_eq!(by_id("a").queries, Some(3.0));
        assert_eq!(by_id("b").mean_norm, Some(f64::from(0.15f32)));
        assert_eq!(by_id("worst_case").robust_acc, 0.25);
        assert_eq!(
            by_id("worst_case").attack_success_rate,
            Some(1.0 - 1.0 / 3.0)
        );
        assert_eq!(by_id("worst_case").seconds, 3.0);
    }

    #[test]
    fn tallies_of_two_halves_merge_into_the_whole() {
        let all = sample_outcomes();
        let (mut whole, mut first, mut second) =
            (Tally::default(), Tally::default(), Tally::default());
        for o in all.iter().filter(|o| o.attack_id == "b") {
            whole.add(o);
            if o.sample < 2 {
                first.add(o)
            } else {
                second.add(o)
            }
        }
        first.merge(&second);
        assert_eq!(first.row(&meta("b")), whole.row(&meta("b")));
    }
}
