//! The NextUse eviction policy inside the scheduler core: the victim is the unpinned record
//! least likely needed soonest, by the probabilities the session hands it; stale hints go.

mod common;

use std::sync::Arc;

use common::model_image;
use io_sched::backend::Completion;
use io_sched::cache::EvictionKind;
use io_sched::core::{CoreConfig, SchedCore};
use io_sched::{Candidate, ExpertKey};

/// 2 layers x 8 experts, 4 cache slots.
fn core(policy: EvictionKind) -> SchedCore {
    let (layout, _) = model_image(2, 8, 4096);
    let cfg = CoreConfig {
        verify_checksums: false,
        ..CoreConfig::default()
    };
    SchedCore::new(Arc::new(layout), 4 * 4096, policy, cfg).unwrap()
}

fn drain(c: &mut SchedCore) {
    while let Some(op) = c.next_op(8) {
        c.complete(Completion {
            tag: op.tag,
            result: Ok(op.len),
        });
    }
}

/// Demands `experts` of `layer` and completes the reads; returns the pinned slots.
fn demand(c: &mut SchedCore, layer: u32, experts: &[u32]) -> Vec<u32> {
    c.note_routing(layer, experts).unwrap();
    let slots: Vec<u32> = experts
        .iter()
        .map(|&e| c.pin_or_load(ExpertKey::new(layer, e)).unwrap().unwrap())
        .collect();
    drain(c);
    slots
}

fn cached(c: &SchedCore, layer: u32) -> Vec<u32> {
    (0..8)
        .filter(|&e| c.is_ready(ExpertKey::new(layer, e)))
        .collect()
}

#[test]
fn evicts_the_lowest_probability_unpinned_record() {
    let mut c = core(EvictionKind::NextUse);
    assert!(c.wants_next_use());
    let s = demand(&mut c, 0, &[0, 1, 2, 3]);
    // Expert 2 is the least likely at layer 0's next demand, then expert 3.
    c.note_next_use(0, &[0.8, 0.7, 0.01, 0.05, 0.1, 0.1, 0.1, 0.1]);
    // Expert 2 stays pinned; the others are released.
    c.unpin(&[s[0], s[1], s[3]]);
    let t = demand(&mut c, 1, &[5]);
    assert_eq!(cached(&c, 0), [0, 1, 2], "3 went: the lowest unpinned");
    c.unpin(&[s[2]]);
    c.unpin(&t);
    demand(&mut c, 1, &[6]);
    assert_eq!(cached(&c, 0), [0, 1], "then 2, unpinned now");
    assert_eq!(cached(&c, 1), [5, 6]);
}

#[test]
fn lru_at_the_same_point_evicts_by_age_instead() {
    let mut c = core(EvictionKind::Lru);
    assert!(!c.wants_next_use());
    let s = demand(&mut c, 0, &[0, 1, 2, 3]);
    c.note_next_use(0, &[0.8, 0.7, 0.01, 0.05, 0.1, 0.1, 0.1, 0.1]);
    c.unpin(&s);
    demand(&mut c, 1, &[5]);
    assert_eq!(
        cached(&c, 0),
        [1, 2, 3],
        "the oldest went, whatever the odds"
    );
}

#[test]
fn hints_made_stale_by_the_real_routing_are_dropped() {
    let mut c = core(EvictionKind::NextUse);
    let hint = |e, p| Candidate {
        expert: e,
        confidence: p,
    };
    assert!(c.hint(1, &[hint(4, 0.9), hint(6, 0.4)]));
    // The real routing of layer 1 arrives before the prefetches start: 6 is stale.
    c.note_routing(1, &[4]).unwrap();
    let s = c.pin_or_load(ExpertKey::new(1, 4)).unwrap().unwrap();
    drain(&mut c);
    let m = c.metrics().layers[1];
    assert_eq!(m.prefetch_cancelled, 1, "{m:?}");
    assert_eq!(cached(&c, 1), [4]);
    assert!(matches!(c.check_ready(&[s]), Some(Ok(()))));
    assert_eq!(c.backlog_bytes(), 0);
}
