//! `--per-sample`: samples.csv holds one outcome per model × attack × source
//! × sample, and every figure of report.csv is a function of those outcomes.

use crate::util::{
    cell, fashion_mnist_dir, fields_toml, read_csv, repo_path, standard_fields, stderr, upat_audit,
};
use std::collections::HashMap;
use upat::attack::{Loss, Norm, ATTACKS};

/// A suite of every kind: clean, each registered attack (ℓ2 1.5 where it
/// reads a step size, else ℓ∞ 0.1, so both norms appear), and a transfer step
/// crafting with FGSM.
fn all_kinds_suite() -> String {
    let mut suite = "name = 'all'\n[[attack]]\nid = 'clean'\nkind = 'clean'\n".to_string();
    for entry in ATTACKS {
        let (norm, eps, step_size) = if entry.fields.contains(&"step_size") {
            (Norm::L2, 1.5, 0.5)
        } else {
            (Norm::Linf, 0.1, 0.02)
        };
        let fields = standard_fields(entry, norm, eps, step_size, Loss::Ce)
            .unwrap_or_else(|| panic!("no standard setting builds `{}`", entry.kind));
        suite += &format!(
            "[[attack]]\nid = '{kind}'\nkind = '{kind}'\n{}",
            fields_toml(entry, &fields),
            kind = entry.kind
        );
    }
    suite + "[[attack]]\nid = 'transfer-fgsm'\nkind = 'transfer'\ncraft = 'fgsm'\neps = 0.1\n"
}

/// The audit of the two Fashion-MNIST CNNs on 40 test images (`None`
/// when Fashion-MNIST is not installed).
fn audit(dir: &std::path::Path, extra: &[&str]) -> Option<std::process::Output> {
    let fmnist = fashion_mnist_dir()?;
    let model = repo_path("models/fmnist-cnn.onnx").display().to_string();
    let other = repo_path("models/fmnist-cnn-at.onnx").display().to_string();
    let data = format!("fashion-mnist:{}", fmnist.display());
    let suite = dir.join("all.toml");
    std::fs::write(&suite, all_kinds_suite()).unwrap();
    let suite = suite.display().to_string();
    let mut args = vec![
        model.as_str(),
        other.as_str(),
        "--data",
        &data,
        "--backend",
        "tract",
        "--suite",
        &suite,
        "--source",
        &model,
        "--batch-size",
        "16",
    ];
    if !extra.contains(&"--samples") {
        args.extend_from_slice(&["--samples", "40"]);
    }
    args.extend_from_slice(extra);
    Some(upat_audit(dir, &args))
}

#[test]
fn samples_csv_agrees_with_report_csv() {
    let dir = tempfile::tempdir().unwrap();
    let Some(out) = audit(dir.path(), &["--per-sample"]) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("audit-report/report.csv"));
    let (sheader, samples) = read_csv(&dir.path().join("audit-report/samples.csv"));
    assert_eq!(sheader, upat::report::SAMPLE_COLUMNS);
    let s = |row: &[String], column: &str| cell(&sheader, row, column).to_string();
    let n: usize = cell(&header, &rows[0], "n").parse().unwrap();
    assert_eq!(n, 40);
    let number =
        |row: &[String], column: &str| -> f64 { cell(&header, row, column).parse().unwrap() };
    let mut checked = 0;
    for row in &rows {
        let (model, id, source) = (
            cell(&header, row, "model"),
            cell(&header, row, "attack_id"),
            cell(&header, row, "source"),
        );
        assert!(
            number(row, "robust_acc") <= number(row, "clean_acc"),
            "{id}: robust > clean"
        );
        let of_model: Vec<&Vec<String>> =
            samples.iter().filter(|r| s(r, "model") == model).collect();
        let robust_count = if id == "worst_case" {
            // Robust in every outcome of the model.
            let mut robust: HashMap<String, bool> = HashMap::new();
            for r in &of_model {
                *robust.entry(s(r, "sample")).or_insert(true) &= s(r, "robust") == "true";
            }
            assert_eq!(robust.len(), n);
            robust.values().filter(|&&b| b).count()
        } else {
            let mine: Vec<&&Vec<String>> = of_model
                .iter()
                .filter(|r| s(r, "attack_id") == id && s(r, "source") == source)
                .collect();
            assert_eq!(mine.len(), n, "{model} {id}: one outcome per sample");
            let ids: Vec<String> = mine.iter().map(|r| s(r, "sample")).collect();
            assert_eq!(ids, (0..n).map(|i| i.to_string()).collect::<Vec<_>>());
            let attacked: Vec<_> = mine.iter().filter(|r| s(r, "attacked") == "true").collect();
            assert_eq!(
                attacked.len() as f64 / n as f64,
                number(row, "clean_acc"),
                "{id}"
            );
            if id != "clean" {
                let queries: f64 = attacked
                    .iter()
                    .map(|r| s(r, "queries").parse::<f64>().unwrap())
                    .sum();
                assert_eq!(
                    queries / attacked.len() as f64,
                    number(row, "queries"),
                    "{model} {id}: queries"
                );
                for r in &mine {
                    let attacked = s(r, "attacked") == "true";
                    assert_eq!(s(r, "adv_pred").is_empty(), !attacked, "{id}: adv_pred");
                    assert_eq!(s(r, "norm").is_empty(), !attacked, "{id}: norm");
                    let robust = s(r, "robust") == "true";
                    if attacked {
                        assert_eq!(
                            robust,
                            s(r, "adv_pred") == s(r, "label"),
                            "{id}: robust = re-predicted correct"
                        );
                    } else {
                        assert!(!robust);
                    }
                }
                let max_norm = mine
                    .iter()
                    .filter(|r| s(r, "attacked") == "true" && s(r, "robust") == "false")
                    .map(|r| s(r, "norm").parse::<f32>().unwrap())
                    .fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.max(v))));
                let reported = cell(&header, row, "max_norm");
                assert_eq!(
                    max_norm.map(f64::from),
                    (!reported.is_empty()).then(|| reported.parse::<f64>().unwrap()),
                    "{id}: max_norm"
                );
            }
            mine.iter().filter(|r| s(r, "robust") == "true").count()
        };
        assert_eq!(
            robust_count as f64 / n as f64,
            number(row, "robust_acc"),
            "{model} {id}"
        );
        checked += 1;
    }
    // Two models × (clean, each registered kind, transfer-fgsm, worst_case).
    assert_eq!(checked, 2 * (ATTACKS.len() + 3));
    // Some attack must have bitten for the agreement to mean something.
    assert!(samples
        .iter()
        .any(|r| s(r, "attacked") == "true" && s(r, "robust") == "false"));
}

