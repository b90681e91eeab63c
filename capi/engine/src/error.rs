//! Status codes, the thread-local last-error message, and the wrapper every exported function
//! runs its body in (argument checks, no panic across the boundary).

use std::ffi::c_char;

use flashmoe_capi_common::Status;

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

impl Status for FmeStatus {
    const OK: Self = FmeStatus::Ok;
    const NULL: Self = FmeStatus::Null;
    const INVALID_ARGUMENT: Self = FmeStatus::InvalidArgument;
    const INTERNAL: Self = FmeStatus::Internal;
}

/// An error on its way to C: a status and a message naming what and where.
pub(crate) type CallError = flashmoe_capi_common::CError<FmeStatus>;

/// Runs `body` for the exported function `func` ([`flashmoe_capi_common::ffi`]).
pub(crate) fn ffi(func: &str, body: impl FnOnce() -> Result<(), CallError>) -> FmeStatus {
    flashmoe_capi_common::ffi(func, body)
}

/// Errors of the engine, as C errors.
pub(crate) trait EngineErrorExt {
    /// An engine error met in `func`, its whole source chain in the message.
    fn engine(func: &str, e: &flashmoe_engine::EngineError) -> Self;
}

impl EngineErrorExt for CallError {
    fn engine(func: &str, e: &flashmoe_engine::EngineError) -> Self {
        use flashmoe_engine::EngineError as E;
        let status = match e {
            E::Expert { .. } | E::IoSched { .. } => FmeStatus::Io,
            E::Backend { .. } => FmeStatus::Compute,
            E::OutOfRange { .. } | E::Request { .. } => FmeStatus::InvalidArgument,
            _ => FmeStatus::Model,
        };
        Self::new(status, flashmoe_capi_common::error_chain(func, e))
    }
}

/// This thread's last error message, or NULL if no call on this thread has failed yet.
///
/// The string stays valid until the next failing call on the same thread. Thread-safety: each
/// thread has its own last error; call it from the thread that got the error status.
#[unsafe(no_mangle)]
pub extern "C" fn fme_last_error() -> *const c_char {
    flashmoe_capi_common::last_error()
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
