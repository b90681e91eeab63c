//! Issuing reads (demand first, prefetch under its bounds) and taking their completions
//! (short reads retried, errors kept for every waiter, checksums checked).

use std::io;

use super::{Failure, Purpose, SchedCore, SlotState};
use crate::backend::{Completion, ReadOp};
use crate::checksum::CHECKSUM_BLOCK;
use crate::core::failure::FailureKind;
use crate::layout::RECORD_ALIGN;

/// A byte range of a load waiting to be (re)issued.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingRead {
    pub load: usize,
    pub start: u64,
    pub end: u64,
    pub attempts: u32,
}

/// A read in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpRecord {
    pub read: PendingRead,
    pub purpose: Purpose,
}

/// A checksum the driver must finish outside the lock: the slot stays `Loading` (so nobody
/// else touches it) until [`SchedCore::finish_verify`] is called.
#[derive(Debug, Clone, Copy)]
pub struct VerifyJob {
    pub(crate) load: usize,
    /// The load's unique id, as in [`HashWork::order`].
    pub order: u64,
    pub ptr: *const u8,
    pub len: usize,
}

// SAFETY: the pointer names a slot in `Loading` state that no one writes or reads until
// `finish_verify`; the job only carries it to the thread that computes the checksum.
unsafe impl Send for VerifyJob {}

/// Checksum progress: these checksum blocks of load `order`'s payload (at `ptr`, `len`
/// bytes) are all in and will not be written again, so the driver may hash them now, in any
/// order, while the rest of the record is still being read (see [`crate::checksum`]).
#[derive(Debug, Clone)]
pub struct HashWork {
    pub order: u64,
    pub ptr: *const u8,
    pub len: usize,
    pub blocks: Vec<u32>,
}

// SAFETY: the named blocks of a `Loading` slot have completed; no read in flight covers them
// (retries only re-read bytes not yet completed) and no one else reads the slot until it is
// Ready, which happens only after the driver has finished with them.
unsafe impl Send for HashWork {}

/// What a completion changed.
#[derive(Debug, Default)]
pub struct CompleteOutcome {
    /// A load became ready or failed: wake waiters.
    pub changed: bool,
    /// Blocks of a load's payload that can be hashed now.
    pub hash: Option<HashWork>,
    /// A load's bytes are all in and need their checksum verified.
    pub verify: Option<VerifyJob>,
}

impl SchedCore {
    /// The next read to hand the device, or `None` if nothing may be issued now.
    /// Retries first, then demand reads in arrival order, then the most urgent prefetch —
    /// the latter only while prefetch bytes and ops in flight stay under their bounds.
    pub fn next_op(&mut self, device_slots_free: usize) -> Option<ReadOp> {
        if device_slots_free == 0 {
            return None;
        }
        while let Some(r) = self.retries.pop_front() {
            let Some(ld) = self.loads[r.load].as_ref() else {
                continue;
            };
            let purpose = ld.purpose;
            if ld.failure.is_some() {
                self.loads[r.load].as_mut().expect("checked").outstanding -= 1;
                self.maybe_finish(r.load);
                continue;
            }
            return Some(self.make_op(r, purpose, true));
        }
        while let Some(&id) = self.demand_queue.front() {
            let chunk = self.cfg.demand_chunk as u64;
            match self.take_chunk(id, chunk) {
                Some(r) => return Some(self.make_op(r, Purpose::Demand, false)),
                None => {
                    self.demand_queue.pop_front();
                }
            }
        }
        let chunk = self.cfg.prefetch_chunk as u64;
        let room_bytes = self.prefetch_bytes_in_flight == 0
            || self.prefetch_bytes_in_flight + chunk <= self.cfg.max_prefetch_bytes_in_flight;
        if !room_bytes || self.prefetch_ops_in_flight >= self.cfg.max_prefetch_ops_in_flight {
            return None;
        }
        self.prefetch_queue.retain(|&id| {
            self.loads[id]
                .as_ref()
                .is_some_and(|l| !l.cancelled && l.failure.is_none() && l.issued < l.total)
        });
        let id = self.most_urgent_prefetch()?;
        let r = self.take_chunk(id, chunk)?;
        if self.loads[id].as_ref().is_some_and(|l| l.issued >= l.total) {
            self.prefetch_queue.retain(|&x| x != id);
        }
        Some(self.make_op(r, Purpose::Prefetch, false))
    }

