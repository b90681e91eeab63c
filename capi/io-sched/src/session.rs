//! Sessions (a cache, a backend and a predictor over one layout) and guards over ready bytes.

use std::ffi::{CString, c_char};

use io_sched::ExpertGuard;
use io_sched::predictor::Candidate;

use crate::adapter::{SessionCore, SessionSettings};
use crate::error::{CallError, FmioStatus, SchedErrorExt, ffi, ffi_value};
use crate::layout::FmioLayout;
use crate::metrics::FmioMetrics;
use crate::options::FmioOptions;
use flashmoe_capi_common::args::{handle, need_out, slice_arg, write_out};

/// An open session. Opaque.
///
/// Thread-safety: every `fmio_session_*` function except `fmio_session_free` may be called
/// from any thread, concurrently. The predictor sees demands in the order calls take its
/// lock, so drive one decode stream's layers from one thread at a time for useful predictions.
pub struct FmioSession {
    core: SessionCore,
    backend: CString,
    fallbacks: Vec<CString>,
}

/// Pinned, ready bytes of the experts one acquire asked for. Opaque. While the guard lives
/// the bytes neither move nor change; `fmio_guard_release` unpins them. A guard may be read
/// from any thread, may outlive its session, and must be released exactly once.
pub struct FmioGuard {
    guard: ExpertGuard,
}

/// One expert's bytes inside a guard: valid until the guard is released.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FmioExpertBytes {
    /// The expert id (within the guard's layer).
    pub expert: u32,
    /// The record's payload; never NULL for a record of non-zero length.
    pub data: *const u8,
    /// Payload length in bytes.
    pub len: u64,
}

/// Opens a session over a copy of `layout`: starts the read backend (`options` may be NULL for
/// the defaults), allocates the cache and the predictor. `*out` is freed with
/// `fmio_session_free`. Any thread.
///
/// # Safety
/// `layout` must be a live layout; `options` NULL or live options; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_open(
    layout: *const FmioLayout,
    options: *const FmioOptions,
    out: *mut *mut FmioSession,
) -> FmioStatus {
    const F: &str = "fmio_session_open";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let l = unsafe { handle(F, "layout", layout) }?;
        need_out(F, "out", out)?;
        let settings = if options.is_null() {
            SessionSettings::default()
        } else {
            // SAFETY: non-NULL, and live by the caller's promise.
            unsafe { handle(F, "options", options) }?.settings.clone()
        };
        let core =
            SessionCore::open(l.layout.clone(), &settings).map_err(|e| CallError::sched(F, &e))?;
        let c = |s: &str| CString::new(s.replace('\0', " ")).unwrap_or_default();
        let session = FmioSession {
            backend: c(core.backend_description()),
            fallbacks: core.fallbacks().iter().map(|s| c(s)).collect(),
            core,
        };
        // SAFETY: checked non-NULL; writable by the caller's promise.
        unsafe { write_out(F, "out", out, Box::into_raw(Box::new(session))) }
    })
}

/// Stops the session's I/O (reads in flight finish first) and frees it (NULL is ignored).
/// Guards still held stay valid until released.
///
/// # Safety
/// `session` must come from `fmio_session_open`, not be freed already, and no other thread
/// may be using it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_free(session: *mut FmioSession) {
    // SAFETY: forwarded from this function's contract.
    unsafe { flashmoe_capi_common::args::free_handle(session) }
}

/// The read backend in use, e.g. `io_uring qd=32 O_DIRECT registered-buffers`; valid while the
/// session lives. NULL if `session` is NULL. Any thread.
///
/// # Safety
/// `session` must be NULL or a live session.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_backend(session: *const FmioSession) -> *const c_char {
    const F: &str = "fmio_session_backend";
    ffi_value(F, std::ptr::null(), || {
        // SAFETY: forwarded from this function's contract.
        Ok(unsafe { handle(F, "session", session) }?.backend.as_ptr())
    })
}

/// How many reasons the backend in use is not the preferred one (0: none). Any thread.
///
/// # Safety
/// `session` must be NULL or a live session.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_fallback_count(session: *const FmioSession) -> usize {
    const F: &str = "fmio_session_fallback_count";
    ffi_value(F, 0, || {
        // SAFETY: forwarded from this function's contract.
        Ok(unsafe { handle(F, "session", session) }?.fallbacks.len())
    })
}

/// Fallback reason `index` (one line), valid while the session lives; NULL when out of
/// range. Any thread.
///
/// # Safety
/// `session` must be NULL or a live session.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_fallback(
    session: *const FmioSession,
    index: usize,
) -> *const c_char {
    const F: &str = "fmio_session_fallback";
    ffi_value(F, std::ptr::null(), || {
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { handle(F, "session", session) }?;
        Ok(s.fallbacks
            .get(index)
            .map_or(std::ptr::null(), |c| c.as_ptr()))
    })
}

