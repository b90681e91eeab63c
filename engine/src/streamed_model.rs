//! [`open_streamed`]: a packed model's experts streamed as one [`PrefetchPolicy`] says, set up
//! in the one order it allows (the scheduler's eviction is fixed when it is built, so the
//! policy is resolved against the predictor first, and the cache is preloaded before the
//! session starts). `generate`, `serve`, `chat` and the C ABI open their experts through it.
//!
//! ```no_run
//! use flashmoe_engine::{PackedModel, Prediction, PrefetchPolicy, open_streamed};
//! use io_sched::backend::select::BackendConfig;
//! let m = PackedModel::open("models/tiny-qwen3-moe-q4".as_ref())?;
//! let policy = PrefetchPolicy::new();
//! let s = open_streamed(&m, 8 << 20, &BackendConfig::default(), Prediction::Blend, &policy)?;
//! let (mut experts, mut prefetch) = (s.experts, s.prefetch);
//! let mut model = m.load_model(flashmoe_backends::CpuBackend::new(), 512)?;
//! let ids = m.tokenizer.encode("The Rust programming language")?;
//! let out = flashmoe_engine::generate_greedy(&mut model, &ids, 8, &mut experts, &mut prefetch)?;
//! # Ok::<(), flashmoe_engine::EngineError>(())
//! ```

use crate::error::Result;
use crate::packed_model::PackedModel;
use crate::prefetch_policy::PrefetchPolicy;
use crate::streaming::{Prediction, Prefetcher, SchedExperts, open_scheduler, streamed};
use io_sched::backend::fallback::Fallback;
use io_sched::backend::select::BackendConfig;
use io_sched::cache::EvictionKind;
use io_sched::{Preloaded, Scheduler, SchedulerConfig, SessionConfig};
use std::sync::Arc;

/// What [`open_streamed`] set up.
#[non_exhaustive]
pub struct Streamed {
    /// The scheduler (metrics, capacity).
    pub scheduler: Arc<Scheduler>,
    /// The expert source the model's decode loop reads from.
    pub experts: SchedExperts,
    /// The routing observer that feeds the session its scores.
    pub prefetch: Prefetcher,
    /// Why the read backend is not the one asked for, if it is not.
    pub fallbacks: Vec<Fallback>,
    /// What was read into the cache before the first token ([`PrefetchPolicy::preload`]).
    pub preloaded: Option<Preloaded>,
    /// The cache's eviction, as resolved against the predictor.
    pub eviction: EvictionKind,
    /// The session's policy, as resolved against the predictor.
    pub session: SessionConfig,
}

/// Opens `model`'s experts with a cache of `budget_bytes` read through `io`, predicted as
/// `prediction` and `policy` say: the eviction and the session's policy resolved against the
/// predictor (asking for what it cannot feed is an error naming it), the scheduler opened,
/// the cache preloaded where the policy says, then the source and its prefetcher over one
/// session.
pub fn open_streamed(
    model: &PackedModel,
    budget_bytes: u64,
    io: &BackendConfig,
    prediction: Prediction,
    policy: &PrefetchPolicy,
) -> Result<Streamed> {
    let eviction = policy.eviction_for(&prediction)?;
    let session = policy.session_config(model.config.top_k, &prediction)?;
    let (scheduler, fallbacks) = open_scheduler(
        model,
        SchedulerConfig::with_budget(budget_bytes).eviction(eviction),
        io,
    )?;
    let preloaded = policy.preload_into(&scheduler)?;
    let (experts, prefetch) =
        streamed(scheduler.clone(), model.record, prediction, session.clone())?;
    Ok(Streamed {
        scheduler,
        experts,
        prefetch,
        fallbacks,
        preloaded,
        eviction,
        session,
    })
}
