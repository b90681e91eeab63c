//! Summaries of runs: one struct per run (serialisable to JSON), text blocks and side-by-side
//! tables.

use std::fmt::Write as _;

use serde::Serialize;

use io_sched::metrics::LayerMetrics;

use crate::vtime::{LayerTime, RunResult};

/// Share of demanded experts that were already cached from an earlier demand: a ready
/// expert that a prefetch brought in and nobody had used yet does not count. This is the
/// rate the Belady bound (optimal eviction, no prefetch) bounds.
pub fn cache_hit_rate(m: &LayerMetrics) -> f64 {
    let first_use_of_prefetch = m.prefetch_used.saturating_sub(m.late_prefetch_hits);
    ratio(m.hits.saturating_sub(first_use_of_prefetch), m.demanded)
}

/// Share of demanded experts that were ready when demanded (cache hits plus prefetches
/// that had finished): experts served without waiting for the SSD.
pub fn ready_rate(m: &LayerMetrics) -> f64 {
    ratio(m.hits, m.demanded)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// What one run means, in the units people compare.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub label: String,
    pub device: String,
    pub model: String,
    pub bits: u32,
    pub k: u32,
    pub mode: String,
    pub predictor: String,
    pub eviction: String,
    pub cache_bytes: u64,
    pub cache_experts: usize,
    pub tokens: u64,
    pub tok_per_s: f64,
    pub ms_per_token: f64,
    /// Per-layer averages, ms.
    pub layer_ms: f64,
    pub layer_compute_ms: f64,
    pub layer_stall_ms: f64,
    /// The part of `layer_stall_ms` spent faulting non-expert weights back from flash.
    pub layer_dense_fault_ms: f64,
    pub layer_overlapped_io_ms: f64,
    /// Demanded experts found cached from an earlier demand (see [`cache_hit_rate`]);
    /// comparable with `belady_hit_rate`.
    pub cache_hit_rate: f64,
    /// Demanded experts ready when demanded, prefetched ones included (see [`ready_rate`]).
    pub ready_rate: f64,
    /// Demanded experts whose prefetch was still in flight (they waited for its rest).
    pub late_prefetch_hit_rate: f64,
    /// Optimal eviction with no prefetch, same number of slots.
    pub belady_hit_rate: f64,
    pub prefetch_precision: f64,
    pub prefetch_recall: f64,
    pub demand_mb_per_token: f64,
    pub prefetch_mb_per_token: f64,
    pub wasted_mb_per_token: f64,
    pub mean_queue_depth: f64,
    /// Bytes the simulated SSD moved per token (expert reads and, under "trust the OS",
    /// non-expert weights faulted back), MB.
    pub device_mb_per_token: f64,
    /// Energy, battery, heat and wear of this run, when the device has cost figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub costs: Option<crate::costs::CostReport>,
    pub per_layer: Vec<LayerRow>,
}

/// One layer's averages per token.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub layer: u32,
    pub compute_ms: f64,
    pub stall_ms: f64,
    pub overlapped_io_ms: f64,
    pub cache_hit_rate: f64,
    pub ready_rate: f64,
    pub prefetch_precision: f64,
    pub prefetch_recall: f64,
}

/// Identification of a run for its summary.
#[derive(Debug, Clone)]
pub struct RunLabel {
    pub label: String,
    pub device: String,
    pub model: String,
    pub bits: u32,
    pub k: u32,
    pub mode: String,
    pub predictor: String,
    pub eviction: String,
    pub cache_bytes: u64,
}

