//! The Linux backend: io_uring with registered files, registered (fixed) buffers when memlock
//! allows, deep queues and an eventfd waker.
//!
//! - Files are registered once (`register_files`) and read through `types::Fixed`; if that
//!   fails, plain fds are used and the reason is kept.
//! - [`ReadBackend::register_memory`] registers the arena as fixed buffers, split into iovecs of
//!   at most 1 GiB, and reads landing inside it use `ReadFixed` with the right `buf_index`.
//!   Without `CAP_IPC_LOCK` this counts against `RLIMIT_MEMLOCK`; on `ENOMEM` (or any other
//!   registration error) reads fall back to plain `Read` and the reason is logged and kept.
//! - The waker writes to an eventfd whose 8-byte read is kept armed in the ring under a
//!   reserved `user_data`; its completion wakes `reap` and is re-armed, never surfaced.
//! - Tags are kept in a slab: `user_data` is a slot index, so any `u64` tag is allowed.
//! - Drop wakes the eventfd read and waits for every outstanding completion before the ring
//!   closes, so the kernel never writes into a buffer after the drop returns.

use std::cell::UnsafeCell;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, opcode, squeue};

use super::eventfd::EventFd;
use super::files::OpenFiles;
use super::{BackendKind, BackendWaker, Completion, ReadBackend, ReadOp};
use crate::error::{Error, Result};

pub use super::select::{DEFAULT_QUEUE_DEPTH, RegisterBuffers};

/// Largest queue depth accepted.
pub const MAX_QUEUE_DEPTH: u32 = 4096;

/// Largest single registered buffer the kernel accepts.
const MAX_IOVEC: usize = 1 << 30;

/// `user_data` of the armed eventfd read.
const WAKE_UD: u64 = u64::MAX;

/// Settings of a [`UringBackend`].
#[derive(Debug, Clone, Copy)]
pub struct UringConfig {
    /// Reads in flight at most (1..=[`MAX_QUEUE_DEPTH`]).
    pub queue_depth: u32,
    /// Fixed-buffer policy for [`ReadBackend::register_memory`].
    pub register_buffers: RegisterBuffers,
}

impl Default for UringConfig {
    fn default() -> Self {
        Self {
            queue_depth: DEFAULT_QUEUE_DEPTH,
            register_buffers: RegisterBuffers::Auto,
        }
    }
}

/// The registered arena: `[base, base + len)` as consecutive iovecs of [`MAX_IOVEC`] bytes.
#[derive(Debug, Clone, Copy)]
struct Region {
    base: usize,
    len: usize,
}

impl Region {
    /// The fixed-buffer index holding all of `[addr, addr + len)`, if any.
    fn index_of(&self, addr: usize, len: usize) -> Option<u16> {
        let rel = addr.checked_sub(self.base)?;
        let end = rel.checked_add(len)?;
        if end > self.len {
            return None;
        }
        let index = rel / MAX_IOVEC;
        // The whole read must lie inside one iovec.
        if end > (index + 1) * MAX_IOVEC {
            return None;
        }
        u16::try_from(index).ok()
    }
}

/// Reads through io_uring. See the module docs.
pub struct UringBackend {
    ring: IoUring,
    files: Arc<OpenFiles>,
    fixed_files: bool,
    config: UringConfig,
    /// Tag of each slot; `user_data` is the slot index.
    tags: Vec<u64>,
    free: Vec<u32>,
    in_flight: usize,
    region: Option<Region>,
    registration: &'static str,
    wake: Arc<EventFd>,
    /// Where the armed eventfd read lands; only the kernel touches it.
    wake_buf: Box<UnsafeCell<u64>>,
    wake_armed: bool,
    closing: bool,
    fallbacks: Vec<String>,
    scratch: Vec<(u64, i32)>,
}

