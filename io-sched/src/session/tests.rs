//! The session's policy against a fake I/O: no threads, no clock.

use super::*;
use crate::predictor::{Candidate, NoPredictor, Scores, Temporal};

/// Records what it is asked; `cached` experts count as ready; fixed bandwidth.
struct FakeIo {
    layers: u32,
    slots: usize,
    record: u64,
    bytes_per_ns: f64,
    cached: Vec<ExpertKey>,
    log: Vec<String>,
    /// `Some`: the eviction policy wants next-use waits; they are logged here.
    next_use: Option<Vec<(u32, Vec<f32>)>>,
    /// The clock, set by the test (`None`: clockless).
    now: Option<u64>,
}

impl FakeIo {
    fn new(layers: u32, slots: usize) -> Self {
        Self {
            layers,
            slots,
            record: 1000,
            bytes_per_ns: 0.0,
            cached: Vec::new(),
            log: Vec::new(),
            next_use: None,
            now: None,
        }
    }
}

impl SessionIo for FakeIo {
    type Pending = u32;
    type Guard = Vec<u32>;
    fn begin(&mut self, layer: u32, experts: &[u32]) -> Result<u32> {
        self.log.push(format!("begin {layer} {experts:?}"));
        Ok(layer)
    }
    fn hint(&mut self, layer: u32, candidates: &[Candidate]) {
        let e: Vec<u32> = candidates.iter().map(|c| c.expert).collect();
        self.log.push(format!("hint {layer} {e:?}"));
    }
    fn wait(&mut self, layer: u32) -> Result<Vec<u32>> {
        self.log.push(format!("wait {layer}"));
        Ok(vec![layer])
    }
    fn ready(&mut self, layer: u32, experts: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let ids: Vec<u32> = experts
            .iter()
            .copied()
            .filter(|&e| self.cached.contains(&ExpertKey::new(layer, e)))
            .collect();
        (ids.clone(), ids)
    }
    fn is_cached(&self, key: ExpertKey) -> bool {
        self.cached.contains(&key)
    }
    fn bytes_per_ns(&self) -> f64 {
        self.bytes_per_ns
    }
    fn slots(&self) -> usize {
        self.slots
    }
    fn record_bytes(&self) -> u64 {
        self.record
    }
    fn layers(&self) -> u32 {
        self.layers
    }
    fn experts(&self) -> u32 {
        8
    }
    fn now_ns(&self) -> Option<u64> {
        self.now
    }
    fn wants_next_use(&self) -> bool {
        self.next_use.is_some()
    }
    fn note_next_use(&mut self, layer: u32, waits: &[f32]) {
        if let Some(v) = self.next_use.as_mut() {
            v.push((layer, waits.to_vec()));
        }
    }
}

/// Predicts fixed candidates for the next two layers.
struct Fixed(Vec<(u32, Vec<(u32, f32)>)>);

impl crate::predictor::Predictor for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }
    fn observe(&mut self, _layer: u32, _experts: &[u32]) {}
    fn predict(&mut self, _layer: u32, _h: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        out.clear();
        for (layer, c) in &self.0 {
            out.push(LayerPrediction {
                layer: *layer,
                tokens_ahead: 0,
                candidates: c
                    .iter()
                    .take(max)
                    .map(|&(expert, confidence)| Candidate { expert, confidence })
                    .collect(),
            });
        }
    }
}

#[test]
fn cost_aware_hints_what_pays_likeliest_first_and_always_the_cached() {
    // Reads take 1000 ns (1000-byte records at 1 byte/ns); the window is 2500 ns per layer and
    // layer 0's demand reads two records (2000 ns): layer 1's deadline leaves no idle time,
    // layer 2's leaves 3000 ns (three reads).
    let mut io = FakeIo::new(4, 32);
    io.bytes_per_ns = 1.0;
    io.cached.push(ExpertKey::new(1, 3));
    let fixed = Fixed(vec![
        (1, vec![(0, 0.9), (1, 0.6), (2, 0.3), (3, 0.05)]),
        (2, vec![(4, 0.95), (5, 0.2), (6, 0.15)]),
    ]);
    let cfg = SessionConfig::new(2)
        .with_horizon(2)
        .over_fetch(4, 0.0)
        .idle_window_ns(2500.0)
        .cost_aware(true);
    let mut s = Session::new(io, cfg, Box::new(fixed));
    s.demand(0, &[6, 7]).unwrap();
    // Layer 1: 0.9 and 0.6 pay though the device is busy, 0.3 does not; 3 is cached (free).
    // Layer 2: 4 fits in the idle time; 5 and 6 would too at p >= 0.1, but 4 and layer 1's two
    // reads already took the 3000 ns before layer 2's deadline.
    assert_eq!(
        s.io().log,
        ["begin 0 [6, 7]", "hint 1 [0, 1, 3]", "hint 2 [4]", "wait 0"]
    );
}

