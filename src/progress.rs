//! How long-running work (attacks over many samples, training epochs) reports
//! how far it got. The library only calls this trait; the CLIs draw a bar on a
//! terminal and print plain lines otherwise.

/// A sink for progress.
pub trait Progress {
    /// A finished step worth a line of its own.
    fn line(&mut self, text: &str);
    /// Work of `total` units (samples) named `label` begins.
    fn begin(&mut self, _label: &str, _total: u64) {}
    /// `units` more are done.
    fn advance(&mut self, _units: u64) {}
    /// A running figure of the work in flight (a training loss, say), shown
    /// beside the bar; plain-line sinks ignore it.
    fn status(&mut self, _text: &str) {}
}

/// Progress as plain lines handed to a closure; no bars.
pub struct Lines<F: FnMut(&str)>(pub F);

impl<F: FnMut(&str)> Progress for Lines<F> {
    fn line(&mut self, text: &str) {
        (self.0)(text)
    }
}

/// A bar per unit of work on a terminal's stderr; plain lines on stderr
/// otherwise (CI logs, pipes), where a bar would only be noise.
pub struct TerminalProgress {
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    /// What a unit is called in the bar ("samples", "images").
    unit: &'static str,
}

impl TerminalProgress {
    pub fn new(unit: &'static str) -> Self {
        TerminalProgress {
            bar: None,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            unit,
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Progress for TerminalProgress {
    fn line(&mut self, text: &str) {
        self.clear();
        eprintln!("{text}");
    }

    fn begin(&mut self, label: &str, total: u64) {
        self.clear();
        if self.tty {
            let bar = indicatif::ProgressBar::new(total);
            let template = format!(
                "  {{prefix:<24}} [{{bar:30}}] {{pos}}/{{len}} {}, {{eta}} left {{msg}}",
                self.unit
            );
            let style = indicatif::ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.set_prefix(label.to_string());
            self.bar = Some(bar);
        }
    }

    fn advance(&mut self, units: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(units);
        }
    }

    fn status(&mut self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
        }
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.clear();
    }
}
