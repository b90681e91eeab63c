//! [`NextUse`]: evict the expert expected to be needed last — Belady's MIN with the future
//! replaced by a predictor's expected waits.

use super::EvictionPolicy;
use crate::layout::ExpertKey;

/// The wait, in tokens, an expert gets before any estimate arrives.
const DEFAULT_WAIT: f32 = 10.0;
/// Waits are clamped to at most this many tokens.
const MAX_WAIT: f32 = 1e6;

/// Evicts the slot whose expert is expected to be demanded farthest in the future.
///
/// A slot holding expert `e` of layer `l` is next needed, at the earliest, when `l` runs
/// again: `d` layers after the layer just routed (`1..=layers`). With `w` = the expected
/// number of `l`'s demands until `e` is routed (1: at the next one; from
/// [`EvictionPolicy::note_next_use`], fed by the session from its predictor's
/// [`Predictor::next_use`](crate::predictor::Predictor::next_use)), the expected wait is
/// `d + layers × (w - 1)` layers; the longest wait is evicted first (Belady evicts the
/// longest actual wait: with exact waits this is Belady's choice among the evictable slots).
/// Ties (no estimates yet) go to the least recently used.
///
/// ```
/// use io_sched::cache::{EvictionPolicy, NextUse};
/// use io_sched::ExpertKey;
/// let mut p = NextUse::new(2, 2, 4);
/// p.on_insert(0, ExpertKey::new(1, 0), 1);
/// p.on_insert(1, ExpertKey::new(1, 3), 2);
/// p.on_routing(0);
/// p.note_next_use(1, &[1.2, 5.0, 5.0, 20.0]);
/// // Slot 1 holds the expert layer 1 is expected to need last.
/// assert!(p.score(1, 3) < p.score(0, 3));
/// ```
#[derive(Debug, Clone)]
pub struct NextUse {
    layers: u32,
    experts: u32,
    keys: Vec<ExpertKey>,
    last: Vec<u64>,
    /// `[layer][expert]` expected waits, tokens.
    waits: Vec<f32>,
    /// The layer routed last (`layers - 1` before any).
    current: u32,
}

impl NextUse {
    /// A policy for `slots` slots over a `layers × experts` model.
    pub fn new(slots: usize, layers: u32, experts: u32) -> Self {
        Self {
            layers: layers.max(1),
            experts,
            keys: vec![ExpertKey::new(0, 0); slots],
            last: vec![0; slots],
            waits: vec![DEFAULT_WAIT; layers as usize * experts as usize],
            current: layers.saturating_sub(1),
        }
    }

    /// Expected layers until `key` is demanded again.
    pub fn expected_wait(&self, key: ExpertKey) -> f64 {
        let n = self.layers;
        let d = ((key.layer % n) + n - self.current - 1) % n + 1;
        let i = key.layer as usize * self.experts as usize + key.expert as usize;
        let w = self.waits.get(i).copied().unwrap_or(DEFAULT_WAIT) as f64;
        d as f64 + n as f64 * (w - 1.0)
    }
}

impl EvictionPolicy for NextUse {
    fn name(&self) -> &'static str {
        "next-use"
    }
    fn on_insert(&mut self, slot: usize, key: ExpertKey, now: u64) {
        self.keys[slot] = key;
        self.last[slot] = now;
    }
    fn on_access(&mut self, slot: usize, now: u64) {
        self.last[slot] = now;
    }
    fn score(&self, slot: usize, now: u64) -> f64 {
        // Recency in [0, 0.5): breaks ties without outweighing half a layer of expected wait.
        let recency = 0.5 * self.last[slot] as f64 / (now as f64 + 1.0);
        recency - self.expected_wait(self.keys[slot])
    }
    fn on_routing(&mut self, layer: u32) {
        if layer < self.layers {
            self.current = layer;
        }
    }
    fn wants_next_use(&self) -> bool {
        true
    }
    fn note_next_use(&mut self, layer: u32, waits: &[f32]) {
        if layer >= self.layers {
            return;
        }
        let e = self.experts as usize;
        let row = &mut self.waits[layer as usize * e..(layer as usize + 1) * e];
        for (r, w) in row.iter_mut().zip(waits) {
            // NaN fails the test: no estimate.
            *r = if *w >= 1.0 {
                w.min(MAX_WAIT)
            } else if *w < 1.0 {
                1.0
            } else {
                DEFAULT_WAIT
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn victim(p: &NextUse, slots: usize, now: u64) -> usize {
        (0..slots)
            .min_by(|&a, &b| p.score(a, now).total_cmp(&p.score(b, now)))
            .unwrap()
    }

    #[test]
    fn evicts_the_longest_wait_then_the_farthest_layer() {
        let mut p = NextUse::new(3, 4, 4);
        p.on_insert(0, ExpertKey::new(1, 0), 1);
        p.on_insert(1, ExpertKey::new(1, 1), 2);
        p.on_insert(2, ExpertKey::new(3, 0), 3);
        p.on_routing(0);
        p.note_next_use(1, &[1.1, 20.0, 2.0, 2.0]);
        p.note_next_use(3, &[1.1, 1.1, 1.1, 1.1]);
        assert_eq!(victim(&p, 3, 4), 1, "longest expected wait");
        // Equal waits: the layer that runs again last goes first.
        p.note_next_use(1, &[1.1, 1.1, 2.0, 2.0]);
        assert_eq!(
            victim(&p, 3, 4),
            2,
            "layer 3 is two layers farther than layer 1"
        );
        // Layer 1 just ran: it now runs again last.
        p.on_routing(1);
        let v = victim(&p, 3, 4);
        assert!(v == 0 || v == 1, "{v}");
    }

    #[test]
    fn without_estimates_it_is_lru() {
        let mut p = NextUse::new(3, 1, 4);
        for s in 0..3 {
            p.on_insert(s, ExpertKey::new(0, s as u32), s as u64 + 1);
        }
        p.on_access(0, 10);
        assert_eq!(victim(&p, 3, 11), 1);
    }

    #[test]
    fn bad_estimates_are_ignored() {
        let mut p = NextUse::new(1, 2, 2);
        p.note_next_use(7, &[1.0, 1.0]);
        p.note_next_use(0, &[f32::NAN, f32::INFINITY]);
        p.on_routing(9);
        p.on_insert(0, ExpertKey::new(0, 0), 1);
        p.on_insert(0, ExpertKey::new(0, 1), 1);
        assert!(p.score(0, 2).is_finite());
        p.on_insert(0, ExpertKey::new(0, 0), 1);
        assert!(p.score(0, 2).is_finite());
    }
}
