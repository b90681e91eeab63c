//! The one place the C session meets io-sched's per-layer protocol: an [`io_sched::Session`]
//! over the [`Scheduler`], the same object `generate`, `replay` and the simulator drive, so
//! the C session hints, orders and caps exactly as they do (the predictor learns layer L's
//! routing, L's demand is queued, the predicted layers are hinted, then L is waited on).
//!
//! The session's policy needs the layer's `top_k`, which the C API learns from the first
//! acquire: until then scores go straight to the predictor, and the session is built on that
//! first acquire.

use std::sync::Arc;

use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::cache::EvictionKind;
use io_sched::metrics::MetricsSnapshot;
use io_sched::predictor::{self, Candidate, Predictor, PredictorKind};
use io_sched::{ExpertGuard, ExpertLayout, Scheduler, SchedulerConfig, Session, SessionConfig};
use parking_lot::Mutex;

/// How big the cache is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Budget {
    /// Bytes.
    Bytes(u64),
    /// A share in (0, 1] of what holding every expert (padded records) takes.
    Share(f64),
}

/// Everything a session is opened with.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub budget: Budget,
    pub predictor: PredictorKind,
    pub horizon: u32,
    /// Experts hinted per predicted layer; 0: the acquire's count + 2.
    pub per_layer: usize,
    pub backend: BackendConfig,
    pub verify_checksums: bool,
    /// The cache's eviction policy (`NextUse` is fed the predictor's next-use probabilities
    /// by the session: the `blend` predictor gives them).
    pub eviction: EvictionKind,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            budget: Budget::Share(0.25),
            predictor: PredictorKind::Temporal,
            horizon: 1,
            per_layer: 0,
            backend: BackendConfig::default(),
            verify_checksums: true,
            eviction: EvictionKind::Lru,
        }
    }
}

/// The predictor until the first acquire, then the session that owns it.
enum Plan {
    /// No acquire yet: the predictor, and the policy settings the session will get.
    Waiting {
        predictor: Box<dyn Predictor>,
        horizon: u32,
        per_layer: usize,
    },
    /// The session, built at the first acquire.
    Running(Box<Session<Arc<Scheduler>>>),
    /// Only while swapping one for the other.
    Empty,
}

/// A scheduler, its predictor and what opening it reported.
pub(crate) struct SessionCore {
    sched: Arc<Scheduler>,
    plan: Mutex<Plan>,
    fallbacks: Vec<String>,
    budget_bytes: u64,
}

impl SessionCore {
    /// Opens the backend, the cache and the predictor over `layout`.
    pub fn open(layout: ExpertLayout, s: &SessionSettings) -> io_sched::Result<Self> {
        let budget_bytes = match s.budget {
            Budget::Bytes(b) => b,
            Budget::Share(share) => {
                let all = layout.max_read_len()
                    * (layout.num_layers() as u64 * layout.num_experts() as u64);
                (all as f64 * share).ceil() as u64
            }
        };
        let predictor = predictor::build(s.predictor, layout.num_layers(), layout.num_experts())
            .ok_or_else(|| io_sched::Error::Backend {
                backend: "predictor",
                reason: format!("{} cannot be built without a trace", s.predictor),
            })?;
        let opened = open_backend(&layout, &s.backend)?;
        let cfg = SchedulerConfig::with_budget(budget_bytes)
            .verify_checksums(s.verify_checksums)
            .eviction(s.eviction);
        let sched = Arc::new(Scheduler::with_backend(layout, cfg, opened.backend)?);
        Ok(Self {
            sched,
            plan: Mutex::new(Plan::Waiting {
                predictor,
                horizon: s.horizon,
                per_layer: s.per_layer,
            }),
            fallbacks: opened.fallbacks.iter().map(|f| f.to_string()).collect(),
            budget_bytes,
        })
    }

    /// Why the backend in use is not the preferred one, one line each.
    pub fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    /// The backend in use, in one line.
    pub fn backend_description(&self) -> &str {
        self.sched.backend_description()
    }

    /// (cache slots, bytes per slot, budget asked for).
    pub fn capacity(&self) -> (usize, usize, u64) {
        let (slots, size) = self.sched.capacity();
        (slots, size, self.budget_bytes)
    }

    /// Pre-gate (or any) scores of `layer`'s experts, for the `scores` and `blend` predictors.
    pub fn scores(&self, layer: u32, scores: &[f32]) {
        match &mut *self.plan.lock() {
            Plan::Waiting { predictor, .. } => predictor.observe_scores(layer, scores),
            Plan::Running(session) => session.scores(layer, scores),
            Plan::Empty => {}
        }
    }

    /// The caller's own prefetch hint for `layer`.
    pub fn hint(&self, layer: u32, candidates: &[Candidate]) {
        self.sched.hint(layer, candidates);
    }

    /// The demand for `layer` through the session: the predictor learns it, the demand is
    /// queued, the predicted layers are hinted, then this waits for `experts`' bytes. One
    /// demand at a time per session (a decode step's layers come in order).
    pub fn acquire(&self, layer: u32, experts: &[u32]) -> io_sched::Result<ExpertGuard> {
        let mut plan = self.plan.lock();
        if let Plan::Waiting { .. } = &*plan {
            let Plan::Waiting {
                predictor,
                horizon,
                per_layer,
            } = std::mem::replace(&mut *plan, Plan::Empty)
            else {
                unreachable!("matched just above")
            };
            let top_k = experts.len();
            let per_layer = if per_layer == 0 { top_k + 2 } else { per_layer };
            let cfg = SessionConfig::new(top_k)
                .with_per_layer(per_layer)
                .with_horizon(horizon);
            *plan = Plan::Running(Box::new(Session::new(self.sched.clone(), cfg, predictor)));
        }
        match &mut *plan {
            Plan::Running(session) => session.demand(layer, experts),
            _ => self.sched.acquire(layer, experts),
        }
    }

    /// Those of `experts` that are in memory now, without waiting or counting a demand.
    pub fn ready(&self, layer: u32, experts: &[u32]) -> ExpertGuard {
        self.sched.acquire_ready(layer, experts)
    }

    /// Every record read into free cache slots, layer by layer ([`Scheduler::preload_all`]).
    pub fn preload_all(&self) -> io_sched::Result<io_sched::Preloaded> {
        self.sched.preload_all()
    }

    /// Every counter.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.sched.metrics()
    }
}
