//! Checked views of C arguments: every pointer is tested for NULL, every string for UTF-8,
//! before anything reads it.

use std::ffi::{CStr, c_char};

use crate::{CError, Status};

/// The string at `p` (NUL-terminated, UTF-8).
///
/// # Safety
/// A non-NULL `p` must point to a NUL-terminated string that lives for `'a`.
pub unsafe fn str_arg<'a, S: Status>(
    func: &str,
    arg: &str,
    p: *const c_char,
) -> Result<&'a str, CError<S>> {
    if p.is_null() {
        return Err(CError::null(func, arg));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string living for `'a`.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|e| CError::invalid(func, arg, format_args!("is not UTF-8 ({e})")))
}

/// The `n` values at `p`; `p` may be NULL only when `n` is 0.
///
/// # Safety
/// A non-NULL `p` must point to `n` initialised values that live for `'a`.
pub unsafe fn slice_arg<'a, T, S: Status>(
    func: &str,
    arg: &str,
    p: *const T,
    n: usize,
) -> Result<&'a [T], CError<S>> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CError::null(func, arg));
    }
    if !p.is_aligned() {
        return Err(CError::invalid(func, arg, "is not aligned for its type"));
    }
    // SAFETY: non-NULL, aligned, and the caller promises `n` values living for `'a`.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// The object behind a handle.
///
/// # Safety
/// A non-NULL `p` must come from this library's matching constructor and not be freed yet.
pub unsafe fn handle<'a, T, S: Status>(
    func: &str,
    arg: &str,
    p: *const T,
) -> Result<&'a T, CError<S>> {
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
pub unsafe fn handle_mut<'a, T, S: Status>(
    func: &str,
    arg: &str,
    p: *mut T,
) -> Result<&'a mut T, CError<S>> {
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
pub unsafe fn write_out<T, S: Status>(
    func: &str,
    arg: &str,
    p: *mut T,
    value: T,
) -> Result<(), CError<S>> {
    if p.is_null() {
        return Err(CError::null(func, arg));
    }
    // SAFETY: non-NULL and, as the caller promises, valid for one write; `write` does not drop
    // whatever uninitialised bytes were there.
    unsafe { p.write(value) };
    Ok(())
}

/// Checks that the out-parameter `p` is not NULL (before doing work whose result goes there).
pub fn need_out<T, S: Status>(func: &str, arg: &str, p: *mut T) -> Result<(), CError<S>> {
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
pub unsafe fn free_handle<T>(p: *mut T) {
    if p.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw`, freed once (the caller's promise).
    let b = unsafe { Box::from_raw(p) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(b)));
}
