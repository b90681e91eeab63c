//! [`Fallback`]: why the read backend in use is not the one first tried, or runs without
//! something it tried (typed, so a caller can tell a slower path from a refused one).

use std::fmt;

/// One fallback taken while opening a read backend, with its reason (also logged).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// io_uring was not used (disabled by config, or it failed to start): reads go through
    /// the pread pool.
    Pread {
        /// What happened, and where.
        reason: String,
    },
    /// Direct I/O was refused for a file: its reads go through the page cache.
    Buffered {
        /// What happened, and where.
        reason: String,
    },
}

impl Fallback {
    /// The reason, as logged.
    pub fn reason(&self) -> &str {
        match self {
            Fallback::Pread { reason } | Fallback::Buffered { reason } => reason,
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}