    fn most_urgent_prefetch(&self) -> Option<usize> {
        let n = self.layout.num_layers();
        let cur = self.current_layer;
        self.prefetch_queue.iter().copied().min_by(|&a, &b| {
            let key = |id: usize| {
                let l = self.loads[id].as_ref().expect("queued load exists");
                // Layers ahead of the current one: 0 = next layer.
                let dist = (l.key.layer + n - cur - 1) % n;
                (dist, -l.confidence, l.order)
            };
            let (da, ca, oa) = key(a);
            let (db, cb, ob) = key(b);
            da.cmp(&db).then(ca.total_cmp(&cb)).then(oa.cmp(&ob))
        })
    }

    fn take_chunk(&mut self, id: usize, chunk: u64) -> Option<PendingRead> {
        let ld = self.loads[id].as_mut()?;
        if ld.cancelled || ld.failure.is_some() || ld.issued >= ld.total {
            return None;
        }
        let start = ld.issued;
        let end = (start + chunk).min(ld.total);
        ld.issued = end;
        ld.outstanding += 1;
        Some(PendingRead {
            load: id,
            start,
            end,
            attempts: 0,
        })
    }

    fn make_op(&mut self, r: PendingRead, purpose: Purpose, is_retry: bool) -> ReadOp {
        let ld = self.loads[r.load].as_ref().expect("issued load exists");
        let (file, base, slot) = (ld.file, ld.base_offset, ld.slot);
        let _ = is_retry;
        let len = r.end - r.start;
        let tag = match self.free_ops.pop() {
            Some(t) => {
                self.ops[t] = Some(OpRecord { read: r, purpose });
                t
            }
            None => {
                self.ops.push(Some(OpRecord { read: r, purpose }));
                self.ops.len() - 1
            }
        };
        self.ops_in_flight += 1;
        if purpose == Purpose::Prefetch {
            self.prefetch_ops_in_flight += 1;
            self.prefetch_bytes_in_flight += len;
        }
        self.depth.submits += 1;
        self.depth.depth_sum += self.ops_in_flight as u64;
        self.depth.max_depth = self.depth.max_depth.max(self.ops_in_flight as u64);
        // The slot pointer plus an offset inside the record, which is inside the slot
        // (record read lengths are at most the slot size).
        let buf = self
            .arena
            .slot_ptr(slot as usize)
            .wrapping_add(r.start as usize);
        ReadOp {
            tag: tag as u64,
            file,
            offset: base + r.start,
            len: len as usize,
            buf,
        }
    }

