//! Choosing and opening a read backend, with a reason for every fallback.
//!
//! Automatic choice: io_uring on Linux (unless `allow_io_uring` is off or it fails to start),
//! else the pread pool. A kind asked for explicitly that cannot start is an error. Files that
//! refuse direct I/O under [`DirectMode::Auto`] are read buffered, also with a reason.

use std::sync::Arc;

use super::fallback::Fallback;
use super::files::{DirectMode, OpenFiles};
use super::mmap::{DEFAULT_MMAP_THREADS, MmapBackend};
use super::pread::{DEFAULT_PREAD_THREADS, PreadBackend};
#[cfg(target_os = "linux")]
use super::uring::UringBackend;
use super::{BackendKind, ReadBackend};
use crate::error::{Error, Result};
use crate::layout::ExpertLayout;

/// Default io_uring queue depth (reads in flight).
pub const DEFAULT_QUEUE_DEPTH: u32 = 32;

/// Whether io_uring registers the arena as fixed buffers (see `uring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegisterBuffers {
    /// Register; on failure (e.g. `ENOMEM` from the memlock limit) read unregistered, with a reason.
    #[default]
    Auto,
    /// Never register.
    Off,
    /// Register or fail.
    Require,
}

/// How to pick and set up a backend.
///
/// ```no_run
/// # use io_sched::backend::select::{open_backend, BackendConfig};
/// # fn f(layout: &io_sched::ExpertLayout) -> io_sched::Result<()> {
/// let opened = open_backend(layout, &BackendConfig::default())?;
/// println!("reading with {}", opened.backend.describe());
/// for why in &opened.fallbacks { println!("fallback: {why}"); }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendConfig {
    /// The backend to use; `None` picks automatically.
    pub kind: Option<BackendKind>,
    /// io_uring reads in flight (its `max_in_flight`).
    pub queue_depth: u32,
    /// Worker threads of pread / mmap (also their reads in flight); `None`: 16 for pread,
    /// 8 for mmap.
    pub threads: Option<usize>,
    /// Direct I/O policy (pread and io_uring; mmap always reads through the page cache).
    pub direct: DirectMode,
    /// io_uring fixed-buffer policy.
    pub register_buffers: RegisterBuffers,
    /// Whether the automatic choice may use io_uring.
    pub allow_io_uring: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: None,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            threads: None,
            direct: DirectMode::Auto,
            register_buffers: RegisterBuffers::Auto,
            allow_io_uring: true,
        }
    }
}

/// A started backend and why it is not the one that was preferred, one line per reason.
impl BackendConfig {
    /// Forces a backend (`None`: choose automatically, io_uring first on Linux).
    pub fn kind(mut self, kind: impl Into<Option<BackendKind>>) -> Self {
        self.kind = kind.into();
        self
    }

    /// io_uring queue depth (default 32).
    pub fn queue_depth(mut self, depth: u32) -> Self {
        self.queue_depth = depth;
        self
    }

    /// Threads of the pread or mmap pool (`None`: the backend's default).
    pub fn threads(mut self, threads: impl Into<Option<usize>>) -> Self {
        self.threads = threads.into();
        self
    }

    /// Direct I/O: `Auto` (try, fall back to buffered with a reason), `Off`, or `Require`.
    pub fn direct(mut self, mode: DirectMode) -> Self {
        self.direct = mode;
        self
    }

    /// Registering the cache arena with io_uring.
    pub fn register_buffers(mut self, mode: RegisterBuffers) -> Self {
        self.register_buffers = mode;
        self
    }

    /// Whether the automatic choice may use io_uring (default true).
    pub fn allow_io_uring(mut self, allow: bool) -> Self {
        self.allow_io_uring = allow;
        self
    }
}

pub struct OpenedBackend {
    pub backend: Box<dyn ReadBackend>,
    pub fallbacks: Vec<Fallback>,
}

impl std::fmt::Debug for OpenedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedBackend")
            .field("backend", &self.backend.describe())
            .field("fallbacks", &self.fallbacks)
            .finish()
    }
}

/// Opens the files of `layout` and starts the backend `cfg` asks for.
pub fn open_backend(layout: &ExpertLayout, cfg: &BackendConfig) -> Result<OpenedBackend> {
    let mut fallbacks = Vec::new();
    let kind = match cfg.kind {
        Some(kind) => kind,
        None if !cfg!(target_os = "linux") => BackendKind::Pread,
        None if !cfg.allow_io_uring => {
            fallbacks.push(note(Fallback::Pread {
                reason: "io_uring disabled by config (allow_io_uring = false); using pread".into(),
            }));
            BackendKind::Pread
        }
        None => BackendKind::IoUring,
    };
    if cfg.kind == Some(BackendKind::IoUring) && !cfg.allow_io_uring {
        return Err(Error::Backend {
            backend: "io_uring",
            reason: "asked for explicitly but allow_io_uring is false".into(),
        });
    }
    if kind == BackendKind::Mmap {
        if cfg.direct == DirectMode::Require {
            return Err(Error::Backend {
                backend: "mmap",
                reason: "reads through the page cache; it cannot honour direct = Require".into(),
            });
        }
        let threads = cfg.threads.unwrap_or(DEFAULT_MMAP_THREADS);
        let backend = Box::new(MmapBackend::open(layout, threads)?);
        return Ok(OpenedBackend { backend, fallbacks });
    }

    let files = Arc::new(OpenFiles::open(layout, cfg.direct)?);
    fallbacks.extend(
        files
            .fallbacks()
            .iter()
            .map(|r| Fallback::Buffered { reason: r.clone() }),
    );
    if kind == BackendKind::IoUring {
        match start_uring(files.clone(), cfg) {
            Ok(backend) => return Ok(OpenedBackend { backend, fallbacks }),
            Err(e) if cfg.kind.is_some() => return Err(e),
            Err(e) => fallbacks.push(note(Fallback::Pread {
                reason: format!("{e}; using pread"),
            })),
        }
    }
    let threads = cfg.threads.unwrap_or(DEFAULT_PREAD_THREADS);
    let backend = PreadBackend::new(files, threads).map_err(|e| Error::Backend {
        backend: "pread",
        reason: format!("cannot start {threads} threads: {e}"),
    })?;
    Ok(OpenedBackend {
        backend: Box::new(backend),
        fallbacks,
    })
}

fn note(f: Fallback) -> Fallback {
    tracing::warn!("read backend fallback: {f}");
    f
}

#[cfg(target_os = "linux")]
fn start_uring(files: Arc<OpenFiles>, cfg: &BackendConfig) -> Result<Box<dyn ReadBackend>> {
    let config = super::uring::UringConfig {
        queue_depth: cfg.queue_depth,
        register_buffers: cfg.register_buffers,
    };
    Ok(Box::new(UringBackend::new(files, config)?))
}

#[cfg(not(target_os = "linux"))]
fn start_uring(_files: Arc<OpenFiles>, _cfg: &BackendConfig) -> Result<Box<dyn ReadBackend>> {
    Err(Error::Backend {
        backend: "io_uring",
        reason: "io_uring exists only on Linux".into(),
    })
}
