//! The ring of GPU expert slots: expert records copied from I/O buffers into storage
//! buffers, kept resident by least-recent use, so that a record already on the GPU (used
//! recently, or staged ahead while the previous layer computed) is not uploaded again.
//!
//! A ring larger than one storage binding (1 GiB on many adapters) is several buffers, each
//! at most one binding: slot `s` lies in buffer `s / slots_per_buffer`, and a layer's experts
//! are dispatched once per buffer they lie in.
//!
//! Host bytes are copied with `Queue::write_buffer`, which takes its own copy before returning:
//! the caller's buffer (an io-sched slot) can be released at once. wgpu orders the copy after
//! every earlier submission that used the slot and before the next one, provided the command
//! encoder that still reads the slot's old contents is submitted first — the ring tells its
//! caller when that is needed (`Placement::flush_first`).

use super::tensor::MatRef;
use crate::backend::{ExpertId, WeightView};
use crate::error::{BackendError, Result};
use crate::quant::MatrixLayout;
use std::collections::HashMap;

/// Alignment of each tensor inside a slot (storage offsets on every adapter).
const TENSOR_ALIGN: u64 = 256;

/// Where (gate, up, down) lie inside one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotShape {
    layouts: [MatrixLayout; 3],
    offsets: [u64; 3],
    bytes: u64,
}

impl SlotShape {
    fn of(views: &[WeightView<'_>; 3]) -> Self {
        let mut offsets = [0u64; 3];
        let mut at = 0u64;
        for (o, v) in offsets.iter_mut().zip(views) {
            *o = at;
            at += (v.layout().total as u64).div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        }
        Self {
            layouts: views.map(|v| *v.layout()),
            offsets,
            bytes: at,
        }
    }
}

/// Counters of the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Slots in the ring.
    pub slots: u64,
    /// Bytes of one slot.
    pub slot_bytes: u64,
    /// Records found resident when a layer computed.
    pub resident_hits: u64,
    /// Of those, records that were staged ahead and not used before.
    pub staged_hits: u64,
    /// Records uploaded when a layer computed (on the critical path).
    pub demand_uploads: u64,
    /// Records uploaded ahead by `stage_expert`.
    pub staged_uploads: u64,
    /// Bytes uploaded in all.
    pub upload_bytes: u64,
    /// Nanoseconds spent in `write_buffer` (host copies into wgpu's staging memory).
    pub upload_ns: u64,
}

impl RingStats {
    /// Adds the traffic counters of a ring this one replaces.
    pub(crate) fn carry(&mut self, old: &RingStats) {
        self.resident_hits += old.resident_hits;
        self.staged_hits += old.staged_hits;
        self.demand_uploads += old.demand_uploads;
        self.staged_uploads += old.staged_uploads;
        self.upload_bytes += old.upload_bytes;
        self.upload_ns += old.upload_ns;
    }
}

/// Where a record went.
pub(crate) struct Placement {
    /// Slot index.
    pub slot: usize,
    /// The record is not there yet: write these (offset in the slot's buffer, bytes).
    pub writes: Option<[(u64, usize); 3]>,
    /// The slot held a record used by commands not yet submitted: submit them first.
    pub flush_first: bool,
}

/// The ring's buffers and bookkeeping.
pub(crate) struct ExpertRing {
    bufs: Vec<::wgpu::Buffer>,
    /// Slots in each buffer (the last may hold fewer).
    per_buf: usize,
    shape: SlotShape,
    owner: Vec<Option<ExpertId>>,
    slot_of: HashMap<ExpertId, usize>,
    last_use: Vec<u64>,
    /// Encoder generation that last read each slot.
    read_in: Vec<u64>,
    /// Whether a slot's record was staged and has not been used yet.
    staged: Vec<bool>,
    tick: u64,
    pub stats: RingStats,
}

