//! [`Session`]: the one per-layer prefetch protocol of a decode step, shared by every driver —
//! `flashmoe generate` (through the engine), `flashmoe replay` (real disk) and the simulator
//! (virtual time) — so a policy change happens here and nowhere else.
//!
//! Per layer `L` of a token, a driver calls:
//! 1. [`Session::scores`] for any pre-gate scores it has (layer `L + 1`'s router on `L`'s
//!    hidden state; `L + 2`'s too for two layers ahead) — optional;
//! 2. [`Session::stage`] to pin experts predicted for `L` that are already cached, for copying
//!    onward (e.g. to GPU memory) — optional;
//! 3. [`Session::demand`] with `L`'s real routing, which returns the guard over its bytes.
//!
//! A prompt chunk instead demands the union of its tokens' experts per layer, in groups that
//! fit the cache ([`Session::demand_union`], [`Session::next_group`]; see `batch.rs`).
//!
//! Inside `demand` the order is fixed: the predictor observes the routing and predicts the
//! next `horizon` layers; the session decides how many candidates of each to hint (the hint
//! cap, then over-fetch of near-ties bounded by the device's idle time); it queues `L`'s demand
//! reads, then hints the predicted layers — so the hints go out before `L`'s demand is waited
//! on, yet queue behind it (demand reads go first) — and only then waits.
//!
//! The session makes every call through [`SessionIo`] (the threaded [`crate::Scheduler`], or
//! the simulator's core): its policy is plain code, testable with a fake I/O and no threads,
//! and it can log each call ([`Call`]) so tests check that drivers issue the same sequence.

mod batch;
mod config;
mod io;
#[cfg(test)]
mod tests;

pub use batch::UnionDemand;
pub use config::{COST_AWARE_BUSY, COST_AWARE_FLOOR, SessionConfig};
pub use io::{Call, SessionIo};

use crate::error::Result;
use crate::layout::ExpertKey;
use crate::predictor::overfetch::idle_records;
use crate::predictor::{LayerPrediction, Predictor};

/// Counters of what a session hinted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Demands (layers acquired).
    pub demands: u64,
    /// Hint calls (predicted layers hinted).
    pub hint_calls: u64,
    /// Candidates hinted in all, over-fetched extras included.
    pub hinted: u64,
    /// Batch demands of a prompt chunk's union ([`Session::demand_union`]).
    pub unions: u64,
    /// Experts in those unions, in all.
    pub union_experts: u64,
    /// Groups the unions were acquired in (each also counts as a demand).
    pub union_groups: u64,
}

impl SessionStats {
    /// Candidates hinted per hinted layer (mean).
    pub fn hinted_per_layer(&self) -> f64 {
        self.hinted as f64 / self.hint_calls.max(1) as f64
    }

    /// Counts since `earlier`.
    pub fn since(&self, earlier: &SessionStats) -> SessionStats {
        SessionStats {
            demands: self.demands - earlier.demands.min(self.demands),
            hint_calls: self.hint_calls - earlier.hint_calls.min(self.hint_calls),
            hinted: self.hinted - earlier.hinted.min(self.hinted),
            unions: self.unions - earlier.unions.min(self.unions),
            union_experts: self.union_experts - earlier.union_experts.min(self.union_experts),
            union_groups: self.union_groups - earlier.union_groups.min(self.union_groups),
        }
    }
}

