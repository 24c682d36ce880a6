//! `upat`: train image classifiers that are robust without labels (UPAT), and
//! audit any ONNX image classifier against adversarial attacks.
//!
//! ```text
//!  data/ ──────────────┐  IDX, CIFAR binary, npz → Dataset (NCHW f32 in [0,1])
//!  onnx/ ── OnnxModel ─┼─ ClassifierGraph (one image input, one logits output,
//!                      │                   normalisation folded in)
//!  runtime/ ───────────┤  trait Classifier: ort (ONNX Runtime, loaded at run time), tract
//!  attack/ ────────────┤  trait Attack + trait Model, one file per attack, registry, Suite (TOML)
//!  audit/ ─────────────┤  plan, the one batching loop (drive), victim, gates → per-sample outcomes
//!  report/ ────────────┘  outcomes → rows (Tally); report.csv, summary.csv, samples.csv (atomic)
//!  bin/upat-audit.rs, bin/upat-train.rs: thin CLIs over the above
//! ```
//!
//! Pixel space is always `[0, 1]`: attack budgets are in those units, and any
//! normalisation lives inside the model graph.

pub mod atomic;
pub mod attack;
pub mod audit;
pub mod cli;
pub mod contain;
pub mod data;
pub mod embedding;
pub mod error;
pub mod limits;
pub mod onnx;
pub mod progress;
pub mod report;
pub mod runtime;
#[cfg(feature = "train")]
pub mod train;

pub use error::{Error, Result};
