//! Replay a routing trace in real time on the real disk through the real [`io_sched::Scheduler`]
//! (or, for the "trust the OS" row, through a budget-limited page cache; see [`mmap`]).
//!
//! Per token, per layer `L` (as [`crate::vtime`] does in virtual time, and `generate` through
//! the engine — all three drive io-sched's [`Session`]):
//! 1. busy-wait the part of `L`'s compute before routing is known;
//! 2. routing arrives: the session gets the pre-gate scores for `L+1` (and `L+2`), queues the
//!    demand reads of the routed experts, hints its predictions (behind the demand reads), and
//!    waits for the demand (blocking: the stall is measured);
//! 3. busy-wait the expert FFN, drop the guard.
//!
//! Compute is a busy-wait (it occupies a core as real kernels would), never a sleep.

pub mod mmap;
pub mod prediction;
pub mod reference;
pub mod rows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use io_sched::backend::BackendKind;
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::cache::EvictionKind;
use io_sched::metrics::LayerMetrics;
use io_sched::trace::Trace;
use io_sched::{Call, ExpertLayout, Scheduler, SchedulerConfig, Session, SessionConfig};

use crate::error::{Result, SimError};
use crate::predict::{self, PredictorKind};

/// How one row reads experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowKind {
    /// (a) mmap + page cache limited to the budget.
    Mmap,
    /// (b) one pread thread, one read per expert, on demand, no prefetch.
    SyncPread,
    /// (c)–(e) io-sched (automatic backend) with this predictor, hinting its top k.
    Sched(PredictorKind),
    /// (d) io-sched with this predictor, hinting past its top k as [`OverFetchRow`] says.
    SchedOver(PredictorKind, OverFetchRow),
}

/// An over-fetch variant of a predictor row: io-sched's
/// [`OverFetch`](io_sched::predictor::OverFetch) with these settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OverFetchRow {
    /// Candidates past k at most.
    pub max_extra: u8,
    /// [`OverFetch::tie_ratio`](io_sched::predictor::OverFetch::tie_ratio) in percent (0: every extra).
    pub tie_pct: u8,
    /// Bound the extras by the device's idle time in the layer's window
    /// ([`SessionConfig::idle_window_ns`]).
    pub idle_bound: bool,
    /// Layers ahead to hint (0: the spec's horizon).
    pub horizon: u8,
    /// The cache's eviction policy ([`EvictionKind::NextUse`] is fed the predictor's
    /// probabilities by the session).
    pub eviction: EvictionKind,
    /// Cost-aware hinting ([`SessionConfig::cost_aware`]) over the `max_extra` more
    /// candidates, instead of the near-tie rule.
    pub cost_aware: bool,
    /// Hint nothing: the predictor only feeds the eviction policy (a cache without prefetch,
    /// comparable with Belady's bound).
    pub no_hints: bool,
}

impl Default for OverFetchRow {
    /// No over-fetch, the spec's horizon, LRU, plain hinting.
    fn default() -> Self {
        Self {
            max_extra: 0,
            tie_pct: 0,
            idle_bound: false,
            horizon: 0,
            eviction: EvictionKind::Lru,
            cost_aware: false,
            no_hints: false,
        }
    }
}

impl RowKind {
    pub fn label(self) -> String {
        match self {
            RowKind::Mmap => "a mmap+page-cache".into(),
            RowKind::SyncPread => "b sync pread".into(),
            RowKind::Sched(PredictorKind::None) => "c io-sched".into(),
            RowKind::Sched(PredictorKind::Oracle) => "e io-sched+oracle".into(),
            RowKind::Sched(p) => format!("d io-sched+{}", p.name()),
            RowKind::SchedOver(p, o) => {
                let row = if p == PredictorKind::Oracle { 'e' } else { 'd' };
                let mut l = format!("{row} {}", p.name());
                if o.max_extra > 0 {
                    l += &format!("+{}", o.max_extra);
                }
                if o.tie_pct > 0 {
                    l += &format!(" tie{}", o.tie_pct);
                }
                if o.idle_bound {
                    l += " idle";
                }
                if o.cost_aware {
                    l += " cost";
                }
                if o.no_hints {
                    l += " no-hints";
                }
                if o.horizon > 0 {
                    l += &format!(" h{}", o.horizon);
                }
                if o.eviction != EvictionKind::Lru {
                    l += &format!(" {}", o.eviction.name());
                }
                l
            }
        }
    }