/// The cache: slots, bytes per slot, and the budget in bytes it was made from. Any of the out
/// pointers may be NULL. Any thread.
///
/// # Safety
/// `session` must be a live session; each non-NULL out pointer writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_capacity(
    session: *const FmioSession,
    out_slots: *mut usize,
    out_slot_bytes: *mut usize,
    out_budget_bytes: *mut u64,
) -> FmioStatus {
    const F: &str = "fmio_session_capacity";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { handle(F, "session", session) }?;
        let (slots, size, budget) = s.core.capacity();
        // SAFETY (all three): each is written only when non-NULL, writable by the caller's promise.
        unsafe {
            if !out_slots.is_null() {
                out_slots.write(slots);
            }
            if !out_slot_bytes.is_null() {
                out_slot_bytes.write(size);
            }
            if !out_budget_bytes.is_null() {
                out_budget_bytes.write(budget);
            }
        }
        Ok(())
    })
}

/// Scores of `layer`'s experts (`n` = experts per layer, e.g. pre-gate router probabilities
/// computed from an earlier layer's hidden state), for the `scores` and `blend` predictors; other
/// predictors ignore them. Give them before acquiring the layer before `layer`. Any thread.
///
/// # Safety
/// `session` must be a live session; `scores` must point to `n` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_scores(
    session: *const FmioSession,
    layer: u32,
    scores: *const f32,
    n: usize,
) -> FmioStatus {
    const F: &str = "fmio_session_scores";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { handle(F, "session", session) }?;
        // SAFETY: as above.
        let scores = unsafe { slice_arg(F, "scores", scores, n) }?;
        s.core.scores(layer, scores);
        Ok(())
    })
}

/// Starts prefetching `n` experts of `layer` (superseding the previous hint for that layer);
/// returns at once. `confidences` may be NULL (all 1.0). Any thread.
///
/// # Safety
/// `session` must be a live session; `experts` (and a non-NULL `confidences`) must point to
/// `n` values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_hint(
    session: *const FmioSession,
    layer: u32,
    experts: *const u32,
    confidences: *const f32,
    n: usize,
) -> FmioStatus {
    const F: &str = "fmio_session_hint";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { handle(F, "session", session) }?;
        // SAFETY: as above.
        let experts = unsafe { slice_arg(F, "experts", experts, n) }?;
        let conf = if confidences.is_null() {
            None
        } else {
            // SAFETY: as above.
            Some(unsafe { slice_arg(F, "confidences", confidences, n) }?)
        };
        let candidates: Vec<Candidate> = experts
            .iter()
            .enumerate()
            .map(|(i, &expert)| Candidate {
                expert,
                confidence: conf.map_or(1.0, |c| c[i]),
            })
            .collect();
        s.core.hint(layer, &candidates);
        Ok(())
    })
}

/// The demand for `layer`: the router chose these `n` experts. Through io-sched's `Session`
/// (the policy `flashmoe generate` runs): the predictor learns them, their reads are queued,
/// the layers after `layer` are hinted, then this blocks until every expert's bytes are in
/// memory (checksum-verified unless turned off) and returns a guard over them, in the order
/// asked. The first acquire's `n` is the session's top-k. Fails with `FMIO_STATUS_BUDGET`
/// rather than waiting when every cache slot is pinned by guards still held (size the budget
/// for the guards all threads hold at once). Any thread; one session's acquires run one at
/// a time.
///
/// # Safety
/// `session` must be a live session; `experts` must point to `n` ids; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_acquire(
    session: *const FmioSession,
    layer: u32,
    experts: *const u32,
    n: usize,
    out: *mut *mut FmioGuard,
) -> FmioStatus {
    const F: &str = "fmio_session_acquire";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { handle(F, "session", session) }?;
        // SAFETY: as above.
        let experts = unsafe { slice_arg(F, "experts", experts, n) }?;
        need_out(F, "out", out)?;
        if experts.is_empty() {
            return Err(CallError::invalid(
                F,
                "n",
                "is 0: acquire at least one expert",
            ));
        }
        let guard = s
            .core
            .acquire(layer, experts)
            .map_err(|e| CallError::sched(F, &e))?;
        // SAFETY: as above.
        unsafe { write_out(F, "out", out, Box::into_raw(Box::new(FmioGuard { guard }))) }
    })
}

