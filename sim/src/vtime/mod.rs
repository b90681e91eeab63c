//! The virtual-time run: the real scheduler core, a simulated SSD, a clock.
//!
//! Per token, per layer `L`:
//! 1. compute the part of `L` before routing is known (attention, router) — prefetches issued
//!    earlier proceed meanwhile, and slow compute by the device's memory contention;
//! 2. routing arrives: io-sched's [`Session`] — the per-layer protocol `generate` and `replay`
//!    run too — gets the pre-gate scores for `L+1` (and `L+2`), then the routing: it queues
//!    the demand (`note_routing`, `pin_or_load` each expert), hints its predictions, waits;
//! 3. stall until the demanded bytes are in (in "trust the OS" mode, also until each expert is
//!    copied out of the page cache by its reader thread);
//! 4. compute the expert FFN, unpin.
//!
//! Bytes: to keep the cache arena small whatever the budget, the layout handed to the core
//! uses records `scale` times smaller than the real experts; the device model multiplies
//! every read by `scale`, and reports convert back.

mod machine;

use std::sync::Arc;

use io_sched::cache::EvictionKind;
use io_sched::core::{CoreConfig, SchedCore};
use io_sched::metrics::{LayerMetrics, MetricsSnapshot};
use io_sched::trace::Trace;
use io_sched::{Call, ExpertKey, LayoutBuilder, Session, SessionConfig, SessionStats};

use crate::error::{Result, SimError};
use crate::predict::{self, PredictorKind};
use crate::ssd::{SsdParams, SsdSim};
use machine::Sim;

/// How expert bytes reach memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// flash-moe: buffered `pread` per expert through the OS page cache (global LRU), no
    /// prefetch; every expert is copied out of the page cache by one reader thread.
    TrustOs,
    /// flashmoe: direct reads into io-sched's own cache, chunked, queued deep, prefetched.
    Flashmoe,
}

/// Everything one run needs, already resolved to numbers.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub mode: Mode,
    pub layers: u32,
    pub experts: u32,
    /// Real bytes of one expert.
    pub expert_bytes: u64,
    /// Cache (or page cache) bytes for experts.
    pub budget_bytes: u64,
    pub ssd: SsdParams,
    /// Reads in flight at most (reader threads in trust-os mode).
    pub queue_depth: usize,
    /// Compute before routing / expert FFN, ns per layer.
    pub compute_pre_ns: f64,
    pub compute_post_ns: f64,
    /// Compute slowdown at full SSD utilisation.
    pub contention: f64,
    /// trust-os: bytes/s one thread copies out of the page cache.
    pub copy_bps_per_thread: f64,
    /// trust-os: chunks each expert read is split into, read in parallel (`queue_depth` is
    /// then reader threads × split).
    pub trust_os_split: usize,
    /// Non-expert bytes read back from flash per layer and token, before the layer computes
    /// (trust-os: the part of the mmap'd weights the page cache does not keep; flashmoe: the
    /// part that does not fit in memory beside its expert cache).
    pub dense_reread_bytes_per_layer: f64,
    pub eviction: EvictionKind,
    pub predictor: PredictorKind,
    pub horizon: u32,
    pub max_per_layer: usize,
    pub pregate_recall: f64,
    /// Two-layers-ahead pre-gate recall at top k: without a recorded far trace, synthetic
    /// L+2 scores are fed at this recall (horizon-2 rows); `None`: one layer ahead only.
    pub far_recall: Option<f64>,
    /// Real bytes per demand / prefetch read request (flashmoe mode).
    pub demand_chunk: u64,
    pub prefetch_chunk: u64,
    pub max_prefetch_bytes_in_flight: u64,
    pub min_confidence: f32,
    pub warmup_tokens: u64,
    pub tokens: u64,
    /// Record I/O and compute spans of this many measured tokens for a timeline.
    pub timeline_tokens: u64,
    pub seed: u64,
}

/// Time split of one layer, summed over measured tokens (ns).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LayerTime {
    /// Computing (including contention slowdown).
    pub compute_ns: f64,
    /// Waiting for expert bytes (and for non-expert weights faulted back: `fault_ns`).
    pub stall_ns: f64,
    /// The part of `stall_ns` spent faulting non-expert weights back from flash.
    pub fault_ns: f64,
    /// Device busy while computing (I/O hidden under compute).
    pub overlapped_io_ns: f64,
}

/// A span for the timeline.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Span {
    pub start_ns: f64,
    pub end_ns: f64,
    pub layer: u32,
    pub kind: SpanKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpanKind {
    Compute,
    Stall,
    DemandRead,
    PrefetchRead,
}

