//! Model options: an opaque builder with defaults (new options can be added without breaking
//! the ABI).

use std::ffi::c_char;

use crate::error::{CallError, FmeStatus, ffi};
use flashmoe_capi_common::args::{handle_mut, need_out, str_arg, write_out};

/// How the expert cache is sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Budget {
    Bytes(u64),
    /// A share in (0, 1] of what holding every expert takes.
    Share(f64),
}

/// What a model is opened with.
#[derive(Debug, Clone)]
pub(crate) struct ModelSettings {
    pub budget: Budget,
    /// `auto`, `io_uring`, `pread` or `mmap`.
    pub io_backend: String,
    /// `blend`, `pregate`, `none`, `temporal`, `transition` or `frequency`.
    pub predictor: String,
    /// KV-cache positions; 0: the model's maximum, at most 4096.
    pub max_seq: usize,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            budget: Budget::Share(0.25),
            io_backend: "auto".into(),
            predictor: "blend".into(),
            max_seq: 0,
        }
    }
}

/// How to open a model. Opaque; defaults: an expert cache of 25% of all expert bytes, the read
/// backend chosen automatically, blend prefetching (see `fme_options_set_predictor`), a KV
/// cache of the model's maximum context (at most 4096 positions). One thread at a time per
/// options object.
pub struct FmeOptions {
    pub(crate) settings: ModelSettings,
}

/// Makes options with the defaults; free with `fme_options_free`. Any thread.
///
/// # Safety
/// `out` must be valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_options_new(out: *mut *mut FmeOptions) -> FmeStatus {
    const F: &str = "fme_options_new";
    ffi(F, || {
        need_out(F, "out", out)?;
        let o = Box::into_raw(Box::new(FmeOptions {
            settings: ModelSettings::default(),
        }));
        // SAFETY: checked non-NULL; writable by the caller's promise.
        unsafe { write_out(F, "out", out, o) }
    })
}

/// Frees options (NULL is ignored).
///
/// # Safety
/// `options` must come from this library and not be freed already.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_options_free(options: *mut FmeOptions) {
    // SAFETY: forwarded from this function's contract.
    unsafe { flashmoe_capi_common::args::free_handle(options) }
}

/// Runs `f` on the settings behind `options`.
///
/// # Safety
/// `options` must be NULL or live options used by this call alone.
unsafe fn set(
    func: &str,
    options: *mut FmeOptions,
    f: impl FnOnce(&mut ModelSettings) -> Result<(), CallError>,
) -> FmeStatus {
    ffi(func, || {
        // SAFETY: forwarded from this function's contract.
        let o = unsafe { handle_mut(func, "options", options) }?;
        f(&mut o.settings)
    })
}

/// Expert cache budget in bytes (must hold one layer's top-k experts).
///
/// # Safety
/// `options` must be live options, used by this call alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_options_set_budget_bytes(
    options: *mut FmeOptions,
    bytes: u64,
) -> FmeStatus {
    const F: &str = "fme_options_set_budget_bytes";
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

/// Expert cache budget as a share in (0, 1] of what holding every expert takes.
///
/// # Safety
/// `options` must be live options, used by this call alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_options_set_budget_share(
    options: *mut FmeOptions,
    share: f64,
) -> FmeStatus {
    const F: &str = "fme_options_set_budget_share";
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

/// The read backend: `auto`, `io_uring`, `pread` or `mmap` (checked when the model opens).
///
/// # Safety
/// `options` must be live options, used by this call alone; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_options_set_io_backend(
    options: *mut FmeOptions,
    name: *const c_char,
) -> FmeStatus {
    const F: &str = "fme_options_set_io_backend";
    // SAFETY: forwarded from this function's contract.
    let name = match unsafe { str_arg(F, "name", name) } {
        Ok(n) => n.to_string(),
        Err(e) => return ffi(F, || Err(e)),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            s.io_backend = name;
            Ok(())
        })
    }
}

/// Prefetch prediction: `blend` (the default: pre-gate scores and routing history in one
/// calibrated model, with cost-aware hints and next-use eviction), `pregate`, `none`,
/// `temporal`, `transition` or `frequency` (checked when the model opens).
///
/// # Safety
/// `options` must be live options, used by this call alone; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_options_set_predictor(
    options: *mut FmeOptions,
    name: *const c_char,
) -> FmeStatus {
    const F: &str = "fme_options_set_predictor";
    // SAFETY: forwarded from this function's contract.
    let name = match unsafe { str_arg(F, "name", name) } {
        Ok(n) => n.to_string(),
        Err(e) => return ffi(F, || Err(e)),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set(F, options, |s| {
            s.predictor = name;
            Ok(())
        })
    }
}

/// Positions of the KV cache (prompt and generated tokens of every `fme_generate` since the
/// last reset); 0: the model's maximum, at most 4096.
///
/// # Safety
/// `options` must be live options, used by this call alone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_options_set_max_seq(
    options: *mut FmeOptions,
    positions: u32,
) -> FmeStatus {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        set("fme_options_set_max_seq", options, |s| {
            s.max_seq = positions as usize;
            Ok(())
        })
    }
}