impl ExpertRing {
    /// A ring of as many slots of `views`' shape as fit in `bytes`, in buffers of at most
    /// `max_binding` bytes each.
    pub fn new(
        device: &::wgpu::Device,
        views: &[WeightView<'_>; 3],
        bytes: u64,
        max_binding: u64,
    ) -> Result<Self> {
        let shape = SlotShape::of(views);
        let per_buf = (max_binding / shape.bytes.max(1)) as usize;
        if per_buf == 0 {
            return Err(BackendError::Gpu {
                op: "expert ring",
                reason: format!(
                    "an expert record of {} bytes is larger than one storage binding ({max_binding} bytes) of this adapter",
                    shape.bytes
                ),
            });
        }
        let slots = (bytes / shape.bytes.max(1)) as usize;
        if slots < 2 {
            return Err(BackendError::Gpu {
                op: "expert ring",
                reason: format!(
                    "{bytes} bytes of expert slots hold {slots} records of {} bytes; need at least 2: raise WgpuConfig::expert_ring_bytes (`flashmoe generate --gpu-ring`)",
                    shape.bytes
                ),
            });
        }
        let bufs = (0..slots.div_ceil(per_buf))
            .map(|b| {
                device.create_buffer(&::wgpu::BufferDescriptor {
                    label: Some("expert ring"),
                    size: (slots - b * per_buf).min(per_buf) as u64 * shape.bytes,
                    usage: ::wgpu::BufferUsages::STORAGE | ::wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        Ok(Self {
            bufs,
            per_buf,
            shape,
            owner: vec![None; slots],
            slot_of: HashMap::new(),
            last_use: vec![0; slots],
            read_in: vec![u64::MAX; slots],
            staged: vec![false; slots],
            tick: 0,
            stats: RingStats {
                slots: slots as u64,
                slot_bytes: shape.bytes,
                ..RingStats::default()
            },
        })
    }

    /// Slots in the ring.
    pub fn slots(&self) -> usize {
        self.owner.len()
    }

    /// The index of the buffer that holds `slot`.
    pub fn buffer_of(&self, slot: usize) -> usize {
        slot / self.per_buf
    }

    /// Buffer `i` of the ring.
    pub fn buffer(&self, i: usize) -> &::wgpu::Buffer {
        &self.bufs[i]
    }

    /// Offset of `slot`'s first byte in its buffer.
    fn base(&self, slot: usize) -> u64 {
        (slot % self.per_buf) as u64 * self.shape.bytes
    }

    /// Checks that `views` have the shape of this ring's slots.
    pub fn check_shape(&self, views: &[WeightView<'_>; 3]) -> Result<()> {
        let got = SlotShape::of(views);
        if got == self.shape {
            Ok(())
        } else {
            Err(BackendError::Shape {
                op: "expert ring",
                what: "expert record bytes",
                expected: self.shape.bytes as usize,
                got: got.bytes as usize,
            })
        }
    }

    /// Finds or assigns a slot for `id`, never one in `keep` (the other experts of the same
    /// layer); `pending` is the generation of the encoder being recorded. `staging` says
    /// whether this is an upload ahead of use.
    pub fn place(
        &mut self,
        id: ExpertId,
        keep: &[usize],
        pending: u64,
        staging: bool,
    ) -> Result<Placement> {
        self.tick += 1;
        if let Some(&s) = self.slot_of.get(&id) {
            self.last_use[s] = self.tick;
            if !staging {
                self.stats.resident_hits += 1;
                if std::mem::take(&mut self.staged[s]) {
                    self.stats.staged_hits += 1;
                }
            }
            return Ok(Placement {
                slot: s,
                writes: None,
                flush_first: false,
            });
        }
        let victim = (0..self.slots())
            .filter(|s| !keep.contains(s))
            .min_by_key(|&s| (self.owner[s].is_some(), self.last_use[s]))
            .ok_or(BackendError::Gpu {
                op: "expert ring",
                reason: format!(
                    "all {} slots are needed by one layer: raise WgpuConfig::expert_ring_bytes (`flashmoe generate --gpu-ring`)",
                    self.slots()
                ),
            })?;
        if let Some(old) = self.owner[victim].take() {
            self.slot_of.remove(&old);
        }
        self.owner[victim] = Some(id);
        self.slot_of.insert(id, victim);
        self.last_use[victim] = self.tick;
        self.staged[victim] = staging;
        if staging {
            self.stats.staged_uploads += 1;
        } else {
            self.stats.demand_uploads += 1;
        }
        let base = self.base(victim);
        let writes = [0, 1, 2].map(|i| (base + self.shape.offsets[i], self.shape.layouts[i].total));
        Ok(Placement {
            slot: victim,
            writes: Some(writes),
            flush_first: self.read_in[victim] == pending,
        })
    }

    /// Marks `slot` as read by the encoder of generation `pending`.
    pub fn mark_read(&mut self, slot: usize, pending: u64) {
        self.read_in[slot] = pending;
    }

    /// The matrices of the record in `slot`, at offsets in its buffer.
    pub fn mats(&self, slot: usize) -> Result<[MatRef; 3]> {
        let base = self.base(slot);
        let m = |i: usize| MatRef::at(base + self.shape.offsets[i], &self.shape.layouts[i]);
        Ok([m(0)?, m(1)?, m(2)?])
    }

    /// Forgets every record (their bytes may be reused for other ids).
    pub fn clear(&mut self) {
        self.owner.iter_mut().for_each(|o| *o = None);
        self.slot_of.clear();
    }
}