/// What a run measured (after warmup).
#[derive(Debug, Clone)]
pub struct RunResult {
    pub tokens: u64,
    pub elapsed_ns: f64,
    pub layers: Vec<LayerTime>,
    /// Scheduler counters, with byte counts converted to real bytes.
    pub metrics: MetricsSnapshot,
    pub cache_slots: usize,
    pub spans: Vec<Span>,
    /// Real bytes the simulated device transferred while measuring.
    pub device_bytes: f64,
    /// What the session hinted while measuring.
    pub session: SessionStats,
    /// Every call the session made (warmup included), when its policy records them.
    pub calls: Vec<Call>,
}

impl RunResult {
    pub fn tok_per_s(&self) -> f64 {
        if self.elapsed_ns <= 0.0 {
            f64::INFINITY
        } else {
            self.tokens as f64 / (self.elapsed_ns / 1e9)
        }
    }
    pub fn total(&self) -> LayerMetrics {
        self.metrics.total()
    }
    pub fn time_total(&self) -> LayerTime {
        let mut t = LayerTime::default();
        for l in &self.layers {
            t.compute_ns += l.compute_ns;
            t.stall_ns += l.stall_ns;
            t.fault_ns += l.fault_ns;
            t.overlapped_io_ns += l.overlapped_io_ns;
        }
        t
    }
}

/// Arena bytes the simulated cache may take.
const ARENA_CAP: u64 = 256 << 20;
const PAGE: u64 = 4096;

/// Runs `spec` over `trace` (tokens `0..warmup+tokens`, wrapping if the trace is shorter).
pub fn run(spec: &RunSpec, trace: &Arc<Trace>) -> Result<RunResult> {
    run_with_far(spec, trace, None)
}

/// [`run`], the scores predictor also fed two-layers-ahead pre-gate scores from `far` (see
/// [`predict::TraceScores::with_far_scores`]).
pub fn run_with_far(
    spec: &RunSpec,
    trace: &Arc<Trace>,
    far: Option<&Arc<Trace>>,
) -> Result<RunResult> {
    let policy = SessionConfig::new(trace.header.k as usize)
        .with_per_layer(spec.max_per_layer)
        .with_horizon(spec.horizon);
    run_session(spec, trace, far, policy)
}

