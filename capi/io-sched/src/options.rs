//! Session options: an opaque builder with defaults, set field by field (new options can be
//! added without breaking the ABI).

use std::ffi::c_char;

use io_sched::backend::BackendKind;
use io_sched::backend::files::DirectMode;
use io_sched::cache::EvictionKind;
use io_sched::predictor::PredictorKind;

use crate::adapter::{Budget, SessionSettings};
use crate::error::{CallError, FmioStatus, ffi};
use flashmoe_capi_common::args::{handle_mut, need_out, str_arg, write_out};

/// How to open a session. Opaque; defaults: a budget of 25% of all expert bytes, the
/// `temporal` predictor one layer ahead hinting the acquired count + 2 per layer, the backend
/// chosen automatically, checksums verified. One thread at a time per options object.
pub struct FmioOptions {
    pub(crate) settings: SessionSettings,
}

/// Makes options with the defaults; free with `fmio_options_free`. Any thread.
///
/// # Safety
/// `out` must be valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_new(out: *mut *mut FmioOptions) -> FmioStatus {
    const F: &str = "fmio_options_new";
    ffi(F, || {
        need_out(F, "out", out)?;
        let o = Box::into_raw(Box::new(FmioOptions {
            settings: SessionSettings::default(),
        }));
        // SAFETY: checked non-NULL; writable by the caller's promise.
        unsafe { write_out(F, "out", out, o) }
    })
}

/// Frees options (NULL is ignored). Sessions opened with them are not affected.
///
/// # Safety
/// `options` must come from this library and not be freed already.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_free(options: *mut FmioOptions) {
    // SAFETY: forwarded from this function's contract.
    unsafe { flashmoe_capi_common::args::free_handle(options) }
}

/// Runs `f` on the options behind `options` for the setter `func`.
///
/// # Safety
/// `options` must be NULL or live options used by this call alone.
unsafe fn set(
    func: &str,
    options: *mut FmioOptions,
    f: impl FnOnce(&mut SessionSettings) -> Result<(), CallError>,
) -> FmioStatus {
    ffi(func, || {
        // SAFETY: forwarded from this function's contract.
        let o = unsafe { handle_mut(func, "options", options) }?;
        f(&mut o.settings)
    })
}

/// Cache budget in bytes (rounded down to whole expert slots; must hold one acquire).
///
/// # Safety
/// `options` must be live options, used by this call alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_set_budget_bytes(
    options: *mut FmioOptions,
    bytes: u64,
) -> FmioStatus {
    const F: &str = "fmio_options_set_budget_bytes";
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            if bytes == 0 {
                return Err(CallError::invalid(F, "bytes", "must be non-zero"));
            }
            s.budget = Budget::Bytes(bytes);
            Ok(())
        })
    }
}

/// Cache budget as a share in (0, 1] of what holding every expert takes.
///
/// # Safety
/// `options` must be live options, used by this call alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_set_budget_share(
    options: *mut FmioOptions,
    share: f64,
) -> FmioStatus {
    const F: &str = "fmio_options_set_budget_share";
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            if !(share > 0.0 && share <= 1.0) {
                return Err(CallError::invalid(
                    F,
                    "share",
                    format_args!("must be in (0, 1], got {share}"),
                ));
            }
            s.budget = Budget::Share(share);
            Ok(())
        })
    }
}

/// The predictor: `none`, `temporal`, `frequency`, `transition`, `scores` (pre-gate: the
/// scores given with `fmio_session_scores`) or `blend` (those scores and the routing history
/// in one online model per layer, with calibrated confidences and next-use probabilities for
/// the `next-use` eviction policy, `fmio_options_set_eviction`).
///
/// # Safety
/// `options` must be live options, used by this call alone; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_set_predictor(
    options: *mut FmioOptions,
    name: *const c_char,
) -> FmioStatus {
    const F: &str = "fmio_options_set_predictor";
    // SAFETY: forwarded from this function's contract.
    let name = match unsafe { str_arg(F, "name", name) } {
        Ok(n) => n,
        Err(e) => return ffi(F, || Err(e)),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            let kind: PredictorKind = name.parse().map_err(|e| CallError::invalid(F, "name", e))?;
            if kind == PredictorKind::Oracle {
                return Err(CallError::invalid(
                    F,
                    "name",
                    "oracle needs a trace: not available here",
                ));
            }
            s.predictor = kind;
            Ok(())
        })
    }
}

