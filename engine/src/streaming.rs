//! Experts streamed through io-sched: [`SchedExperts`] (an [`ExpertSource`] over a
//! [`Scheduler`]) and [`Prefetcher`] (a [`RoutingObserver`] that turns pre-gate scores or a
//! predictor's guesses into `hint`s).
//!
//! ```no_run
//! use std::sync::Arc;
//! use flashmoe_engine::{PackedModel, Prefetcher, Prediction, SchedExperts, open_scheduler};
//! use io_sched::{SchedulerConfig, backend::select::BackendConfig};
//! let m = PackedModel::open("models/tiny-qwen3-moe-q4".as_ref())?;
//! let (sched, _fallbacks) = open_scheduler(&m, SchedulerConfig::with_budget(4 << 20), &BackendConfig::default())?;
//! let mut experts = SchedExperts::new(sched.clone(), m.record)?;
//! let mut prefetch = Prefetcher::new(sched, Prediction::Pregate, m.config.top_k + 2, m.config.top_k);
//! let mut model = m.load_model(flashmoe_backends::CpuBackend::new(), 512)?;
//! let ids = m.tokenizer.encode("The Rust programming language")?;
//! let out = flashmoe_engine::generate_greedy(&mut model, &ids, 8, &mut experts, &mut prefetch)?;
//! # Ok::<(), flashmoe_engine::EngineError>(())
//! ```

use crate::error::{EngineError, Result};
use crate::experts::{ExpertBatch, ExpertLayout, ExpertSource};
use crate::hooks::RoutingObserver;
use crate::packed_model::PackedModel;
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::predictor::{Candidate, LayerPrediction, Predictor};
use io_sched::{Scheduler, SchedulerConfig};
use std::sync::Arc;

/// Starts a scheduler over `model`'s expert files: opens the read backend `backend` asks for
/// and refuses a budget that cannot hold one layer's `top_k` experts at once. Returns the
/// scheduler and the reasons for any backend fallback.
pub fn open_scheduler(
    model: &PackedModel,
    cfg: SchedulerConfig,
    backend: &BackendConfig,
) -> Result<(Arc<Scheduler>, Vec<String>)> {
    let slot = model.experts.max_read_len();
    let slots = cfg.budget_bytes / slot.max(1);
    let k = model.config.top_k as u64;
    if slots < k {
        return Err(EngineError::IoSched {
            context: format!("expert cache for {}", model.dir.display()),
            source: io_sched::Error::Budget(format!(
                "{} bytes hold {slots} expert records of {slot} bytes, but a layer needs its top_k = {k} experts at once (at least {} bytes)",
                cfg.budget_bytes,
                k * slot
            )),
        });
    }
    let ctx = |what: &str| format!("{what} for {}", model.dir.display());
    let opened = open_backend(&model.experts, backend).map_err(|source| EngineError::IoSched {
        context: ctx("opening the read backend"),
        source,
    })?;
    let sched =
        Scheduler::with_backend(model.experts.clone(), cfg, opened.backend).map_err(|source| {
            EngineError::IoSched {
                context: ctx("starting the scheduler"),
                source,
            }
        })?;
    Ok((Arc::new(sched), opened.fallbacks))
}

/// Expert records acquired from an io-sched [`Scheduler`]; each batch holds the acquire's
/// guard, so its cache slots stay pinned until the model is done with the batch.
pub struct SchedExperts {
    sched: Arc<Scheduler>,
    record: ExpertLayout,
}

impl SchedExperts {
    /// A source over `sched`, whose records are in the `record` layout (checked against the
    /// scheduler's largest record).
    pub fn new(sched: Arc<Scheduler>, record: ExpertLayout) -> Result<Self> {
        let max = sched.layout().max_read_len();
        if (record.record_len as u64) > max {
            return Err(EngineError::Expert {
                layer: 0,
                expert: 0,
                reason: format!(
                    "records of {} bytes do not fit the scheduler's {max}-byte reads",
                    record.record_len
                ),
            });
        }
        Ok(Self { sched, record })
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.sched
    }
}

impl ExpertSource for SchedExperts {
    fn layout(&self) -> &ExpertLayout {
        &self.record
    }

    fn experts(&mut self, layer: u32, ids: &[u32]) -> Result<ExpertBatch<'_>> {
        let guard = crate::read_retry::acquire(&self.sched, layer, ids)?;
        Ok(ExpertBatch::held(guard))
    }

    fn ready(&mut self, layer: u32, ids: &[u32]) -> Result<(Vec<u32>, ExpertBatch<'_>)> {
        let guard = self.sched.acquire_ready(layer, ids);
        let ready = (0..guard.len()).map(|i| guard.expert(i)).collect();
        Ok((ready, ExpertBatch::held(guard)))
    }
}

