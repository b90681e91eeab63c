//! Replay a routing trace in real time on the real disk through the real [`io_sched::Scheduler`]
//! (or, for the "trust the OS" row, through a budget-limited page cache; see [`mmap`]).
//!
//! Per token, per layer `L` (as [`crate::vtime`] does in virtual time):
//! 1. busy-wait the part of `L`'s compute before routing is known;
//! 2. routing arrives: `acquire` the routed experts (blocking: the stall is measured);
//! 3. the predictor observes the routing (and the pre-gate scores for `L+1`); its predictions
//!    become `hint`s — issued after the demand reads, so demand never queues behind them;
//! 4. busy-wait the expert FFN, drop the guard.
//!
//! Compute is a busy-wait (it occupies a core as real kernels would), never a sleep.

pub mod mmap;
pub mod prediction;
pub mod reference;

use std::sync::Arc;
use std::time::{Duration, Instant};

use io_sched::backend::BackendKind;
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::core::CoreConfig;
use io_sched::metrics::LayerMetrics;
use io_sched::predictor::OverFetch;
use io_sched::predictor::overfetch::idle_records;
use io_sched::trace::Trace;
use io_sched::{ExpertKey, ExpertLayout, Scheduler, SchedulerConfig};

use crate::error::{Result, SimError};
use crate::predict::{self, LayerPrediction, PredictorKind};

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

/// An over-fetch variant of a predictor row: io-sched's [`OverFetch`] with these settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OverFetchRow {
    /// Candidates past k at most.
    pub max_extra: u8,
    /// [`OverFetch::tie_ratio`] in percent (0: every extra).
    pub tie_pct: u8,
    /// Bound the extras by the device's idle time in the layer's window
    /// ([`io_sched::predictor::overfetch::idle_records`]).
    pub idle_bound: bool,
    /// Layers ahead to hint (0: the spec's horizon).
    pub horizon: u8,
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
                if o.horizon > 0 {
                    l += &format!(" h{}", o.horizon);
                }
                l
            }
        }
    }

    /// The predictor of an io-sched row (none for the others).
    pub fn predictor(self) -> PredictorKind {
        match self {
            RowKind::Sched(p) | RowKind::SchedOver(p, _) => p,
            _ => PredictorKind::None,
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
    /// [`predict::TracePredictor::with_far_scores`]).
    pub far_trace: Option<Arc<Trace>>,
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

/// The per-token loop, generic over how experts are fetched.
trait Fetch {
    /// Fetches `experts` of `layer`, then runs `after` (hints) while the bytes are held.
    fn layer(&mut self, layer: u32, experts: &[u32], compute_post: Duration) -> Result<()>;
    fn hint(&mut self, preds: &[LayerPrediction]);
}

/// The io-sched fetch path: acquire, then hint what the predictor said (under `over`).
struct SchedFetch<'a> {
    sched: &'a Scheduler,
    preds: Vec<LayerPrediction>,
    over: Option<(OverFetch, bool)>,
    /// The window a hint for the next layer overlaps: one layer's compute, ns.
    window_ns: f64,
    record: u64,
    hinted: u64,
    hinted_layers: u64,
    counts: Vec<usize>,
}

impl SchedFetch<'_> {
    /// Device bytes per ns while busy, as measured so far (a fallback before any read).
    fn bandwidth(&self) -> f64 {
        let m = self.sched.metrics();
        let bytes = m.total().bytes_read();
        if m.depth.busy_ns > 0 && bytes > 0 {
            m.depth.busy_gb_per_s(bytes)
        } else {
            1.0
        }
    }

    /// Base candidates of `p` not cached yet (the device must read them anyway).
    fn pending(&self, p: &LayerPrediction, base: usize) -> usize {
        p.candidates[..base.min(p.candidates.len())]
            .iter()
            .filter(|c| {
                !self
                    .sched
                    .with_core(|core| core.is_ready(ExpertKey::new(p.layer, c.expert)))
            })
            .count()
    }

    /// How many candidates of each prediction to hint. With an idle bound the extras share the
    /// device time of the window up to the farthest predicted layer (that many layers of
    /// compute) left after every base candidate not cached yet, nearest layer first.
    fn hint_counts(&self, layer: u32, out: &mut Vec<usize>) {
        out.clear();
        let Some((of, bounded)) = self.over else {
            out.extend(self.preds.iter().map(|p| p.candidates.len()));
            return;
        };
        let mut idle = if bounded {
            let n = self.sched.layout().num_layers();
            let ahead = self
                .preds
                .iter()
                .map(|p| (p.layer + n - layer - 1) % n + 1)
                .max()
                .unwrap_or(1);
            let pending = self.preds.iter().map(|p| self.pending(p, of.base)).sum();
            idle_records(
                self.window_ns * ahead as f64,
                self.bandwidth(),
                self.record,
                pending,
            )
        } else {
            usize::MAX
        };
        for p in &self.preds {
            let c = of.count(&p.candidates, idle);
            idle = idle.saturating_sub(c.saturating_sub(of.base));
            out.push(c);
        }
    }
}

