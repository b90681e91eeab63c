//! The scheduler's state machine: slots, loads, queues and accounting — no threads, no clocks,
//! no syscalls.
//!
//! [`crate::Scheduler`] drives it from an I/O thread against a real backend; the simulator
//! drives the very same core against a simulated device in virtual time.
//!
//! Life of an expert in a slot:
//!
//! ```text
//!   Free ──load──▶ Loading ──all bytes, checksum ok──▶ Ready ──evict (unpinned)──▶ Free
//!                     │                                  ▲
//!                     └──error / bad checksum──▶ Failed ─┘ (freed when the last pin drops)
//! ```
//!
//! A slot is written only while `Loading`, by reads this core issued, and is reused only when
//! `Free` or `Ready` with no pins — so memory the kernel may still write into is never handed
//! out, and pinned bytes never change.

mod failure;
mod issue;
mod slots;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::cache::{Arena, EvictionPolicy};
use crate::error::{Error, ReadSite, Result};
use crate::layout::{ExpertKey, ExpertLayout};
use crate::metrics::{DepthMetrics, LayerMetrics, MetricsSnapshot};
use crate::predictor::Candidate;

pub(crate) use failure::Failure;
pub use issue::{CompleteOutcome, HashWork, VerifyJob};

/// Index of a cache slot.
pub type SlotId = u32;
const NO_SLOT: u32 = u32::MAX;

/// Tuning of the core. Defaults suit SSDs from phone class to NVMe.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    /// Size of one demand read request; a record is split into several so the device works on
    /// them in parallel.
    pub demand_chunk: usize,
    /// Size of one prefetch read request: the most traffic a demand read can find issued ahead
    /// of it once it arrives.
    pub prefetch_chunk: usize,
    /// Prefetch bytes in flight at most (demand reads are not limited).
    pub max_prefetch_bytes_in_flight: u64,
    /// Prefetch reads in flight at most, leaving the rest of the queue to demand reads.
    pub max_prefetch_ops_in_flight: usize,
    /// Retries of a short or interrupted read before the load fails.
    pub max_retries: u32,
    /// Check every record's checksum before handing it out.
    pub verify_checksums: bool,
    /// Candidates below this confidence are not prefetched.
    pub min_confidence: f32,
    /// Retry short reads from a 4096-aligned offset (needed by direct I/O). The scheduler sets
    /// this from its backend.
    pub align_retries: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            demand_chunk: 1 << 20,
            prefetch_chunk: 1 << 20,
            max_prefetch_bytes_in_flight: 8 << 20,
            max_prefetch_ops_in_flight: 8,
            max_retries: 8,
            verify_checksums: true,
            min_confidence: 0.0,
            align_retries: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Demand,
    Prefetch,
}

#[derive(Debug)]
pub(crate) enum SlotState {
    Free,
    Loading(usize),
    Ready,
    Failed(Box<Failure>),
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub key: ExpertKey,
    pub state: SlotState,
    pub pins: u32,
    /// Brought in by a prefetch and not demanded since.
    pub unused_prefetch: bool,
    /// Marked wasted (its layer was acquired without it): evict first.
    pub stale: bool,
    /// Named by a live hint (prefetched or already cached): evicted last, never by a prefetch.
    pub hinted: bool,
    /// For prefetches: the acquire of its layer it was meant for.
    pub target_epoch: u64,
}

#[derive(Debug)]
pub(crate) struct Load {
    pub slot: SlotId,
    pub key: ExpertKey,
    pub purpose: Purpose,
    pub confidence: f32,
    pub file: u32,
    pub base_offset: u64,
    /// Aligned bytes to read.
    pub total: u64,
    /// Payload bytes (checksummed, handed out).
    pub payload: u64,
    pub checksum: u64,
    /// Next relative offset not yet issued.
    pub issued: u64,
    /// Ops in flight plus retries queued.
    pub outstanding: u32,
    pub cancelled: bool,
    pub failure: Option<Failure>,
    /// Unique id of this load (never reused), names its streaming checksum.
    pub order: u64,
    /// Byte ranges read so far (merged), to find checksum blocks that are whole.
    pub done_ranges: Vec<(u64, u64)>,
    /// The range the latest completion added.
    pub newly_done: Option<(u64, u64)>,
    /// Checksum blocks already handed to the driver for hashing.
    pub blocks_handed: Vec<bool>,
    /// Whether any block was handed out (the driver then holds state for this load).
    pub hashed: bool,
    /// A preload ([`SchedCore::pin_or_preload`]): its bytes count as preloaded, not demanded.
    pub preload: bool,
}