impl Summary {
    pub fn new(id: RunLabel, r: &RunResult, belady: f64) -> Self {
        let n = r.tokens.max(1) as f64;
        let layers = r.layers.len().max(1) as f64;
        let t: LayerTime = r.time_total();
        let m = r.total();
        let per = |x: f64| x / n / layers / 1e6;
        let per_layer = r
            .layers
            .iter()
            .zip(&r.metrics.layers)
            .enumerate()
            .map(|(i, (lt, lm))| LayerRow {
                layer: i as u32,
                compute_ms: lt.compute_ns / n / 1e6,
                stall_ms: lt.stall_ns / n / 1e6,
                overlapped_io_ms: lt.overlapped_io_ns / n / 1e6,
                cache_hit_rate: cache_hit_rate(lm),
                ready_rate: ready_rate(lm),
                prefetch_precision: lm.prefetch_precision(),
                prefetch_recall: lm.prefetch_recall(),
            })
            .collect();
        Summary {
            label: id.label,
            device: id.device,
            model: id.model,
            bits: id.bits,
            k: id.k,
            mode: id.mode,
            predictor: id.predictor,
            eviction: id.eviction,
            cache_bytes: id.cache_bytes,
            cache_experts: r.cache_slots,
            tokens: r.tokens,
            tok_per_s: r.tok_per_s(),
            ms_per_token: r.elapsed_ns / n / 1e6,
            layer_ms: r.elapsed_ns / n / layers / 1e6,
            layer_compute_ms: per(t.compute_ns),
            layer_stall_ms: per(t.stall_ns),
            layer_dense_fault_ms: per(t.fault_ns),
            layer_overlapped_io_ms: per(t.overlapped_io_ns),
            cache_hit_rate: cache_hit_rate(&m),
            ready_rate: ready_rate(&m),
            late_prefetch_hit_rate: ratio(m.late_prefetch_hits, m.demanded),
            belady_hit_rate: belady,
            prefetch_precision: m.prefetch_precision(),
            prefetch_recall: m.prefetch_recall(),
            demand_mb_per_token: m.demand_bytes as f64 / n / 1e6,
            prefetch_mb_per_token: m.prefetch_bytes as f64 / n / 1e6,
            wasted_mb_per_token: m.wasted_bytes as f64 / n / 1e6,
            mean_queue_depth: r.metrics.depth.mean_depth(),
            device_mb_per_token: r.device_bytes / n / 1e6,
            costs: None,
            per_layer,
        }
    }

    /// A few lines for a terminal.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} {}-bit K={} on {} | mode {} | predictor {} | {} cache {:.1} GB ({} experts)",
            self.label,
            self.model,
            self.bits,
            self.k,
            self.device,
            self.mode,
            self.predictor,
            self.eviction,
            self.cache_bytes as f64 / 1e9,
            self.cache_experts
        );
        let _ = writeln!(
            s,
            "  tok/s          {:.2}  ({:.1} ms/token, {} tokens measured)",
            self.tok_per_s, self.ms_per_token, self.tokens
        );
        let _ = writeln!(
            s,
            "  per layer      {:.2} ms = compute {:.2} + stalled I/O {:.2}   (I/O hidden under compute: {:.2} ms)",
            self.layer_ms, self.layer_compute_ms, self.layer_stall_ms, self.layer_overlapped_io_ms
        );
        let _ = writeln!(
            s,
            "  cache hits     {:.1}% (Belady bound, no prefetch: {:.1}%)",
            100.0 * self.cache_hit_rate,
            100.0 * self.belady_hit_rate
        );
        let _ = writeln!(
            s,
            "  ready          {:.1}% served without waiting (cache + finished prefetches; +{:.1}% late prefetches)",
            100.0 * self.ready_rate,
            100.0 * self.late_prefetch_hit_rate
        );
        let _ = writeln!(
            s,
            "  prefetch       precision {:.1}%, recall {:.1}%",
            100.0 * self.prefetch_precision,
            100.0 * self.prefetch_recall
        );
        let _ = writeln!(
            s,
            "  bytes/token    demand {:.0} MB, prefetch {:.0} MB, wasted {:.0} MB; mean queue depth {:.1}",
            self.demand_mb_per_token,
            self.prefetch_mb_per_token,
            self.wasted_mb_per_token,
            self.mean_queue_depth
        );
        let _ = writeln!(
            s,
            "  flash reads    {:.0} MB/token (experts and any non-expert weights faulted back)",
            self.device_mb_per_token
        );
        if let Some(c) = &self.costs {
            s += &c.text();
        }
        s
    }
}

/// Several runs side by side, one row each. `cache%` counts demanded experts cached from an
/// earlier demand (what `belady%` bounds); `ready%` adds prefetches that had finished.
pub fn table(rows: &[Summary]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<34} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6} {:>6} {:>6} {:>9} {:>9}",
        "run",
        "cache GB",
        "tok/s",
        "layer ms",
        "compute",
        "stall",
        "overlap",
        "cache%",
        "belady%",
        "ready%",
        "prec%",
        "rec%",
        "demandMB",
        "prefetchMB"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<34} {:>8.1} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6.1} {:>7.1} {:>6.1} {:>6.1} {:>6.1} {:>9.0} {:>9.0}",
            r.label,
            r.cache_bytes as f64 / 1e9,
            r.tok_per_s,
            r.layer_ms,
            r.layer_compute_ms,
            r.layer_stall_ms,
            r.layer_overlapped_io_ms,
            100.0 * r.cache_hit_rate,
            100.0 * r.belady_hit_rate,
            100.0 * r.ready_rate,
            100.0 * r.prefetch_precision,
            100.0 * r.prefetch_recall,
            r.demand_mb_per_token,
            r.prefetch_mb_per_token
        );
    }
    s
}
