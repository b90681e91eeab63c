//! Eviction policies: which unpinned, ready slot gives way when the cache is full.

use crate::layout::ExpertKey;

pub use super::next_use::NextUse;

/// Chooses victims among evictable slots. The core tells it about every access and insert;
/// it answers with a score per slot — the lowest score is evicted first.
pub trait EvictionPolicy: Send {
    /// A short stable name.
    fn name(&self) -> &'static str;
    /// A slot was filled with expert `key` at logical time `now`.
    fn on_insert(&mut self, slot: usize, key: ExpertKey, now: u64);
    /// A slot was used by a demand acquire at logical time `now`.
    fn on_access(&mut self, slot: usize, now: u64);
    /// Lower = evict sooner.
    fn score(&self, slot: usize, now: u64) -> f64;
    /// The real routing of `layer` arrived (the core's `note_routing`). Default: ignore.
    fn on_routing(&mut self, layer: u32) {
        let _ = layer;
    }
    /// Whether the policy uses [`note_next_use`](Self::note_next_use) (so drivers need not
    /// compute the waits for the others).
    fn wants_next_use(&self) -> bool {
        false
    }
    /// Expected waits, per expert of `layer`, in the layer's demands until it is routed to
    /// again (1: at the next; a predictor's [`crate::predictor::Predictor::next_use`]).
    /// Default: ignore.
    fn note_next_use(&mut self, layer: u32, waits: &[f32]) {
        let _ = (layer, waits);
    }
}

/// Which policy a scheduler uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionKind {
    /// Least recently used.
    Lru,
    /// Frequency and recency combined (LRFU: exponentially decayed access count).
    Lfru,
    /// The expert expected to be needed last goes first, from a predictor's probabilities
    /// ([`NextUse`]): an approximation of Belady's MIN.
    NextUse,
}

impl std::str::FromStr for EvictionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lru" => Ok(Self::Lru),
            "lfru" | "lrfu" => Ok(Self::Lfru),
            "next-use" | "nextuse" => Ok(Self::NextUse),
            other => Err(format!(
                "unknown eviction policy {other:?} (expected lru, lfru or next-use)"
            )),
        }
    }
}

impl EvictionKind {
    /// The policy for a cache of `slots` over a `layers × experts` model.
    pub fn build(self, slots: usize, layers: u32, experts: u32) -> Box<dyn EvictionPolicy> {
        match self {
            Self::Lru => Box::new(Lru::new(slots)),
            Self::Lfru => Box::new(Lfru::new(slots, Lfru::DEFAULT_HALF_LIFE)),
            Self::NextUse => Box::new(NextUse::new(slots, layers, experts)),
        }
    }

    /// The name `FromStr` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Lfru => "lfru",
            Self::NextUse => "next-use",
        }
    }
}

/// Least recently used: score = time of last use.
pub struct Lru {
    last: Vec<u64>,
}

impl Lru {
    /// A policy for `slots` slots.
    pub fn new(slots: usize) -> Self {
        Self {
            last: vec![0; slots],
        }
    }
}

impl EvictionPolicy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }
    fn on_insert(&mut self, slot: usize, _key: ExpertKey, now: u64) {
        self.last[slot] = now;
    }
    fn on_access(&mut self, slot: usize, now: u64) {
        self.last[slot] = now;
    }
    fn score(&self, slot: usize, _now: u64) -> f64 {
        self.last[slot] as f64
    }
}

/// LRFU: each access adds 1 to a count that halves every `half_life` ticks, so an expert used
/// often stays even if not used last, and one used long ago fades.
pub struct Lfru {
    crf: Vec<f64>,
    last: Vec<u64>,
    decay_per_tick: f64,
}

impl Lfru {
    /// Half-life in logical ticks (one tick per expert access).
    pub const DEFAULT_HALF_LIFE: f64 = 512.0;

    /// A policy for `slots` slots whose counts halve every `half_life` ticks.
    pub fn new(slots: usize, half_life: f64) -> Self {
        Self {
            crf: vec![0.0; slots],
            last: vec![0; slots],
            decay_per_tick: (0.5f64).powf(1.0 / half_life.max(1.0)),
        }
    }

    fn decayed(&self, slot: usize, now: u64) -> f64 {
        let dt = now.saturating_sub(self.last[slot]) as f64;
        self.crf[slot] * self.decay_per_tick.powf(dt)
    }
}

impl EvictionPolicy for Lfru {
    fn name(&self) -> &'static str {
        "lfru"
    }
    fn on_insert(&mut self, slot: usize, _key: ExpertKey, now: u64) {
        self.crf[slot] = 0.0;
        self.last[slot] = now;
    }
    fn on_access(&mut self, slot: usize, now: u64) {
        self.crf[slot] = self.decayed(slot, now) + 1.0;
        self.last[slot] = now;
    }
    fn score(&self, slot: usize, now: u64) -> f64 {
        self.decayed(slot, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn victim(p: &dyn EvictionPolicy, slots: usize, now: u64) -> usize {
        (0..slots)
            .min_by(|&a, &b| p.score(a, now).total_cmp(&p.score(b, now)))
            .unwrap()
    }

    #[test]
    fn lru_evicts_least_recent() {
        let mut p = Lru::new(3);
        for s in 0..3 {
            p.on_insert(s, ExpertKey::new(0, s as u32), s as u64);
        }
        p.on_access(0, 10);
        assert_eq!(victim(&p, 3, 11), 1);
    }

    #[test]
    fn lfru_keeps_frequent_over_recent() {
        let mut p = Lfru::new(2, 100.0);
        p.on_insert(0, ExpertKey::new(0, 0), 0);
        p.on_insert(1, ExpertKey::new(0, 1), 0);
        for t in 1..20 {
            p.on_access(0, t);
        }
        p.on_access(1, 20);
        assert_eq!(victim(&p, 2, 21), 1, "slot 0 was used 19 times");
        // Long after, slot 0's count has decayed below a fresh single use.
        p.on_access(1, 2000);
        assert_eq!(victim(&p, 2, 2001), 0);
    }
}