#[test]
fn the_eviction_policy_gets_next_use_waits_when_it_wants_them() {
    let mut io = FakeIo::new(3, 16);
    io.next_use = Some(Vec::new());
    let mut s = Session::new(
        io,
        SessionConfig::new(2),
        Box::new(crate::predictor::Blend::new(3, 8)),
    );
    for _ in 0..3 {
        for l in 0..3 {
            s.demand(l, &[l, l + 1]).unwrap();
        }
    }
    let fed = s.io().next_use.as_ref().unwrap();
    // Every demand feeds its own layer (history) and the predicted one.
    let last: Vec<u32> = fed.iter().rev().take(2).map(|(l, _)| *l).collect();
    assert_eq!(
        last,
        [0, 2],
        "layer 2's demand: layer 2, then layer 0 of the next token"
    );
    let (_, p) = fed.iter().rev().find(|(l, _)| *l == 2).unwrap();
    assert!(
        p[2] < p[7] && p[3] < p[7],
        "routed experts are expected back sooner: {p:?}"
    );
    // A policy that does not want them is not fed (no cost).
    let mut plain = Session::new(
        FakeIo::new(3, 16),
        SessionConfig::new(2),
        Box::new(crate::predictor::Blend::new(3, 8)),
    );
    plain.demand(0, &[0, 1]).unwrap();
    assert!(plain.io().next_use.is_none());
}

fn scores_session(io: FakeIo, cfg: SessionConfig) -> Session<FakeIo> {
    let layers = io.layers;
    Session::new(io, cfg.record_calls(true), Box::new(Scores::new(layers, 8)))
}

const SCORES: [f32; 8] = [0.05, 0.3, 0.02, 0.2, 0.15, 0.14, 0.1, 0.04];

#[test]
fn demand_is_queued_then_the_next_layer_hinted_then_waited_on() {
    let mut s = scores_session(FakeIo::new(3, 16), SessionConfig::new(2));
    s.scores(1, &SCORES);
    let g = s.demand(0, &[4, 5]).unwrap();
    assert_eq!(g, [0]);
    assert_eq!(
        s.io().log,
        ["begin 0 [4, 5]", "hint 1 [1, 3]", "wait 0"],
        "demand, then the hint for L+1, then the wait"
    );
    assert_eq!(
        s.calls(),
        [
            Call::Demand {
                layer: 0,
                experts: vec![4, 5]
            },
            Call::Hint {
                layer: 1,
                experts: vec![1, 3]
            },
            Call::Wait { layer: 0 },
        ]
    );
    // Layer 1's scores are stale once it is demanded: nothing to hint for layer 2.
    s.demand(1, &[1, 3]).unwrap();
    assert_eq!(s.io().log[3..], ["begin 1 [1, 3]", "wait 1"]);
    assert_eq!(s.stats().hinted, 2);
    assert_eq!(s.stats().demands, 2);
}

#[test]
fn hints_are_capped_to_what_fits_beside_one_layers_demand() {
    // 5 slots, top 2: room for 3 hinted, though 6 were asked.
    let mut s = scores_session(FakeIo::new(3, 5), SessionConfig::new(2).with_per_layer(6));
    assert_eq!(s.per_layer(), 3);
    s.scores(1, &SCORES);
    s.demand(0, &[0, 2]).unwrap();
    assert_eq!(s.io().log[1], "hint 1 [1, 3, 4]");
    // Two layers ahead share the room; a cache of exactly top_k slots hints nothing.
    let two = scores_session(FakeIo::new(3, 5), SessionConfig::new(2).with_horizon(2));
    assert_eq!(two.per_layer(), 1);
    let none = scores_session(FakeIo::new(3, 2), SessionConfig::new(2));
    assert_eq!(none.per_layer(), 0);
}

#[test]
fn far_scores_hint_two_layers_ahead_after_the_next_one() {
    let mut s = scores_session(FakeIo::new(4, 32), SessionConfig::new(2).with_horizon(2));
    s.scores(1, &SCORES);
    let mut far = SCORES;
    far.reverse();
    s.scores(2, &far);
    s.demand(0, &[0, 1]).unwrap();
    assert_eq!(
        s.io().log,
        ["begin 0 [0, 1]", "hint 1 [1, 3]", "hint 2 [6, 4]", "wait 0"]
    );
}

