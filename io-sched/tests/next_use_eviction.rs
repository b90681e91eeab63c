//! `NextUse` eviction fed by predictors' expected waits, on a cache driven as the scheduler's
//! core drives its policy (the layer's experts pinned while it is demanded, a miss taking a
//! free slot or the lowest-scored evictable one): with the oracle's exact waits it makes
//! Belady's choices (same hits as a brute-force Belady that must cache every miss), and with
//! the blend's learned waits it beats LRU where reuse is periodic.

use io_sched::ExpertKey;
use io_sched::cache::{EvictionPolicy, Lru, NextUse};
use io_sched::predictor::{Blend, Oracle, Predictor};

/// `trace[token][layer]`: a 2-layer model, each layer cycling through `period` disjoint
/// pairs of experts.
fn periodic(tokens: usize, period: u32) -> Vec<Vec<Vec<u32>>> {
    (0..tokens)
        .map(|t| {
            (0..2u32)
                .map(|l| {
                    let base = 2 * ((t as u32 + l) % period);
                    vec![base, base + 1]
                })
                .collect()
        })
        .collect()
}

/// Hits after `warmup` tokens of a cache of `slots` with `policy`, fed by `predictor`'s
/// waits when given.
fn hits(
    trace: &[Vec<Vec<u32>>],
    slots: usize,
    mut policy: Box<dyn EvictionPolicy>,
    mut predictor: Option<Box<dyn Predictor>>,
    warmup: usize,
) -> usize {
    let experts = 8usize;
    let mut cache: Vec<Option<ExpertKey>> = vec![None; slots];
    let mut waits = vec![0.0f32; experts];
    let mut out = Vec::new();
    let (mut now, mut hits) = (0u64, 0usize);
    for (t, token) in trace.iter().enumerate() {
        for (l, routed) in token.iter().enumerate() {
            let l = l as u32;
            if let Some(p) = predictor.as_mut() {
                p.observe(l, routed);
                p.predict(l, 1, 2, &mut out);
                for target in std::iter::once(l).chain(out.iter().map(|o| o.layer)) {
                    if p.next_use(target, &mut waits) {
                        policy.note_next_use(target, &waits);
                    }
                }
            }
            policy.on_routing(l);
            for &e in routed {
                now += 1;
                let key = ExpertKey::new(l, e);
                if let Some(s) = cache.iter().position(|c| *c == Some(key)) {
                    hits += (t >= warmup) as usize;
                    policy.on_access(s, now);
                    continue;
                }
                let pinned = |c: &Option<ExpertKey>| {
                    c.is_some_and(|k| k.layer == l && routed.contains(&k.expert))
                };
                let slot = cache.iter().position(Option::is_none).unwrap_or_else(|| {
                    (0..slots)
                        .filter(|&s| !pinned(&cache[s]))
                        .min_by(|&a, &b| policy.score(a, now).total_cmp(&policy.score(b, now)))
                        .expect("an evictable slot")
                });
                cache[slot] = Some(key);
                policy.on_insert(slot, key, now);
            }
        }
    }
    hits
}

/// Belady's MIN that must cache every miss: the victim is the evictable key used farthest
/// ahead (by demand position), hits counted after `warmup` tokens.
fn belady(trace: &[Vec<Vec<u32>>], slots: usize, warmup: usize) -> usize {
    let layers = trace[0].len();
    let pos = |t: usize, l: usize| t * layers + l;
    let next = |key: ExpertKey, from: usize| -> usize {
        (from + 1..trace.len() * layers)
            .find(|&p| {
                trace[p / layers][p % layers].contains(&key.expert)
                    && p % layers == key.layer as usize
            })
            .unwrap_or(usize::MAX)
    };
    let mut cache: Vec<ExpertKey> = Vec::new();
    let mut hits = 0;
    for (t, token) in trace.iter().enumerate() {
        for (l, routed) in token.iter().enumerate() {
            for &e in routed {
                let key = ExpertKey::new(l as u32, e);
                if cache.contains(&key) {
                    hits += (t >= warmup) as usize;
                    continue;
                }
                if cache.len() == slots {
                    let now = pos(t, l);
                    let victim = (0..slots)
                        .filter(|&s| {
                            !(cache[s].layer == l as u32 && routed.contains(&cache[s].expert))
                        })
                        .max_by_key(|&s| next(cache[s], now))
                        .expect("an evictable slot");
                    cache.swap_remove(victim);
                }
                cache.push(key);
            }
        }
    }
    hits
}

#[test]
fn oracle_waits_make_belady_choices_and_learned_waits_beat_lru() {
    // Period 3 over 6 experts per layer, 10 slots for the 12 records of 2 layers: each pair
    // returns after 12 other demands, so LRU always misses.
    let (tokens, warmup, slots) = (200, 50, 10);
    let trace = periodic(tokens, 3);
    let lru = hits(&trace, slots, Box::new(Lru::new(slots)), None, warmup);
    let best = belady(&trace, slots, warmup);
    let oracle = hits(
        &trace,
        slots,
        Box::new(NextUse::new(slots, 2, 8)),
        Some(Box::new(Oracle::new(trace.clone(), 2, 8))),
        warmup,
    );
    let learned = hits(
        &trace,
        slots,
        Box::new(NextUse::new(slots, 2, 8)),
        Some(Box::new(Blend::new(2, 8))),
        warmup,
    );
    let total = (tokens - warmup) * 2 * 2;
    assert_eq!(
        lru, 0,
        "cyclic reuse farther than LRU's reach: {lru} of {total}"
    );
    assert!(
        best > total / 3,
        "Belady keeps part of the cycle: {best} of {total}"
    );
    assert_eq!(oracle, best, "exact waits: Belady's hits");
    assert!(
        learned > lru,
        "learned waits {learned} vs LRU {lru} of {total}"
    );
    assert!(
        learned * 5 >= best * 4,
        "learned waits {learned} within 0.8x of Belady {best} on a fully periodic trace"
    );
}
