//! The threaded scheduler: one I/O thread drives a [`ReadBackend`] for the [`SchedCore`];
//! callers `hint` and `acquire` from any thread, blocking or async.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::backend::{BackendWaker, Completion, ReadBackend};
use crate::cache::EvictionKind;
use crate::checksum;
use crate::core::{CoreConfig, SchedCore, SlotId};
use crate::error::{Error, Result};
use crate::guard::{AcquireFuture, ExpertGuard};
use crate::layout::{ExpertKey, ExpertLayout};
use crate::metrics::MetricsSnapshot;
use crate::pending::PendingAcquire;
use crate::predictor::Candidate;

/// How a [`Scheduler`] caches and reads: a budget, then chained setters over defaults that
/// suit SSDs from phone class to NVMe.
///
/// ```
/// use io_sched::{SchedulerConfig, cache::EvictionKind};
/// let cfg = SchedulerConfig::with_budget(2 << 30)
///     .eviction(EvictionKind::Lru)
///     .max_prefetch_bytes_in_flight(16 << 20);
/// assert_eq!(cfg.budget_bytes(), 2 << 30);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SchedulerConfig {
    budget_bytes: u64,
    eviction: EvictionKind,
    core: CoreConfig,
}

impl SchedulerConfig {
    /// `budget_bytes` of memory for cached experts (rounded down to whole slots), LRU
    /// eviction, the default read sizes and limits, checksums verified.
    pub fn with_budget(budget_bytes: u64) -> Self {
        Self {
            budget_bytes,
            eviction: EvictionKind::Lru,
            core: CoreConfig::default(),
        }
    }

    /// The cache budget in bytes.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Which cached record to evict (default LRU).
    pub fn eviction(mut self, kind: EvictionKind) -> Self {
        self.eviction = kind;
        self
    }

    /// Bytes of one demand read request (default 1 MiB): a record is split into several so
    /// the device works on them in parallel.
    pub fn demand_chunk(mut self, bytes: usize) -> Self {
        self.core.demand_chunk = bytes;
        self
    }

    /// Bytes of one prefetch read request (default 1 MiB): the most traffic a demand read can
    /// find issued ahead of it once it arrives.
    pub fn prefetch_chunk(mut self, bytes: usize) -> Self {
        self.core.prefetch_chunk = bytes;
        self
    }

    /// Prefetch bytes in flight at most (default 8 MiB; demand reads are not limited).
    pub fn max_prefetch_bytes_in_flight(mut self, bytes: u64) -> Self {
        self.core.max_prefetch_bytes_in_flight = bytes;
        self
    }

    /// Prefetch reads in flight at most (default 8), leaving the rest of the queue to demand.
    pub fn max_prefetch_ops_in_flight(mut self, ops: usize) -> Self {
        self.core.max_prefetch_ops_in_flight = ops;
        self
    }

    /// Retries of a short or interrupted read before the load fails (default 8).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.core.max_retries = retries;
        self
    }

    /// Check every record's checksum before handing it out (default on).
    pub fn verify_checksums(mut self, on: bool) -> Self {
        self.core.verify_checksums = on;
        self
    }

    /// Candidates below this confidence are not prefetched (default 0).
    pub fn min_confidence(mut self, confidence: f32) -> Self {
        self.core.min_confidence = confidence;
        self
    }

    /// Replaces every core setting at once (the simulator's path).
    #[doc(hidden)]
    pub fn core_config(mut self, core: CoreConfig) -> Self {
        self.core = core;
        self
    }
}

pub(crate) struct State {
    pub core: SchedCore,
    pub wakers: Vec<std::task::Waker>,
    pub shutdown: bool,
}

pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub progress: Condvar,
    pub io_waker: BackendWaker,
    /// Device busy time, kept by the I/O thread (its own lock: no contention with `state`).
    pub busy: Mutex<BusyClock>,
}

