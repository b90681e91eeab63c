//! Experts streamed through io-sched's [`Session`]: [`SchedExperts`] (an [`ExpertSource`]:
//! each layer's demand, and the staging of ready records) and [`Prefetcher`] (a
//! [`RoutingObserver`] that hands the model's pre-gate scores to the same session). The
//! session owns the prefetch policy — what to hint, how many, in what order — the very one
//! `flashmoe replay` and the simulator run.
//!
//! ```no_run
//! use flashmoe_engine::{PackedModel, Prediction, open_scheduler, streamed};
//! use io_sched::{SchedulerConfig, SessionConfig, backend::select::BackendConfig};
//! let m = PackedModel::open("models/tiny-qwen3-moe-q4".as_ref())?;
//! let (sched, _fallbacks) = open_scheduler(&m, SchedulerConfig::with_budget(4 << 20), &BackendConfig::default())?;
//! let k = m.config.top_k;
//! let policy = SessionConfig::new(k).with_per_layer(k + 2);
//! let (mut experts, mut prefetch) = streamed(sched, m.record, Prediction::Pregate, policy)?;
//! let mut model = m.load_model(flashmoe_backends::CpuBackend::new(), 512)?;
//! let ids = m.tokenizer.encode("The Rust programming language")?;
//! let out = flashmoe_engine::generate_greedy(&mut model, &ids, 8, &mut experts, &mut prefetch)?;
//! # Ok::<(), flashmoe_engine::EngineError>(())
//! ```

