//! Slot allocation, eviction, and starting, promoting and cancelling loads.

use super::{Load, NO_SLOT, Purpose, SchedCore, SlotId, SlotState};
use crate::error::{Error, Result};
use crate::layout::ExpertKey;

impl SchedCore {
    /// A slot for a new load of `purpose`, evicting if needed.
    ///
    /// Demand may evict any ready, unpinned slot and may take the slot of a prefetch that has
    /// not started; prefetch never evicts a live (not yet used) prefetch. `Ok(None)`: nothing
    /// can be had now, but a read in flight will free a slot. `Err`: everything is pinned.
    pub(super) fn take_slot(&mut self, purpose: Purpose) -> Result<Option<SlotId>> {
        if let Some(s) = self.free_slots.pop() {
            return Ok(Some(s));
        }
        if let Some(s) = self.pick_victim(purpose) {
            self.evict(s);
            return Ok(Some(s));
        }
        if purpose == Purpose::Prefetch {
            return Ok(None);
        }
        // Steal from a prefetch that has not read a byte yet, least urgent first.
        let unstarted = self
            .prefetch_queue
            .iter()
            .copied()
            .filter(|&id| {
                self.loads[id]
                    .as_ref()
                    .is_some_and(|l| l.purpose == Purpose::Prefetch && l.issued == 0)
            })
            .min_by(|&a, &b| {
                let (la, lb) = (self.loads[a].as_ref(), self.loads[b].as_ref());
                let ca = la.map_or(0.0, |l| l.confidence);
                let cb = lb.map_or(0.0, |l| l.confidence);
                ca.total_cmp(&cb)
            });
        if let Some(id) = unstarted {
            self.cancel_prefetch(id);
            if let Some(s) = self.free_slots.pop() {
                return Ok(Some(s));
            }
        }
        let waiting = self
            .slots
            .iter()
            .any(|s| s.pins == 0 && matches!(s.state, SlotState::Loading(_)));
        if waiting {
            return Ok(None);
        }
        let pinned = self.slots.iter().filter(|s| s.pins > 0).count();
        Err(Error::Budget(format!(
            "all {} cache slots ({} bytes each) are pinned ({} by acquire guards still held); \
             release guards or raise the budget",
            self.slots.len(),
            self.arena.slot_size(),
            pinned
        )))
    }