/// Time with at least one read in flight: an interval opens at the first submit after idle
/// and closes at the reap that leaves nothing in flight.
#[derive(Debug, Default)]
pub(crate) struct BusyClock {
    since: Option<Instant>,
    closed_ns: u64,
}

impl BusyClock {
    /// Called after every submit and reap with the backend's reads in flight.
    fn update(&mut self, in_flight: usize) {
        self.update_at(in_flight, Instant::now());
    }

    fn update_at(&mut self, in_flight: usize, now: Instant) {
        match (in_flight > 0, self.since) {
            (true, None) => self.since = Some(now),
            (false, Some(t)) => {
                self.closed_ns += now.saturating_duration_since(t).as_nanos() as u64;
                self.since = None;
            }
            _ => {}
        }
    }

    /// Busy time so far, the open interval included.
    fn total_ns(&self, now: Instant) -> u64 {
        self.closed_ns
            + self
                .since
                .map_or(0, |t| now.saturating_duration_since(t).as_nanos() as u64)
    }
}

impl Shared {
    /// Wakes every waiter after a load became ready or failed.
    pub(crate) fn notify(&self, st: &mut State) {
        self.progress.notify_all();
        for w in st.wakers.drain(..) {
            w.wake();
        }
    }
}

/// What [`Scheduler::preload`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Preloaded {
    /// Records of the list now cached: its first `cached` (read now or cached before).
    pub cached: usize,
    /// Records read now.
    pub read: usize,
    /// Bytes read now.
    pub bytes: u64,
    /// Wall time, in seconds.
    pub secs: f64,
}

/// One step of an acquire: pin what can be pinned, then report whether all is ready.
pub(crate) struct AcquireStep {
    pub layer: u32,
    /// The experts asked for, in the caller's order.
    pub experts: Vec<u32>,
    /// The pinned slot of each position, once it has one.
    slots: Vec<Option<SlotId>>,
    pinned: Vec<SlotId>,
    pub started: Option<Instant>,
}

impl AcquireStep {
    pub fn new(layer: u32, experts: &[u32]) -> Self {
        Self {
            layer,
            experts: experts.to_vec(),
            slots: vec![None; experts.len()],
            pinned: Vec::with_capacity(experts.len()),
            started: None,
        }
    }

    /// Advances under the lock. `Some(result)` when done (slots stay pinned on success).
    pub fn advance(&mut self, shared: &Shared, st: &mut State) -> Option<Result<()>> {
        if st.shutdown {
            return Some(Err(Error::Shutdown));
        }
        let mut all_pinned = true;
        for (i, &e) in self.experts.iter().enumerate() {
            if self.slots[i].is_some() {
                continue;
            }
            match st.core.pin_or_load(ExpertKey::new(self.layer, e)) {
                Ok(Some(s)) => {
                    self.slots[i] = Some(s);
                    self.pinned.push(s);
                }
                Ok(None) => all_pinned = false,
                Err(err) => {
                    wake_io_if_queued(shared, st);
                    return Some(Err(err));
                }
            }
        }
        // Any read this step queued (on this call or a retry after waiting for a slot) needs the
        // I/O thread awake.
        wake_io_if_queued(shared, st);
        if all_pinned && let Some(done) = st.core.check_ready(&self.pinned) {
            return Some(done);
        }
        self.started.get_or_insert_with(Instant::now);
        None
    }

    /// The pinned slots in the caller's order (call once done).
    pub fn into_slots(self) -> (Vec<u32>, Vec<SlotId>) {
        let slots = self
            .slots
            .into_iter()
            .map(|s| s.expect("all pinned"))
            .collect();
        (self.experts, slots)
    }

    /// Unpins on failure or cancellation.
    pub fn abandon(&mut self, shared: &Shared, st: &mut State) {
        st.core.unpin(&self.pinned);
        if st.core.take_slot_freed() {
            shared.notify(st);
        }
        self.pinned.clear();
        self.slots.iter_mut().for_each(|s| *s = None);
    }
}

