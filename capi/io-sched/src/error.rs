//! Status codes, the thread-local last-error message, and the wrapper every exported function
//! runs its body in (argument checks, no panic across the boundary).

use std::ffi::c_char;

use flashmoe_capi_common::Status;

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

impl Status for FmioStatus {
    const OK: Self = FmioStatus::Ok;
    const NULL: Self = FmioStatus::Null;
    const INVALID_ARGUMENT: Self = FmioStatus::InvalidArgument;
    const INTERNAL: Self = FmioStatus::Internal;
}

/// An error on its way to C: a status and a message naming what and where.
pub(crate) type CallError = flashmoe_capi_common::CError<FmioStatus>;

/// Runs `body` for the exported function `func` ([`flashmoe_capi_common::ffi`]).
pub(crate) fn ffi(func: &str, body: impl FnOnce() -> Result<(), CallError>) -> FmioStatus {
    flashmoe_capi_common::ffi(func, body)
}

/// Like [`ffi`] for functions that return a value instead of a status: `fallback` on error.
pub(crate) fn ffi_value<T>(
    func: &str,
    fallback: T,
    body: impl FnOnce() -> Result<T, CallError>,
) -> T {
    flashmoe_capi_common::ffi_value(func, fallback, body)
}

/// Errors of io-sched, as C errors.
pub(crate) trait SchedErrorExt {
    /// An io-sched error met in `func`, its whole source chain in the message.
    fn sched(func: &str, e: &io_sched::Error) -> Self;
}

impl SchedErrorExt for CallError {
    fn sched(func: &str, e: &io_sched::Error) -> Self {
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
        Self::new(status, flashmoe_capi_common::error_chain(func, e))
    }
}

/// This thread's last error message, or NULL if no call on this thread has failed yet.
///
/// The string stays valid until the next failing call on the same thread. Thread-safety: each
/// thread has its own last error; call it from the thread that got the error status.
#[unsafe(no_mangle)]
pub extern "C" fn fmio_last_error() -> *const c_char {
    flashmoe_capi_common::last_error()
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
