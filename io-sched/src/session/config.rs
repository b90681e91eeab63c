//! [`SessionConfig`]: the per-layer prefetch policy a [`super::Session`] runs.

use crate::predictor::OverFetch;

/// The probability at which a cost-aware hint that fits in the device's idle time is worth
/// its cache slot ([`SessionConfig::cost_aware`]).
pub const COST_AWARE_FLOOR: f32 = 0.1;
/// The probability past which a hint pays even when the device has no idle time left.
pub const COST_AWARE_BUSY: f32 = 0.5;

/// What a [`super::Session`] hints, built with defaults and chained setters:
///
/// ```
/// use io_sched::SessionConfig;
/// // Top-4 routing; hint the predictor's top 4, plus near-ties of the 4th score (up to 4
/// // more, each at least half its confidence) while the device would idle in the 10 ms of
/// // compute the reads overlap.
/// let cfg = SessionConfig::new(4).over_fetch(4, 0.5).idle_window_ns(10e6);
/// assert_eq!((cfg.top_k(), cfg.per_layer(), cfg.horizon()), (4, 4, 1));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionConfig {
    top_k: usize,
    per_layer: usize,
    horizon: u32,
    max_extra: usize,
    tie_ratio: f32,
    idle_window_ns: Option<f64>,
    measure_idle_window: bool,
    cost_aware: bool,
    record_calls: bool,
    union_group: usize,
}

impl SessionConfig {
    /// The policy for a model that routes `top_k` experts per layer: hint the predictor's top
    /// `top_k` for the next layer, no over-fetch, no call log.
    pub fn new(top_k: usize) -> Self {
        Self {
            top_k,
            per_layer: top_k,
            horizon: 1,
            max_extra: 0,
            tie_ratio: 0.0,
            idle_window_ns: None,
            measure_idle_window: false,
            cost_aware: false,
            record_calls: false,
            union_group: 16,
        }
    }

    /// Candidates always hinted per predicted layer (default `top_k`). Capped so that the
    /// hints of every predicted layer and one layer's `top_k` demand fit in the cache at once.
    pub fn per_layer(&self) -> usize {
        self.per_layer
    }
    /// Sets [`per_layer`](Self::per_layer).
    pub fn with_per_layer(mut self, n: usize) -> Self {
        self.per_layer = n;
        self
    }

    /// Experts routed per layer.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Layers ahead to predict and hint (default 1; 2 hints layer `L + 2` at layer `L` too).
    pub fn horizon(&self) -> u32 {
        self.horizon
    }
    /// Sets [`horizon`](Self::horizon) (at least 1).
    pub fn with_horizon(mut self, layers: u32) -> Self {
        self.horizon = layers.max(1);
        self
    }

    /// Over-fetch: past the `per_layer` candidates, up to `max_extra` more while their
    /// confidence is at least `tie_ratio` x the `per_layer`-th's ([`OverFetch`]); 0 turns it off.
    pub fn over_fetch(mut self, max_extra: usize, tie_ratio: f32) -> Self {
        self.max_extra = max_extra;
        self.tie_ratio = tie_ratio;
        self
    }

    /// The over-fetch rule, if any.
    pub fn over_fetch_rule(&self) -> Option<OverFetch> {
        (self.max_extra > 0).then_some(OverFetch {
            base: self.per_layer,
            max_extra: self.max_extra,
            tie_ratio: self.tie_ratio,
        })
    }

    /// Bounds the over-fetched extras by the device's idle time: per predicted layer, a window
    /// of `ns` (one layer's compute, which the reads overlap) at the device's measured
    /// throughput, less the base candidates not cached yet. Unbounded when not set.
    pub fn idle_window_ns(mut self, ns: f64) -> Self {
        self.idle_window_ns = Some(ns);
        self
    }

    /// The idle window set, if extras are bounded by it.
    pub fn idle_window(&self) -> Option<f64> {
        self.idle_window_ns
    }

    /// Measures the idle window instead of taking it as given: the session times the compute
    /// between one layer's bytes arriving and the next layer's demand (a running mean, on its
    /// I/O's clock: [`super::SessionIo::now_ns`]) and bounds hints by that once it has a
    /// sample; until then by [`idle_window_ns`](Self::idle_window_ns), if set. A clockless
    /// I/O keeps the set window.
    pub fn measure_idle_window(mut self, on: bool) -> Self {
        self.measure_idle_window = on;
        self
    }

    /// Whether the idle window is measured.
    pub fn measures_idle_window(&self) -> bool {
        self.measure_idle_window
    }

    /// Records per group of a prompt chunk's union demand ([`super::Session::next_group`];
    /// default 16, about the queue depth at which a disk reads fastest). Capped at half the
    /// cache, so one group computes while the next is read.
    pub fn union_group(&self) -> usize {
        self.union_group
    }
    /// Sets [`union_group`](Self::union_group) (at least 1).
    pub fn with_union_group(mut self, records: usize) -> Self {
        self.union_group = records.max(1);
        self
    }

    /// Cost-aware hinting (replaces the top-`per_layer` and near-tie rules): of the candidates
    /// asked for (`per_layer` plus the over-fetch's `max_extra`), likeliest first over all
    /// predicted layers, an expert not cached yet is hinted when its probability times the
    /// stall its read would save beats the device time it takes from demand reads. Within
    /// the device's idle time before the target layer's deadline (the idle window per layer
    /// ahead, less this layer's demand reads and the hints already taken) that costs nothing
    /// but the cache slot, so a probability of [`COST_AWARE_FLOOR`] suffices; past it the
    /// read delays a demand read as long as it saves one, so it must be likelier than not.
    /// Cached candidates are always hinted (that only protects them). Needs calibrated
    /// confidences (e.g. [`crate::predictor::Blend`]) and an idle window
    /// ([`idle_window_ns`](Self::idle_window_ns); without one, the idle time is taken as
    /// unbounded).
    pub fn cost_aware(mut self, on: bool) -> Self {
        self.cost_aware = on;
        self
    }

    /// Whether hinting is cost-aware.
    pub fn is_cost_aware(&self) -> bool {
        self.cost_aware
    }

    /// Keeps a log of every call the session makes on its I/O ([`super::Call`]), for tests
    /// that compare drivers.
    pub fn record_calls(mut self, on: bool) -> Self {
        self.record_calls = on;
        self
    }

    /// Whether calls are logged.
    pub fn records_calls(&self) -> bool {
        self.record_calls
    }
}
