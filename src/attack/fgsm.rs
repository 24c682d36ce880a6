//! The fast gradient sign method (Goodfellow et al. 2015), generalised to
//! ℓ2 and ℓ1 steps: one step of size ε along the steepest-ascent direction
//! of the loss from the clean image. Runs as PGD with one step (`pgd.rs`).
//!
//! Suite fields: `norm`, `eps`, `loss` (ce, margin or dlr); `steps = 1` is
//! accepted. Step size, restarts and random starts are PGD's: FGSM refuses them.

use super::registry::{Entry, FieldError};
use super::{Attack, Fields, Pgd};
use std::sync::Arc;

pub const ENTRY: Entry = Entry {
    kind: "fgsm",
    build,
    fields: &["norm", "eps", "steps", "loss"],
    about: "fast gradient sign method: one step of size eps (Goodfellow et al. 2015)",
};

/// `kind = "fgsm"`.
pub fn build(fields: &Fields) -> Result<Arc<dyn Attack>, FieldError> {
    let eps = fields.eps("fgsm")?;
    if fields.steps.is_some_and(|s| s != 1) {
        return Err(FieldError::new(
            "steps",
            "FGSM is a single step; use kind = \"pgd\" for more",
        ));
    }
    if fields.step_size.is_some() {
        return Err(FieldError::new(
            "step_size",
            "FGSM's step is eps; use kind = \"pgd\" for another step size",
        ));
    }
    if fields.restarts != 1 || fields.random_start == Some(true) {
        return Err(FieldError::new(
            if fields.restarts != 1 { "restarts" } else { "random_start" },
            "FGSM starts from the clean image once; use kind = \"pgd\" for random starts and restarts",
        ));
    }
    let loss = fields.untargeted_loss("fgsm")?;
    Ok(Arc::new(Pgd::fgsm(fields.norm, eps, loss)))
}
