//! Report rows and the CSV files of an audit (schema in `docs/csv-schema.md`).

pub mod junit;
mod markdown;
pub mod outcome;
mod svg;

pub use outcome::{summarise, RowMeta, SampleOutcome, Tally};

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// Reserved by the suite layer, which refuses it as an entry's id.
pub use crate::attack::WORST_CASE_ID;

/// One line of `report.csv`: a (model, attack) pair. Field order is the column order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    pub model: String,
    pub model_sha256: String,
    pub dataset: String,
    pub n: usize,
    pub attack_id: String,
    pub attack: String,
    pub norm: Option<String>,
    pub eps: Option<f32>,
    pub steps: Option<u32>,
    pub step_size: Option<f32>,
    pub restarts: Option<u32>,
    pub loss: Option<String>,
    pub source: Option<String>,
    pub clean_acc: f64,
    pub robust_acc: f64,
    /// Half-width of the 95% Wilson score interval of `robust_acc`.
    pub robust_acc_ci95: f64,
    /// Fraction of the clean-correct samples the attack turned wrong.
    pub attack_success_rate: Option<f64>,
    pub mean_norm: Option<f64>,
    pub max_norm: Option<f64>,
    /// Loss-and-gradient (or forward) evaluations per attacked sample, averaged.
    pub queries: Option<f64>,
    pub seconds: f64,
    pub backend: String,
    pub device: String,
    pub seed: u64,
}

/// Half-width of the 95% Wilson score interval for `successes` out of `n`.
///
/// Wilson rather than the normal approximation because robust accuracies are
/// often near 0 or 1, where the normal interval collapses to zero width.
pub fn wilson_ci95_half_width(successes: usize, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let z = 1.959_963_984_540_054_f64;
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let denom = 1.0 + z * z / n_f;
    z * (p * (1.0 - p) / n_f + z * z / (4.0 * n_f * n_f)).sqrt() / denom
}

/// Fraction of `true` in `mask` (0 for an empty mask).
pub fn fraction(mask: &[bool]) -> f64 {
    if mask.is_empty() {
        0.0
    } else {
        mask.iter().filter(|&&b| b).count() as f64 / mask.len() as f64
    }
}

fn csv_bytes<F: FnOnce(&mut csv::Writer<Vec<u8>>) -> csv::Result<()>>(fill: F) -> Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let format = |message: String| Error::Format {
        what: "CSV",
        message,
    };
    fill(&mut writer).map_err(|e| format(e.to_string()))?;
    writer.into_inner().map_err(|e| format(e.to_string()))
}

/// `report.csv`: every row, in order.
pub fn report_csv(rows: &[ReportRow]) -> Result<Vec<u8>> {
    csv_bytes(|w| rows.iter().try_for_each(|r| w.serialize(r)))
}

/// Models and attack ids in the order they first appear.
fn models_and_ids(rows: &[ReportRow]) -> (Vec<(&str, &str, usize)>, Vec<&str>) {
    let mut ids: Vec<&str> = Vec::new();
    let mut models: Vec<(&str, &str, usize)> = Vec::new();
    for r in rows {
        if !ids.contains(&r.attack_id.as_str()) {
            ids.push(&r.attack_id);
        }
        if !models.iter().any(|m| m.0 == r.model) {
            models.push((&r.model, &r.dataset, r.n));
        }
    }
    (models, ids)
}

/// The summary cell of (model, attack id): its robust accuracy, the lowest
/// over sources when a transfer attack came from several.
fn summary_cell<'a>(rows: &'a [ReportRow], model: &str, id: &str) -> Option<&'a ReportRow> {
    rows.iter()
        .filter(|r| r.model == model && r.attack_id == id)
        .min_by(|a, b| a.robust_acc.total_cmp(&b.robust_acc))
}

/// `summary.csv`: one row per model, one column per attack id (robust accuracy),
/// in the order the ids first appear. The shape of the paper's Tables 1 and 3.
pub fn summary_csv(rows: &[ReportRow]) -> Result<Vec<u8>> {
    let (models, ids) = models_and_ids(rows);
    csv_bytes(|w| {
        let mut header = vec!["model", "dataset", "n"];
        header.extend(&ids);
        w.write_record(&header)?;
        for (model, dataset, n) in &models {
            let mut record = vec![model.to_string(), dataset.to_string(), n.to_string()];
            for id in &ids {
                record.push(
                    summary_cell(rows, model, id)
                        .map(|r| r.robust_acc.to_string())
                        .unwrap_or_default(),
                );
            }
            w.write_record(&record)?;
        }
        Ok(())
    })
}