/// [`run_with_far`] with an explicit session policy (over-fetch, call log): `spec`'s
/// `max_per_layer` and `horizon` are then ignored in favour of `policy`'s.
pub fn run_session(
    spec: &RunSpec,
    trace: &Arc<Trace>,
    far: Option<&Arc<Trace>>,
    policy: SessionConfig,
) -> Result<RunResult> {
    crate::validate::check_spec(spec)?;
    let h = trace.header;
    if h.layers != spec.layers || h.experts != spec.experts {
        return Err(SimError::Setup(format!(
            "trace has {} layers x {} experts, the model {} x {}",
            h.layers, h.experts, spec.layers, spec.experts
        )));
    }
    if trace.tokens() == 0 || spec.tokens == 0 || spec.queue_depth == 0 || spec.expert_bytes == 0 {
        return Err(SimError::Setup(
            "need tokens, a trace, queue depth and expert bytes > 0".into(),
        ));
    }
    let slots = (spec.budget_bytes / spec.expert_bytes).min(h.layers as u64 * h.experts as u64);
    if slots < h.k as u64 {
        return Err(SimError::Setup(format!(
            "a budget of {} bytes holds {slots} experts of {} bytes: fewer than k = {}",
            spec.budget_bytes, spec.expert_bytes, h.k
        )));
    }
    let real_pages = spec.expert_bytes.div_ceil(PAGE);
    let pages = (ARENA_CAP / slots / PAGE).clamp(1, real_pages);
    let rec = pages * PAGE;
    let scale = spec.expert_bytes as f64 / rec as f64;
    let mut b = LayoutBuilder::new(h.layers, h.experts);
    let f = b.add_file("sim://experts");
    for l in 0..h.layers {
        for e in 0..h.experts {
            let i = l as u64 * h.experts as u64 + e as u64;
            b.set(ExpertKey::new(l, e), f, i * rec, rec, 0);
        }
    }
    let layout = Arc::new(b.build()?);
    let chunk = |real: u64| -> usize {
        (((real as f64 / scale) / PAGE as f64).round().max(1.0) as u64 * PAGE) as usize
    };
    let split = spec.trust_os_split.max(1) as u64;
    let os_chunk = (rec.div_ceil(split).div_ceil(PAGE) * PAGE) as usize;
    let cfg = match spec.mode {
        Mode::TrustOs => CoreConfig {
            demand_chunk: os_chunk,
            prefetch_chunk: os_chunk,
            verify_checksums: false,
            ..CoreConfig::default()
        },
        Mode::Flashmoe => CoreConfig {
            demand_chunk: chunk(spec.demand_chunk),
            prefetch_chunk: chunk(spec.prefetch_chunk),
            max_prefetch_bytes_in_flight: (spec.max_prefetch_bytes_in_flight as f64 / scale) as u64,
            max_prefetch_ops_in_flight: spec.queue_depth,
            min_confidence: spec.min_confidence,
            verify_checksums: false,
            ..CoreConfig::default()
        },
    };
    let core = SchedCore::new(layout, slots * rec, spec.eviction, cfg)?;
    let cache_slots = core.slot_count();
    let sim = Sim::new(core, SsdSim::new(spec.ssd), spec.clone(), scale, rec);
    let predictor_kind = if spec.mode == Mode::TrustOs {
        PredictorKind::None
    } else {
        spec.predictor
    };
    let total_tokens = spec.warmup_tokens + spec.tokens;
    let predictor = predict::make(predictor_kind, trace, total_tokens)?;
    let mut session = Session::new(sim, policy, predictor);
    let mut scores = predict::TraceScores::new(predictor_kind, spec.pregate_recall, spec.seed);
    if let Some(f) = far {
        scores = scores.with_far_scores(f.clone());
    } else if let Some(r) = spec.far_recall {
        scores = scores.with_synthetic_far(r);
    }
    let mut times = vec![LayerTime::default(); h.layers as usize];
    let mut base = MetricsSnapshot::default();
    let mut hinted0 = SessionStats::default();
    let mut t_start = 0.0;
    let mut bytes_start = 0.0;
    for step in 0..total_tokens {
        let measuring = step >= spec.warmup_tokens;
        if step == spec.warmup_tokens {
            let sim = session.io();
            base = sim.core.metrics();
            t_start = sim.now();
            bytes_start = sim.ssd.bytes_done;
            hinted0 = session.stats();
        }
        session.io_mut().record = measuring && step < spec.warmup_tokens + spec.timeline_tokens;
        let token = step % trace.tokens();
        for layer in 0..h.layers {
            let t_fault = session.io().now();
            if spec.dense_reread_bytes_per_layer > 0.0 {
                session.io_mut().fault_in(spec.dense_reread_bytes_per_layer);
            }
            let fault = session.io().now() - t_fault;
            let (c1, o1) = session.io_mut().compute(spec.compute_pre_ns, layer);
            let experts = trace.experts_at(token, layer);
            let t_route = session.io().now();
            scores.feed(&mut session, trace, token, layer);
            let pins = session.demand(layer, experts)?;
            let sim = session.io_mut();
            if spec.mode == Mode::TrustOs {
                // Each reader thread copies its experts out of the page cache; a miss's copy
                // runs as its bytes arrive, so the layer is done at max(read, copy).
                let threads = (spec.queue_depth / spec.trust_os_split.max(1)).max(1);
                let per_thread = experts.len().div_ceil(threads) as f64;
                let copy_end = t_route
                    + per_thread * spec.expert_bytes as f64 / spec.copy_bps_per_thread * 1e9;
                while sim.now() < copy_end {
                    let next = sim.ssd.next_event().unwrap_or(f64::INFINITY).min(copy_end);
                    sim.step(next);
                }
            }
            let stall = sim.now() - t_route;
            sim.waiting.clear();
            if stall > 0.0 {
                sim.core.record_stall(layer, stall as u64);
            }
            if sim.record && stall > 0.0 {
                sim.spans.push(Span {
                    start_ns: t_route,
                    end_ns: sim.now(),
                    layer,
                    kind: SpanKind::Stall,
                });
            }
            let (c2, o2) = sim.compute(spec.compute_post_ns, layer);
            sim.core.unpin(&pins);
            if measuring {
                let lt = &mut times[layer as usize];
                lt.compute_ns += c1 + c2;
                lt.stall_ns += stall + fault;
                lt.fault_ns += fault;
                lt.overlapped_io_ns += o1 + o2;
            }
        }
    }
    let hinted = session.stats().since(&hinted0);
    let calls = session.take_calls();
    let sim = session.io_mut();
    let elapsed = sim.now() - t_start;
    // Drain reads still in flight so every byte the device moved is accounted for (not timed).
    sim.record = false;
    while let Some(next) = sim.ssd.next_event() {
        sim.step(next);
    }
    let mut metrics = sim.core.metrics().since(&base);
    for m in &mut metrics.layers {
        m.demand_bytes = (m.demand_bytes as f64 * scale) as u64;
        m.prefetch_bytes = (m.prefetch_bytes as f64 * scale) as u64;
        m.wasted_bytes = (m.wasted_bytes as f64 * scale) as u64;
    }
    Ok(RunResult {
        tokens: spec.tokens,
        elapsed_ns: elapsed,
        layers: times,
        metrics,
        cache_slots,
        device_bytes: sim.ssd.bytes_done - bytes_start,
        spans: std::mem::take(&mut sim.spans),
        session: hinted,
        calls,
    })
}