impl UringBackend {
    /// Creates a ring for `files`. Fails with [`Error::Backend`] (naming why, e.g. io_uring
    /// disabled by `kernel.io_uring_disabled` or a seccomp `EPERM`) when io_uring is unusable.
    pub fn new(files: Arc<OpenFiles>, config: UringConfig) -> Result<Self> {
        if config.queue_depth == 0 || config.queue_depth > MAX_QUEUE_DEPTH {
            return Err(backend_err(format!(
                "queue depth {} outside 1..={MAX_QUEUE_DEPTH}",
                config.queue_depth
            )));
        }
        // Reads plus the eventfd read, each submitted at most once before completing.
        let entries = config.queue_depth + 2;
        let ring = IoUring::builder()
            .dontfork()
            .build(entries)
            .map_err(|e| backend_err(setup_failure(&e)))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(backend_err(
                "kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11+) for timed waits".into(),
            ));
        }
        let mut probe = Probe::new();
        if ring.submitter().register_probe(&mut probe).is_ok()
            && !(probe.is_supported(opcode::Read::CODE)
                && probe.is_supported(opcode::ReadFixed::CODE))
        {
            return Err(backend_err(
                "kernel io_uring lacks IORING_OP_READ (needs Linux 5.6+)".into(),
            ));
        }
        let mut fallbacks = Vec::new();
        let fixed_files = match ring.submitter().register_files(&files.raw_fds()) {
            Ok(()) => true,
            Err(e) => {
                let reason = format!(
                    "io_uring: register_files of {} files failed: {e}; using plain fds",
                    files.len()
                );
                tracing::warn!("{reason}");
                fallbacks.push(reason);
                false
            }
        };
        let depth = config.queue_depth as usize;
        let mut backend = UringBackend {
            ring,
            files,
            fixed_files,
            config,
            tags: vec![0; depth],
            free: (0..config.queue_depth).rev().collect(),
            in_flight: 0,
            region: None,
            registration: "unregistered-buffers",
            wake: Arc::new(EventFd::new().map_err(|e| backend_err(format!("eventfd: {e}")))?),
            wake_buf: Box::new(UnsafeCell::new(0)),
            wake_armed: false,
            closing: false,
            fallbacks,
            scratch: Vec::with_capacity(depth + 2),
        };
        if let Err(e) = backend
            .arm_wake()
            .and_then(|()| backend.ring.submit().map(|_| ()))
        {
            // The eventfd counter is 0, so a read the kernel took is only poll-armed and is
            // cancelled without writing when the ring closes: drop need not wait for it.
            backend.wake_armed = false;
            return Err(backend_err(format!("arming the eventfd waker: {e}")));
        }
        Ok(backend)
    }

    /// Why this backend runs with less than it could (fixed files, fixed buffers), one line each.
    pub fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    /// Whether reads into the arena use registered (fixed) buffers.
    pub fn buffers_registered(&self) -> bool {
        self.region.is_some()
    }

    /// Whether files are registered with the ring.
    pub fn files_registered(&self) -> bool {
        self.fixed_files
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let sqe = opcode::Read::new(
            Fd(self.wake.as_raw_fd()),
            self.wake_buf.get().cast::<u8>(),
            std::mem::size_of::<u64>() as u32,
        )
        .build()
        .user_data(WAKE_UD);
        // SAFETY: `wake_buf` is a heap cell owned by `self`, freed only after drop has waited
        // for this read's completion; the eventfd lives in `self.wake`.
        unsafe { self.push(&sqe)? };
        self.wake_armed = true;
        Ok(())
    }

    /// Pushes one entry, submitting queued ones first if the queue is full.
    ///
    /// # Safety
    /// Every pointer in `sqe` must stay valid until its completion is seen.
    unsafe fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.submit_pending()?;
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "io_uring submission queue full",
        ))
    }

    /// Hands queued entries to the kernel; transient refusals leave them queued.
    fn submit_pending(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves finished reads to `out` (or drops them when `out` is `None`, at drop), re-arming
    /// the waker's read. Returns whether the waker fired.
    fn drain(&mut self, mut out: Option<&mut Vec<Completion>>) -> bool {
        self.scratch.clear();
        self.scratch.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        let mut woken = false;
        for i in 0..self.scratch.len() {
            let (ud, res) = self.scratch[i];
            if ud == WAKE_UD {
                self.wake_armed = false;
                woken = true;
                if res < 0 && res != -libc::ECANCELED {
                    tracing::debug!(
                        "io_uring eventfd read failed: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                if !self.closing
                    && let Err(e) = self.arm_wake()
                {
                    tracing::error!("io_uring: cannot re-arm the waker: {e}");
                }
                continue;
            }
            let Some(tag) = usize::try_from(ud)
                .ok()
                .and_then(|s| self.tags.get(s).copied())
            else {
                tracing::error!("io_uring: completion with unknown user_data {ud}");
                continue;
            };
            self.free.push(ud as u32);
            self.in_flight -= 1;
            if let Some(out) = out.as_deref_mut() {
                let result = if res >= 0 {
                    Ok(res as usize)
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
                out.push(Completion { tag, result });
            }
        }
        woken
    }

    /// Submits queued entries and waits for one completion, at most `timeout`.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = Timespec::from(t);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn register(&mut self, ptr: *mut u8, len: usize) -> io::Result<()> {
        let count = len.div_ceil(MAX_IOVEC);
        if count > usize::from(u16::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes need {count} iovecs, more than io_uring accepts"),
            ));
        }
        let iovecs: Vec<libc::iovec> = (0..count)
            .map(|i| libc::iovec {
                iov_base: ptr.wrapping_add(i * MAX_IOVEC).cast(),
                iov_len: MAX_IOVEC.min(len - i * MAX_IOVEC),
            })
            .collect();
        // SAFETY: the caller of `register_memory` keeps `ptr..ptr+len` allocated until the
        // backend is dropped, and the ring (which holds the registration) is dropped with it.
        unsafe { self.ring.submitter().register_buffers(&iovecs) }
    }
}

