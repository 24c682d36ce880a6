//! `robustness.svg`: robust accuracy per attack, one bar per model, drawn
//! directly as SVG (a few rectangles and labels need no plotting library).

use super::{models_and_ids, summary_cell, ReportRow};
use std::fmt::Write;

const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Grouped bar chart: attack ids along x, robust accuracy (0–1) up y.
pub fn robustness_svg(rows: &[ReportRow]) -> String {
    let (models, ids) = models_and_ids(rows);
    let (left, top, plot_h, bottom) = (60.0, 40.0, 300.0, 110.0);
    let bar_w = 18.0;
    let group_w = bar_w * models.len().max(1) as f64 + 24.0;
    let plot_w = group_w * ids.len().max(1) as f64;
    let legend_h = 20.0 * models.len() as f64;
    let (width, height) = (left + plot_w + 20.0, top + plot_h + bottom + legend_h);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="24" font-size="15">Robust accuracy by attack</text>"#
    );
    for tick in 0..=5 {
        let value = tick as f64 / 5.0;
        let y = top + plot_h * (1.0 - value);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            left + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{value:.1}</text>"#,
            left - 6.0,
            y + 4.0
        );
    }
    for (g, id) in ids.iter().enumerate() {
        let x0 = left + g as f64 * group_w + 12.0;
        for (m, (model, _, _)) in models.iter().enumerate() {
            let Some(r) = summary_cell(rows, model, id) else {
                continue;
            };
            let h = plot_h * r.robust_acc.clamp(0.0, 1.0);
            let x = x0 + m as f64 * bar_w;
            let _ = writeln!(
                svg,
                r#"<rect x="{x}" y="{}" width="{}" height="{h}" fill="{}"><title>{}: {} {:.3}</title></rect>"#,
                top + plot_h - h,
                bar_w - 2.0,
                PALETTE[m % PALETTE.len()],
                escape(model),
                escape(id),
                r.robust_acc
            );
        }
        let label_x = x0 + bar_w * models.len() as f64 / 2.0;
        let label_y = top + plot_h + 12.0;
        let _ = writeln!(
            svg,
            r#"<text x="{label_x}" y="{label_y}" text-anchor="end" transform="rotate(-40 {label_x} {label_y})">{}</text>"#,
            escape(id)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    for (m, (model, _, _)) in models.iter().enumerate() {
        let y = top + plot_h + bottom + 20.0 * m as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{left}" y="{}" width="12" height="12" fill="{}"/>"#,
            y - 10.0,
            PALETTE[m % PALETTE.len()]
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{y}">{}</text>"#,
            left + 18.0,
            escape(model)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
