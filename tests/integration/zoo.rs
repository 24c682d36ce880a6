//! The gradient graph on a zoo of timm architectures, each exported by both
//! of PyTorch's exporters, against float64 autograd of the exported graph.
//!
//! `scripts/goldens/timm_zoo.py` writes the exports, the goldens and a
//! manifest into `target/goldens/timm` (about 1 GB, so generated rather than
//! checked in; scripts/test.sh makes them first). Skipped when absent, except
//! under `UPAT_REQUIRE_GOLDENS=1`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use crate::util::{cpu, relative_error, repo_path, BACKENDS};
use upat::attack::Loss;
use upat::data::read_npz_f32;
use upat::onnx::grad;
use upat::onnx::{ClassifierGraph, OnnxModel};
use upat::runtime::{BackendChoice, GradientModel};

/// The bound: max |upat − autograd| / max |autograd|.
const TOLERANCE: f32 = 1e-4;
/// Fewer architectures than this and the zoo no longer shows much.
const MIN_ARCHITECTURES: usize = 25;

struct Export {
    arch: String,
    exporter: String,
    status: String,
    detail: String,
}

fn read_manifest(dir: &Path) -> Vec<Export> {
    let text = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            Export {
                arch: f[0].into(),
                exporter: f[1].into(),
                status: f[2].into(),
                detail: f[3].into(),
            }
        })
        .collect()
}

enum Outcome {
    Passed(f32),
    Differs(f32),
    Blocked(String),
}

/// The export's gradient graph on each backend against its golden: the
/// relative error, or why it could not be computed.
fn check(dir: &Path) -> Vec<(BackendChoice, Result<f32, String>, f32)> {
    let npz = dir.join("golden.npz");
    let (shape, x) = read_npz_f32(&npz, "x").unwrap();
    let y: Vec<i64> = read_npz_f32(&npz, "y")
        .unwrap()
        .1
        .iter()
        .map(|&v| v as i64)
        .collect();
    let expected = read_npz_f32(&npz, "grad_ce").unwrap().1;
    assert!(
        expected.iter().any(|v| *v != 0.0),
        "{}: the golden gradient is zero and would test nothing",
        dir.display()
    );
    let image_shape = [shape[1], shape[2], shape[3]];
    let started = Instant::now();
    let gradient = OnnxModel::load(&dir.join("model.onnx"))
        .and_then(|model| ClassifierGraph::prepare(&model, None, None, None))
        .and_then(|graph| grad::build(&graph, image_shape, Loss::Ce))
        .map_err(|e| e.to_string());
    let built = started.elapsed().as_secs_f32();
    BACKENDS
        .into_iter()
        .map(|backend| {
            let started = Instant::now();
            let error = gradient
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|gradient| {
                    let mut session = GradientModel::open(gradient, image_shape, cpu(backend))
                        .map_err(|e| e.to_string())?;
                    let out = session
                        .loss_and_grad(&x, &y, None, shape[0])
                        .map_err(|e| e.to_string())?;
                    Ok(relative_error(&out.input_grad, &expected))
                });
            (backend, error, built + started.elapsed().as_secs_f32())
        })
        .collect()
}

#[test]
fn timm_architectures_match_autograd_of_their_exported_graphs() {
    let dir = repo_path("target/goldens/timm");
    if !dir.join("manifest.tsv").is_file() {
        let required = std::env::var("UPAT_REQUIRE_GOLDENS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "goldens required but missing: run .venv/bin/python scripts/goldens/timm_zoo.py"
        );
        eprintln!(
            "skipped: no timm zoo in {} (scripts/goldens/timm_zoo.py makes it)",
            dir.display()
        );
        return;
    }
    let exports = read_manifest(&dir);
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for exporter in ["torchscript", "dynamo"] {
        let rows: Vec<&Export> = exports.iter().filter(|e| e.exporter == exporter).collect();
        let (mut passed, mut checked) = (0, 0);
        for row in &rows {
            let name = format!("{}.{}", row.arch, row.exporter);
            if row.status != "golden" {
                // The export or the reference failed inside PyTorch, before
                // upat is involved: counted, named, not upat's to pass.
                eprintln!("{name:42} not checked: {} ({})", row.status, row.detail);
                continue;
            }
            checked += 1;
            let mut worst = Outcome::Passed(0.0);
            for (backend, result, seconds) in check(&dir.join(&name)) {
                let outcome = match result {
                    Ok(e) if e <= TOLERANCE => Outcome::Passed(e),
                    Ok(e) => Outcome::Differs(e),
                    Err(why) => Outcome::Blocked(why),
                };
                match &outcome {
                    Outcome::Passed(e) => {
                        eprintln!(
                            "{name:42} {backend:?}: ok, relative error {e:.1e} ({seconds:.1}s)"
                        )
                    }
                    Outcome::Differs(e) => {
                        eprintln!("{name:42} {backend:?}: DIFFERS, relative error {e:.1e}")
                    }
                    Outcome::Blocked(why) => eprintln!("{name:42} {backend:?}: BLOCKED: {why}"),
                }
                if !matches!(outcome, Outcome::Passed(_)) {
                    failures.push(format!("{name} on {backend:?}"));
                }
                if matches!(worst, Outcome::Passed(_)) {
                    worst = outcome;
                }
            }
            passed += usize::from(matches!(worst, Outcome::Passed(_)));
        }
        summary.push(format!(
            "{exporter}: {passed} of {checked} exports pass on both backends ({} architectures; {} not exported or no reference)",
            rows.len(),
            rows.len() - checked
        ));
    }
    for line in &summary {
        eprintln!("{line}");
    }
    let architectures: BTreeSet<&str> = exports
        .iter()
        .filter(|e| e.status == "golden")
        .map(|e| e.arch.as_str())
        .collect();
    assert!(
        architectures.len() >= MIN_ARCHITECTURES,
        "only {} architectures have a golden (at least {MIN_ARCHITECTURES} expected): see manifest.tsv",
        architectures.len()
    );
    assert!(
        failures.is_empty(),
        "exports that fail the gradient check: {failures:?}"
    );
}