#[test]
fn over_fetch_takes_near_ties_only_while_the_device_would_idle() {
    // Near-ties of the 2nd score (0.2): 0.15 and 0.14 pass a 0.5 tie rule, 0.1 does too.
    let cfg = SessionConfig::new(2).over_fetch(3, 0.5);
    let mut s = scores_session(FakeIo::new(3, 32), cfg.clone());
    s.scores(1, &SCORES);
    s.demand(0, &[0, 2]).unwrap();
    assert_eq!(
        s.io().log[1],
        "hint 1 [1, 3, 4, 5, 6]",
        "unbounded: every tie"
    );

    // A 3000 ns window at 1 byte/ns moves 3 records of 1000 bytes; the 2 base candidates
    // not cached take 2 of them: 1 extra.
    let mut io = FakeIo::new(3, 32);
    io.bytes_per_ns = 1.0;
    let mut s = scores_session(io, cfg.clone().idle_window_ns(3000.0));
    s.scores(1, &SCORES);
    s.demand(0, &[0, 2]).unwrap();
    assert_eq!(s.io().log[1], "hint 1 [1, 3, 4]");

    // With both base candidates cached, all 3 records of the window go to extras.
    let mut io = FakeIo::new(3, 32);
    io.bytes_per_ns = 1.0;
    io.cached = vec![ExpertKey::new(1, 1), ExpertKey::new(1, 3)];
    let mut s = scores_session(io, cfg.idle_window_ns(3000.0));
    s.scores(1, &SCORES);
    s.demand(0, &[0, 2]).unwrap();
    assert_eq!(s.io().log[1], "hint 1 [1, 3, 4, 5, 6]");
}

#[test]
fn the_idle_window_is_measured_between_one_layers_bytes_and_the_next_demand() {
    let cfg = SessionConfig::new(2)
        .over_fetch(3, 0.5)
        .measure_idle_window(true);
    let mut io = FakeIo::new(3, 32);
    io.bytes_per_ns = 1.0;
    io.now = Some(0);
    let mut s = scores_session(io, cfg.clone());
    // No sample yet: unbounded, every near-tie.
    s.scores(1, &SCORES);
    s.demand(0, &[0, 2]).unwrap();
    assert_eq!(s.io().log[1], "hint 1 [1, 3, 4, 5, 6]");
    assert_eq!(s.idle_window(), None);
    // Layer 0's bytes came at 0, layer 1 is demanded at 3000: a 3000 ns window, which holds
    // the 2 base candidates and 1 extra (as a set window of 3000 does).
    s.io_mut().now = Some(3000);
    s.scores(2, &SCORES);
    s.demand(1, &[0, 2]).unwrap();
    assert_eq!(s.idle_window(), Some(3000.0));
    assert_eq!(s.io().log.last().unwrap(), "wait 1");
    assert!(
        s.io().log.contains(&"hint 2 [1, 3, 4]".to_string()),
        "{:?}",
        s.io().log
    );
    // The next gap, 1000, moves the running mean by a tenth of the difference.
    s.io_mut().now = Some(4000);
    s.demand(2, &[0, 2]).unwrap();
    assert_eq!(s.idle_window(), Some(2800.0));
    // Across a token's end (layer 2, then layer 0: the LM head in between) there is no sample.
    s.io_mut().now = Some(1_000_000);
    s.demand(0, &[0, 2]).unwrap();
    assert_eq!(s.idle_window(), Some(2800.0));

    // A clockless I/O keeps the window set.
    let mut s = scores_session(FakeIo::new(3, 32), cfg.idle_window_ns(500.0));
    s.demand(0, &[0, 2]).unwrap();
    s.demand(1, &[0, 2]).unwrap();
    assert_eq!(s.idle_window(), Some(500.0));
}

#[test]
fn a_routing_predictor_hints_from_what_it_observed() {
    let mut s = Session::new(
        FakeIo::new(2, 16),
        SessionConfig::new(2),
        Box::new(Temporal::new(2, 8)),
    );
    s.demand(0, &[1, 2]).unwrap();
    s.demand(1, &[3, 4]).unwrap();
    // Token 2, layer 0: temporal predicts layer 1's experts of the previous token.
    s.demand(0, &[1, 2]).unwrap();
    assert!(
        s.io().log.contains(&"hint 1 [3, 4]".to_string()),
        "{:?}",
        s.io().log
    );
    let mut none = Session::new(
        FakeIo::new(2, 16),
        SessionConfig::new(2),
        Box::new(NoPredictor),
    );
    none.demand(0, &[1, 2]).unwrap();
    assert_eq!(none.io().log, ["begin 0 [1, 2]", "wait 0"]);
    assert!(none.calls().is_empty(), "no log unless asked");
}