/// `transfer.csv`: target models × (source, attack id), robust accuracy — the
/// shape of the paper's Table 2. `None` when the audit had no transfer attack.
pub fn transfer_csv(rows: &[ReportRow]) -> Result<Option<Vec<u8>>> {
    let transfer: Vec<&ReportRow> = rows.iter().filter(|r| r.source.is_some()).collect();
    if transfer.is_empty() {
        return Ok(None);
    }
    let mut columns: Vec<(String, String)> = Vec::new();
    let mut models: Vec<&str> = Vec::new();
    for r in &transfer {
        let key = (r.source.clone().unwrap_or_default(), r.attack_id.clone());
        if !columns.contains(&key) {
            columns.push(key);
        }
        if !models.contains(&r.model.as_str()) {
            models.push(&r.model);
        }
    }
    csv_bytes(|w| {
        let mut header = vec!["model".to_string()];
        header.extend(columns.iter().map(|(source, id)| format!("{source}|{id}")));
        w.write_record(&header)?;
        for model in &models {
            let mut record = vec![model.to_string()];
            for (source, id) in &columns {
                let cell = transfer.iter().find(|r| {
                    r.model == *model && r.source.as_deref() == Some(source) && &r.attack_id == id
                });
                record.push(cell.map(|r| r.robust_acc.to_string()).unwrap_or_default());
            }
            w.write_record(&record)?;
        }
        Ok(())
    })
    .map(Some)
}

/// One line of `flags.csv`: a gradient-masking flag raised on a model.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FlagRow {
    pub model: String,
    pub flag: String,
    pub measured: f64,
    pub detail: String,
}

/// A gate's verdict on one model: the measured robust accuracy against the
/// threshold (report.md, audit.json, `--junit`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GateRow {
    pub model: String,
    pub attack_id: String,
    pub threshold: f64,
    pub measured: f64,
    pub passed: bool,
    /// `--fail-under` or the suite that set it.
    pub origin: String,
}

/// `flags.csv`: the header, and one row per flag.
pub fn flags_csv(flags: &[FlagRow]) -> Result<Vec<u8>> {
    csv_bytes(|w| {
        w.write_record(["model", "flag", "measured", "detail"])?;
        flags.iter().try_for_each(|f| {
            w.write_record([
                f.model.clone(),
                f.flag.clone(),
                f.measured.to_string(),
                f.detail.clone(),
            ])
        })
    })
}

/// `samples.csv`: one row per model × attack × source × sample.
pub fn samples_csv(outcomes: &[SampleOutcome]) -> Result<Vec<u8>> {
    csv_bytes(|w| outcomes.iter().try_for_each(|o| w.serialize(o)))
}

/// Every file [`write_reports`] may write: an audit's results, removed
/// before a new run into the same directory starts.
pub const RESULT_FILES: &[&str] = &[
    "report.csv",
    "summary.csv",
    "transfer.csv",
    "samples.csv",
    "flags.csv",
    "report.md",
    "robustness.svg",
];

/// Writes `summary.csv`, `transfer.csv` (when there were transfer attacks),
/// `samples.csv` (when `samples` is given), `flags.csv`, `report.md`, `robustness.svg`
/// and `report.csv` into `out`, each atomically. A `samples.csv` or
/// `transfer.csv` left by an earlier audit is removed when this one has
/// none, so every file in `out` belongs to one audit.
pub fn write_reports(
    out: &Path,
    rows: &[ReportRow],
    samples: Option<&[SampleOutcome]>,
    flags: &[FlagRow],
    gates: &[GateRow],
    warnings: &[String],
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Build everything before writing anything, so a formatting error leaves nothing new behind.
    let report = report_csv(rows)?;
    let samples = samples.map(samples_csv).transpose()?;
    let summary = summary_csv(rows)?;
    let transfer = transfer_csv(rows)?;
    let flag_file = flags_csv(flags)?;
    let markdown = markdown::report_md(rows, flags, gates, warnings);
    let picture = svg::robustness_svg(rows);
    write_atomic(&out.join("summary.csv"), &summary)?;
    write_or_remove(&out.join("transfer.csv"), transfer.as_deref())?;
    write_or_remove(&out.join("samples.csv"), samples.as_deref())?;
    write_atomic(&out.join("flags.csv"), &flag_file)?;
    write_atomic(&out.join("report.md"), markdown.as_bytes())?;
    write_atomic(&out.join("robustness.svg"), picture.as_bytes())?;
    // report.csv last: its presence marks a complete audit.
    write_atomic(&out.join("report.csv"), &report)
}

