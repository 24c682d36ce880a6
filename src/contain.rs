//! Panics inside a dependency, turned into errors.
//!
//! tract panics on some hostile models (an allocation of a constant folded
//! from a huge declared shape, say) instead of returning an error. Calls into
//! it go through [`contained`], which turns such a panic into an
//! [`Error::Backend`] with the panic's message and keeps the default hook
//! from printing a backtrace for it. A bug of upat's own still panics loudly.

use crate::error::{Error, Result};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs a contained call.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a call into `backend`); a panic in it becomes an error saying
/// `context` and what the panic said.
pub fn contained<T>(
    backend: &'static str,
    context: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = CONTAINED.with(|c| c.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    outcome.unwrap_or_else(|payload| {
        let said = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Error::Backend {
            backend,
            message: format!(
                "{context}: it failed on this model ({}); the model may be malformed or declare sizes too large to work with",
                said.lines().next().unwrap_or("")
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_values_pass_through() {
        let err = contained::<()>("tract", "cannot load", || {
            panic!("failed to allocate Layout")
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cannot load") && err.contains("failed to allocate"),
            "{err}"
        );
        assert_eq!(contained("tract", "x", || Ok(3)).unwrap(), 3);
    }
}
