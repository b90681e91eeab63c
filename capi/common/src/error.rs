//! The error on its way to C, the thread-local last-error message, and the call wrapper.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The codes every library's `#[repr(C)]` status enum has.
pub trait Status: Copy {
    /// Success (0).
    const OK: Self;
    /// A required pointer argument was NULL.
    const NULL: Self;
    /// An argument is out of range or malformed.
    const INVALID_ARGUMENT: Self;
    /// The library panicked: a bug.
    const INTERNAL: Self;
}

/// An error on its way to C: a status and a message naming what and where.
#[derive(Debug)]
pub struct CError<S> {
    /// What the call returns.
    pub status: S,
    /// What the last-error message says.
    pub message: String,
}

impl<S: Status> CError<S> {
    /// An error with `status` and `message`.
    pub fn new(status: S, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A NULL pointer given for `arg` of `func`.
    pub fn null(func: &str, arg: &str) -> Self {
        Self::new(S::NULL, format!("{func}: `{arg}` is NULL"))
    }

    /// A bad value of `arg` of `func`.
    pub fn invalid(func: &str, arg: &str, why: impl std::fmt::Display) -> Self {
        Self::new(S::INVALID_ARGUMENT, format!("{func}: `{arg}` {why}"))
    }
}

/// `func: e: source: source...`, each source once (a source whose text is already in the
/// message is not repeated).
pub fn error_chain(func: &str, e: &dyn std::error::Error) -> String {
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
pub fn set_last_error(message: &str) {
    // An interior NUL cannot go through a C string: show it as an escape.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

/// This thread's last error message, or NULL if no call on this thread has failed yet; valid
/// until the next failing call on the same thread.
pub fn last_error() -> *const c_char {
    LAST_ERROR.with(|e| match &*e.borrow() {
        Some(c) => c.as_ptr(),
        None => std::ptr::null(),
    })
}

/// Runs `body` for the exported function `func`: its error or panic becomes a status and this
/// thread's last error; success returns `S::OK` (and leaves the last error as it was).
pub fn ffi<S: Status>(func: &str, body: impl FnOnce() -> Result<(), CError<S>>) -> S {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => S::OK,
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
            S::INTERNAL
        }
    }
}

/// Like [`ffi`] for functions that return a value instead of a status: `fallback` on error.
pub fn ffi_value<S: Status, T>(
    func: &str,
    fallback: T,
    body: impl FnOnce() -> Result<T, CError<S>>,
) -> T {
    let mut out = None;
    ffi(func, || {
        out = Some(body()?);
        Ok(())
    });
    out.unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum St {
        Ok,
        Null,
        Invalid,
        Internal,
    }
    impl Status for St {
        const OK: Self = St::Ok;
        const NULL: Self = St::Null;
        const INVALID_ARGUMENT: Self = St::Invalid;
        const INTERNAL: Self = St::Internal;
    }

    fn last() -> String {
        // SAFETY: `last_error` gives NULL or a live NUL-terminated string of this thread.
        unsafe { CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn errors_and_panics_become_a_status_and_a_message() {
        assert_eq!(ffi::<St>("f", || Ok(())), St::Ok);
        assert_eq!(ffi("f", || Err(CError::<St>::null("f", "p"))), St::Null);
        assert_eq!(last(), "f: `p` is NULL");
        assert_eq!(ffi::<St>("g", || Ok(())), St::Ok);
        assert_eq!(last(), "f: `p` is NULL", "success leaves the last error");
        assert_eq!(
            ffi("g", || Err(CError::<St>::invalid("g", "n", "is 0\0x"))),
            St::Invalid
        );
        assert_eq!(last(), "g: `n` is 0\\0x", "an interior NUL is escaped");
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let st = ffi::<St>("h", || panic!("boom {}", 1));
        std::panic::set_hook(hook);
        assert_eq!(st, St::Internal);
        assert_eq!(last(), "h: internal error (panic): boom 1");
        assert_eq!(ffi_value::<St, u32>("v", 7, || Ok(3)), 3);
        assert_eq!(ffi_value("v", 7, || Err(CError::<St>::null("v", "q"))), 7);
        assert_eq!(last(), "v: `q` is NULL");
    }

    #[test]
    fn the_chain_names_each_source_once() {
        let inner = std::io::Error::other("disk on fire");
        let outer = std::io::Error::other(inner);
        // io::Error's Display is its inner error's: the source adds nothing new.
        assert_eq!(error_chain("f", &outer), "f: disk on fire");
    }
}