/// The cache's eviction policy: `lru` (the default), `lfru` (decayed access counts) or
/// `next-use` (the expert expected to be needed last goes first, from the predictor's
/// next-use probabilities: only `blend` gives them; with another predictor it is LRU).
///
/// # Safety
/// `options` must be live options, used by this call alone; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_set_eviction(
    options: *mut FmioOptions,
    name: *const c_char,
) -> FmioStatus {
    const F: &str = "fmio_options_set_eviction";
    // SAFETY: forwarded from this function's contract.
    let name = match unsafe { str_arg(F, "name", name) } {
        Ok(n) => n,
        Err(e) => return ffi(F, || Err(e)),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            s.eviction = name
                .parse::<EvictionKind>()
                .map_err(|e| CallError::invalid(F, "name", e))?;
            Ok(())
        })
    }
}

/// Layers ahead the predictor hints (`horizon` ≥ 1) and experts hinted per predicted layer
/// (`per_layer`; 0: the number of experts of the acquire + 2).
///
/// # Safety
/// `options` must be live options, used by this call alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_set_prefetch(
    options: *mut FmioOptions,
    horizon: u32,
    per_layer: u32,
) -> FmioStatus {
    const F: &str = "fmio_options_set_prefetch";
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            if horizon == 0 {
                return Err(CallError::invalid(F, "horizon", "must be at least 1"));
            }
            s.horizon = horizon;
            s.per_layer = per_layer as usize;
            Ok(())
        })
    }
}

/// The read backend: `auto`, `io_uring`, `pread` or `mmap`. A backend asked for by name that
/// cannot start makes `fmio_session_open` fail; `auto` falls back and reports why
/// (`fmio_session_fallback`).
///
/// # Safety
/// `options` must be live options, used by this call alone; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_set_backend(
    options: *mut FmioOptions,
    name: *const c_char,
) -> FmioStatus {
    const F: &str = "fmio_options_set_backend";
    // SAFETY: forwarded from this function's contract.
    let name = match unsafe { str_arg(F, "name", name) } {
        Ok(n) => n,
        Err(e) => return ffi(F, || Err(e)),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            s.backend.kind =
                match name {
                    "auto" => None,
                    other => Some(other.parse::<BackendKind>().map_err(|e| {
                        CallError::invalid(F, "name", format_args!("{e} (or auto)"))
                    })?),
                };
            Ok(())
        })
    }
}

/// Direct I/O: `auto` (try, fall back to buffered with a reason), `require` or `off`.
///
/// # Safety
/// `options` must be live options, used by this call alone; `mode` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_set_direct_io(
    options: *mut FmioOptions,
    mode: *const c_char,
) -> FmioStatus {
    const F: &str = "fmio_options_set_direct_io";
    // SAFETY: forwarded from this function's contract.
    let mode = match unsafe { str_arg(F, "mode", mode) } {
        Ok(n) => n,
        Err(e) => return ffi(F, || Err(e)),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            s.backend.direct = match mode {
                "auto" => DirectMode::Auto,
                "require" => DirectMode::Require,
                "off" => DirectMode::Off,
                other => {
                    return Err(CallError::invalid(
                        F,
                        "mode",
                        format_args!("{other:?} is none of auto, require, off"),
                    ));
                }
            };
            Ok(())
        })
    }
}

/// Reads in flight at most (io_uring queue depth; pread / mmap threads), ≥ 1.
///
/// # Safety
/// `options` must be live options, used by this call alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_set_queue_depth(
    options: *mut FmioOptions,
    depth: u32,
) -> FmioStatus {
    const F: &str = "fmio_options_set_queue_depth";
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            if depth == 0 {
                return Err(CallError::invalid(F, "depth", "must be at least 1"));
            }
            s.backend.queue_depth = depth;
            s.backend.threads = Some(depth as usize);
            Ok(())
        })
    }
}

/// Whether every record's checksum is verified before `acquire` hands it out (default on;
/// a mismatch fails the acquire with `FMIO_STATUS_CHECKSUM`).
///
/// # Safety
/// `options` must be live options, used by this call alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_options_set_verify_checksums(
    options: *mut FmioOptions,
    verify: bool,
) -> FmioStatus {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set("fmio_options_set_verify_checksums", options, |s| {
            s.verify_checksums = verify;
            Ok(())
        })
    }
}
