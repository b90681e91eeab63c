//! [`PendingAcquire`]: an acquire whose demand reads are queued but not yet waited on, so a
//! caller can hint the next layers between queueing a layer's demand and blocking on it (the
//! order [`crate::Session`] keeps: demand first, then hints, then the wait).

use std::sync::Arc;

use crate::error::Result;
use crate::guard::ExpertGuard;
use crate::scheduler::{AcquireStep, Shared};

/// A demand started by [`crate::Scheduler::begin_acquire`]: the routing is noted and every
/// expert that could get a slot is pinned with its read queued. [`wait`](Self::wait) blocks for
/// the bytes; dropping it unpins (reads it started finish into the cache).
pub struct PendingAcquire {
    shared: Arc<Shared>,
    step: Option<AcquireStep>,
    /// The first step's outcome, when it already finished.
    done: Option<Result<()>>,
}

impl PendingAcquire {
    pub(crate) fn start(shared: Arc<Shared>, layer: u32, experts: &[u32]) -> Result<Self> {
        let mut step = AcquireStep::new(layer, experts);
        let mut st = shared.state.lock();
        st.core.note_routing(layer, experts)?;
        let done = match step.advance(&shared, &mut st) {
            Some(Err(e)) => {
                step.abandon(&shared, &mut st);
                return Err(e);
            }
            done => done,
        };
        drop(st);
        Ok(Self {
            shared,
            step: Some(step),
            done,
        })
    }

    /// The layer asked for.
    pub fn layer(&self) -> u32 {
        self.step.as_ref().map_or(0, |s| s.layer)
    }

    /// Blocks until every expert asked for is in memory; the guard over their bytes (in the
    /// order asked).
    pub fn wait(mut self) -> Result<ExpertGuard> {
        let mut step = self.step.take().expect("a pending acquire holds its step");
        let shared = self.shared.clone();
        let mut st = shared.state.lock();
        let mut outcome = self.done.take();
        loop {
            let r = match outcome.take() {
                Some(r) => Some(r),
                None => step.advance(&shared, &mut st),
            };
            match r {
                Some(Ok(())) => {
                    if let Some(t) = step.started {
                        st.core
                            .record_stall(step.layer, t.elapsed().as_nanos() as u64);
                    }
                    drop(st);
                    let layer = step.layer;
                    return Ok(ExpertGuard::new(shared.clone(), layer, step));
                }
                Some(Err(e)) => {
                    step.abandon(&shared, &mut st);
                    return Err(e);
                }
                None => shared.progress.wait(&mut st),
            }
        }
    }
}

impl Drop for PendingAcquire {
    fn drop(&mut self) {
        if let Some(mut step) = self.step.take() {
            let mut st = self.shared.state.lock();
            step.abandon(&self.shared, &mut st);
        }
    }
}

impl std::fmt::Debug for PendingAcquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAcquire")
            .field("layer", &self.layer())
            .field("ready", &matches!(self.done, Some(Ok(()))))
            .finish()
    }
}
