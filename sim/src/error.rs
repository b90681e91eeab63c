//! Errors of the simulator: what failed and where.

/// Simulator errors.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A preset or user profile could not be read or parsed.
    #[error("profile {name}: {reason}")]
    Profile { name: String, reason: String },
    /// An unknown preset name.
    #[error("unknown {what} {name:?} (known: {known})")]
    Unknown {
        what: &'static str,
        name: String,
        known: String,
    },
    /// Invalid run parameters.
    #[error("invalid simulation setup: {0}")]
    Setup(String),
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// A trace file was rejected.
    #[error(transparent)]
    Trace(#[from] io_sched::trace::TraceError),
    /// The scheduler core refused something.
    #[error("scheduler: {0}")]
    Sched(#[from] io_sched::Error),
}

/// Result with [`SimError`].
pub type Result<T> = std::result::Result<T, SimError>;