    /// Takes one completion. Tags this core did not issue are ignored (and logged).
    pub fn complete(&mut self, c: Completion) -> CompleteOutcome {
        let tag = c.tag as usize;
        let Some(op) = self.ops.get_mut(tag).and_then(Option::take) else {
            tracing::error!(
                tag = c.tag,
                "completion for a read this scheduler did not issue"
            );
            return CompleteOutcome::default();
        };
        self.free_ops.push(tag);
        let r = op.read;
        let len = r.end - r.start;
        self.ops_in_flight -= 1;
        if op.purpose == Purpose::Prefetch {
            self.prefetch_ops_in_flight -= 1;
            self.prefetch_bytes_in_flight -= len;
        }
        let align = if self.cfg.align_retries {
            RECORD_ALIGN
        } else {
            1
        };
        let ld = self.loads[r.load].as_mut().expect("op's load exists");
        let (key, base) = (ld.key, ld.base_offset);
        let layer = key.layer as usize;
        ld.outstanding -= 1;
        let m = &mut self.layer_metrics[layer];
        match c.result {
            Ok(n) if n as u64 >= len => {
                match op.purpose {
                    _ if ld.preload => m.preload_bytes += len,
                    Purpose::Demand => m.demand_bytes += len,
                    Purpose::Prefetch => m.prefetch_bytes += len,
                }
                if ld.purpose == Purpose::Prefetch && ld.cancelled {
                    m.wasted_bytes += len;
                }
                add_range(&mut ld.done_ranges, r.start, r.end);
                ld.newly_done = Some((r.start, r.end));
            }
            Ok(n) => {
                // Short read: keep what arrived (down to the alignment direct I/O needs for the
                // retry's offset) and read the rest again.
                let good = (n as u64 / align) * align;
                match op.purpose {
                    _ if ld.preload => m.preload_bytes += good,
                    Purpose::Demand => m.demand_bytes += good,
                    Purpose::Prefetch => m.prefetch_bytes += good,
                }
                m.short_read_retries += 1;
                if good > 0 {
                    add_range(&mut ld.done_ranges, r.start, r.start + good);
                    ld.newly_done = Some((r.start, r.start + good));
                }
                let retry = PendingRead {
                    load: r.load,
                    start: r.start + good,
                    end: r.end,
                    attempts: r.attempts + 1,
                };
                if n == 0 || retry.attempts > self.cfg.max_retries {
                    let site = self.site(key, base + retry.start);
                    let err = if n == 0 {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "read returned 0 bytes")
                    } else {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("still short after {} retries", self.cfg.max_retries),
                        )
                    };
                    let ld = self.loads[r.load].as_mut().expect("op's load exists");
                    ld.failure.get_or_insert(Failure::io(site, &err));
                } else {
                    ld.outstanding += 1;
                    self.retries.push_back(retry);
                }
            }
            Err(e) => {
                let retryable = matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                );
                if retryable && r.attempts < self.cfg.max_retries {
                    ld.outstanding += 1;
                    self.retries.push_back(PendingRead {
                        attempts: r.attempts + 1,
                        ..r
                    });
                } else {
                    let site = self.site(key, base + r.start);
                    let ld = self.loads[r.load].as_mut().expect("op's load exists");
                    ld.failure.get_or_insert(Failure::io(site, &e));
                }
            }
        }
        let hash = self.hash_progress(r.load);
        let mut out = self.maybe_finish(r.load);
        out.hash = hash;
        out
    }

    /// Checksum blocks that the latest completion of a load made whole, if checksums are on.
    fn hash_progress(&mut self, id: usize) -> Option<HashWork> {
        let slot_ptr = {
            let ld = self.loads[id].as_ref()?;
            self.arena.slot_ptr(ld.slot as usize) as *const u8
        };
        let ld = self.loads[id].as_mut()?;
        let (start, end) = ld.newly_done.take()?;
        if !self.cfg.verify_checksums || ld.failure.is_some() || ld.cancelled {
            return None;
        }
        let block = CHECKSUM_BLOCK as u64;
        let len = ld.payload;
        if start >= len {
            return None;
        }
        let covered = |a: u64, b: u64| ld.done_ranges.iter().any(|&(s, e)| s <= a && b <= e);
        let mut blocks = Vec::new();
        for b in start / block..end.min(len).div_ceil(block) {
            let (a, z) = (b * block, ((b + 1) * block).min(len));
            if !ld.blocks_handed[b as usize] && covered(a, z) {
                ld.blocks_handed[b as usize] = true;
                blocks.push(b as u32);
            }
        }
        if blocks.is_empty() {
            return None;
        }
        ld.hashed = true;
        Some(HashWork {
            order: ld.order,
            ptr: slot_ptr,
            len: len as usize,
            blocks,
        })
    }

    /// Orders of loads whose running hash will never be finished (cancelled or failed).
    pub fn take_ended_hashes(&mut self, out: &mut Vec<u64>) {
        out.append(&mut self.ended_hashes);
    }

    /// Finishes a load once nothing of it is in flight or queued.
    pub(super) fn maybe_finish(&mut self, id: usize) -> CompleteOutcome {
        let Some(ld) = self.loads[id].as_ref() else {
            return CompleteOutcome::default();
        };
        if ld.outstanding > 0 {
            return CompleteOutcome::default();
        }
        let layer = ld.key.layer as usize;
        if ld.cancelled && ld.failure.is_none() && ld.purpose == Purpose::Prefetch {
            // A stale prefetch finished draining: its bytes were wasted.
            self.layer_metrics[layer].prefetch_wasted += 1;
            self.release_load(id);
            return CompleteOutcome::default();
        }
        if let Some(f) = ld.failure.clone() {
            self.fail_load(id, f);
            return CompleteOutcome {
                changed: true,
                ..CompleteOutcome::default()
            };
        }
        if ld.issued < ld.total {
            return CompleteOutcome::default();
        }
        if self.cfg.verify_checksums {
            let ptr = self.arena.slot_ptr(ld.slot as usize) as *const u8;
            return CompleteOutcome {
                changed: false,
                hash: None,
                verify: Some(VerifyJob {
                    load: id,
                    order: ld.order,
                    ptr,
                    len: ld.payload as usize,
                }),
            };
        }
        self.ready_load(id);
        CompleteOutcome {
            changed: true,
            ..CompleteOutcome::default()
        }
    }

    /// Records the checksum computed for a [`VerifyJob`]; returns whether waiters must wake.
    pub fn finish_verify(&mut self, job: VerifyJob, actual: u64) -> bool {
        let Some(ld) = self.loads[job.load].as_ref() else {
            return false;
        };
        if actual == ld.checksum {
            self.ready_load(job.load);
        } else {
            let site = self.site(ld.key, ld.base_offset);
            let f = Failure {
                site,
                kind: FailureKind::Checksum {
                    expected: ld.checksum,
                    actual,
                },
            };
            self.fail_load(job.load, f);
        }
        true
    }

    fn ready_load(&mut self, id: usize) {
        let ld = self.loads[id].take().expect("finished load exists");
        self.retire_load_id(id);
        let slot = &mut self.slots[ld.slot as usize];
        slot.state = SlotState::Ready;
        slot.unused_prefetch = ld.purpose == Purpose::Prefetch && slot.pins == 0;
        if ld.cancelled {
            // Unreachable for demand loads; a cancelled prefetch is released in maybe_finish.
            slot.stale = true;
        }
    }

    fn fail_load(&mut self, id: usize, f: Failure) {
        let ld = self.loads[id].take().expect("failed load exists");
        self.retire_load_id(id);
        if ld.hashed {
            self.ended_hashes.push(ld.order);
        }
        tracing::warn!(error = %f.to_error(), "expert load failed");
        self.layer_metrics[ld.key.layer as usize].failed_loads += 1;
        let idx = self.key_index(ld.key);
        if self.slot_of[idx] == ld.slot {
            self.slot_of[idx] = super::NO_SLOT;
        }
        let slot = &mut self.slots[ld.slot as usize];
        slot.unused_prefetch = false;
        slot.stale = false;
        slot.hinted = false;
        if slot.pins == 0 {
            slot.state = SlotState::Free;
            self.free_slots.push(ld.slot);
            self.slot_freed = true;
        } else {
            slot.state = SlotState::Failed(Box::new(f));
        }
    }
}

/// Inserts `[start, end)` into sorted, merged, disjoint ranges.
fn add_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let i = ranges.partition_point(|&(_, e)| e < start);
    let mut j = i;
    let (mut s, mut e) = (start, end);
    while j < ranges.len() && ranges[j].0 <= e {
        s = s.min(ranges[j].0);
        e = e.max(ranges[j].1);
        j += 1;
    }
    ranges.splice(i..j, [(s, e)]);
}

#[cfg(test)]
mod tests {
    use super::add_range;

    #[test]
    fn ranges_merge_in_any_order() {
        let mut r = Vec::new();
        add_range(&mut r, 8, 12);
        add_range(&mut r, 0, 4);
        assert_eq!(r, vec![(0, 4), (8, 12)]);
        add_range(&mut r, 4, 8);
        assert_eq!(r, vec![(0, 12)]);
        add_range(&mut r, 20, 24);
        add_range(&mut r, 12, 16);
        assert_eq!(r, vec![(0, 16), (20, 24)]);
    }
}
