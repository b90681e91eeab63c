//! The portable backend: a pool of threads calling `pread` on files opened `O_DIRECT`
//! (Linux) or `F_NOCACHE` (Apple), buffered where the filesystem refuses.
//!
//! One `pread` per op: a short count is reported as is (the scheduler retries the rest);
//! only `EINTR` is retried here.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::files::OpenFiles;
use super::pool::{BlockingRead, WorkerPool};
use super::{BackendKind, BackendWaker, Completion, ReadBackend, ReadOp};

/// Default number of pread worker threads.
pub const DEFAULT_PREAD_THREADS: usize = 16;

/// Reads with `pread` on a pool of worker threads.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use io_sched::backend::{files::{OpenFiles, DirectMode}, pread::PreadBackend, ReadBackend};
/// # fn f(layout: &io_sched::ExpertLayout) -> Result<(), Box<dyn std::error::Error>> {
/// let files = Arc::new(OpenFiles::open(layout, DirectMode::Auto)?);
/// let backend = PreadBackend::new(files, 16)?;
/// println!("{}", backend.describe());
/// # Ok(()) }
/// ```
pub struct PreadBackend {
    pool: WorkerPool,
    files: Arc<OpenFiles>,
}

struct PreadReader {
    files: Arc<OpenFiles>,
}

impl BlockingRead for PreadReader {
    fn check(&self, op: &ReadOp) -> io::Result<()> {
        check_file(&self.files, op.file)?;
        Ok(())
    }

    unsafe fn read(&self, op: &ReadOp) -> io::Result<usize> {
        let fd = check_file(&self.files, op.file)?;
        let offset = libc::off_t::try_from(op.offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        loop {
            // SAFETY: the caller guarantees `op.buf` is valid for writes of `op.len` bytes and
            // unaliased; `fd` stays open because `self.files` is kept alive by the pool.
            let n = unsafe { libc::pread(fd, op.buf.cast(), op.len, offset) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

fn check_file(files: &OpenFiles, file: u32) -> io::Result<i32> {
    files.fd(file).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file index {file} out of range ({} files)", files.len()),
        )
    })
}

impl PreadBackend {
    /// Starts `threads` workers reading `files`.
    pub fn new(files: Arc<OpenFiles>, threads: usize) -> io::Result<Self> {
        let reader = Arc::new(PreadReader {
            files: files.clone(),
        });
        let pool = WorkerPool::new("flashmoe-pread", threads, reader)?;
        Ok(Self { pool, files })
    }

    /// The files this backend reads.
    pub fn files(&self) -> &OpenFiles {
        &self.files
    }
}

impl ReadBackend for PreadBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pread
    }

    fn describe(&self) -> String {
        format!(
            "pread threads={} {}",
            self.pool.threads(),
            self.files.mode_name()
        )
    }

    fn max_in_flight(&self) -> usize {
        self.pool.max_in_flight()
    }

    fn in_flight(&self) -> usize {
        self.pool.in_flight()
    }

    fn direct(&self) -> bool {
        self.files.all_direct()
    }

    unsafe fn submit(&mut self, op: ReadOp) -> io::Result<()> {
        // SAFETY: forwarded from this method's own contract.
        unsafe { self.pool.submit(op) }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Jobs start as soon as they are submitted.
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>, timeout: Option<Duration>) -> io::Result<()> {
        self.pool.reap(out, timeout)
    }

    fn waker(&self) -> BackendWaker {
        self.pool.waker()
    }
}
