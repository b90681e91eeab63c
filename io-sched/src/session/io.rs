//! [`SessionIo`]: what a [`super::Session`] drives — the threaded [`Scheduler`] here, the
//! simulator's virtual-time core elsewhere — and [`Call`], the log of what it was asked.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::error::Result;
use crate::guard::ExpertGuard;
use crate::layout::ExpertKey;
use crate::pending::PendingAcquire;
use crate::predictor::Candidate;
use crate::scheduler::Scheduler;

/// The few operations the per-layer protocol needs from a scheduler. The session decides
/// what to call, in what order; an implementation only executes.
pub trait SessionIo {
    /// A demand queued and not yet waited on.
    type Pending;
    /// Pinned bytes of ready experts (released when dropped, or by the driver).
    type Guard;
    /// Notes the real routing of `layer` and queues the demand reads of `experts`.
    fn begin(&mut self, layer: u32, experts: &[u32]) -> Result<Self::Pending>;
    /// Starts prefetches for `layer`'s next demand (supersedes its previous hint).
    fn hint(&mut self, layer: u32, candidates: &[Candidate]);
    /// Waits until the demand's bytes are in memory.
    fn wait(&mut self, pending: Self::Pending) -> Result<Self::Guard>;
    /// Pins those of `experts` of `layer` that are ready now, without waiting or counting a
    /// demand: the experts listed (in the order asked) and their guard.
    fn ready(&mut self, layer: u32, experts: &[u32]) -> (Vec<u32>, Self::Guard);
    /// Whether `key` is cached and ready.
    fn is_cached(&self, key: ExpertKey) -> bool;
    /// The device's throughput while busy so far, bytes per ns; 0 before any read.
    fn bytes_per_ns(&self) -> f64;
    /// Cache slots.
    fn slots(&self) -> usize;
    /// Bytes of one cache slot (one record).
    fn record_bytes(&self) -> u64;
    /// Layers of the model.
    fn layers(&self) -> u32;
    /// Experts per layer.
    fn experts(&self) -> u32;
    /// Bytes the device must still read before a new read would start (queued, and
    /// prefetches in flight); 0 when unknown (the default).
    fn backlog_bytes(&self) -> u64 {
        0
    }
    /// A monotonic clock in nanoseconds (virtual time in a simulator), for measuring the
    /// compute between layers ([`crate::SessionConfig::measure_idle_window`]); `None` when
    /// there is none (the default).
    fn now_ns(&self) -> Option<u64> {
        None
    }
    /// Whether the cache's eviction policy uses [`note_next_use`](Self::note_next_use)
    /// (default: no).
    fn wants_next_use(&self) -> bool {
        false
    }
    /// The expected wait, per expert of `layer`, in the layer's demands until it is routed to
    /// again, for the eviction policy ([`crate::cache::NextUse`]). Default: ignore.
    fn note_next_use(&mut self, layer: u32, waits: &[f32]) {
        let _ = (layer, waits);
    }
}

/// One call a session made on its [`SessionIo`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`SessionIo::begin`]: the demand of a layer.
    Demand {
        /// The layer.
        layer: u32,
        /// Its routed experts, as asked.
        experts: Vec<u32>,
    },
    /// [`SessionIo::hint`].
    Hint {
        /// The predicted layer.
        layer: u32,
        /// The candidates hinted, most confident first.
        experts: Vec<u32>,
    },
    /// [`SessionIo::wait`] on the demand of `layer`.
    Wait {
        /// The layer.
        layer: u32,
    },
    /// [`SessionIo::ready`]: staging of already cached experts.
    Stage {
        /// The layer.
        layer: u32,
        /// The experts asked for.
        experts: Vec<u32>,
    },
}

impl SessionIo for Arc<Scheduler> {
    type Pending = PendingAcquire;
    type Guard = ExpertGuard;

    fn begin(&mut self, layer: u32, experts: &[u32]) -> Result<PendingAcquire> {
        self.begin_acquire(layer, experts)
    }
    fn hint(&mut self, layer: u32, candidates: &[Candidate]) {
        Scheduler::hint(self, layer, candidates);
    }
    fn wait(&mut self, pending: PendingAcquire) -> Result<ExpertGuard> {
        pending.wait()
    }
    fn ready(&mut self, layer: u32, experts: &[u32]) -> (Vec<u32>, ExpertGuard) {
        let guard = self.acquire_ready(layer, experts);
        let ids = (0..guard.len()).map(|i| guard.expert(i)).collect();
        (ids, guard)
    }
    fn is_cached(&self, key: ExpertKey) -> bool {
        self.with_core(|c| c.is_ready(key))
    }
    fn bytes_per_ns(&self) -> f64 {
        let m = self.metrics();
        m.depth.busy_gb_per_s(m.total().bytes_read())
    }
    fn slots(&self) -> usize {
        self.capacity().0
    }
    fn record_bytes(&self) -> u64 {
        self.capacity().1 as u64
    }
    fn layers(&self) -> u32 {
        self.layout().num_layers()
    }
    fn experts(&self) -> u32 {
        self.layout().num_experts()
    }
    fn backlog_bytes(&self) -> u64 {
        self.with_core(|c| c.backlog_bytes())
    }
    fn now_ns(&self) -> Option<u64> {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        Some(EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64)
    }
    fn wants_next_use(&self) -> bool {
        Scheduler::wants_next_use(self)
    }
    fn note_next_use(&mut self, layer: u32, waits: &[f32]) {
        Scheduler::note_next_use(self, layer, waits);
    }
}