#[test]
fn stage_pins_only_what_is_cached_and_is_logged() {
    let mut io = FakeIo::new(2, 16);
    io.cached = vec![ExpertKey::new(1, 5)];
    let mut s = scores_session(io, SessionConfig::new(2));
    let (ids, _g) = s.stage(1, &[5, 6]);
    assert_eq!(ids, [5]);
    assert_eq!(
        s.calls(),
        [Call::Stage {
            layer: 1,
            experts: vec![5, 6]
        }]
    );
}

/// Every group of a union demand, as (experts, the fake guard's layer).
fn drain(s: &mut Session<FakeIo>, d: &mut UnionDemand) -> Vec<Vec<u32>> {
    let mut groups = Vec::new();
    while let Some((ids, guard)) = s.next_group(d).unwrap() {
        assert_eq!(guard, vec![d.layer()]);
        groups.push(ids);
    }
    groups
}

#[test]
fn a_union_streams_in_groups_cached_first_each_next_group_hinted_after_its_demand() {
    // 6 slots: groups of at most 3, one computing while the next is read.
    let mut io = FakeIo::new(2, 6);
    io.cached = vec![ExpertKey::new(0, 6), ExpertKey::new(0, 2)];
    let cfg = SessionConfig::new(2).record_calls(true);
    let mut s = Session::new(io, cfg, Box::new(NoPredictor));
    let mut d = s.demand_union(0, &[1, 2, 3, 4, 5, 6, 7], Some((1, &[5, 0, 3, 7])));
    assert_eq!(d.order(), &[2, 6, 1, 3, 4, 5, 7]);
    assert_eq!(d.group_size(), 3);
    let groups = drain(&mut s, &mut d);
    assert_eq!(groups, vec![vec![2, 6, 1], vec![3, 4, 5], vec![7]]);
    assert_eq!(
        s.io().log,
        vec![
            "begin 0 [2, 6, 1]",
            "hint 0 [3, 4, 5]",
            "wait 0",
            "begin 0 [3, 4, 5]",
            "hint 0 [7]",
            "wait 0",
            "begin 0 [7]",
            // The last group hints the next layer's pre-gate union (one group of it).
            "hint 1 [5, 0, 3]",
            "wait 0",
        ]
    );
    // The next layer takes what was prefetched for it first, then the cached, then misses.
    s.io_mut().cached = vec![ExpertKey::new(1, 4)];
    let d = s.demand_union(1, &[0, 1, 3, 4], None);
    assert_eq!(d.order(), &[0, 3, 4, 1]);
    let st = s.stats();
    assert_eq!(
        (st.unions, st.union_experts, st.union_groups, st.demands),
        (2, 11, 3, 3)
    );
    assert_eq!((st.hint_calls, st.hinted), (3, 7));
}

#[test]
fn a_union_in_a_cache_of_one_group_is_never_read_ahead() {
    // 4 slots and groups of 16 asked: groups of 2 (half the cache), each hinting the next.
    let cfg = SessionConfig::new(2).with_union_group(16);
    let mut s = Session::new(FakeIo::new(2, 4), cfg, Box::new(NoPredictor));
    let mut d = s.demand_union(0, &[0, 1, 2, 3, 4], None);
    assert_eq!(drain(&mut s, &mut d), vec![vec![0, 1], vec![2, 3], vec![4]]);
    assert_eq!(s.stats().hinted, 3);
    // One slot: one record at a time and no hints (nothing could be read ahead).
    let mut s = Session::new(
        FakeIo::new(2, 1),
        SessionConfig::new(1),
        Box::new(NoPredictor),
    );
    let mut d = s.demand_union(0, &[3, 1], Some((1, &[0])));
    assert_eq!(drain(&mut s, &mut d), vec![vec![3], vec![1]]);
    assert!(s.io().log.iter().all(|l| !l.starts_with("hint")));
    // An empty union has no group.
    let mut d = s.demand_union(0, &[], None);
    assert!(s.next_group(&mut d).unwrap().is_none());
}