    /// The cache's eviction policy (LRU unless the row says otherwise).
    pub fn eviction(self) -> EvictionKind {
        match self {
            RowKind::SchedOver(_, o) => o.eviction,
            _ => EvictionKind::Lru,
        }
    }

    /// The predictor of an io-sched row (none for the others).
    pub fn predictor(self) -> PredictorKind {
        match self {
            RowKind::Sched(p) | RowKind::SchedOver(p, _) => p,
            _ => PredictorKind::None,
        }
    }

    /// Layers ahead the row hints itself (0: the spec's horizon).
    pub fn horizon(self) -> u8 {
        match self {
            RowKind::SchedOver(_, o) => o.horizon,
            _ => 0,
        }
    }
}

/// What every row shares.
#[derive(Debug, Clone)]
pub struct ReplaySpec {
    pub budget_bytes: u64,
    /// Compute per layer, ns; `pre_share` of it before routing is known.
    pub compute_ns: u64,
    pub pre_share: f64,
    pub warmup: u64,
    pub tokens: u64,
    pub horizon: u32,
    pub max_per_layer: usize,
    /// Recall of synthesized pre-gate scores when the trace has none.
    pub pregate_recall: f64,
    pub seed: u64,
    /// io_uring queue depth / pread threads of the io-sched rows.
    pub queue_depth: u32,
    /// Prefetch bytes / reads in flight at most (io-sched's `CoreConfig`; None: its default).
    pub max_prefetch_bytes: Option<u64>,
    pub max_prefetch_ops: Option<usize>,
    /// GB/s of row (b)'s own request measured alone (whole-record O_DIRECT preads, one in
    /// flight: [`reference::sync_record_burst`]); the simulator's row (b) reads at it.
    pub sync_read_gbps: Option<f64>,
    /// Two-layers-ahead pre-gate scores of the same run as the trace (see
    /// [`predict::TraceScores::with_far_scores`]).
    pub far_trace: Option<Arc<Trace>>,
    /// Keep the session's call log in [`RowResult::calls`] (for tests).
    pub record_calls: bool,
}

impl RowKind {
    /// The session policy of an io-sched row: hint the predictor's top `k` for `horizon`
    /// layers, over-fetched as the row says; an idle bound uses one layer's compute
    /// (`compute_ns`) as the window.
    pub fn policy(self, k: usize, horizon: u32, compute_ns: u64) -> SessionConfig {
        let mut p = SessionConfig::new(k)
            .with_per_layer(k)
            .with_horizon(horizon);
        if let RowKind::SchedOver(_, o) = self {
            if o.horizon > 0 {
                p = p.with_horizon(o.horizon as u32);
            }
            p = p
                .over_fetch(o.max_extra as usize, o.tie_pct as f32 / 100.0)
                .cost_aware(o.cost_aware);
            if o.idle_bound {
                p = p.idle_window_ns(compute_ns as f64);
            }
            if o.no_hints {
                p = p.with_per_layer(0).over_fetch(0, 0.0);
            }
        }
        p
    }
}

/// One measured row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowResult {
    pub label: String,
    pub kind: RowKind,
    pub backend: String,
    pub tokens: u64,
    pub elapsed_s: f64,
    pub tok_per_s: f64,
    pub hits: u64,
    pub misses: u64,
    pub demanded: u64,
    pub hit_rate: f64,
    /// Bytes the scheduler read (demand + prefetch); for mmap, misses × record.
    pub bytes_read: u64,
    /// Bytes this process read from the block layer (`/proc/self/io` read_bytes), if known.
    pub disk_bytes: Option<u64>,
    pub stall_s: f64,
    /// Time the device had at least one read in flight (io-sched's I/O thread timed it; for
    /// the mmap row, the time spent copying out of the mapping, page faults included, which
    /// bounds its device time from above).
    pub device_busy_s: f64,
    pub prefetch_precision: f64,
    pub prefetch_recall: f64,
    /// Candidates hinted per predicted layer (mean), extras included.
    pub hinted_per_layer: f64,
    pub cache_slots: usize,
    /// What the virtual-time simulator predicts for this row (filled by the caller).
    pub predicted: Option<prediction::Predicted>,
    /// tok/s of every round when rows were repeated (this row is the median round).
    pub rounds_tok_per_s: Vec<f64>,
    /// The session's calls, warmup included, when [`ReplaySpec::record_calls`].
    #[serde(skip)]
    pub calls: Vec<Call>,
}