/// The per-layer prefetch protocol over a [`SessionIo`] (see the [module docs](self)).
///
/// ```
/// use std::sync::Arc;
/// use io_sched::{backend::memory::MemoryBackend, checksum::checksum, predictor::Scores};
/// use io_sched::{ExpertKey, LayoutBuilder, Scheduler, SchedulerConfig, Session, SessionConfig};
///
/// let mut image = vec![0u8; 8 * 4096];
/// let mut layout = LayoutBuilder::new(2, 4);
/// let file = layout.add_file("experts.bin");
/// for i in 0..8u32 {
///     let bytes = &mut image[i as usize * 4096..][..4096];
///     bytes.fill(i as u8);
///     layout.set(ExpertKey::new(i / 4, i % 4), file, i as u64 * 4096, 4096, checksum(bytes));
/// }
/// let backend = Box::new(MemoryBackend::new(vec![Arc::from(image)], 8));
/// let sched = Scheduler::with_backend(layout.build()?, SchedulerConfig::with_budget(6 * 4096), backend)?;
/// let mut session = Session::new(Arc::new(sched), SessionConfig::new(2), Box::new(Scores::new(2, 4)));
///
/// session.scores(1, &[0.1, 0.6, 0.05, 0.25]);    // layer 1's router on layer 0's hidden state
/// let guard = session.demand(0, &[0, 2])?;       // demand layer 0; hints layer 1's top 2
/// assert!(guard.bytes(1).iter().all(|&b| b == 2));
/// drop(guard);
/// assert_eq!(session.stats().hinted, 2);
/// # Ok::<(), io_sched::Error>(())
/// ```
pub struct Session<Io: SessionIo> {
    io: Io,
    cfg: SessionConfig,
    predictor: Box<dyn Predictor>,
    /// Candidates always hinted per predicted layer, after the cap.
    base: usize,
    /// Candidates asked of the predictor per layer (base plus possible extras), after the cap.
    asked: usize,
    preds: Vec<LayerPrediction>,
    counts: Vec<usize>,
    stats: SessionStats,
    calls: Vec<Call>,
    /// Experts the last union demand prefetched for the next layer (pre-gate), which that
    /// layer's union takes first.
    union_hinted: Option<(u32, Vec<u32>)>,
    /// Whether the cache's eviction policy takes next-use waits (asked once).
    feeds_next_use: bool,
    next_use: Vec<f32>,
    /// The compute between layers, when measured.
    compute: ComputeClock,
}

/// The running mean of the compute between a layer's bytes arriving and the next layer's
/// demand ([`SessionConfig::measure_idle_window`]).
#[derive(Debug, Default, Clone, Copy)]
struct ComputeClock {
    /// The layer whose wait ended last, and when.
    last_ready: Option<(u32, u64)>,
    mean_ns: Option<f64>,
}

impl ComputeClock {
    /// Weight of a new sample in the running mean.
    const NEW: f64 = 0.1;

    /// A demand of `layer` at `now`: the gap since the previous layer's bytes arrived is one
    /// layer's compute (a gap across a token's end, with the LM head and sampling in it, is not).
    fn demand(&mut self, layer: u32, now: u64) {
        if let Some((prev, t)) = self.last_ready.take()
            && layer == prev + 1
        {
            let gap = now.saturating_sub(t) as f64;
            self.mean_ns = Some(match self.mean_ns {
                Some(m) => m + Self::NEW * (gap - m),
                None => gap,
            });
        }
    }
}

impl<Io: SessionIo> Session<Io> {
    /// A session over `io` with `cfg`'s policy, predicting with `predictor`.
    ///
    /// The hints are capped so that those of every predicted layer and one layer's `top_k`
    /// demand fit in the cache together: more would only evict each other (or the experts
    /// about to be demanded) before use. A cache of exactly `top_k` slots gets no hints.
    pub fn new(io: Io, cfg: SessionConfig, predictor: Box<dyn Predictor>) -> Self {
        let ahead = cfg.horizon().clamp(1, io.layers().max(1)) as usize;
        let room = io.slots().saturating_sub(cfg.top_k()) / ahead;
        let extra = cfg.over_fetch_rule().map_or(0, |o| o.max_extra);
        let base = cfg.per_layer().min(room);
        let asked = (cfg.per_layer() + extra).min(room);
        let feeds_next_use = io.wants_next_use();
        Self {
            feeds_next_use,
            next_use: Vec::new(),
            io,
            cfg,
            predictor,
            base,
            asked,
            preds: Vec::new(),
            counts: Vec::new(),
            stats: SessionStats::default(),
            calls: Vec::new(),
            union_hinted: None,
            compute: ComputeClock::default(),
        }
    }

    /// Pre-gate (or any engine) scores for `layer`'s experts, e.g. layer `L + 1`'s router
    /// probabilities on layer `L`'s hidden state; they count until `layer` is demanded.
    pub fn scores(&mut self, layer: u32, scores: &[f32]) {
        self.predictor.observe_scores(layer, scores);
    }

