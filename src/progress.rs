//! How long-running work (attacks over many samples) reports how far it got.
//! The library only calls this trait; the CLI draws a bar on a terminal and
//! prints plain lines otherwise.

/// A sink for progress.
pub trait Progress {
    /// A finished step worth a line of its own.
    fn line(&mut self, text: &str);
    /// Work of `total` units (samples) named `label` begins.
    fn begin(&mut self, _label: &str, _total: u64) {}
    /// `units` more are done.
    fn advance(&mut self, _units: u64) {}
}

/// Progress as plain lines handed to a closure; no bars.
pub struct Lines<F: FnMut(&str)>(pub F);

impl<F: FnMut(&str)> Progress for Lines<F> {
    fn line(&mut self, text: &str) {
        (self.0)(text)
    }
}
