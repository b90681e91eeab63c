//! Metrics as a plain C struct.

use io_sched::metrics::{DepthMetrics, LayerMetrics};

/// Counters of one layer or of all layers (see `fmio_session_metrics`). Fields are only ever
/// appended in later versions of this struct (`fmio_abi_version` tells which).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FmioMetrics {
    /// Experts asked for by acquire.
    pub demanded: u64,
    /// Demanded experts already ready in the cache.
    pub hits: u64,
    /// Demanded experts being prefetched and not yet ready (promoted, not re-read).
    pub late_prefetch_hits: u64,
    /// Demanded experts read from scratch.
    pub misses: u64,
    /// Demanded experts a prefetch brought in.
    pub prefetch_used: u64,
    /// Prefetched experts never used.
    pub prefetch_wasted: u64,
    /// Prefetches dropped before any byte was read.
    pub prefetch_cancelled: u64,
    /// Prefetch loads started.
    pub prefetch_issued: u64,
    /// Bytes read for demand loads.
    pub demand_bytes: u64,
    /// Bytes read for prefetch loads.
    pub prefetch_bytes: u64,
    /// Bytes of prefetch loads never used.
    pub wasted_bytes: u64,
    /// Reads retried after a short read.
    pub short_read_retries: u64,
    /// Loads that failed (I/O error or checksum).
    pub failed_loads: u64,
    /// Time acquire callers waited for bytes, in nanoseconds.
    pub stall_ns: u64,
    /// Acquire calls that had to wait.
    pub stalled_acquires: u64,
    /// Reads submitted to the device (whole session; 0 in a per-layer struct).
    pub submits: u64,
    /// Most reads in flight at once (whole session; 0 in a per-layer struct).
    pub max_depth: u64,
    /// Time the device had a read in flight, in nanoseconds (whole session; 0 per layer).
    pub busy_ns: u64,
    /// Records read by `fmio_session_preload` (not demanded). Since ABI version 2.
    pub preloaded: u64,
    /// Bytes read for preloads. Since ABI version 2.
    pub preload_bytes: u64,
}

impl FmioMetrics {
    /// The counters of `m`, with the device's if given.
    pub(crate) fn from_parts(m: &LayerMetrics, depth: Option<&DepthMetrics>) -> Self {
        let d = depth.copied().unwrap_or_default();
        Self {
            demanded: m.demanded,
            hits: m.hits,
            late_prefetch_hits: m.late_prefetch_hits,
            misses: m.misses,
            prefetch_used: m.prefetch_used,
            prefetch_wasted: m.prefetch_wasted,
            prefetch_cancelled: m.prefetch_cancelled,
            prefetch_issued: m.prefetch_issued,
            demand_bytes: m.demand_bytes,
            prefetch_bytes: m.prefetch_bytes,
            wasted_bytes: m.wasted_bytes,
            short_read_retries: m.short_read_retries,
            failed_loads: m.failed_loads,
            stall_ns: m.stall_ns,
            stalled_acquires: m.stalled_acquires,
            submits: d.submits,
            max_depth: d.max_depth,
            busy_ns: d.busy_ns,
            preloaded: m.preloaded,
            preload_bytes: m.preload_bytes,
        }
    }
}