impl Fetch for SchedFetch<'_> {
    fn layer(&mut self, layer: u32, experts: &[u32], post: Duration) -> Result<()> {
        let guard = self.sched.acquire(layer, experts)?;
        let mut counts = std::mem::take(&mut self.counts);
        self.hint_counts(layer, &mut counts);
        for (p, &n) in self.preds.iter().zip(&counts) {
            self.hinted += n as u64;
            self.hinted_layers += 1;
            self.sched.hint(p.layer, &p.candidates[..n]);
        }
        self.counts = counts;
        busy_wait(post);
        drop(guard);
        Ok(())
    }
    fn hint(&mut self, preds: &[LayerPrediction]) {
        self.preds.clear();
        self.preds.extend_from_slice(preds);
    }
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
    let over = match kind {
        RowKind::SchedOver(_, o) => Some((
            OverFetch {
                base: spec.max_per_layer,
                max_extra: o.max_extra as usize,
                tie_ratio: o.tie_pct as f32 / 100.0,
            },
            o.idle_bound,
        )),
        _ => None,
    };
    let asked = spec.max_per_layer + over.map_or(0, |(o, _)| o.max_extra);
    let horizon = match kind {
        RowKind::SchedOver(_, o) if o.horizon > 0 => o.horizon as u32,
        _ => spec.horizon,
    };
    let steps = spec.warmup + spec.tokens;
    let mut predictor = predict::TracePredictor::new(
        pred_kind,
        trace,
        steps,
        spec.pregate_recall,
        horizon,
        asked,
        spec.seed,
    )?;
    if let Some(far) = &spec.far_trace {
        predictor = predictor.with_far_scores(far.clone());
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
            let cfg = BackendConfig {
                kind: sync.then_some(BackendKind::Pread),
                threads: sync.then_some(1),
                queue_depth: spec.queue_depth,
                ..BackendConfig::default()
            };
            let opened = open_backend(layout, &cfg)?;
            fallbacks = opened.fallbacks.clone();
            let mut core = CoreConfig {
                verify_checksums: false,
                ..CoreConfig::default()
            };
            if sync {
                core.demand_chunk = rec as usize;
            }
            if let Some(b) = spec.max_prefetch_bytes {
                core.max_prefetch_bytes_in_flight = b;
            }
            if let Some(n) = spec.max_prefetch_ops {
                core.max_prefetch_ops_in_flight = n;
            }
            let sc = SchedulerConfig {
                core,
                ..SchedulerConfig::with_budget(spec.budget_bytes)
            };
            Some(Scheduler::with_backend(layout.clone(), sc, opened.backend)?)
        }
    };
    let backend = match &sched {
        Some(s) if fallbacks.is_empty() => s.backend_description().to_string(),
        Some(s) => format!(
            "{} (fallback: {})",
            s.backend_description(),
            fallbacks.join("; ")
        ),
        None => "mmap (own mapping, page cache held to budget)".into(),
    };
    let mut sf = sched.as_ref().map(|s| SchedFetch {
        sched: s,
        preds: Vec::new(),
        over,
        window_ns: spec.compute_ns as f64,
        record: rec,
        hinted: 0,
        hinted_layers: 0,
        counts: Vec::new(),
    });

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
            if let Some(f) = sf.as_mut() {
                (f.hinted, f.hinted_layers) = (0, 0);
            }
            t0 = Instant::now();
            stall = Duration::ZERO;
        }
        let token = step % trace.tokens();
        for layer in 0..h.layers {
            busy_wait(pre);
            let experts = trace.experts_at(token, layer);
            let preds = predictor.step(trace, token, layer, experts);
            let t = Instant::now();
            if let Some(f) = sf.as_mut() {
                f.hint(preds);
                f.layer(layer, experts, post)?;
                // The stall is the acquire, not the compute after it.
                let waited = t.elapsed().saturating_sub(post);
                if measuring {
                    stall += waited;
                }
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
        hinted_per_layer: sf
            .as_ref()
            .map_or(0.0, |f| f.hinted as f64 / f.hinted_layers.max(1) as f64),
        cache_slots,
        predicted: None,
        rounds_tok_per_s: Vec::new(),
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