fn write_or_remove(path: &Path, bytes: Option<&[u8]>) -> Result<()> {
    match bytes {
        Some(bytes) => write_atomic(path, bytes),
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
            _ => Ok(()),
        },
    }
}

/// The CSV header of `samples.csv`, for docs and tests.
pub const SAMPLE_COLUMNS: &[&str] = &[
    "model",
    "model_sha256",
    "attack_id",
    "source",
    "sample",
    "label",
    "clean_pred",
    "adv_pred",
    "attacked",
    "robust",
    "norm",
    "queries",
    "file",
];

/// The CSV header of `report.csv`, for docs and tests.
pub const REPORT_COLUMNS: &[&str] = &[
    "model",
    "model_sha256",
    "dataset",
    "n",
    "attack_id",
    "attack",
    "norm",
    "eps",
    "steps",
    "step_size",
    "restarts",
    "loss",
    "source",
    "clean_acc",
    "robust_acc",
    "robust_acc_ci95",
    "attack_success_rate",
    "mean_norm",
    "max_norm",
    "queries",
    "seconds",
    "backend",
    "device",
    "seed",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, id: &str, acc: f64) -> ReportRow {
        ReportRow {
            model: model.into(),
            model_sha256: "ab".into(),
            dataset: "d".into(),
            n: 10,
            attack_id: id.into(),
            attack: id.into(),
            norm: None,
            eps: None,
            steps: None,
            step_size: None,
            restarts: None,
            loss: None,
            source: None,
            clean_acc: 0.9,
            robust_acc: acc,
            robust_acc_ci95: 0.01,
            attack_success_rate: None,
            mean_norm: None,
            max_norm: None,
            queries: None,
            seconds: 0.5,
            backend: "tract".into(),
            device: "cpu".into(),
            seed: 0,
        }
    }

    #[test]
    fn report_header_is_the_contract() {
        let bytes = report_csv(&[row("m", "clean", 0.9)]).unwrap();
        let header = String::from_utf8(bytes)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string();
        assert_eq!(header, REPORT_COLUMNS.join(","));
    }

    /// The columns docs/csv-schema.md's table under `## {section}` names,
    /// in order (a row may name several: `` `norm`, `eps` ``).
    fn documented_columns(section: &str) -> Vec<String> {
        let doc = include_str!("../../docs/csv-schema.md");
        let start = doc
            .find(&format!("## {section}\n"))
            .unwrap_or_else(|| panic!("docs/csv-schema.md has no `## {section}`"));
        let body = &doc[start..];
        let body = &body[..body[3..].find("\n## ").map_or(body.len(), |e| e + 3)];
        body.lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| {
                let cell = l[1..].split('|').next().unwrap_or("");
                cell.split(',')
                    .map(|c| c.trim().trim_matches('`').to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_documented_schemas_are_the_written_headers() {
        assert_eq!(documented_columns("report.csv"), REPORT_COLUMNS);
        let sample = SampleOutcome {
            model: "m".into(),
            model_sha256: "ab".into(),
            attack_id: "clean".into(),
            source: None,
            sample: 0,
            label: 0,
            clean_pred: 0,
            adv_pred: None,
            attacked: true,
            robust: true,
            norm: None,
            queries: 0,
            file: None,
        };
        let bytes = samples_csv(&[sample]).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        assert_eq!(documented_columns("samples.csv"), header);
        assert_eq!(header, SAMPLE_COLUMNS);
    }

    #[test]
    fn summary_is_models_by_attack_ids() {
        let rows = [
            row("a", "clean", 0.9),
            row("a", "worst_case", 0.9),
            row("b", "clean", 0.5),
            row("b", "worst_case", 0.4),
        ];
        let text = String::from_utf8(summary_csv(&rows).unwrap()).unwrap();
        assert_eq!(
            text,
            "model,dataset,n,clean,worst_case\na,d,10,0.9,0.9\nb,d,10,0.5,0.4\n"
        );
    }

    #[test]
    fn wilson_interval_matches_known_values() {
        // p = 0.5, n = 100: Wilson half-width 0.0962 (to 4 d.p.).
        assert!((wilson_ci95_half_width(50, 100) - 0.0962).abs() < 1e-4);
        // p = 0 keeps a positive width, unlike the normal approximation.
        assert!(wilson_ci95_half_width(0, 100) > 0.015);
        assert_eq!(wilson_ci95_half_width(0, 0), 0.0);
    }
}