fn wake_io_if_queued(shared: &Shared, st: &mut State) {
    if st.core.take_io_queued() {
        (shared.io_waker)();
    }
}

/// The expert-fetch scheduler.
///
/// ```no_run
/// use io_sched::{Scheduler, SchedulerConfig, predictor::Candidate};
/// # fn demo(layout: io_sched::ExpertLayout, backend: Box<dyn io_sched::backend::ReadBackend>) -> io_sched::Result<()> {
/// let sched = Scheduler::with_backend(layout, SchedulerConfig::with_budget(1 << 30), backend)?;
/// sched.hint(1, &[Candidate { expert: 7, confidence: 0.9 }]);
/// let guard = sched.acquire(0, &[3, 5])?; // blocks until both records are in memory
/// let bytes: &[u8] = guard.bytes(0);      // expert 3 of layer 0, checksum verified
/// # let _ = bytes; Ok(()) }
/// ```
pub struct Scheduler {
    shared: Arc<Shared>,
    io_thread: Option<JoinHandle<()>>,
    backend_description: String,
    layout: Arc<ExpertLayout>,
}

impl Scheduler {
    /// A scheduler over `layout` reading through `backend`.
    pub fn with_backend(
        layout: ExpertLayout,
        cfg: SchedulerConfig,
        mut backend: Box<dyn ReadBackend>,
    ) -> Result<Self> {
        let layout = Arc::new(layout);
        let mut core_cfg = cfg.core.clone();
        core_cfg.align_retries = backend.direct();
        let core = SchedCore::new(layout.clone(), cfg.budget_bytes, cfg.eviction, core_cfg)?;
        let arena = core.arena();
        // SAFETY: the arena lives in `Shared`, which the I/O thread keeps alive until after it
        // has dropped the backend (see `io_loop`).
        match unsafe { backend.register_memory(arena.base(), arena.len()) } {
            Ok(true) => tracing::debug!("cache arena registered with the read backend"),
            Ok(false) => {}
            Err(e) => tracing::warn!("read backend could not register the cache arena: {e}"),
        }
        let backend_description = backend.describe();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                core,
                wakers: Vec::new(),
                shutdown: false,
            }),
            progress: Condvar::new(),
            io_waker: backend.waker(),
            busy: Mutex::new(BusyClock::default()),
        });
        let thread_shared = shared.clone();
        let io_thread = std::thread::Builder::new()
            .name("io-sched".into())
            .spawn(move || io_loop(thread_shared, backend))
            .map_err(|e| Error::Backend {
                backend: "scheduler",
                reason: format!("could not start the I/O thread: {e}"),
            })?;
        Ok(Self {
            shared,
            io_thread: Some(io_thread),
            backend_description,
            layout,
        })
    }

    pub fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    /// The backend in use, e.g. `io_uring qd=32 O_DIRECT registered-buffers`.
    pub fn backend_description(&self) -> &str {
        &self.backend_description
    }

    /// Cache slots and their size in bytes.
    pub fn capacity(&self) -> (usize, usize) {
        let st = self.shared.state.lock();
        (st.core.slot_count(), st.core.slot_size())
    }

    /// Starts prefetching `candidates` of `layer` for its next acquire (supersedes the previous
    /// hint for that layer). Returns at once.
    pub fn hint(&self, layer: u32, candidates: &[Candidate]) {
        let mut st = self.shared.state.lock();
        st.core.hint(layer, candidates);
        let queued = st.core.take_io_queued();
        // Superseded prefetches may have freed slots someone is waiting for.
        if st.core.take_slot_freed() {
            self.shared.notify(&mut st);
        }
        drop(st);
        if queued {
            (self.shared.io_waker)();
        }
    }

    /// Blocks until every expert of `experts` of `layer` is in memory, and returns a guard over
    /// their bytes (in the order asked). Also tells the scheduler the real routing of `layer`,
    /// which makes prefetches that missed stale.
    pub fn acquire(&self, layer: u32, experts: &[u32]) -> Result<ExpertGuard> {
        self.begin_acquire(layer, experts)?.wait()
    }

    /// The first half of [`acquire`](Self::acquire): notes the real routing of `layer` and
    /// pins `experts`, queueing their demand reads, without waiting. Hints given before
    /// [`PendingAcquire::wait`] queue behind these demand reads (demand goes first) yet start
    /// while the caller waits.
    pub fn begin_acquire(&self, layer: u32, experts: &[u32]) -> Result<PendingAcquire> {
        PendingAcquire::start(self.shared.clone(), layer, experts)
    }

    /// A guard over those of `experts` of `layer` that are in memory now (in the order asked,
    /// the others left out). It never waits, reads, or counts as a demand: it lets a runtime
    /// copy prefetched records onward (e.g. upload them to GPU memory while the current layer
    /// computes) before the real routing asks for them.
    pub fn acquire_ready(&self, layer: u32, experts: &[u32]) -> ExpertGuard {
        let mut st = self.shared.state.lock();
        let (mut ids, mut slots) = (Vec::new(), Vec::new());
        for &e in experts {
            if let Some(s) = st.core.pin_if_ready(ExpertKey::new(layer, e)) {
                ids.push(e);
                slots.push(s);
            }
        }
        drop(st);
        ExpertGuard::from_pinned(self.shared.clone(), layer, ids, slots)
    }

    /// Async [`acquire`](Self::acquire) for any executor (tokio included). Dropping the future
    /// releases its pins; reads it started finish into the cache, never into freed memory.
    pub fn acquire_async(&self, layer: u32, experts: &[u32]) -> AcquireFuture {
        AcquireFuture::new(self.shared.clone(), layer, experts)
    }

    /// Reads `records` (layer, expert) into free cache slots, in the order given, and waits
    /// until they are in memory: a model's load, so that decode finds them ready. It never
    /// evicts; it stops at the first record no free slot is left for. Records already cached
    /// are left as they are. Counted as [`preloaded`](crate::metrics::LayerMetrics::preloaded),
    /// not as demands. A record that cannot be read (an I/O error, a checksum mismatch) is an
    /// error naming it; what was read stays cached.
    pub fn preload(&self, records: &[(u32, u32)]) -> Result<Preloaded> {
        let started = Instant::now();
        let mut st = self.shared.state.lock();
        let before = st.core.metrics().total();
        let mut pinned = Vec::with_capacity(records.len());
        let mut outcome = Ok(());
        for &(layer, expert) in records {
            match st.core.pin_or_preload(ExpertKey::new(layer, expert)) {
                Ok(Some(s)) => pinned.push(s),
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let queued = st.core.take_io_queued();
        drop(st);
        if queued {
            (self.shared.io_waker)();
        }
        let mut st = self.shared.state.lock();
        // Loads finish about in the order queued: a cursor over them keeps each wake-up's
        // check short (a whole-list check per completion would be quadratic in the records).
        let mut next = 0;
        while outcome.is_ok() && next < pinned.len() {
            if st.shutdown {
                outcome = Err(Error::Shutdown);
                break;
            }
            match st.core.check_ready(&pinned[next..next + 1]) {
                Some(Ok(())) => next += 1,
                Some(Err(e)) => outcome = Err(e),
                None => self.shared.progress.wait(&mut st),
            }
        }
        st.core.unpin(&pinned);
        if st.core.take_slot_freed() {
            self.shared.notify(&mut st);
        }
        let after = st.core.metrics().total();
        drop(st);
        outcome?;
        Ok(Preloaded {
            cached: pinned.len(),
            read: (after.preloaded - before.preloaded) as usize,
            bytes: after.preload_bytes - before.preload_bytes,
            secs: started.elapsed().as_secs_f64(),
        })
    }

    /// [`preload`](Self::preload) of every record, layer by layer (expert 0 first).
    pub fn preload_all(&self) -> Result<Preloaded> {
        let (layers, experts) = (self.layout.num_layers(), self.layout.num_experts());
        let records: Vec<(u32, u32)> = (0..layers)
            .flat_map(|l| (0..experts).map(move |e| (l, e)))
            .collect();
        self.preload(&records)
    }

    /// Every counter, with the device busy time ([`crate::metrics::DepthMetrics::busy_ns`]).
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut m = self.shared.state.lock().core.metrics();
        m.depth.busy_ns = self.shared.busy.lock().total_ns(Instant::now());
        m
    }

    /// Whether the eviction policy uses [`note_next_use`](Self::note_next_use).
    pub fn wants_next_use(&self) -> bool {
        self.shared.state.lock().core.wants_next_use()
    }

    /// Hands the eviction policy the expected wait, per expert of `layer`, in the layer's
    /// demands until it is routed to again ([`crate::cache::NextUse`]); other policies ignore
    /// it.
    pub fn note_next_use(&self, layer: u32, waits: &[f32]) {
        self.shared.state.lock().core.note_next_use(layer, waits);
    }

    /// Runs `f` on the core under the lock (tests and diagnostics).
    #[doc(hidden)]
    pub fn with_core<R>(&self, f: impl FnOnce(&SchedCore) -> R) -> R {
        f(&self.shared.state.lock().core)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock();
            st.shutdown = true;
            self.shared.notify(&mut st);
        }
        (self.shared.io_waker)();
        if let Some(t) = self.io_thread.take()
            && t.join().is_err()
        {
            tracing::error!("io-sched I/O thread panicked");
        }
    }
}