    /// Layer `layer`'s real routing: queues its demand reads, hints the predicted layers, then
    /// waits for `experts`' bytes and returns the guard over them (in the order asked).
    pub fn demand(&mut self, layer: u32, experts: &[u32]) -> Result<Io::Guard> {
        self.stats.demands += 1;
        let clock = self
            .cfg
            .measures_idle_window()
            .then(|| self.io.now_ns())
            .flatten();
        if let Some(now) = clock {
            self.compute.demand(layer, now);
        }
        self.predictor.observe(layer, experts);
        self.preds.clear();
        if self.asked > 0 {
            self.predictor
                .predict(layer, self.cfg.horizon(), self.asked, &mut self.preds);
        }
        if self.feeds_next_use {
            self.feed_next_use(layer);
        }
        let mut counts = std::mem::take(&mut self.counts);
        if self.cfg.is_cost_aware() {
            self.cost_aware_counts(layer, experts, &mut counts);
        } else {
            self.hint_counts(layer, &mut counts);
        }
        self.log(|| Call::Demand {
            layer,
            experts: experts.to_vec(),
        });
        let pending = self.io.begin(layer, experts)?;
        for (p, &n) in self.preds.iter().zip(&counts) {
            let n = n.min(p.candidates.len());
            if n == 0 {
                continue;
            }
            let hinted = &p.candidates[..n];
            self.io.hint(p.layer, hinted);
            self.stats.hint_calls += 1;
            self.stats.hinted += n as u64;
            if self.cfg.records_calls() {
                self.calls.push(Call::Hint {
                    layer: p.layer,
                    experts: hinted.iter().map(|c| c.expert).collect(),
                });
            }
        }
        self.counts = counts;
        self.log(|| Call::Wait { layer });
        let guard = self.io.wait(pending)?;
        if clock.is_some() {
            self.compute.last_ready = self.io.now_ns().map(|t| (layer, t));
        }
        Ok(guard)
    }

    /// The window of device time a layer's hints may fill: the measured compute between
    /// layers when [`SessionConfig::measure_idle_window`] has a sample, else the one set.
    pub fn idle_window(&self) -> Option<f64> {
        self.compute
            .mean_ns
            .filter(|_| self.cfg.measures_idle_window())
            .or(self.cfg.idle_window())
    }

    /// Pins those of `experts` of `layer` that are cached now, for staging them onward before
    /// the layer is demanded (it never waits or reads, and counts no demand).
    pub fn stage(&mut self, layer: u32, experts: &[u32]) -> (Vec<u32>, Io::Guard) {
        self.log(|| Call::Stage {
            layer,
            experts: experts.to_vec(),
        });
        self.io.ready(layer, experts)
    }

    /// Candidates always hinted per predicted layer, after the cap.
    pub fn per_layer(&self) -> usize {
        self.base
    }

