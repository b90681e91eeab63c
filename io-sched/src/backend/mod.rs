//! Read backends: how expert bytes get from files into cache slots.
//!
//! Every backend moves byte ranges of already-opened files into caller-owned buffers and
//! reports completions by tag. The scheduler core never touches a syscall; backends do.
//!
//! | backend | file mode | how |
//! |---|---|---|
//! | `uring` (Linux) | `O_DIRECT` | io_uring, registered files, registered buffers when memlock allows |
//! | `pread` | `O_DIRECT` (Linux) / `F_NOCACHE` (Apple), buffered fallback | a pool of threads calling `pread` |
//! | `mmap` | page cache | a pool of threads copying out of a `memmap2` mapping ("trust the OS") |
//! | `faulty` | wraps any | injects EIO, short reads and delays, for tests |

pub mod fallback;
pub mod memory;

#[cfg(target_os = "linux")]
mod eventfd;
pub mod faulty;
pub mod files;
pub mod mmap;
mod pool;
pub mod pread;
pub mod select;
#[cfg(target_os = "linux")]
pub mod uring;

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// One read: `len` bytes at `offset` of file `file` into `buf`.
///
/// Built by the scheduler core; `tag` comes back in the matching [`Completion`].
#[derive(Debug, Clone, Copy)]
pub struct ReadOp {
    pub tag: u64,
    pub file: u32,
    pub offset: u64,
    pub len: usize,
    pub buf: *mut u8,
}

// SAFETY: a ReadOp is a plain description of a read; the pointer is only dereferenced by the
// backend under the contract of `ReadBackend::submit`, which makes the submitter keep the
// buffer alive and unaliased until completion, whatever thread performs the read.
unsafe impl Send for ReadOp {}

/// A finished read: bytes transferred (possibly short) or the OS error.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub result: io::Result<usize>,
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    IoUring,
    Pread,
    Mmap,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::IoUring => "io_uring",
            BackendKind::Pread => "pread",
            BackendKind::Mmap => "mmap",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "io_uring" | "io-uring" | "uring" => Ok(BackendKind::IoUring),
            "pread" => Ok(BackendKind::Pread),
            "mmap" => Ok(BackendKind::Mmap),
            other => Err(format!(
                "unknown read backend {other:?} (expected io_uring, pread or mmap)"
            )),
        }
    }
}

/// Wakes a thread blocked in [`ReadBackend::reap`] from any other thread.
pub type BackendWaker = Arc<dyn Fn() + Send + Sync>;

/// A source of reads with completions, driven by one thread at a time.
///
/// Contract: the driver calls [`submit`](Self::submit) for up to
/// [`max_in_flight`](Self::max_in_flight) reads, [`flush`](Self::flush)es them, then
/// [`reap`](Self::reap)s completions. Every submitted tag comes back exactly once, even on
/// error. Dropping a backend waits for reads still in flight, so buffers are never written
/// after the drop returns.
pub trait ReadBackend: Send {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// One line for logs and tables, e.g. `io_uring qd=32 O_DIRECT registered-buffers`.
    fn describe(&self) -> String;

    /// Most reads this backend accepts before one must be reaped.
    fn max_in_flight(&self) -> usize;

    /// Reads submitted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// Whether reads go around the page cache (and so need aligned offsets, lengths, buffers).
    fn direct(&self) -> bool;

    /// Offers the memory all reads will land in, so the backend can register it
    /// (io_uring fixed buffers). Returns whether it did. Optional to call.
    ///
    /// A later call replaces the registration (a null `ptr` with `len == 0` withdraws it);
    /// it must be made with no reads in flight (backends may refuse otherwise).
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay allocated until the backend is dropped or this method has
    /// returned `Ok` from a later call (which replaced the registration).
    unsafe fn register_memory(&mut self, ptr: *mut u8, len: usize) -> io::Result<bool> {
        let _ = (ptr, len);
        Ok(false)
    }

    /// Queues one read. Fails only when the op is malformed (bad file index) or the queue is
    /// full; device errors arrive as completions.
    ///
    /// # Safety
    /// `op.buf` must be valid for writes of `op.len` bytes, and must be neither read nor
    /// written by anyone else until the completion for `op.tag` has been returned by `reap`
    /// (or the backend has been dropped).
    unsafe fn submit(&mut self, op: ReadOp) -> io::Result<()>;

    /// Hands queued reads to the device.
    fn flush(&mut self) -> io::Result<()>;

    /// Appends finished reads to `out`. With `timeout == Some(ZERO)` it only polls; otherwise
    /// it blocks until at least one completion is ready, the waker was called, or the timeout
    /// passed (`None`: no timeout).
    fn reap(&mut self, out: &mut Vec<Completion>, timeout: Option<Duration>) -> io::Result<()>;

    /// A handle that makes a blocked [`reap`](Self::reap) return early.
    fn waker(&self) -> BackendWaker;
}