/// The I/O thread: issue what the core allows, reap, hand completions back, verify checksums
/// outside the lock, wake waiters. On shutdown it stops issuing and drains what is in flight.
fn io_loop(shared: Arc<Shared>, mut backend: Box<dyn ReadBackend>) {
    let mut done: Vec<Completion> = Vec::with_capacity(64);
    let mut work: Vec<Work> = Vec::new();
    let mut ended: Vec<u64> = Vec::new();
    let mut hashes = RunningHashes::default();
    loop {
        let shutdown = issue(&shared, backend.as_mut());
        if let Err(e) = backend.flush() {
            tracing::error!("read backend flush failed: {e}");
        }
        if shutdown && backend.in_flight() == 0 {
            break;
        }
        if let Err(e) = backend.reap(&mut done, None) {
            tracing::error!("read backend reap failed: {e}");
        }
        shared.busy.lock().update(backend.in_flight());
        if done.is_empty() {
            continue;
        }
        let mut st = shared.state.lock();
        let mut changed = false;
        for c in done.drain(..) {
            let out = st.core.complete(c);
            changed |= out.changed;
            work.extend(out.hash.map(Work::Hash));
            work.extend(out.verify.map(Work::Verify));
        }
        st.core.take_ended_hashes(&mut ended);
        changed |= st.core.take_slot_freed();
        if changed {
            shared.notify(&mut st);
        }
        drop(st);
        // Loads that ended (cancelled, failed) may have freed their slots: their hash work must
        // go before new reads are issued into those slots.
        if !ended.is_empty() {
            work.retain(|w| match w {
                Work::Hash(h) => !ended.contains(&h.order),
                Work::Verify(_) => true,
            });
        }
        // Issue what the completions made room for before hashing, so the device stays busy.
        if !work.is_empty() {
            let _ = issue(&shared, backend.as_mut());
            if let Err(e) = backend.flush() {
                tracing::error!("read backend flush failed: {e}");
            }
        }
        for order in ended.drain(..) {
            hashes.forget(order);
        }
        let mut verified = Vec::new();
        for w in work.drain(..) {
            match w {
                Work::Hash(h) => hashes.add_blocks(&h),
                Work::Verify(job) => {
                    let sum = hashes.finish(job.order, job.ptr, job.len);
                    verified.push((job, sum));
                }
            }
        }
        if !verified.is_empty() {
            let mut st = shared.state.lock();
            let mut changed = false;
            for (job, sum) in verified {
                changed |= st.core.finish_verify(job, sum);
            }
            if changed {
                shared.notify(&mut st);
            }
        }
    }
    // The backend goes first: its drop waits for reads in flight, and `shared` (with the arena)
    // must outlive them.
    drop(backend);
    drop(shared);
}

