//! Checked views of C arguments: every pointer is tested for NULL, every string for UTF-8,
//! before anything reads it.

use std::ffi::{CStr, c_char};

use crate::error::CError;

/// The string at `p` (NUL-terminated, UTF-8).
///
/// # Safety
/// A non-NULL `p` must point to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn str_arg<'a>(
    func: &str,
    arg: &str,
    p: *const c_char,
) -> Result<&'a str, CError> {
    if p.is_null() {
        return Err(CError::null(func, arg));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string living for `'a`.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|e| CError::invalid(func, arg, format_args!("is not UTF-8 ({e})")))
}

/// The object behind a handle.
///
/// # Safety
/// A non-NULL `p` must come from this library's matching constructor and not be freed yet.
pub(crate) unsafe fn handle<'a, T>(func: &str, arg: &str, p: *const T) -> Result<&'a T, CError> {
    if p.is_null() {
        return Err(CError::null(func, arg));
    }
    // SAFETY: the caller promises a live handle made by this library.
    Ok(unsafe { &*p })
}

/// The object behind a handle, for changing it.
///
/// # Safety
/// As [`handle`], and no other reference to the object may be in use.
pub(crate) unsafe fn handle_mut<'a, T>(
    func: &str,
    arg: &str,
    p: *mut T,
) -> Result<&'a mut T, CError> {
    if p.is_null() {
        return Err(CError::null(func, arg));
    }
    // SAFETY: the caller promises a live handle, used by this call alone.
    Ok(unsafe { &mut *p })
}

/// Writes `value` to the out-parameter `p`.
///
/// # Safety
/// A non-NULL `p` must be valid for a write of one `T`.
pub(crate) unsafe fn write_out<T>(
    func: &str,
    arg: &str,
    p: *mut T,
    value: T,
) -> Result<(), CError> {
    if p.is_null() {
        return Err(CError::null(func, arg));
    }
    // SAFETY: non-NULL and, as the caller promises, valid for one write; `write` does not drop
    // whatever uninitialised bytes were there.
    unsafe { p.write(value) };
    Ok(())
}

/// Checks that the out-parameter `p` is not NULL (before doing work whose result goes there).
pub(crate) fn need_out<T>(func: &str, arg: &str, p: *mut T) -> Result<(), CError> {
    if p.is_null() {
        Err(CError::null(func, arg))
    } else {
        Ok(())
    }
}

/// Frees a handle made by `Box::into_raw` (NULL is ignored); a panic in a destructor is
/// swallowed rather than sent across the boundary.
///
/// # Safety
/// A non-NULL `p` must come from `Box::into_raw` in this library and not be freed already.
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    if p.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw`, freed once (the caller's promise).
    let b = unsafe { Box::from_raw(p) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(b)));
}
