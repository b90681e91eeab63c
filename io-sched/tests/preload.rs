//! `Scheduler::preload`: records read into free slots before any demand, counted apart from
//! demands, never evicting, and failures named.

mod common;

use common::{memory_backend, model_image, record_bytes};
use io_sched::layout::ExpertKey;
use io_sched::{Error, Scheduler, SchedulerConfig};

const LEN: usize = 10_000; // read as 3 pages of 4096: 12288 bytes a record
const READ: u64 = 12288;

fn sched(layers: u32, experts: u32, slots: u64, corrupt: Option<(u32, u32)>) -> Scheduler {
    let (layout, mut image) = model_image(layers, experts, LEN);
    if let Some((l, e)) = corrupt {
        let off = layout.get(ExpertKey::new(l, e)).unwrap().offset as usize;
        image[off + 9] ^= 0x40;
    }
    let cfg = SchedulerConfig::with_budget(slots * READ);
    Scheduler::with_backend(layout, cfg, memory_backend(image, 8)).unwrap()
}

fn every(layers: u32, experts: u32) -> Vec<(u32, u32)> {
    (0..layers)
        .flat_map(|l| (0..experts).map(move |e| (l, e)))
        .collect()
}

#[test]
fn a_cache_that_holds_every_record_preloads_them_and_every_demand_hits() {
    let s = sched(3, 8, 24, None);
    let p = s.preload(&every(3, 8)).unwrap();
    assert_eq!((p.cached, p.read, p.bytes), (24, 24, 24 * READ));
    let m = s.metrics().total();
    assert_eq!((m.preloaded, m.preload_bytes), (24, 24 * READ));
    assert_eq!((m.demanded, m.misses, m.bytes_read()), (0, 0, 0));
    for layer in 0..3 {
        let g = s.acquire(layer, &[7, 0, 3]).unwrap();
        for (i, e) in [7, 0, 3].into_iter().enumerate() {
            assert_eq!(g.bytes(i), &record_bytes(ExpertKey::new(layer, e), LEN)[..]);
        }
    }
    let m = s.metrics().total();
    assert_eq!((m.demanded, m.hits, m.misses, m.bytes_read()), (9, 9, 0, 0));
    // A second preload finds everything cached and reads nothing.
    let again = s.preload(&every(3, 8)).unwrap();
    assert_eq!((again.cached, again.read, again.bytes), (24, 0, 0));
}

#[test]
fn preload_fills_only_free_slots_and_never_evicts() {
    let s = sched(1, 8, 5, None);
    drop(s.acquire(0, &[6, 7]).unwrap());
    // Three slots are free: experts 0, 1 and 2 are read, then there is no room for 3.
    let p = s.preload(&every(1, 8)).unwrap();
    assert_eq!((p.cached, p.read, p.bytes), (3, 3, 3 * READ));
    let before = s.metrics().total();
    let g = s.acquire(0, &[6, 7, 0, 1, 2]).unwrap();
    assert_eq!(g.bytes(2), &record_bytes(ExpertKey::new(0, 0), LEN)[..]);
    let m = s.metrics().total();
    assert_eq!(
        m.hits - before.hits,
        5,
        "what was cached stayed, and the preloads hit"
    );
    assert_eq!(m.bytes_read(), before.bytes_read());
}

#[test]
fn a_corrupt_record_fails_the_preload_by_name_and_the_rest_stays_cached() {
    let s = sched(2, 4, 8, Some((1, 2)));
    let e = s.preload(&every(2, 4)).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("layer 1 expert 2"), "{e}");
    let before = s.metrics().total();
    assert_eq!(before.failed_loads, 1);
    let g = s.acquire(1, &[3]).unwrap();
    assert_eq!(g.bytes(0), &record_bytes(ExpertKey::new(1, 3), LEN)[..]);
    assert_eq!(s.metrics().total().hits - before.hits, 1);
    // The failed record is not cached: its demand reads it again (and fails again).
    drop(g);
    assert!(matches!(s.acquire(1, &[2]), Err(Error::Checksum { .. })));
}

#[test]
fn an_unknown_record_is_an_error_naming_it() {
    let s = sched(2, 4, 8, None);
    let e = s.preload(&[(0, 1), (2, 0)]).unwrap_err().to_string();
    assert!(e.contains("layer 2 expert 0"), "{e}");
}
