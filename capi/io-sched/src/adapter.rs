//! The one place the C session meets io-sched's per-layer protocol.
//!
//! Today it drives [`Scheduler`] with a [`Predictor`]: at each acquire of layer L it tells the
//! predictor L's routing, hints the predicted layers after L, and only then waits for L's
//! bytes (hints for L+1 go out before L's demand is waited on). When io-sched grows its own
//! per-layer protocol object, this file is what changes; the C functions keep their shape.

use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::metrics::MetricsSnapshot;
use io_sched::predictor::{self, Candidate, LayerPrediction, Predictor, PredictorKind};
use io_sched::{ExpertGuard, ExpertLayout, Scheduler, SchedulerConfig};
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
        }
    }
}

/// The predictor's side of the protocol, behind one lock.
struct Plan {
    predictor: Box<dyn Predictor>,
    horizon: u32,
    per_layer: usize,
    predictions: Vec<LayerPrediction>,
}

/// A scheduler, its predictor and what opening it reported.
pub(crate) struct SessionCore {
    sched: Scheduler,
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
        let cfg = SchedulerConfig::with_budget(budget_bytes).verify_checksums(s.verify_checksums);
        let sched = Scheduler::with_backend(layout, cfg, opened.backend)?;
        Ok(Self {
            sched,
            plan: Mutex::new(Plan {
                predictor,
                horizon: s.horizon,
                per_layer: s.per_layer,
                predictions: Vec::new(),
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

    /// Pre-gate (or any) scores of `layer`'s experts, for the `scores` predictor.
    pub fn scores(&self, layer: u32, scores: &[f32]) {
        self.plan.lock().predictor.observe_scores(layer, scores);
    }

    /// The caller's own prefetch hint for `layer`.
    pub fn hint(&self, layer: u32, candidates: &[Candidate]) {
        self.sched.hint(layer, candidates);
    }

    /// The demand for `layer`: the predictor learns it, the layers after it are hinted, then
    /// this waits for `experts`' bytes.
    pub fn acquire(&self, layer: u32, experts: &[u32]) -> io_sched::Result<ExpertGuard> {
        {
            let mut plan = self.plan.lock();
            let Plan {
                predictor,
                horizon,
                per_layer,
                predictions,
            } = &mut *plan;
            predictor.observe(layer, experts);
            let per_layer = if *per_layer == 0 {
                experts.len() + 2
            } else {
                *per_layer
            };
            predictor.predict(layer, *horizon, per_layer, predictions);
            for p in predictions.iter() {
                self.sched.hint(p.layer, &p.candidates);
            }
        }
        self.sched.acquire(layer, experts)
    }

    /// Those of `experts` that are in memory now, without waiting or counting a demand.
    pub fn ready(&self, layer: u32, experts: &[u32]) -> ExpertGuard {
        self.sched.acquire_ready(layer, experts)
    }

    /// Every counter.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.sched.metrics()
    }
}