    /// The policy.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The predictor's name.
    pub fn predictor_name(&self) -> &'static str {
        self.predictor.name()
    }

    /// What was hinted so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The calls made so far, when [`SessionConfig::record_calls`] is on (else empty).
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// Takes the call log.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }

    /// The I/O the session drives.
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// The I/O, mutably (e.g. for a simulator to advance its clock between layers).
    pub fn io_mut(&mut self) -> &mut Io {
        &mut self.io
    }

    /// Hands the eviction policy the predictor's next-use waits of the layer just
    /// routed (for its next token) and of each predicted layer, before the demand may evict.
    fn feed_next_use(&mut self, layer: u32) {
        let n = self.io.layers();
        let mut buf = std::mem::take(&mut self.next_use);
        buf.resize(self.io.experts() as usize, 0.0);
        let predicted = self.preds.iter().map(|p| p.layer);
        for l in std::iter::once(layer).chain(predicted) {
            if l < n && self.predictor.next_use(l, &mut buf) {
                self.io.note_next_use(l, &buf);
            }
        }
        self.next_use = buf;
    }

    fn log(&mut self, call: impl FnOnce() -> Call) {
        if self.cfg.records_calls() {
            self.calls.push(call());
        }
    }

    /// How many candidates of each prediction to hint. With over-fetch bounded by idle time,
    /// the extras share the device time of the window up to the farthest predicted layer (that
    /// many windows) left after every base candidate not cached yet, nearest layer first.
    fn hint_counts(&self, layer: u32, out: &mut Vec<usize>) {
        out.clear();
        let Some(mut rule) = self.cfg.over_fetch_rule() else {
            out.extend(self.preds.iter().map(|p| p.candidates.len().min(self.base)));
            return;
        };
        rule.base = self.base;
        rule.max_extra = self.asked - self.base;
        let mut idle = match self.idle_window() {
            Some(window) => {
                let n = self.io.layers().max(1);
                let ahead = self
                    .preds
                    .iter()
                    .map(|p| (p.layer + n - layer % n - 1) % n + 1)
                    .max()
                    .unwrap_or(1);
                let pending = self.preds.iter().map(|p| self.pending(p)).sum();
                // Before any read is timed the device is taken to move 1 byte/ns (1 GB/s).
                let bw = match self.io.bytes_per_ns() {
                    b if b > 0.0 && b.is_finite() => b,
                    _ => 1.0,
                };
                idle_records(window * ahead as f64, bw, self.io.record_bytes(), pending)
            }
            None => usize::MAX,
        };
        for p in &self.preds {
            let c = rule.count(&p.candidates, idle);
            idle = idle.saturating_sub(c.saturating_sub(rule.base));
            out.push(c);
        }
    }

    /// Cost-aware hint counts ([`SessionConfig::cost_aware`]): moves each prediction's chosen
    /// candidates to its front (in confidence order) and says how many.
    fn cost_aware_counts(&mut self, layer: u32, experts: &[u32], out: &mut Vec<usize>) {
        out.clear();
        let n = self.io.layers().max(1);
        let bw = match self.io.bytes_per_ns() {
            b if b > 0.0 && b.is_finite() => b,
            _ => 1.0,
        };
        let read_ns = self.io.record_bytes() as f64 / bw;
        // The device is busy for the backlog (queued reads, prefetches in flight) and this
        // layer's demand reads before any new hint can start.
        let demand_ns = experts
            .iter()
            .filter(|&&e| !self.io.is_cached(ExpertKey::new(layer, e)))
            .count() as f64
            * read_ns
            + self.io.backlog_bytes() as f64 / bw;
        let window = self.idle_window().unwrap_or(f64::INFINITY);
        // Deadline of each prediction, in windows: 1 for the next layer.
        let ahead: Vec<usize> = self
            .preds
            .iter()
            .map(|p| ((p.layer + n - layer % n - 1) % n + 1) as usize)
            .collect();
        let max_ahead = ahead.iter().copied().max().unwrap_or(1);
        // Device time taken by the hints chosen so far, by deadline.
        let mut taken = vec![0.0f64; max_ahead + 1];
        let fits = |taken: &[f64], d: usize| {
            let mut sum = 0.0;
            (1..=max_ahead).all(|w| {
                sum += taken[w];
                w < d || sum + read_ns <= w as f64 * window - demand_ns
            })
        };
        // Every candidate, likeliest first: (prediction, index).
        let mut order: Vec<(usize, usize)> = Vec::new();
        for (i, p) in self.preds.iter().enumerate() {
            order.extend((0..p.candidates.len().min(self.asked)).map(|j| (i, j)));
        }
        let conf = |&(i, j): &(usize, usize)| self.preds[i].candidates[j].confidence;
        order.sort_by(|a, b| conf(b).total_cmp(&conf(a)).then(a.cmp(b)));
        let mut chosen: Vec<Vec<bool>> = self
            .preds
            .iter()
            .map(|p| vec![false; p.candidates.len()])
            .collect();
        for (i, j) in order {
            let c = self.preds[i].candidates[j];
            let p = c.confidence;
            if self
                .io
                .is_cached(ExpertKey::new(self.preds[i].layer, c.expert))
            {
                chosen[i][j] = true;
                continue;
            }
            let d = ahead[i];
            let idle = fits(&taken, d);
            if (idle && p >= COST_AWARE_FLOOR) || p > COST_AWARE_BUSY {
                chosen[i][j] = true;
                taken[d] += read_ns;
            }
        }
        for (p, chosen) in self.preds.iter_mut().zip(&chosen) {
            // Stable: the chosen first, each group in confidence order.
            let (mut yes, no): (Vec<_>, Vec<_>) =
                p.candidates.iter().zip(chosen).partition(|&(_, &c)| c);
            let count = yes.len();
            yes.extend(no);
            let sorted: Vec<_> = yes.into_iter().map(|(c, _)| *c).collect();
            p.candidates.copy_from_slice(&sorted);
            out.push(count);
        }
    }

    /// Base candidates of `p` not cached yet (the device must read them anyway).
    fn pending(&self, p: &LayerPrediction) -> usize {
        p.candidates[..self.base.min(p.candidates.len())]
            .iter()
            .filter(|c| !self.io.is_cached(ExpertKey::new(p.layer, c.expert)))
            .count()
    }
}