enum Work {
    Hash(crate::core::HashWork),
    Verify(crate::core::VerifyJob),
}

/// Block hashes of loads being read, computed as their blocks complete (in any order).
#[derive(Default)]
struct RunningHashes(std::collections::HashMap<u64, Vec<Option<u64>>>);

impl RunningHashes {
    fn add_blocks(&mut self, h: &crate::core::HashWork) {
        let hashes = self
            .0
            .entry(h.order)
            .or_insert_with(|| vec![None; checksum::block_count(h.len)]);
        for &b in &h.blocks {
            if let Some(slot) = hashes.get_mut(b as usize) {
                *slot = Some(block_hash_at(h.ptr, h.len, b as usize));
            }
        }
    }

    /// The record checksum: hashes of blocks not seen yet are computed now.
    fn finish(&mut self, order: u64, ptr: *const u8, len: usize) -> u64 {
        let hashes = self
            .0
            .remove(&order)
            .unwrap_or_else(|| vec![None; checksum::block_count(len)]);
        checksum::combine(
            hashes
                .iter()
                .enumerate()
                .map(|(b, h)| h.unwrap_or_else(|| block_hash_at(ptr, len, b))),
        )
    }

    fn forget(&mut self, order: u64) {
        self.0.remove(&order);
    }
}

