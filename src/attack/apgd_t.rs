//! APGD-T: Auto-PGD on the targeted DLR loss (Croce & Hein 2020), towards
//! each of the `targets` highest-scoring wrong classes of the clean image in
//! turn (default 9, AutoAttack's standard; fewer when the model has fewer
//! classes), each a full APGD run on the samples not fooled yet. The
//! algorithm and its constants are `apgd.rs`'s.
//!
//! Targeted DLR: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12), so the model
//! needs at least 4 classes.
//!
//! Suite fields: `norm` (linf | l2), `eps`, `steps` (default 100),
//! `restarts` (per target, default 1), `targets` (default 9).

use super::apgd::{apgd_norm, apgd_steps, Apgd, Objective};
use super::registry::{Entry, FieldError};
use super::{Attack, Fields};
use std::sync::Arc;

pub const ENTRY: Entry = Entry {
    kind: "apgd-t",
    build,
    fields: &["norm", "eps", "steps", "restarts", "targets"],
    about: "Auto-PGD on the targeted DLR loss, towards each of the 9 highest-scoring wrong classes (Croce & Hein 2020)",
};

/// AutoAttack's number of target classes.
pub const DEFAULT_TARGETS: u32 = 9;

/// `kind = "apgd-t"`.
pub fn build(fields: &Fields) -> Result<Arc<dyn Attack>, FieldError> {
    let classes = fields.target_classes.unwrap_or(DEFAULT_TARGETS);
    if classes == 0 {
        return Err(FieldError::new("targets", "apgd-t needs targets >= 1"));
    }
    Ok(Arc::new(Apgd::new(
        "apgd-t",
        apgd_norm(fields)?,
        fields.eps("apgd-t")?,
        apgd_steps(fields)?,
        fields.restarts,
        Objective::Targeted { classes },
    )))
}
