//! What `acquire` returns: a guard over ready expert bytes, and the async future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::core::SlotId;
use crate::error::Result;
use crate::scheduler::{AcquireStep, Shared};

/// Pinned, checksum-verified bytes of the experts one `acquire` asked for. While the guard
/// lives their slots are neither evicted nor overwritten; dropping it releases them.
pub struct ExpertGuard {
    shared: Arc<Shared>,
    layer: u32,
    experts: Vec<u32>,
    slots: Vec<SlotId>,
    payloads: Vec<(*const u8, usize)>,
}

// SAFETY: the guard only reads slots that are `Ready` and pinned; the core never writes or
// reuses a pinned slot, and the arena is kept alive by `shared`. Reading from several threads
// at once is fine for immutable bytes.
unsafe impl Send for ExpertGuard {}
// SAFETY: as above: `&ExpertGuard` only gives out shared slices of bytes nobody writes.
unsafe impl Sync for ExpertGuard {}

impl ExpertGuard {
    pub(crate) fn new(shared: Arc<Shared>, layer: u32, step: AcquireStep) -> Self {
        let (experts, slots) = step.into_slots();
        Self::from_pinned(shared, layer, experts, slots)
    }

    /// A guard over slots already pinned for it, `slots[i]` holding `experts[i]`.
    pub(crate) fn from_pinned(
        shared: Arc<Shared>,
        layer: u32,
        experts: Vec<u32>,
        slots: Vec<SlotId>,
    ) -> Self {
        let st = shared.state.lock();
        let payloads = slots.iter().map(|&s| st.core.slot_payload(s)).collect();
        drop(st);
        Self {
            shared,
            layer,
            experts,
            slots,
            payloads,
        }
    }

    pub fn layer(&self) -> u32 {
        self.layer
    }

    /// Number of experts held.
    pub fn len(&self) -> usize {
        self.experts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.experts.is_empty()
    }

    /// The expert id at position `i` (the order of the `acquire` call).
    pub fn expert(&self, i: usize) -> u32 {
        self.experts[i]
    }

    /// The payload bytes of the expert at position `i`.
    pub fn bytes(&self, i: usize) -> &[u8] {
        let (ptr, len) = self.payloads[i];
        // SAFETY: the slot is Ready and pinned by this guard (see the Send/Sync comment), and
        // `len` is the record's payload length, at most the slot size.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// The bytes of expert `expert`, if this guard holds it.
    pub fn get(&self, expert: u32) -> Option<&[u8]> {
        self.experts
            .iter()
            .position(|&e| e == expert)
            .map(|i| self.bytes(i))
    }

    /// `(expert, bytes)` in the order of the `acquire` call.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        (0..self.len()).map(|i| (self.experts[i], self.bytes(i)))
    }
}

impl Drop for ExpertGuard {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.core.unpin(&self.slots);
        if st.core.take_slot_freed() {
            self.shared.notify(&mut st);
        }
    }
}

impl std::fmt::Debug for ExpertGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertGuard")
            .field("layer", &self.layer)
            .field("experts", &self.experts)
            .finish()
    }
}

/// The future of [`crate::Scheduler::acquire_async`].
pub struct AcquireFuture {
    shared: Arc<Shared>,
    step: Option<AcquireStep>,
    noted: bool,
}

impl AcquireFuture {
    pub(crate) fn new(shared: Arc<Shared>, layer: u32, experts: &[u32]) -> Self {
        Self {
            shared,
            step: Some(AcquireStep::new(layer, experts)),
            noted: false,
        }
    }
}

impl Future for AcquireFuture {
    type Output = Result<ExpertGuard>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(step) = this.step.as_mut() else {
            panic!("AcquireFuture polled after completion");
        };
        let mut st = this.shared.state.lock();
        if !this.noted {
            this.noted = true;
            if let Err(e) = st.core.note_routing(step.layer, &step.experts) {
                this.step = None;
                return Poll::Ready(Err(e));
            }
        }
        match step.advance(&this.shared, &mut st) {
            Some(Ok(())) => {
                if let Some(t) = step.started {
                    st.core
                        .record_stall(step.layer, t.elapsed().as_nanos() as u64);
                }
                drop(st);
                let step = this.step.take().expect("checked above");
                let layer = step.layer;
                Poll::Ready(Ok(ExpertGuard::new(this.shared.clone(), layer, step)))
            }
            Some(Err(e)) => {
                step.abandon(&this.shared, &mut st);
                this.step = None;
                Poll::Ready(Err(e))
            }
            None => {
                if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    st.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for AcquireFuture {
    fn drop(&mut self) {
        if let Some(mut step) = self.step.take() {
            // Cancelled mid-wait: release the pins. Loads it started go on into their slots
            // (still `Loading`, so never reused) and end up cached.
            let mut st = self.shared.state.lock();
            step.abandon(&self.shared, &mut st);
        }
    }
}