/// The scheduler state machine.
pub struct SchedCore {
    layout: Arc<ExpertLayout>,
    arena: Arena,
    policy: Box<dyn EvictionPolicy>,
    cfg: CoreConfig,
    slots: Vec<Slot>,
    /// Dense (layer * experts + expert) → slot.
    slot_of: Vec<u32>,
    free_slots: Vec<SlotId>,
    loads: Vec<Option<Load>>,
    free_loads: Vec<usize>,
    demand_queue: VecDeque<usize>,
    prefetch_queue: Vec<usize>,
    retries: VecDeque<issue::PendingRead>,
    ops: Vec<Option<issue::OpRecord>>,
    free_ops: Vec<usize>,
    /// Per layer: how many acquires it has seen (a hint targets the next one).
    epoch: Vec<u64>,
    current_layer: u32,
    tick: u64,
    order: u64,
    prefetch_bytes_in_flight: u64,
    prefetch_ops_in_flight: usize,
    ops_in_flight: usize,
    layer_metrics: Vec<LayerMetrics>,
    depth: DepthMetrics,
    /// Loads (by `order`) that ended without a verify job: their hash state can go.
    ended_hashes: Vec<u64>,
    /// A slot became free since the driver last asked: waiters for a slot must retry.
    slot_freed: bool,
    /// Reads were queued since the driver last asked: the I/O thread must be woken.
    io_queued: bool,
}

impl SchedCore {
    /// A core over `layout` with a cache of `budget_bytes`, cut into slots of the layout's
    /// largest record.
    pub fn new(
        layout: Arc<ExpertLayout>,
        budget_bytes: u64,
        policy: crate::cache::EvictionKind,
        cfg: CoreConfig,
    ) -> Result<Self> {
        let slot_size = layout.max_read_len() as usize;
        let slots = (budget_bytes / slot_size as u64) as usize;
        if slots == 0 {
            return Err(Error::Budget(format!(
                "budget of {budget_bytes} bytes holds no expert record of {slot_size} bytes"
            )));
        }
        let slots = slots.min(layout.num_layers() as usize * layout.num_experts() as usize);
        if cfg.demand_chunk == 0 || cfg.prefetch_chunk == 0 {
            return Err(Error::Budget("read chunk sizes must be > 0".into()));
        }
        let arena = Arena::new(slots, slot_size)?;
        let n_keys = layout.num_layers() as usize * layout.num_experts() as usize;
        let layers = layout.num_layers() as usize;
        Ok(Self {
            policy: policy.build(slots, layout.num_layers(), layout.num_experts()),
            arena,
            cfg,
            slots: (0..slots)
                .map(|_| Slot {
                    key: ExpertKey::new(0, 0),
                    state: SlotState::Free,
                    pins: 0,
                    unused_prefetch: false,
                    stale: false,
                    hinted: false,
                    target_epoch: 0,
                })
                .collect(),
            slot_of: vec![NO_SLOT; n_keys],
            free_slots: (0..slots as u32).rev().collect(),
            loads: Vec::new(),
            free_loads: Vec::new(),
            demand_queue: VecDeque::new(),
            prefetch_queue: Vec::new(),
            retries: VecDeque::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            epoch: vec![0; layers],
            current_layer: 0,
            tick: 0,
            order: 0,
            prefetch_bytes_in_flight: 0,
            prefetch_ops_in_flight: 0,
            ops_in_flight: 0,
            layer_metrics: vec![LayerMetrics::default(); layers],
            depth: DepthMetrics::default(),
            ended_hashes: Vec::new(),
            slot_freed: false,
            io_queued: false,
            layout,
        })
    }

