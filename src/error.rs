//! The library's error type: one enum, structured fields, messages that say
//! what is wrong and what to do about it.

use std::path::PathBuf;

/// Everything the library can fail with. Binaries map every variant to exit
/// code 2 (a failed robustness gate is not an error: it is reported separately).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    // The io::Error is part of the message rather than a `source`, so that
    // printing the error chain does not repeat it.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// A data file exists but is not what its format promises.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// A model file is missing, corrupt or outside the model contract.
    #[error("model {}: {message}", path.display())]
    Model { path: PathBuf, message: String },

    /// A suite file (built-in or the user's) is malformed.
    #[error("suite {file}{}{}: {message}",
        attack.as_ref().map(|a| format!(", attack `{a}`")).unwrap_or_default(),
        field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
    Suite {
        file: String,
        attack: Option<String>,
        field: Option<String>,
        message: String,
    },

    /// An inference backend failed to load or to run.
    #[error("{backend} backend: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },

    /// A command-line value or combination of values that cannot work.
    #[error("{0}")]
    Usage(String),

    /// A report, record or log line could not be formatted (a value its
    /// format cannot hold): a bug, never the user's input.
    #[error("cannot format {what}: {message}")]
    Format { what: &'static str, message: String },

    /// Training cannot go on (the loss became NaN or infinite, say).
    #[error("training stopped: {0}")]
    Training(String),

    /// An attack broke its contract (left the ε-ball or the box, or asked
    /// for what it declared it would not): a bug, never a report row.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A model error raised where the model's file is not at hand (a
    /// gradient rule, the opset upgrade); [`with_path`](Self::with_path)
    /// places it.
    pub(crate) fn unplaced(message: impl Into<String>) -> Self {
        Error::model(PathBuf::new(), message)
    }

    /// Places a model error in the model at `path`, with `context` (what
    /// was being done) before its message; other errors pass through.
    pub(crate) fn with_path(self, path: &std::path::Path, context: Option<&str>) -> Self {
        match self {
            Error::Model { path: at, message } => Error::Model {
                path: if at.as_os_str().is_empty() {
                    path.to_path_buf()
                } else {
                    at
                },
                message: match context {
                    Some(context) => format!("{context}: {message}"),
                    None => message,
                },
            },
            other => other,
        }
    }
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