use crate::error::{EngineError, Result};
use crate::experts::{ExpertBatch, ExpertLayout, ExpertSource};
use crate::hooks::RoutingObserver;
use crate::packed_model::PackedModel;
use io_sched::backend::fallback::Fallback;
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::predictor::{Blend, NoPredictor, Predictor, Scores};
use io_sched::{Scheduler, SchedulerConfig, Session, SessionConfig, SessionStats};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Starts a scheduler over `model`'s expert files: opens the read backend `backend` asks for
/// and refuses a budget that cannot hold one layer's `top_k` experts at once. Returns the
/// scheduler and the reasons for any backend fallback.
pub fn open_scheduler(
    model: &PackedModel,
    cfg: SchedulerConfig,
    backend: &BackendConfig,
) -> Result<(Arc<Scheduler>, Vec<Fallback>)> {
    let slot = model.experts.max_read_len();
    let slots = cfg.budget_bytes() / slot.max(1);
    let k = model.config.top_k as u64;
    if slots < k {
        return Err(EngineError::IoSched {
            context: format!("expert cache for {}", model.dir.display()),
            source: io_sched::Error::Budget(format!(
                "{} bytes hold {slots} expert records of {slot} bytes, but a layer needs its top_k = {k} experts at once (at least {} bytes)",
                cfg.budget_bytes(),
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

/// The session both halves of a streamed model share: [`SchedExperts`] demands and stages
/// through it, [`Prefetcher`] feeds it scores.
pub type SharedSession = Arc<Mutex<Session<Arc<Scheduler>>>>;

fn lock(s: &SharedSession) -> MutexGuard<'_, Session<Arc<Scheduler>>> {
    // A panic elsewhere cannot leave the session half-updated in a way that matters here:
    // its state is counters and the predictor's tables.
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a streamed model predicts.
pub enum Prediction {
    /// No hints.
    None,
    /// Pre-gate: layer L+1's router applied to layer L's MoE input (and L+2's, for a horizon
    /// of 2); its most probable experts are hinted while layer L's experts are read and
    /// computed.
    Pregate,
    /// The pre-gate scores and the routing history in io-sched's [`Blend`]: calibrated
    /// probabilities and next-use estimates, so cost-aware hints and next-use eviction apply
    /// ([`crate::PrefetchPolicy`]).
    Blend,
    /// An io-sched predictor fed with the real routing.
    Predictor(Box<dyn Predictor>),
    /// An io-sched predictor fed with the real routing and the pre-gate scores (as
    /// [`Prediction::Pregate`] computes them), e.g. [`io_sched::predictor::Blend`].
    PregateWith(Box<dyn Predictor>),
}

impl Prediction {
    /// A short name (`none`, `pregate`, `blend` or the predictor's).
    pub fn name(&self) -> &'static str {
        match self {
            Prediction::None => "none",
            Prediction::Pregate => "pregate",
            Prediction::Blend => "blend",
            Prediction::Predictor(p) | Prediction::PregateWith(p) => p.name(),
        }
    }
    /// Whether confidences are calibrated probabilities ([`Predictor::calibrated`]).
    pub fn calibrated(&self) -> bool {
        match self {
            Prediction::None | Prediction::Pregate => false,
            Prediction::Blend => true,
            Prediction::Predictor(p) | Prediction::PregateWith(p) => p.calibrated(),
        }
    }
    /// Whether next uses are estimated ([`Predictor::estimates_next_use`]).
    pub fn estimates_next_use(&self) -> bool {
        match self {
            Prediction::None | Prediction::Pregate => false,
            Prediction::Blend => true,
            Prediction::Predictor(p) | Prediction::PregateWith(p) => p.estimates_next_use(),
        }
    }
}

/// The expert source and the observer of a model streamed through one [`Session`] over
/// `sched` (records in the `record` layout), hinting as `mode` and `policy` say — or not at
/// all when the cache holds every expert (nothing is ever evicted there).
pub fn streamed(
    sched: Arc<Scheduler>,
    record: ExpertLayout,
    mode: Prediction,
    policy: SessionConfig,
) -> Result<(SchedExperts, Prefetcher)> {
    let (layers, experts) = (sched.layout().num_layers(), sched.layout().num_experts());
    // A cache that holds every record never evicts: after its first read each expert is a
    // hit, so predicting (the pre-gate's router products, the predictor's tables) only costs.
    let holds_all = sched.capacity().0 as u64 >= layers as u64 * experts as u64;
    let mode = if holds_all { Prediction::None } else { mode };
    let pregate = matches!(
        mode,
        Prediction::Pregate | Prediction::Blend | Prediction::PregateWith(_)
    );
    let predictor: Box<dyn Predictor> = match mode {
        Prediction::None => Box::new(NoPredictor),
        Prediction::Pregate => Box::new(Scores::new(layers, experts)),
        Prediction::Blend => Box::new(Blend::new(layers, experts)),
        Prediction::Predictor(p) | Prediction::PregateWith(p) => p,
    };
    let far = pregate && policy.horizon() >= 2;
    let source = SchedExperts::with_session(sched, record, policy, predictor)?;
    let prefetch = Prefetcher {
        session: source.session.clone(),
        pregate,
        far,
    };
    Ok((source, prefetch))
}

/// Expert records acquired through a [`Session`]; each batch holds the acquire's guard, so
/// its cache slots stay pinned until the model is done with the batch.
pub struct SchedExperts {
    session: SharedSession,
    record: ExpertLayout,
}

impl SchedExperts {
    /// A source over `sched` that hints nothing, whose records are in the `record` layout
    /// (checked against the scheduler's largest record). [`streamed`] makes one that hints.
    pub fn new(sched: Arc<Scheduler>, record: ExpertLayout) -> Result<Self> {
        Self::with_session(sched, record, SessionConfig::new(0), Box::new(NoPredictor))
    }

    fn with_session(
        sched: Arc<Scheduler>,
        record: ExpertLayout,
        policy: SessionConfig,
        predictor: Box<dyn Predictor>,
    ) -> Result<Self> {
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
        let session = Session::new(sched, policy, predictor);
        Ok(Self {
            session: Arc::new(Mutex::new(session)),
            record,
        })
    }

    /// The scheduler.
    pub fn scheduler(&self) -> Arc<Scheduler> {
        lock(&self.session).io().clone()
    }

    /// The session (e.g. to read its stats or call log).
    pub fn session(&self) -> &SharedSession {
        &self.session
    }
}

impl ExpertSource for SchedExperts {
    fn layout(&self) -> &ExpertLayout {
        &self.record
    }

    fn experts(&mut self, layer: u32, ids: &[u32]) -> Result<ExpertBatch<'_>> {
        let guard = crate::read_retry::acquire(layer, ids, |attempt| {
            let mut session = lock(&self.session);
            if attempt == 1 {
                session.demand(layer, ids)
            } else {
                let sched = session.io().clone();
                drop(session);
                sched.acquire(layer, ids)
            }
        })?;
        Ok(ExpertBatch::held(guard))
    }

    fn ready(&mut self, layer: u32, ids: &[u32]) -> Result<(Vec<u32>, ExpertBatch<'_>)> {
        let (ready, guard) = lock(&self.session).stage(layer, ids);
        Ok((ready, ExpertBatch::held(guard)))
    }

    /// The session's batch demand ([`Session::demand_union`]): groups that fit the cache,
    /// cached records first, the next group read while one computes. A group whose read or
    /// checksum failed is acquired once more, as a layer's demand is.
    fn experts_union(
        &mut self,
        layer: u32,
        union: &[u32],
        next: Option<(u32, &[u32])>,
        compute: &mut dyn FnMut(&[u32], &ExpertBatch<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut d = lock(&self.session).demand_union(layer, union, next);
        loop {
            let mut ids = Vec::new();
            let guard = crate::read_retry::acquire(layer, union, |attempt| {
                let mut session = lock(&self.session);
                if attempt == 1 {
                    match session.next_group(&mut d)? {
                        Some((got, guard)) => {
                            ids = got;
                            Ok(Some(guard))
                        }
                        None => Ok(None),
                    }
                } else {
                    ids = d.current().to_vec();
                    let sched = session.io().clone();
                    drop(session);
                    sched.acquire(layer, &ids).map(Some)
                }
            })?;
            let Some(guard) = guard else {
                return Ok(());
            };
            compute(&ids, &ExpertBatch::held(guard))?;
        }
    }
}

/// Hands the model's pre-gate scores to the session of its [`SchedExperts`] (the session
/// hints when the layer is demanded).
pub struct Prefetcher {
    session: SharedSession,
    pregate: bool,
    far: bool,
}

impl Prefetcher {
    /// Experts hinted per predicted layer at most (after the session's cap).
    pub fn per_layer(&self) -> usize {
        lock(&self.session).per_layer()
    }

    /// What the session hinted so far.
    pub fn stats(&self) -> SessionStats {
        lock(&self.session).stats()
    }

    /// The predictor the session runs (`none` when the cache holds every expert).
    pub fn predictor_name(&self) -> &'static str {
        lock(&self.session).predictor_name()
    }
}

impl RoutingObserver for Prefetcher {
    fn wants_pregate(&self) -> bool {
        self.pregate
    }

    fn on_pregate(&mut self, layer: u32, scores: &[f32]) {
        lock(&self.session).scores(layer, scores);
    }

    fn wants_pregate_far(&self) -> bool {
        self.far
    }

    fn on_pregate_far(&mut self, layer: u32, scores: &[f32]) {
        lock(&self.session).scores(layer, scores);
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