impl RowResult {
    pub fn bytes_per_token(&self) -> f64 {
        self.bytes_read as f64 / self.tokens.max(1) as f64
    }
    pub fn stall_ms_per_token(&self) -> f64 {
        1e3 * self.stall_s / self.tokens.max(1) as f64
    }
    /// Bytes read over the time the device was busy: the device's throughput while it worked.
    pub fn device_gbps(&self) -> f64 {
        self.bytes_read as f64 / self.device_busy_s.max(1e-9) / 1e9
    }
    /// Bytes read over the whole measured run (compute included).
    pub fn run_gbps(&self) -> f64 {
        self.bytes_read as f64 / self.elapsed_s.max(1e-9) / 1e9
    }
    /// Share of the run the device was busy.
    pub fn busy_share(&self) -> f64 {
        self.device_busy_s / self.elapsed_s.max(1e-9)
    }
}

/// Spins until `d` has passed (occupies the core, like compute would).
pub fn busy_wait(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Bytes this process has read from storage so far (`/proc/self/io`), where available.
pub fn proc_read_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs one row over `trace` (tokens wrap) on the model `layout`.
pub fn run_row(
    kind: RowKind,
    layout: &ExpertLayout,
    trace: &Arc<Trace>,
    spec: &ReplaySpec,
) -> Result<RowResult> {
    let h = trace.header;
    if h.layers != layout.num_layers() || h.experts != layout.num_experts() {
        return Err(SimError::Setup(format!(
            "trace has {} layers x {} experts, the model {} x {}",
            h.layers,
            h.experts,
            layout.num_layers(),
            layout.num_experts()
        )));
    }
    if trace.tokens() == 0 || spec.tokens == 0 {
        return Err(SimError::Setup("need a trace and --tokens > 0".into()));
    }
    let rec = layout.max_read_len();
    let slots = spec.budget_bytes / rec.max(1);
    if slots < h.k as u64 {
        return Err(SimError::Setup(format!(
            "a budget of {} bytes holds {slots} records of {rec} bytes: fewer than k = {}",
            spec.budget_bytes, h.k
        )));
    }
    mmap::drop_page_cache(layout);
    let pred_kind = kind.predictor();
    let policy = kind
        .policy(spec.max_per_layer, spec.horizon, spec.compute_ns)
        .record_calls(spec.record_calls);
    let steps = spec.warmup + spec.tokens;
    let predictor = predict::make(pred_kind, trace, steps)?;
    let mut scores = predict::TraceScores::new(pred_kind, spec.pregate_recall, spec.seed);
    if let Some(far) = &spec.far_trace {
        scores = scores.with_far_scores(far.clone());
    }
    let compute = Duration::from_nanos(spec.compute_ns);
    let pre = compute.mul_f64(spec.pre_share.clamp(0.0, 1.0));
    let post = compute.saturating_sub(pre);

    // Set up the fetch path.
    let mut mm = None;
    let mut fallbacks = Vec::new();
    let sched = match kind {
        RowKind::Mmap => {
            mm = Some(mmap::LimitedMmap::open(layout, spec.budget_bytes)?);
            None
        }
        RowKind::SyncPread | RowKind::Sched(_) | RowKind::SchedOver(..) => {
            let sync = kind == RowKind::SyncPread;
            let cfg = BackendConfig::default()
                .kind(sync.then_some(BackendKind::Pread))
                .threads(sync.then_some(1))
                .queue_depth(spec.queue_depth);
            let opened = open_backend(layout, &cfg)?;
            fallbacks = opened.fallbacks.clone();
            // Checksums on, as `generate` runs.
            let mut sc = SchedulerConfig::with_budget(spec.budget_bytes).eviction(kind.eviction());
            if sync {
                sc = sc.demand_chunk(rec as usize);
            }
            if let Some(b) = spec.max_prefetch_bytes {
                sc = sc.max_prefetch_bytes_in_flight(b);
            }
            if let Some(n) = spec.max_prefetch_ops {
                sc = sc.max_prefetch_ops_in_flight(n);
            }
            Some(Arc::new(Scheduler::with_backend(
                layout.clone(),
                sc,
                opened.backend,
            )?))
        }
    };
    let backend = match &sched {
        Some(s) if fallbacks.is_empty() => s.backend_description().to_string(),
        Some(s) => format!(
            "{} (fallback: {})",
            s.backend_description(),
            fallbacks
                .iter()
                .map(|f| f.reason())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        None => "mmap (own mapping, page cache held to budget)".into(),
    };
    let mut session = sched
        .as_ref()
        .map(|s| Session::new(s.clone(), policy, predictor));
    let mut hinted0 = io_sched::SessionStats::default();
    let (mut t0, mut stall) = (Instant::now(), Duration::ZERO);
    let mut base = LayerMetrics::default();
    let mut busy0 = 0u64;
    let mut disk0 = None;
    let (mut mm_hits, mut mm_demanded) = (0u64, 0u64);
    for step in 0..steps {
        let measuring = step >= spec.warmup;
        if step == spec.warmup {
            if let Some(s) = &sched {
                let m = s.metrics();
                base = m.total();
                busy0 = m.depth.busy_ns;
            }
            disk0 = proc_read_bytes();
            if let Some(s) = &session {
                hinted0 = s.stats();
            }
            t0 = Instant::now();
            stall = Duration::ZERO;
        }
        let token = step % trace.tokens();
        for layer in 0..h.layers {
            busy_wait(pre);
            let experts = trace.experts_at(token, layer);
            let t = Instant::now();
            if let Some(s) = session.as_mut() {
                scores.feed(s, trace, token, layer);
                let guard = s.demand(layer, experts)?;
                if measuring {
                    stall += t.elapsed();
                }
                busy_wait(post);
                drop(guard);
            } else if let Some(m) = mm.as_mut() {
                let hits = m.acquire(layer, experts)?;
                if measuring {
                    stall += t.elapsed();
                    mm_hits += hits;
                    mm_demanded += experts.len() as u64;
                }
                busy_wait(post);
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let disk_bytes = match (disk0, proc_read_bytes()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let (m, cache_slots, busy_s) = match &sched {
        Some(s) => {
            let snap = s.metrics();
            let busy = snap.depth.busy_ns.saturating_sub(busy0) as f64 / 1e9;
            (diff(&snap.total(), &base), s.capacity().0, busy)
        }
        None => {
            let mut m = LayerMetrics {
                demanded: mm_demanded,
                hits: mm_hits,
                misses: mm_demanded - mm_hits,
                ..LayerMetrics::default()
            };
            m.demand_bytes = m.misses * rec;
            (m, slots as usize, stall.as_secs_f64())
        }
    };
    Ok(RowResult {
        label: kind.label(),
        kind,
        backend,
        tokens: spec.tokens,
        elapsed_s: elapsed,
        tok_per_s: spec.tokens as f64 / elapsed.max(1e-9),
        hits: m.hits,
        misses: m.misses,
        demanded: m.demanded,
        hit_rate: m.hit_rate(),
        bytes_read: m.bytes_read(),
        disk_bytes,
        stall_s: stall.as_secs_f64(),
        device_busy_s: busy_s,
        prefetch_precision: m.prefetch_precision(),
        prefetch_recall: m.prefetch_recall(),
        hinted_per_layer: session
            .as_ref()
            .map_or(0.0, |s| s.stats().since(&hinted0).hinted_per_layer()),
        cache_slots,
        predicted: None,
        rounds_tok_per_s: Vec::new(),
        calls: session.as_mut().map(|s| s.take_calls()).unwrap_or_default(),
    })
}

fn diff(now: &LayerMetrics, base: &LayerMetrics) -> LayerMetrics {
    let snap_now = io_sched::metrics::MetricsSnapshot {
        layers: vec![*now],
        ..Default::default()
    };
    let snap_base = io_sched::metrics::MetricsSnapshot {
        layers: vec![*base],
        ..Default::default()
    };
    snap_now.since(&snap_base).total()
}