#[test]
fn without_per_sample_no_samples_csv_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("audit-report");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("samples.csv"), "from an earlier audit\n").unwrap();
    let Some(out) = audit(dir.path(), &[]) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stale.join("report.csv").is_file());
    assert!(
        !stale.join("samples.csv").exists(),
        "a stale samples.csv would pass for this audit's"
    );
}

#[test]
fn sample_ids_are_file_positions_and_samples_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(out) = audit(dir.path(), &["--per-sample", "--samples", "3"]) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let (header, samples) = read_csv(&dir.path().join("audit-report/samples.csv"));
    let mut ids: Vec<String> = samples
        .iter()
        .map(|r| cell(&header, r, "sample").to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["0", "1", "2"]);
}

#[test]
fn an_autoattack_cascade_reports_cumulative_components_and_gates_on_its_id() {
    let Some(fmnist) = fashion_mnist_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("aa.toml");
    std::fs::write(
        &suite,
        "name = 'aa'\n[[attack]]\nid = 'aa'\nkind = 'autoattack'\nversion = 'standard'\nnorm = 'linf'\neps = 0.1\n",
    )
    .unwrap();
    let out = upat_audit(
        dir.path(),
        &[
            &repo_path("models/fmnist-cnn.onnx").display().to_string(),
            "--data",
            &format!("fashion-mnist:{}", fmnist.display()),
            "--samples",
            "40",
            "--suite",
            &suite.display().to_string(),
            "--per-sample",
            "--fail-under",
            "aa=0.9",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "the gate on `aa` must fail: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("`aa`"), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("audit-report/report.csv"));
    let ids: Vec<&str> = rows.iter().map(|r| cell(&header, r, "attack_id")).collect();
    assert_eq!(
        ids,
        [
            "clean",
            "aa:apgd-ce",
            "aa:apgd-t",
            "aa:fab-t",
            "aa:square",
            "aa",
            "worst_case"
        ]
    );
    let acc: Vec<f64> = rows
        .iter()
        .map(|r| cell(&header, r, "robust_acc").parse().unwrap())
        .collect();
    // Cumulative: never rising along the cascade, never above clean.
    assert!(acc[1..5].windows(2).all(|w| w[1] <= w[0]), "{acc:?}");
    assert!(acc[1] <= acc[0], "{acc:?}");
    assert!(acc[1] < acc[0], "APGD-CE must bite at eps 0.1: {acc:?}");
    // The last component, the final row and the worst case agree.
    assert_eq!((acc[4], acc[5]), (acc[5], acc[6]), "{acc:?}");
    let kinds: Vec<&str> = rows.iter().map(|r| cell(&header, r, "attack")).collect();
    assert_eq!(
        kinds[1..6],
        ["apgd-ce", "apgd-t", "fab-t", "square", "autoattack"]
    );
}