    pub fn layout(&self) -> &Arc<ExpertLayout> {
        &self.layout
    }
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }
    pub fn slot_size(&self) -> usize {
        self.arena.slot_size()
    }
    /// The arena, e.g. to register it with a backend.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }
    /// Reads in flight on the device.
    pub fn ops_in_flight(&self) -> usize {
        self.ops_in_flight
    }
    /// Whether any read is queued or in flight.
    pub fn has_io(&self) -> bool {
        self.ops_in_flight > 0
            || !self.retries.is_empty()
            || !self.demand_queue.is_empty()
            || !self.prefetch_queue.is_empty()
    }

    fn key_index(&self, key: ExpertKey) -> usize {
        key.layer as usize * self.layout.num_experts() as usize + key.expert as usize
    }

    fn check_key(&self, key: ExpertKey) -> Result<()> {
        self.layout.get(key).map(|_| ())
    }

    fn site(&self, key: ExpertKey, offset: u64) -> ReadSite {
        let file = self
            .layout
            .get(key)
            .map(|l| self.layout.file_path(l.file).to_path_buf())
            .unwrap_or_default();
        ReadSite {
            layer: key.layer,
            expert: key.expert,
            file,
            offset,
        }
    }

    /// Called once per `acquire` with the real routing of `layer`: prefetches meant for this
    /// acquire that missed become stale (cancelled if not started, marked wasted if read).
    pub fn note_routing(&mut self, layer: u32, experts: &[u32]) -> Result<()> {
        for &e in experts {
            self.check_key(ExpertKey::new(layer, e))?;
        }
        let l = layer as usize;
        let epoch = self.epoch[l];
        self.epoch[l] += 1;
        self.current_layer = layer;
        self.policy.on_routing(layer);
        let n = self.layout.num_experts() as usize;
        for e in 0..n as u32 {
            let s = self.slot_of[l * n + e as usize];
            if s == NO_SLOT {
                continue;
            }
            let slot = &mut self.slots[s as usize];
            if slot.target_epoch > epoch {
                continue;
            }
            // The hint for this acquire is settled either way.
            slot.hinted = false;
            if experts.contains(&e) {
                continue;
            }
            match slot.state {
                SlotState::Ready if slot.unused_prefetch => {
                    slot.unused_prefetch = false;
                    slot.stale = true;
                    let len = self.arena.slot_size() as u64;
                    let m = &mut self.layer_metrics[l];
                    m.prefetch_wasted += 1;
                    m.wasted_bytes += len;
                }
                SlotState::Loading(load)
                    if self.loads[load]
                        .as_ref()
                        .is_some_and(|x| x.purpose == Purpose::Prefetch) =>
                {
                    self.cancel_prefetch(load);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Pins `key` for a demand: a hit, a coalesced or promoted load, or a new load.
    /// `Ok(None)` means no slot can be had until a read in flight finishes: wait for progress
    /// and call again.
    pub fn pin_or_load(&mut self, key: ExpertKey) -> Result<Option<SlotId>> {
        self.check_key(key)?;
        self.tick += 1;
        let idx = self.key_index(key);
        let l = key.layer as usize;
        let s = self.slot_of[idx];
        if s != NO_SLOT {
            let slot = &mut self.slots[s as usize];
            match slot.state {
                SlotState::Ready => {
                    let m = &mut self.layer_metrics[l];
                    m.demanded += 1;
                    m.hits += 1;
                    if slot.unused_prefetch {
                        m.prefetch_used += 1;
                        slot.unused_prefetch = false;
                    }
                    slot.stale = false;
                    slot.hinted = false;
                    slot.pins += 1;
                    self.policy.on_access(s as usize, self.tick);
                    return Ok(Some(s));
                }
                SlotState::Loading(load) => {
                    slot.pins += 1;
                    let m = &mut self.layer_metrics[l];
                    m.demanded += 1;
                    let ld = self.loads[load].as_mut().expect("loading slot has a load");
                    // A demand that finds a preload still reading: the rest is demand.
                    ld.preload = false;
                    if ld.purpose == Purpose::Prefetch {
                        m.late_prefetch_hits += 1;
                        m.prefetch_used += 1;
                    } else {
                        m.misses += 1;
                    }
                    self.promote(load);
                    self.policy.on_access(s as usize, self.tick);
                    return Ok(Some(s));
                }
                // Failed slots are unmapped when they fail; Free slots are never mapped.
                SlotState::Failed(_) | SlotState::Free => unreachable!("mapped slot is live"),
            }
        }
        let Some(s) = self.take_slot(Purpose::Demand)? else {
            return Ok(None);
        };
        let m = &mut self.layer_metrics[l];
        m.demanded += 1;
        m.misses += 1;
        self.start_load(key, s, Purpose::Demand, 1.0);
        self.slots[s as usize].pins = 1;
        self.policy.on_insert(s as usize, key, self.tick);
        Ok(Some(s))
    }

    /// Pins `key` for a preload: a record not cached is read into a *free* slot (never
    /// evicting) as a demand read is, counted as preloaded rather than demanded; a cached one
    /// is only pinned. `Ok(None)`: no slot is free.
    pub fn pin_or_preload(&mut self, key: ExpertKey) -> Result<Option<SlotId>> {
        self.check_key(key)?;
        let idx = self.key_index(key);
        let s = self.slot_of[idx];
        if s != NO_SLOT {
            self.slots[s as usize].pins += 1;
            return Ok(Some(s));
        }
        let Some(s) = self.free_slots.pop() else {
            return Ok(None);
        };
        self.tick += 1;
        self.layer_metrics[key.layer as usize].preloaded += 1;
        self.start_load(key, s, Purpose::Demand, 1.0);
        if let SlotState::Loading(id) = self.slots[s as usize].state
            && let Some(ld) = self.loads[id].as_mut()
        {
            ld.preload = true;
        }
        self.slots[s as usize].pins = 1;
        self.policy.on_insert(s as usize, key, self.tick);
        Ok(Some(s))
    }

    /// Pins `key` if it is cached and ready, without counting an access or touching eviction
    /// order: for copying an already prefetched record onward (e.g. into GPU memory) before it
    /// is demanded. The demand that follows still counts as the hit or miss it is.
    pub fn pin_if_ready(&mut self, key: ExpertKey) -> Option<SlotId> {
        self.layout.get(key).ok()?;
        let s = self.slot_of[self.key_index(key)];
        if s == NO_SLOT {
            return None;
        }
        let slot = &mut self.slots[s as usize];
        if !matches!(slot.state, SlotState::Ready) {
            return None;
        }
        slot.pins += 1;
        Some(s)
    }

    /// Starts prefetches for `layer`'s next acquire. A new hint for a layer supersedes the
    /// previous one: its candidates not named again and not yet started are dropped.
    /// Returns whether new reads were queued.
    pub fn hint(&mut self, layer: u32, candidates: &[Candidate]) -> bool {
        if layer >= self.layout.num_layers() {
            return false;
        }
        let l = layer as usize;
        let named = |e: u32| {
            candidates
                .iter()
                .any(|c| c.expert == e && c.confidence >= self.cfg.min_confidence)
        };
        let superseded: Vec<usize> = self
            .prefetch_queue
            .iter()
            .copied()
            .filter(|&id| {
                self.loads[id].as_ref().is_some_and(|ld| {
                    ld.purpose == Purpose::Prefetch
                        && ld.key.layer == layer
                        && ld.issued == 0
                        && !named(ld.key.expert)
                })
            })
            .collect();
        for id in superseded {
            self.cancel_prefetch(id);
        }
        let target = self.epoch[l];
        let mut queued = false;
        for c in candidates {
            if c.confidence < self.cfg.min_confidence || c.expert >= self.layout.num_experts() {
                continue;
            }
            let key = ExpertKey::new(layer, c.expert);
            let s = self.slot_of[self.key_index(key)];
            if s != NO_SLOT {
                let slot = &mut self.slots[s as usize];
                // Already cached or on its way: protect it until this acquire. A stale
                // prefetch named again is kept, but its bytes stay counted as wasted once.
                slot.target_epoch = target;
                slot.stale = false;
                slot.hinted = true;
                if let SlotState::Loading(id) = slot.state {
                    let ld = self.loads[id].as_mut().expect("loading slot has a load");
                    if ld.purpose == Purpose::Prefetch {
                        ld.confidence = ld.confidence.max(c.confidence);
                        if ld.cancelled {
                            ld.cancelled = false;
                            if ld.issued < ld.total {
                                self.prefetch_queue.push(id);
                                self.io_queued = true;
                            }
                        }
                    }
                }
                continue;
            }
            let Ok(Some(s)) = self.take_slot(Purpose::Prefetch) else {
                break;
            };
            self.layer_metrics[l].prefetch_issued += 1;
            self.start_load(key, s, Purpose::Prefetch, c.confidence);
            let slot = &mut self.slots[s as usize];
            slot.target_epoch = target;
            slot.unused_prefetch = true;
            slot.hinted = true;
            self.policy.on_insert(s as usize, key, self.tick);
            queued = true;
        }
        queued
    }

    /// Drops one pin per slot.
    pub fn unpin(&mut self, slots: &[SlotId]) {
        for &s in slots {
            let slot = &mut self.slots[s as usize];
            debug_assert!(slot.pins > 0, "unpin of an unpinned slot");
            slot.pins = slot.pins.saturating_sub(1);
            if slot.pins == 0 && matches!(slot.state, SlotState::Failed(_)) {
                slot.state = SlotState::Free;
                self.free_slots.push(s);
                self.slot_freed = true;
            }
        }
    }

    /// Whether reads were queued (new loads, promotions) since the last call: whoever queued
    /// them must wake the driver.
    pub fn take_io_queued(&mut self) -> bool {
        std::mem::take(&mut self.io_queued)
    }

    /// Whether a slot became free since the last call (a cancelled prefetch drained, a failed
    /// slot lost its last pin): acquires waiting for a slot must then be woken to retry.
    pub fn take_slot_freed(&mut self) -> bool {
        std::mem::take(&mut self.slot_freed)
    }

    /// Whether every slot is ready; the first failure as an error.
    pub fn check_ready(&self, slots: &[SlotId]) -> Option<Result<()>> {
        let mut all = true;
        for &s in slots {
            match &self.slots[s as usize].state {
                SlotState::Ready => {}
                SlotState::Failed(f) => return Some(Err(f.to_error())),
                _ => all = false,
            }
        }
        all.then_some(Ok(()))
    }

    /// The payload bytes of a ready slot: pointer and length.
    pub fn slot_payload(&self, s: SlotId) -> (*const u8, usize) {
        let slot = &self.slots[s as usize];
        let len = self.layout.get(slot.key).map(|l| l.len).unwrap_or(0) as usize;
        (self.arena.slot_ptr(s as usize), len)
    }

    /// The key a slot holds.
    pub fn slot_key(&self, s: SlotId) -> ExpertKey {
        self.slots[s as usize].key
    }

    /// Adds waiting time to a layer's stall counter.
    pub fn record_stall(&mut self, layer: u32, nanos: u64) {
        if let Some(m) = self.layer_metrics.get_mut(layer as usize) {
            m.stall_ns += nanos;
            m.stalled_acquires += 1;
        }
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let mut depth = self.depth;
        depth.in_flight = self.ops_in_flight as u64;
        MetricsSnapshot {
            layers: self.layer_metrics.clone(),
            depth,
        }
    }

    /// A one-line-per-slot dump of the cache and queues, for diagnostics.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "ops in flight {}, prefetch ops {} bytes {}, demand queue {:?}, prefetch queue {:?}, retries {}\n",
            self.ops_in_flight,
            self.prefetch_ops_in_flight,
            self.prefetch_bytes_in_flight,
            self.demand_queue,
            self.prefetch_queue,
            self.retries.len()
        );
        for (i, s) in self.slots.iter().enumerate() {
            let state = match &s.state {
                SlotState::Free => "free".to_string(),
                SlotState::Ready => "ready".to_string(),
                SlotState::Failed(_) => "failed".to_string(),
                SlotState::Loading(id) => match &self.loads[*id] {
                    Some(l) => format!(
                        "loading#{id} {:?} issued {}/{} outstanding {} cancelled {}",
                        l.purpose, l.issued, l.total, l.outstanding, l.cancelled
                    ),
                    None => format!("loading#{id} MISSING"),
                },
            };
            out += &format!(
                "slot {i}: L{} E{} pins {} {state} unused_prefetch {} stale {} hinted {}\n",
                s.key.layer, s.key.expert, s.pins, s.unused_prefetch, s.stale, s.hinted
            );
        }
        out
    }

    /// Bytes queued and not yet issued to the device (demand and prefetch loads), plus the
    /// prefetch bytes in flight: the device's backlog before a new read would start.
    pub fn backlog_bytes(&self) -> u64 {
        let queued: u64 = self
            .demand_queue
            .iter()
            .chain(&self.prefetch_queue)
            .filter_map(|&id| self.loads[id].as_ref())
            .filter(|l| !l.cancelled)
            .map(|l| l.total - l.issued.min(l.total))
            .sum();
        queued + self.prefetch_bytes_in_flight
    }

    /// Whether the eviction policy uses [`note_next_use`](Self::note_next_use).
    pub fn wants_next_use(&self) -> bool {
        self.policy.wants_next_use()
    }

    /// Hands the eviction policy the expected wait, per expert of `layer`, in the layer's
    /// demands until it is routed to again (see [`crate::cache::NextUse`]).
    pub fn note_next_use(&mut self, layer: u32, waits: &[f32]) {
        if layer < self.layout.num_layers() {
            self.policy.note_next_use(layer, waits);
        }
    }

    /// Whether `key` is cached and ready (for tests and the simulator).
    pub fn is_ready(&self, key: ExpertKey) -> bool {
        self.layout.get(key).is_ok() && {
            let s = self.slot_of[self.key_index(key)];
            s != NO_SLOT && matches!(self.slots[s as usize].state, SlotState::Ready)
        }
    }
}