/// How a [`Prefetcher`] predicts.
pub enum Prediction {
    /// No hints.
    None,
    /// Pre-gate: layer L+1's router applied to layer L's MoE input; its most probable experts
    /// are hinted for layer L+1 while layer L's experts are read and computed.
    Pregate,
    /// An io-sched predictor fed with the real routing, asked `horizon` layers ahead.
    Predictor {
        /// The predictor.
        predictor: Box<dyn Predictor>,
        /// Layers ahead to hint.
        horizon: u32,
    },
}

/// Drives prefetching from the model's routing callbacks.
pub struct Prefetcher {
    sched: Arc<Scheduler>,
    mode: Prediction,
    per_layer: usize,
    candidates: Vec<Candidate>,
    predictions: Vec<LayerPrediction>,
    hints: u64,
}

impl Prefetcher {
    /// Hints at most `per_layer` experts per predicted layer to `sched`, for a model routing
    /// `top_k` experts per layer.
    ///
    /// The hints are capped so that they and one layer's `top_k` demand reads fit in the cache
    /// together: more would only evict each other (or the experts about to be demanded) before
    /// use. A cache of exactly `top_k` slots gets no hints.
    pub fn new(sched: Arc<Scheduler>, mode: Prediction, per_layer: usize, top_k: usize) -> Self {
        let layers_ahead = match &mode {
            Prediction::Predictor { horizon, .. } => (*horizon).max(1) as usize,
            _ => 1,
        };
        let room = sched.capacity().0.saturating_sub(top_k) / layers_ahead;
        let per_layer = per_layer.min(room);
        Self {
            sched,
            mode,
            per_layer,
            candidates: Vec::new(),
            predictions: Vec::new(),
            hints: 0,
        }
    }

    /// Experts hinted per predicted layer at most (after the cap).
    pub fn per_layer(&self) -> usize {
        self.per_layer
    }

    /// Hint calls made so far.
    pub fn hints(&self) -> u64 {
        self.hints
    }
}

/// The `n` highest scores of `scores` as candidates (confidence = score), best first.
pub fn top_candidates(scores: &[f32], n: usize, out: &mut Vec<Candidate>) {
    out.clear();
    let top = crate::sampler::top_k(scores, n);
    out.extend(top.into_iter().map(|e| Candidate {
        expert: e,
        confidence: scores[e as usize].clamp(0.0, 1.0),
    }));
}

impl RoutingObserver for Prefetcher {
    fn wants_pregate(&self) -> bool {
        matches!(self.mode, Prediction::Pregate)
    }

    fn on_pregate(&mut self, layer: u32, scores: &[f32]) {
        if let Prediction::Pregate = self.mode
            && self.per_layer > 0
        {
            top_candidates(scores, self.per_layer, &mut self.candidates);
            self.sched.hint(layer, &self.candidates);
            self.hints += 1;
        }
    }

    fn on_routing(&mut self, layer: u32, ids: &[u32], _weights: &[f32]) {
        if let Prediction::Predictor { predictor, horizon } = &mut self.mode {
            predictor.observe(layer, ids);
            if self.per_layer == 0 {
                return;
            }
            predictor.predict(layer, *horizon, self.per_layer, &mut self.predictions);
            for p in &self.predictions {
                self.sched.hint(p.layer, &p.candidates);
                self.hints += 1;
            }
        }
    }
}

/// Two observers as one (e.g. a [`Prefetcher`] and a trace recorder).
pub struct Tee<'a>(
    pub &'a mut dyn RoutingObserver,
    pub &'a mut dyn RoutingObserver,
);

impl RoutingObserver for Tee<'_> {
    fn on_token(&mut self, token: u32, pos: usize) {
        self.0.on_token(token, pos);
        self.1.on_token(token, pos);
    }
    fn wants_pregate(&self) -> bool {
        self.0.wants_pregate() || self.1.wants_pregate()
    }
    fn on_pregate(&mut self, layer: u32, scores: &[f32]) {
        self.0.on_pregate(layer, scores);
        self.1.on_pregate(layer, scores);
    }
    fn wants_pregate_far(&self) -> bool {
        self.0.wants_pregate_far() || self.1.wants_pregate_far()
    }
    fn on_pregate_far(&mut self, layer: u32, scores: &[f32]) {
        self.0.on_pregate_far(layer, scores);
        self.1.on_pregate_far(layer, scores);
    }
    fn on_routing(&mut self, layer: u32, ids: &[u32], weights: &[f32]) {
        self.0.on_routing(layer, ids, weights);
        self.1.on_routing(layer, ids, weights);
    }
}