/// A guard over those of the `n` experts of `layer` that are in memory now (the others left
/// out; `fmio_guard_count` says how many): never waits, reads or counts as a demand. For
/// copying prefetched records onward (e.g. to GPU memory) before the router asks. Any thread.
///
/// # Safety
/// As `fmio_session_acquire`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_ready(
    session: *const FmioSession,
    layer: u32,
    experts: *const u32,
    n: usize,
    out: *mut *mut FmioGuard,
) -> FmioStatus {
    const F: &str = "fmio_session_ready";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { handle(F, "session", session) }?;
        // SAFETY: as above.
        let experts = unsafe { slice_arg(F, "experts", experts, n) }?;
        need_out(F, "out", out)?;
        let guard = s.core.ready(layer, experts);
        // SAFETY: as above.
        unsafe { write_out(F, "out", out, Box::into_raw(Box::new(FmioGuard { guard }))) }
    })
}

/// Experts held by the guard (0 if `guard` is NULL). Any thread.
///
/// # Safety
/// `guard` must be NULL or a live guard.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_guard_count(guard: *const FmioGuard) -> usize {
    const F: &str = "fmio_guard_count";
    ffi_value(F, 0, || {
        // SAFETY: forwarded from this function's contract.
        Ok(unsafe { handle(F, "guard", guard) }?.guard.len())
    })
}

/// The bytes of the guard's expert at position `index` (the order of the acquire). Any thread.
///
/// # Safety
/// `guard` must be a live guard; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_guard_get(
    guard: *const FmioGuard,
    index: usize,
    out: *mut FmioExpertBytes,
) -> FmioStatus {
    const F: &str = "fmio_guard_get";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let g = &unsafe { handle(F, "guard", guard) }?.guard;
        need_out(F, "out", out)?;
        if index >= g.len() {
            return Err(CallError::invalid(
                F,
                "index",
                format_args!("{index} is out of range (the guard holds {})", g.len()),
            ));
        }
        let bytes = g.bytes(index);
        let v = FmioExpertBytes {
            expert: g.expert(index),
            data: bytes.as_ptr(),
            len: bytes.len() as u64,
        };
        // SAFETY: as above.
        unsafe { write_out(F, "out", out, v) }
    })
}

/// Releases a guard: its bytes may be evicted or reused from now on (NULL is ignored).
///
/// # Safety
/// `guard` must come from this library and not be released already; no pointer into its
/// bytes may be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_guard_release(guard: *mut FmioGuard) {
    // SAFETY: forwarded from this function's contract.
    unsafe { flashmoe_capi_common::args::free_handle(guard) }
}

/// Reads every record into the cache's free slots, layer by layer, and waits until they are in
/// memory: a model's load, so that decode finds them ready (when the budget holds every
/// record, all of them). It never evicts and stops at the first record no free slot is left
/// for; cached records are left as they are. Counted as `preloaded`, not as demands. A record
/// that cannot be read fails the call naming it (what was read stays cached). `*out_cached`:
/// records now cached, from layer 0 expert 0 on; `*out_read`: of those, read now. Either out
/// pointer may be NULL. Any thread.
///
/// # Safety
/// `session` must be a live session; each non-NULL out pointer writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_preload(
    session: *const FmioSession,
    out_cached: *mut usize,
    out_read: *mut usize,
) -> FmioStatus {
    const F: &str = "fmio_session_preload";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { handle(F, "session", session) }?;
        let p = s.core.preload_all().map_err(|e| CallError::sched(F, &e))?;
        // SAFETY (both): each is written only when non-NULL, writable by the caller's promise.
        unsafe {
            if !out_cached.is_null() {
                out_cached.write(p.cached);
            }
            if !out_read.is_null() {
                out_read.write(p.read);
            }
        }
        Ok(())
    })
}

/// Counters of the whole session (`layer` = `FMIO_ALL_LAYERS`) or of one layer. Any thread.
///
/// # Safety
/// `session` must be a live session; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fmio_session_metrics(
    session: *const FmioSession,
    layer: u32,
    out: *mut FmioMetrics,
) -> FmioStatus {
    const F: &str = "fmio_session_metrics";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { handle(F, "session", session) }?;
        need_out(F, "out", out)?;
        let m = s.core.metrics();
        let v = if layer == crate::FMIO_ALL_LAYERS {
            FmioMetrics::from_parts(&m.total(), Some(&m.depth))
        } else {
            let l = m.layers.get(layer as usize).ok_or_else(|| {
                CallError::invalid(
                    F,
                    "layer",
                    format_args!("{layer} is out of range ({} layers)", m.layers.len()),
                )
            })?;
            FmioMetrics::from_parts(l, None)
        };
        // SAFETY: as above.
        unsafe { write_out(F, "out", out, v) }
    })
}