impl ReadBackend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::IoUring
    }

    fn describe(&self) -> String {
        format!(
            "io_uring qd={} {} {} {}",
            self.config.queue_depth,
            self.files.mode_name(),
            if self.fixed_files {
                "fixed-files"
            } else {
                "plain-fds"
            },
            self.registration
        )
    }

    fn max_in_flight(&self) -> usize {
        self.config.queue_depth as usize
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn direct(&self) -> bool {
        self.files.all_direct()
    }

    unsafe fn register_memory(&mut self, ptr: *mut u8, len: usize) -> io::Result<bool> {
        if self.in_flight > 0 {
            return Err(io::Error::other(
                "register_memory called with reads in flight",
            ));
        }
        // Any earlier registration is withdrawn first, so its memory may be freed after this.
        if self.region.take().is_some() {
            self.ring.submitter().unregister_buffers()?;
        }
        if self.config.register_buffers == RegisterBuffers::Off || len == 0 || ptr.is_null() {
            self.registration = "unregistered-buffers";
            return Ok(false);
        }
        match self.register(ptr, len) {
            Ok(()) => {
                self.region = Some(Region {
                    base: ptr as usize,
                    len,
                });
                self.registration = "registered-buffers";
                Ok(true)
            }
            Err(e) if self.config.register_buffers == RegisterBuffers::Require => Err(e),
            Err(e) => {
                let reason = format!(
                    "io_uring: buffer registration (register_buffers) of {} MiB failed: {e}{}; \
                     reading with plain Read into unregistered buffers",
                    len >> 20,
                    memlock_hint(&e)
                );
                tracing::warn!("{reason}");
                self.fallbacks.push(reason);
                self.registration = "unregistered-buffers (registration failed)";
                Ok(false)
            }
        }
    }

    unsafe fn submit(&mut self, op: ReadOp) -> io::Result<()> {
        let Some(&slot) = self.free.last() else {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} reads in flight: reap before submitting more",
                    self.in_flight
                ),
            ));
        };
        let fd = self.files.fd(op.file).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "file index {} out of range ({} files)",
                    op.file,
                    self.files.len()
                ),
            )
        })?;
        let len = u32::try_from(op.len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read longer than 4 GiB"))?;
        let index = self
            .region
            .and_then(|r| r.index_of(op.buf as usize, op.len));
        let sqe = match (index, self.fixed_files) {
            (Some(i), true) => opcode::ReadFixed::new(Fixed(op.file), op.buf, len, i)
                .offset(op.offset)
                .build(),
            (Some(i), false) => opcode::ReadFixed::new(Fd(fd), op.buf, len, i)
                .offset(op.offset)
                .build(),
            (None, true) => opcode::Read::new(Fixed(op.file), op.buf, len)
                .offset(op.offset)
                .build(),
            (None, false) => opcode::Read::new(Fd(fd), op.buf, len)
                .offset(op.offset)
                .build(),
        };
        // SAFETY: the caller guarantees `op.buf` is valid for `op.len` bytes until its
        // completion is reaped or the backend dropped; drop waits for every completion.
        unsafe { self.push(&sqe.user_data(u64::from(slot)))? };
        self.free.pop();
        self.tags[slot as usize] = op.tag;
        self.in_flight += 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.submit_pending()
    }

    fn reap(&mut self, out: &mut Vec<Completion>, timeout: Option<Duration>) -> io::Result<()> {
        let before = out.len();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let woken = self.drain(Some(out));
            if out.len() > before || woken {
                // Hands the re-armed waker read (and anything queued) to the kernel.
                return self.submit_pending();
            }
            match (timeout, deadline) {
                (Some(Duration::ZERO), _) => {
                    // One pass through the kernel, which also runs pending task work.
                    self.submit_pending()?;
                    self.drain(Some(out));
                    return self.submit_pending();
                }
                (Some(_), Some(deadline)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(());
                    }
                    self.wait(Some(deadline - now))?;
                }
                _ => self.wait(None)?,
            }
        }
    }

    fn waker(&self) -> BackendWaker {
        let wake = self.wake.clone();
        Arc::new(move || wake.wake())
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // Complete the armed eventfd read, then wait for every outstanding read: the kernel
        // must not write into `wake_buf` or a caller's buffer after this returns.
        self.closing = true;
        if self.wake_armed {
            self.wake.wake();
        }
        let mut logged = false;
        while self.in_flight > 0 || self.wake_armed {
            if let Err(e) = self.ring.submit_and_wait(1)
                && !is_transient(&e)
            {
                if !logged {
                    tracing::error!(
                        "io_uring: waiting for {} reads at drop failed: {e}; retrying",
                        self.in_flight
                    );
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            self.drain(None);
        }
    }
}

fn backend_err(reason: String) -> Error {
    Error::Backend {
        backend: "io_uring",
        reason,
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// A message for an io_uring_setup failure that says whether io_uring is turned off.
fn setup_failure(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_string());
    let why = match (e.raw_os_error(), disabled.as_deref()) {
        (Some(libc::ENOSYS), _) => {
            "the kernel has no io_uring (built without it, or the syscall is filtered)".to_string()
        }
        (Some(libc::EPERM), Some(d)) if d != "0" => {
            format!("io_uring is disabled (kernel.io_uring_disabled = {d})")
        }
        (Some(libc::EPERM), _) => {
            "io_uring is not permitted here (seccomp or container policy)".to_string()
        }
        (Some(libc::ENOMEM), _) => "not enough memory for the ring".to_string(),
        _ => "io_uring is unusable here".to_string(),
    };
    format!("io_uring_setup failed: {e}: {why}")
}

/// For `ENOMEM`, names the memlock limit and the capability that lifts it.
fn memlock_hint(e: &io::Error) -> String {
    if e.raw_os_error() != Some(libc::ENOMEM) {
        return String::new();
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return " (memlock limit exceeded?)".to_string();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return " (RLIMIT_MEMLOCK is unlimited)".to_string();
    }
    format!(
        " (RLIMIT_MEMLOCK is {} KiB and the ring was created without CAP_IPC_LOCK; \
         raise `ulimit -l` to register)",
        lim.rlim_cur >> 10
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_index_stays_inside_one_iovec() {
        let r = Region {
            base: 1 << 20,
            len: 3 * MAX_IOVEC,
        };
        assert_eq!(r.index_of(1 << 20, 4096), Some(0));
        assert_eq!(r.index_of((1 << 20) + MAX_IOVEC, 4096), Some(1));
        // Straddles the first and second iovec.
        assert_eq!(r.index_of((1 << 20) + MAX_IOVEC - 4096, 8192), None);
        // Outside the region.
        assert_eq!(r.index_of(0, 4096), None);
        assert_eq!(r.index_of((1 << 20) + 3 * MAX_IOVEC - 4096, 8192), None);
    }
}
