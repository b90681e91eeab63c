//! The scheduler core driven by hand, step by step (as the simulator drives it): queue
//! invariants that a threaded run only hits by chance.

mod common;

use std::sync::Arc;

use common::model_image;
use io_sched::backend::Completion;
use io_sched::cache::EvictionKind;
use io_sched::core::{CoreConfig, SchedCore};
use io_sched::{Candidate, ExpertKey};

fn core(cfg: CoreConfig) -> SchedCore {
    let (layout, _) = model_image(2, 8, 4096);
    SchedCore::new(Arc::new(layout), 16 * 4096, EvictionKind::Lru, cfg).unwrap()
}

fn cand(expert: u32) -> Candidate {
    Candidate {
        expert,
        confidence: 0.9,
    }
}

fn complete_all(core: &mut SchedCore, ops: Vec<io_sched::backend::ReadOp>) {
    for op in ops {
        core.complete(Completion {
            tag: op.tag,
            result: Ok(op.len),
        });
    }
}

#[test]
fn a_finished_prefetch_leaves_no_stale_queue_entry_behind() {
    // Regression: a prefetch completed while the device was full (so `next_op` never pruned
    // its queue) used to stay queued; the next hint for its layer then panicked, and a reused
    // load id could make a demand load look like a stale prefetch.
    let mut c = core(CoreConfig {
        verify_checksums: false,
        max_prefetch_ops_in_flight: 1,
        ..CoreConfig::default()
    });
    assert!(c.hint(1, &[cand(2)]));
    let op = c.next_op(1).expect("the prefetch read");
    assert!(c.next_op(0).is_none(), "device full");
    complete_all(&mut c, vec![op]);
    assert!(c.is_ready(ExpertKey::new(1, 2)));
    // A new hint for the same layer supersedes nothing that is gone, and does not panic.
    assert!(c.hint(1, &[cand(5)]));
    // A demand load that reuses the freed load id is never treated as a prefetch.
    let slot = c
        .pin_or_load(ExpertKey::new(1, 6))
        .unwrap()
        .expect("a slot");
    c.hint(1, &[cand(7)]);
    let mut ops = Vec::new();
    while let Some(op) = c.next_op(8) {
        ops.push(op);
    }
    complete_all(&mut c, ops);
    assert!(matches!(c.check_ready(&[slot]), Some(Ok(()))));
    let m = c.metrics().layers[1];
    assert_eq!((m.misses, m.prefetch_cancelled), (1, 1), "{m:?}");
}
