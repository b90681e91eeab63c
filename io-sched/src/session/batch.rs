//! The batch demand of a prompt chunk: the **union** of the experts its tokens route to in one
//! layer, acquired in groups that fit the cache, so the union never has to fit the budget at
//! once and compute starts on the first group while the next is read.
//!
//! Per layer a driver calls [`Session::demand_union`] once, then [`Session::next_group`] until
//! it returns `None`, computing on each group and dropping its guard before asking for the
//! next. The policy, all here:
//! - **order**: experts this session prefetched for the layer first (hinted from the previous
//!   layer's pre-gate union; they are in flight or arrived), then those already cached, then
//!   the misses — cached records are computed on while the misses are read;
//! - **groups** of [`SessionConfig::union_group`](super::SessionConfig::union_group) records, at most half the cache: one group
//!   pinned for compute while the next is read into the other half;
//! - **hints**: when a group is queued, the next group of the union is hinted (it reads while
//!   this group computes; its demand then takes over the reads); with the last group, the
//!   next layer's pre-gate union (most probable first, one group of it) is hinted instead.
//!   Hints always go out after the group's demand reads are queued (demand first).

use super::{Call, Session, SessionIo};
use crate::error::Result;
use crate::layout::ExpertKey;
use crate::predictor::Candidate;

/// A union demand in progress: what is left to acquire of one layer's union.
#[derive(Debug, Clone)]
pub struct UnionDemand {
    layer: u32,
    order: Vec<u32>,
    at: usize,
    group: usize,
    current: Vec<u32>,
    next: Option<(u32, Vec<u32>)>,
}

impl UnionDemand {
    /// The layer.
    pub fn layer(&self) -> u32 {
        self.layer
    }

    /// The union in the order it is acquired.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// Records per group.
    pub fn group_size(&self) -> usize {
        self.group
    }

    /// The experts of the group last asked for by [`Session::next_group`] (e.g. to retry its
    /// acquire after a failed read).
    pub fn current(&self) -> &[u32] {
        &self.current
    }

    /// Whether every group has been handed out.
    pub fn is_done(&self) -> bool {
        self.at >= self.order.len()
    }
}

impl<Io: SessionIo> Session<Io> {
    /// Starts the batch demand of `union` (distinct experts of `layer`, as a prompt chunk's
    /// routing needs them); `next` is the next layer's pre-gate union, most probable first,
    /// hinted with the last group. Nothing is read until [`Self::next_group`].
    pub fn demand_union(
        &mut self,
        layer: u32,
        union: &[u32],
        next: Option<(u32, &[u32])>,
    ) -> UnionDemand {
        self.stats.unions += 1;
        self.stats.union_experts += union.len() as u64;
        let prefetched = match self.union_hinted.take() {
            Some((l, ids)) if l == layer => ids,
            other => {
                self.union_hinted = other;
                Vec::new()
            }
        };
        let mut order: Vec<u32> = union
            .iter()
            .copied()
            .filter(|e| prefetched.contains(e))
            .collect();
        let cached = |e: &u32| self.io.is_cached(ExpertKey::new(layer, *e));
        let (mut hits, mut misses) = (Vec::new(), Vec::new());
        for &e in union.iter().filter(|e| !prefetched.contains(e)) {
            if cached(&e) {
                hits.push(e);
            } else {
                misses.push(e);
            }
        }
        order.extend(hits);
        order.extend(misses);
        let group = self.cfg.union_group().min(self.io.slots() / 2).max(1);
        UnionDemand {
            layer,
            order,
            at: 0,
            group,
            current: Vec::new(),
            next: next.map(|(l, ids)| (l, ids.to_vec())),
        }
    }

    /// The next group of `d`: queues its demand reads, hints what follows it (the next group,
    /// or after the last one the next layer's pre-gate union), waits, and returns the group's
    /// experts with the guard over their bytes (in that order). `None` once the union is done.
    pub fn next_group(&mut self, d: &mut UnionDemand) -> Result<Option<(Vec<u32>, Io::Guard)>> {
        if d.is_done() {
            return Ok(None);
        }
        let end = (d.at + d.group).min(d.order.len());
        d.current = d.order[d.at..end].to_vec();
        d.at = end;
        let layer = d.layer;
        self.stats.demands += 1;
        self.stats.union_groups += 1;
        self.log(|| Call::Demand {
            layer,
            experts: d.current.clone(),
        });
        let pending = self.io.begin(layer, &d.current)?;
        // One group pinned, one read ahead: both fit when the cache has two groups' room.
        if 2 * d.group <= self.io.slots() {
            let (hint_layer, ahead): (u32, Vec<u32>) = if !d.is_done() {
                let end = (d.at + d.group).min(d.order.len());
                (layer, d.order[d.at..end].to_vec())
            } else if let Some((l, ids)) = d.next.take() {
                let ids: Vec<u32> = ids.into_iter().take(d.group).collect();
                self.union_hinted = Some((l, ids.clone()));
                (l, ids)
            } else {
                (layer, Vec::new())
            };
            if !ahead.is_empty() {
                let candidates: Vec<Candidate> = ahead
                    .iter()
                    .map(|&expert| Candidate {
                        expert,
                        confidence: 1.0,
                    })
                    .collect();
                self.io.hint(hint_layer, &candidates);
                self.stats.hint_calls += 1;
                self.stats.hinted += candidates.len() as u64;
                self.log(|| Call::Hint {
                    layer: hint_layer,
                    experts: ahead,
                });
            }
        }
        self.log(|| Call::Wait { layer });
        let guard = self.io.wait(pending)?;
        Ok(Some((d.current.clone(), guard)))
    }
}
