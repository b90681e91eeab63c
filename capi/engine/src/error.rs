//! Status codes, the thread-local last-error message, and the wrapper every exported function
//! runs its body in (argument checks, no panic across the boundary).

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a call returned. `FME_STATUS_OK` is 0; every other value is an error whose message
/// `fme_last_error` gives on the same thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FmeStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    Null = 1,
    /// An argument is out of range or malformed (not UTF-8, unknown name, context full).
    InvalidArgument = 2,
    /// A model file (config, tokenizer, weights, manifest) is missing or malformed.
    Model = 3,
    /// Reading experts through io-sched failed (I/O error, checksum, budget).
    Io = 4,
    /// The compute backend failed.
    Compute = 5,
    /// Another thread is generating with this model.
    Busy = 6,
    /// Generation was cancelled (`fme_model_cancel` or the token callback); call
    /// `fme_model_reset` before generating again.
    Cancelled = 7,
    /// A bug: the library panicked (the message says where); the model may be unusable.
    Internal = 8,
}

/// An error on its way to C: a status and a message naming what and where.
#[derive(Debug)]
pub(crate) struct CError {
    pub status: FmeStatus,
    pub message: String,
}

impl CError {
    pub fn new(status: FmeStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A NULL pointer given for `arg` of `func`.
    pub fn null(func: &str, arg: &str) -> Self {
        Self::new(FmeStatus::Null, format!("{func}: `{arg}` is NULL"))
    }

    /// A bad value of `arg` of `func`.
    pub fn invalid(func: &str, arg: &str, why: impl std::fmt::Display) -> Self {
        Self::new(FmeStatus::InvalidArgument, format!("{func}: `{arg}` {why}"))
    }

    /// An engine error met in `func`, its whole source chain in the message.
    pub fn engine(func: &str, e: &flashmoe_engine::EngineError) -> Self {
        use flashmoe_engine::EngineError as E;
        let status = match e {
            E::Expert { .. } | E::IoSched { .. } => FmeStatus::Io,
            E::Backend { .. } => FmeStatus::Compute,
            E::OutOfRange { .. } | E::Request { .. } => FmeStatus::InvalidArgument,
            _ => FmeStatus::Model,
        };
        Self::new(status, chain(func, e))
    }
}

/// `func: e: source: source...`, each source once.
fn chain(func: &str, e: &dyn std::error::Error) -> String {
    let mut message = format!("{func}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
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
/// thread's last error; success returns `FME_STATUS_OK` (and leaves the last error as it was).
pub(crate) fn ffi(func: &str, body: impl FnOnce() -> Result<(), CError>) -> FmeStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => FmeStatus::Ok,
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
            FmeStatus::Internal
        }
    }
}

/// This thread's last error message, or NULL if no call on this thread has failed yet.
///
/// The string stays valid until the next failing call on the same thread. Thread-safety: each
/// thread has its own last error; call it from the thread that got the error status.
#[unsafe(no_mangle)]
pub extern "C" fn fme_last_error() -> *const c_char {
    LAST_ERROR.with(|e| match &*e.borrow() {
        Some(c) => c.as_ptr(),
        None => std::ptr::null(),
    })
}

/// A short constant name for a status code (`"FME_STATUS_NULL"`); `"FME_STATUS_UNKNOWN"` for
/// a value that is none of them. Never NULL. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn fme_status_name(status: i32) -> *const c_char {
    let s: &'static [u8] = match status {
        0 => b"FME_STATUS_OK\0",
        1 => b"FME_STATUS_NULL\0",
        2 => b"FME_STATUS_INVALID_ARGUMENT\0",
        3 => b"FME_STATUS_MODEL\0",
        4 => b"FME_STATUS_IO\0",
        5 => b"FME_STATUS_COMPUTE\0",
        6 => b"FME_STATUS_BUSY\0",
        7 => b"FME_STATUS_CANCELLED\0",
        8 => b"FME_STATUS_INTERNAL\0",
        _ => b"FME_STATUS_UNKNOWN\0",
    };
    s.as_ptr().cast()
}