    fn pick_victim(&self, purpose: Purpose) -> Option<SlotId> {
        let mut best: Option<(u8, f64, SlotId)> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.pins > 0 || !matches!(slot.state, SlotState::Ready) {
                continue;
            }
            let live = slot.hinted || slot.unused_prefetch;
            if purpose == Purpose::Prefetch && live {
                continue;
            }
            // Stale prefetches first, then by policy, then (demand only) what a live hint names.
            let class = if slot.stale {
                0
            } else if live {
                2
            } else {
                1
            };
            let score = self.policy.score(i, self.tick);
            if best.is_none_or(|(c, sc, _)| (class, score) < (c, sc)) {
                best = Some((class, score, i as SlotId));
            }
        }
        best.map(|(_, _, s)| s)
    }

    fn evict(&mut self, s: SlotId) {
        let slot = &mut self.slots[s as usize];
        let key = slot.key;
        if slot.unused_prefetch {
            let m = &mut self.layer_metrics[key.layer as usize];
            m.prefetch_wasted += 1;
            m.wasted_bytes += self.arena.slot_size() as u64;
        }
        slot.state = SlotState::Free;
        slot.unused_prefetch = false;
        slot.stale = false;
        slot.hinted = false;
        let idx = self.key_index(key);
        self.slot_of[idx] = NO_SLOT;
    }

    /// Maps `key` to slot `s` and queues its read.
    pub(super) fn start_load(&mut self, key: ExpertKey, s: SlotId, purpose: Purpose, conf: f32) {
        let loc = *self.layout.get(key).expect("key checked by caller");
        self.order += 1;
        let load = Load {
            slot: s,
            key,
            purpose,
            confidence: conf,
            file: loc.file,
            base_offset: loc.offset,
            total: loc.read_len(),
            payload: loc.len,
            checksum: loc.checksum,
            issued: 0,
            outstanding: 0,
            cancelled: false,
            failure: None,
            order: self.order,
            done_ranges: Vec::new(),
            newly_done: None,
            blocks_handed: vec![false; crate::checksum::block_count(loc.len as usize)],
            hashed: false,
            preload: false,
        };
        let id = match self.free_loads.pop() {
            Some(id) => {
                self.loads[id] = Some(load);
                id
            }
            None => {
                self.loads.push(Some(load));
                self.loads.len() - 1
            }
        };
        let slot = &mut self.slots[s as usize];
        slot.key = key;
        slot.state = SlotState::Loading(id);
        slot.pins = 0;
        slot.unused_prefetch = false;
        slot.stale = false;
        slot.hinted = false;
        let idx = self.key_index(key);
        self.slot_of[idx] = s;
        match purpose {
            Purpose::Demand => self.demand_queue.push_back(id),
            Purpose::Prefetch => self.prefetch_queue.push(id),
        }
        self.io_queued = true;
    }

    /// Turns a prefetch into a demand load: its unread bytes go to the front of the line.
    pub(super) fn promote(&mut self, id: usize) {
        let ld = self.loads[id].as_mut().expect("promoted load exists");
        if ld.purpose == Purpose::Demand && !ld.cancelled {
            return;
        }
        ld.purpose = Purpose::Demand;
        ld.cancelled = false;
        let unissued = ld.issued < ld.total;
        self.prefetch_queue.retain(|&x| x != id);
        if unissued && !self.demand_queue.contains(&id) {
            self.demand_queue.push_back(id);
            self.io_queued = true;
        }
        let s = ld.slot;
        self.slots[s as usize].unused_prefetch = false;
    }

    /// Drops a prefetch: freed now if no byte was issued, else left to drain and then freed.
    pub(super) fn cancel_prefetch(&mut self, id: usize) {
        let ld = self.loads[id].as_mut().expect("cancelled load exists");
        if ld.cancelled {
            return;
        }
        ld.cancelled = true;
        let layer = ld.key.layer as usize;
        self.prefetch_queue.retain(|&x| x != id);
        let ld = self.loads[id].as_ref().expect("cancelled load exists");
        // Nothing in flight or queued and chunks left unissued: no completion and no checksum
        // job will come to finish it, so release it now. (Waiting for `issued == 0` leaked the
        // slot of a prefetch cancelled between two of its chunks: it stayed `Loading` forever.)
        // A load with every chunk in may have its checksum being computed: `finish_verify`
        // ends it.
        if ld.outstanding == 0 && ld.issued < ld.total {
            if ld.issued == 0 {
                self.layer_metrics[layer].prefetch_cancelled += 1;
            } else {
                self.layer_metrics[layer].prefetch_wasted += 1;
            }
            self.release_load(id);
        }
    }

    /// Returns a finished load's id to the free list, first removing it from the queues: a
    /// queue must never name a freed id, which a new load (of either purpose) may reuse.
    pub(super) fn retire_load_id(&mut self, id: usize) {
        self.prefetch_queue.retain(|&x| x != id);
        self.demand_queue.retain(|&x| x != id);
        self.free_loads.push(id);
    }

    /// Frees a load that will write no more, and its slot unless pinned.
    pub(super) fn release_load(&mut self, id: usize) {
        let ld = self.loads[id].take().expect("released load exists");
        self.retire_load_id(id);
        if ld.hashed {
            self.ended_hashes.push(ld.order);
        }
        let slot = &mut self.slots[ld.slot as usize];
        debug_assert_eq!(slot.pins, 0, "a cancelled load's slot is never pinned");
        slot.state = SlotState::Free;
        slot.unused_prefetch = false;
        slot.stale = false;
        slot.hinted = false;
        let idx = self.key_index(ld.key);
        if self.slot_of[idx] == ld.slot {
            self.slot_of[idx] = NO_SLOT;
        }
        self.free_slots.push(ld.slot);
        self.slot_freed = true;
    }
}
