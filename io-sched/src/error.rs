//! Errors of io-sched. Every variant says what went wrong and where.

use std::io;
use std::path::PathBuf;

/// Where a failed read was headed: enough to find the bytes by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSite {
    /// Layer of the expert.
    pub layer: u32,
    /// Expert within the layer.
    pub expert: u32,
    /// File of its record.
    pub file: PathBuf,
    /// Byte offset of the read in the file.
    pub offset: u64,
}

impl std::fmt::Display for ReadSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "layer {} expert {} ({} @ offset {})",
            self.layer,
            self.expert,
            self.file.display(),
            self.offset
        )
    }
}

/// An io-sched error: what went wrong and where, the underlying `io::Error` kept as its
/// source. Match on [`Error::kind`] to decide what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A manifest, packed file or in-code layout is malformed.
    #[error("invalid layout: {0}")]
    Layout(String),

    /// Opening, sizing or mapping a file failed.
    #[error("{op} {path}: {source}")]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A read of an expert record failed after retries.
    #[error("read of {site} failed: {source}")]
    Read {
        site: ReadSite,
        #[source]
        source: io::Error,
    },

    /// The bytes read do not match the layout's checksum.
    #[error("checksum mismatch for {site}: expected {expected:#018x}, got {actual:#018x}")]
    Checksum {
        site: ReadSite,
        expected: u64,
        actual: u64,
    },

    /// A (layer, expert) outside the layout was asked for.
    #[error(
        "no expert record for layer {layer} expert {expert} (layout has {layers} layers x {experts} experts)"
    )]
    UnknownExpert {
        layer: u32,
        expert: u32,
        layers: u32,
        experts: u32,
    },

    /// The cache cannot hold what one acquire asked for at once.
    #[error("cache budget too small: {0}")]
    Budget(String),

    /// A read backend could not be set up.
    #[error("backend {backend}: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },

    /// The scheduler was shut down while a request was waiting.
    #[error("scheduler is shut down")]
    Shutdown,
}

/// The kind of an [`Error`], for callers that branch on it (a C ABI maps it to an error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::Layout`]: bad manifest, packed file or layout (bad input; retrying won't help).
    Layout,
    /// [`Error::File`]: opening, sizing or mapping a file failed.
    File,
    /// [`Error::Read`]: a read failed after retries (the device or file).
    Read,
    /// [`Error::Checksum`]: bytes on disk do not match the layout (corruption).
    Checksum,
    /// [`Error::UnknownExpert`]: a (layer, expert) outside the layout was asked for.
    UnknownExpert,
    /// [`Error::Budget`]: the cache (or a setting) cannot hold what was asked.
    Budget,
    /// [`Error::Backend`]: a read backend could not be set up.
    Backend,
    /// [`Error::Shutdown`]: the scheduler shut down while a request waited.
    Shutdown,
}

/// `Result` with io-sched's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What kind of error this is.
    ///
    /// ```
    /// use io_sched::{Error, ErrorKind};
    /// assert_eq!(Error::Shutdown.kind(), ErrorKind::Shutdown);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Layout(_) => ErrorKind::Layout,
            Error::File { .. } => ErrorKind::File,
            Error::Read { .. } => ErrorKind::Read,
            Error::Checksum { .. } => ErrorKind::Checksum,
            Error::UnknownExpert { .. } => ErrorKind::UnknownExpert,
            Error::Budget(_) => ErrorKind::Budget,
            Error::Backend { .. } => ErrorKind::Backend,
            Error::Shutdown => ErrorKind::Shutdown,
        }
    }

    pub(crate) fn file(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::File {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn layout(msg: impl Into<String>) -> Self {
        Error::Layout(msg.into())
    }
}