/// The hash of block `b` of the `len`-byte payload at `ptr`.
fn block_hash_at(ptr: *const u8, len: usize, b: usize) -> u64 {
    let start = b * checksum::CHECKSUM_BLOCK;
    let end = (start + checksum::CHECKSUM_BLOCK).min(len);
    // SAFETY: the core handed out block `b` (or the whole payload, for a verify job) of a slot
    // that stays `Loading` — no read in flight over these bytes and nobody else reading them —
    // until `finish_verify`; `start..end` lies inside the payload, inside the arena, which
    // outlives this thread's work.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.add(start), end - start) };
    checksum::block_hash(bytes)
}

/// Submits ops one at a time, re-taking the lock between them so a demand that arrives
/// meanwhile is next. Returns whether the scheduler is shutting down.
fn issue(shared: &Shared, backend: &mut dyn ReadBackend) -> bool {
    loop {
        let free = backend.max_in_flight().saturating_sub(backend.in_flight());
        let mut st = shared.state.lock();
        if st.shutdown {
            return true;
        }
        let Some(op) = st.core.next_op(free) else {
            return false;
        };
        drop(st);
        // SAFETY: `op.buf` points into a slot in `Loading` state: the core hands out no other
        // reference to it and does not reuse it until this op's completion has been processed;
        // the arena outlives the backend (see `io_loop`).
        let submitted = unsafe { backend.submit(op) };
        shared.busy.lock().update(backend.in_flight());
        if let Err(e) = submitted {
            let mut st = shared.state.lock();
            let out = st.core.complete(Completion {
                tag: op.tag,
                result: Err(e),
            });
            if out.changed {
                shared.notify(&mut st);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BusyClock;
    use std::time::{Duration, Instant};

    #[test]
    fn busy_clock_counts_only_time_with_reads_in_flight() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut c = BusyClock::default();
        c.update_at(0, at(0)); // idle: nothing opens
        c.update_at(1, at(10)); // first submit opens
        c.update_at(3, at(12)); // more submits: still the same interval
        c.update_at(0, at(20)); // drained: 10 ms
        c.update_at(0, at(50)); // idle time is not counted
        c.update_at(2, at(60));
        assert_eq!(
            c.total_ns(at(65)),
            15_000_000,
            "open interval counted so far"
        );
        c.update_at(0, at(70));
        assert_eq!(c.total_ns(at(100)), 20_000_000);
    }
}
