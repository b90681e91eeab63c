//! Status codes, the thread-local last-error message, and the wrapper every exported function
//! runs its body in (argument checks, no panic across the boundary).

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a call returned. `FMIO_STATUS_OK` is 0; every other value is an error whose message
/// `fmio_last_error` gives on the same thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FmioStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    Null = 1,
    /// An argument is out of range or malformed (not UTF-8, unknown name, zero count).
    InvalidArgument = 2,
    /// The layout or manifest is malformed.
    Layout = 3,
    /// Opening, sizing or mapping a file failed.
    File = 4,
    /// A read of an expert record failed after retries.
    Read = 5,
    /// The bytes read do not match the record's checksum.
    Checksum = 6,
    /// A (layer, expert) outside the layout was asked for.
    UnknownExpert = 7,
    /// The budget cannot hold what was asked for.
    Budget = 8,
    /// The read backend could not be set up.
    Backend = 9,
    /// The session was shut down while a request waited.
    Shutdown = 10,
    /// A bug: the library panicked (the message says where); the handle may be unusable.
    Internal = 11,
}

/// An error on its way to C: a status and a message naming what and where.
#[derive(Debug)]
pub(crate) struct CError {
    pub status: FmioStatus,
    pub message: String,
}

impl CError {
    pub fn new(status: FmioStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A NULL pointer given for `arg` of `func`.
    pub fn null(func: &str, arg: &str) -> Self {
        Self::new(FmioStatus::Null, format!("{func}: `{arg}` is NULL"))
    }

    /// A bad value of `arg` of `func`.
    pub fn invalid(func: &str, arg: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            FmioStatus::InvalidArgument,
            format!("{func}: `{arg}` {why}"),
        )
    }

    /// An io-sched error met in `func`, its whole source chain in the message.
    pub fn sched(func: &str, e: &io_sched::Error) -> Self {
        use io_sched::ErrorKind as K;
        let status = match e.kind() {
            K::Layout => FmioStatus::Layout,
            K::File => FmioStatus::File,
            K::Read => FmioStatus::Read,
            K::Checksum => FmioStatus::Checksum,
            K::UnknownExpert => FmioStatus::UnknownExpert,
            K::Budget => FmioStatus::Budget,
            K::Backend => FmioStatus::Backend,
            K::Shutdown => FmioStatus::Shutdown,
            // A kind added to io-sched after this mapping: still an error, named in the message.
            _ => FmioStatus::Internal,
        };
        let mut message = format!("{func}: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        Self::new(status, message)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Stores `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    // An interior NUL cannot go through a C string: show it as an escape.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

/// Runs `body` for the exported function `func`: its error or panic becomes a status and this
/// thread's last error; success returns `FMIO_STATUS_OK` (and leaves the last error as it was).
pub(crate) fn ffi(func: &str, body: impl FnOnce() -> Result<(), CError>) -> FmioStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => FmioStatus::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("{func}: internal error (panic): {what}"));
            FmioStatus::Internal
        }
    }
}

/// Like [`ffi`] for functions that return a value instead of a status: `fallback` on error.
pub(crate) fn ffi_value<T>(func: &str, fallback: T, body: impl FnOnce() -> Result<T, CError>) -> T {
    let mut out = None;
    let status = ffi(func, || {
        out = Some(body()?);
        Ok(())
    });
    match (status, out) {
        (FmioStatus::Ok, Some(v)) => v,
        _ => fallback,
    }
}

/// This thread's last error message, or NULL if no call on this thread has failed yet.
///
/// The string stays valid until the next failing call on the same thread. Thread-safety: each
/// thread has its own last error; call it from the thread that got the error status.
#[unsafe(no_mangle)]
pub extern "C" fn fmio_last_error() -> *const c_char {
    LAST_ERROR.with(|e| match &*e.borrow() {
        Some(c) => c.as_ptr(),
        None => std::ptr::null(),
    })
}

/// A short constant name for a status code (`"FMIO_STATUS_NULL"`); `"FMIO_STATUS_UNKNOWN"` for
/// a value that is none of them. Never NULL. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn fmio_status_name(status: i32) -> *const c_char {
    let s: &'static [u8] = match status {
        0 => b"FMIO_STATUS_OK\0",
        1 => b"FMIO_STATUS_NULL\0",
        2 => b"FMIO_STATUS_INVALID_ARGUMENT\0",
        3 => b"FMIO_STATUS_LAYOUT\0",
        4 => b"FMIO_STATUS_FILE\0",
        5 => b"FMIO_STATUS_READ\0",
        6 => b"FMIO_STATUS_CHECKSUM\0",
        7 => b"FMIO_STATUS_UNKNOWN_EXPERT\0",
        8 => b"FMIO_STATUS_BUDGET\0",
        9 => b"FMIO_STATUS_BACKEND\0",
        10 => b"FMIO_STATUS_SHUTDOWN\0",
        11 => b"FMIO_STATUS_INTERNAL\0",
        _ => b"FMIO_STATUS_UNKNOWN\0",
    };
    s.as_ptr().cast()
}
