//! Scheduler metrics, per layer and in total. Plain counters updated under the core's lock,
//! so they cost a few additions per request and can stay on.

use serde::Serialize;

/// Counters for one layer (or the total).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LayerMetrics {
    /// Experts asked for by `acquire`.
    pub demanded: u64,
    /// Demanded experts already ready in the cache.
    pub hits: u64,
    /// Demanded experts that were being prefetched and not yet ready (promoted, not re-read).
    pub late_prefetch_hits: u64,
    /// Demanded experts that had to be read from scratch.
    pub misses: u64,
    /// Demanded experts that a prefetch brought in (ready or in flight when demanded).
    pub prefetch_used: u64,
    /// Prefetched experts never used before their layer was acquired or they were evicted.
    pub prefetch_wasted: u64,
    /// Prefetches dropped before any byte was read (stale or superseded).
    pub prefetch_cancelled: u64,
    /// Prefetch loads started.
    pub prefetch_issued: u64,
    /// Bytes read for demand loads (incl. the rest of promoted prefetches).
    pub demand_bytes: u64,
    /// Bytes read for prefetch loads.
    pub prefetch_bytes: u64,
    /// Bytes of prefetch loads that were never used.
    pub wasted_bytes: u64,
    /// Reads retried after a short read.
    pub short_read_retries: u64,
    /// Loads that failed (I/O error or checksum).
    pub failed_loads: u64,
    /// Records read by [`Scheduler::preload`](crate::Scheduler::preload) (not demanded).
    pub preloaded: u64,
    /// Bytes read for preloads.
    pub preload_bytes: u64,
    /// Time `acquire` callers spent waiting for bytes, in nanoseconds.
    pub stall_ns: u64,
    /// Number of `acquire` calls that had to wait.
    pub stalled_acquires: u64,
}

impl LayerMetrics {
    fn add(&mut self, o: &LayerMetrics) {
        self.demanded += o.demanded;
        self.hits += o.hits;
        self.late_prefetch_hits += o.late_prefetch_hits;
        self.misses += o.misses;
        self.prefetch_used += o.prefetch_used;
        self.prefetch_wasted += o.prefetch_wasted;
        self.prefetch_cancelled += o.prefetch_cancelled;
        self.prefetch_issued += o.prefetch_issued;
        self.demand_bytes += o.demand_bytes;
        self.prefetch_bytes += o.prefetch_bytes;
        self.wasted_bytes += o.wasted_bytes;
        self.short_read_retries += o.short_read_retries;
        self.failed_loads += o.failed_loads;
        self.preloaded += o.preloaded;
        self.preload_bytes += o.preload_bytes;
        self.stall_ns += o.stall_ns;
        self.stalled_acquires += o.stalled_acquires;
    }

    /// Share of demanded experts found ready (late prefetch hits count half: they still waited).
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.demanded)
    }

    /// Of the prefetches that were decided (used or wasted), the share that was used.
    pub fn prefetch_precision(&self) -> f64 {
        ratio(
            self.prefetch_used,
            self.prefetch_used + self.prefetch_wasted,
        )
    }

    /// Of the demanded experts, the share a prefetch had brought in or started.
    pub fn prefetch_recall(&self) -> f64 {
        ratio(self.prefetch_used, self.demanded)
    }

    /// Bytes read from the device for demands and prefetches ([`preloads`](Self::preload_bytes)
    /// apart).
    pub fn bytes_read(&self) -> u64 {
        self.demand_bytes + self.prefetch_bytes
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Queue-depth statistics of the device, sampled at every submit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DepthMetrics {
    pub submits: u64,
    pub depth_sum: u64,
    pub max_depth: u64,
    /// Reads in flight right now.
    pub in_flight: u64,
    /// Time the device had at least one read in flight, in nanoseconds: the denominator of
    /// the device's real throughput (bytes read / busy time), which run time (compute
    /// included) is not. Timed by the threaded [`crate::Scheduler`]'s I/O thread from its first
    /// submit after idle to the reap that leaves nothing in flight; 0 where no clock runs (the
    /// bare core, the simulator).
    pub busy_ns: u64,
}

impl DepthMetrics {
    pub fn mean_depth(&self) -> f64 {
        ratio(self.depth_sum, self.submits)
    }

    /// `bytes` over the busy time, in GB/s (10^9 bytes per second); 0 when nothing was timed.
    pub fn busy_gb_per_s(&self, bytes: u64) -> f64 {
        if self.busy_ns == 0 {
            0.0
        } else {
            bytes as f64 / self.busy_ns as f64
        }
    }
}

/// A copy of all counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    pub layers: Vec<LayerMetrics>,
    pub depth: DepthMetrics,
}

impl MetricsSnapshot {
    pub fn total(&self) -> LayerMetrics {
        let mut t = LayerMetrics::default();
        for l in &self.layers {
            t.add(l);
        }
        t
    }

    /// Counters accumulated since `earlier` (same scheduler).
    pub fn since(&self, earlier: &MetricsSnapshot) -> MetricsSnapshot {
        let layers = self
            .layers
            .iter()
            .zip(
                earlier
                    .layers
                    .iter()
                    .chain(std::iter::repeat(&LayerMetrics::default())),
            )
            .map(|(now, then)| sub(now, then))
            .collect();
        let mut depth = self.depth;
        depth.submits -= earlier.depth.submits.min(depth.submits);
        depth.depth_sum -= earlier.depth.depth_sum.min(depth.depth_sum);
        depth.busy_ns -= earlier.depth.busy_ns.min(depth.busy_ns);
        MetricsSnapshot { layers, depth }
    }
}

fn sub(a: &LayerMetrics, b: &LayerMetrics) -> LayerMetrics {
    LayerMetrics {
        demanded: a.demanded - b.demanded,
        hits: a.hits - b.hits,
        late_prefetch_hits: a.late_prefetch_hits - b.late_prefetch_hits,
        misses: a.misses - b.misses,
        prefetch_used: a.prefetch_used - b.prefetch_used,
        prefetch_wasted: a.prefetch_wasted - b.prefetch_wasted,
        prefetch_cancelled: a.prefetch_cancelled - b.prefetch_cancelled,
        prefetch_issued: a.prefetch_issued - b.prefetch_issued,
        demand_bytes: a.demand_bytes - b.demand_bytes,
        prefetch_bytes: a.prefetch_bytes - b.prefetch_bytes,
        wasted_bytes: a.wasted_bytes - b.wasted_bytes,
        short_read_retries: a.short_read_retries - b.short_read_retries,
        failed_loads: a.failed_loads - b.failed_loads,
        preloaded: a.preloaded - b.preloaded,
        preload_bytes: a.preload_bytes - b.preload_bytes,
        stall_ns: a.stall_ns - b.stall_ns,
        stalled_acquires: a.stalled_acquires - b.stalled_acquires,
    }
}
