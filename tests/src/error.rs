//! The harness's error type: every failure says which command or file it concerns.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what} did not happen within {timeout:?}: {detail}")]
    Timeout {
        what: String,
        timeout: Duration,
        detail: String,
    },
    #[error("unexpected output from {source_name}: {reason}")]
    Parse { source_name: String, reason: String },
    #[error("precondition not met: {0}")]
    Precondition(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adapter for `map_err`: wraps an I/O error with what was being done.
pub(crate) fn io_context(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
