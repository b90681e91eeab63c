//! Scheduler behaviour over an in-memory backend: bytes, hits, prefetch accounting, pins,
//! errors. (Backend-specific and fault-injection tests live in their own files.)

mod common;

use common::{memory_backend, model_image, record_bytes};
use io_sched::layout::ExpertKey;
use io_sched::predictor::Candidate;
use io_sched::{Error, Scheduler, SchedulerConfig};

const LEN: usize = 10_000; // 3 pages per slot, payload not page-aligned

fn sched(layers: u32, experts: u32, slots: u64) -> Scheduler {
    let (layout, image) = model_image(layers, experts, LEN);
    let cfg = SchedulerConfig::with_budget(slots * 12288);
    Scheduler::with_backend(layout, cfg, memory_backend(image, 8)).unwrap()
}

fn cand(expert: u32) -> Candidate {
    Candidate {
        expert,
        confidence: 0.9,
    }
}

#[test]
fn acquire_returns_each_experts_exact_bytes_in_request_order() {
    let s = sched(3, 8, 64);
    for layer in 0..3 {
        let want = [5, 1, 7, 2];
        let g = s.acquire(layer, &want).unwrap();
        assert_eq!(g.len(), 4);
        for (i, &e) in want.iter().enumerate() {
            assert_eq!(g.expert(i), e);
            assert_eq!(g.bytes(i), &record_bytes(ExpertKey::new(layer, e), LEN)[..]);
        }
    }
}

#[test]
fn second_acquire_hits_and_reads_nothing_more() {
    let s = sched(2, 8, 64);
    drop(s.acquire(0, &[1, 2]).unwrap());
    let before = s.metrics().total();
    drop(s.acquire(0, &[1, 2]).unwrap());
    let m = s.metrics().total();
    assert_eq!(m.misses, 2);
    assert_eq!(m.hits, 2);
    assert_eq!(m.bytes_read(), before.bytes_read());
    assert_eq!(m.demand_bytes, 2 * 12288);
}

#[test]
fn device_busy_time_is_counted_for_reads_and_not_for_hits() {
    let s = sched(2, 8, 64);
    assert_eq!(s.metrics().depth.busy_ns, 0, "no read yet");
    drop(s.acquire(0, &[1, 2]).unwrap());
    let after_reads = s.metrics().depth;
    assert!(after_reads.busy_ns > 0, "reads were in flight");
    assert_eq!(after_reads.in_flight, 0);
    drop(s.acquire(0, &[1, 2]).unwrap()); // all hits: the device stays idle
    assert_eq!(s.metrics().depth.busy_ns, after_reads.busy_ns);
}

#[test]
fn small_cache_evicts_but_always_returns_right_bytes() {
    let s = sched(4, 16, 6);
    let mut rng = 12345u32;
    for _ in 0..200 {
        rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let layer = (rng >> 8) % 4;
        let a = (rng >> 12) % 16;
        let b = (a + 1 + (rng >> 20) % 15) % 16;
        let g = s.acquire(layer, &[a, b]).unwrap();
        assert_eq!(
            g.get(a).unwrap(),
            &record_bytes(ExpertKey::new(layer, a), LEN)[..]
        );
        assert_eq!(
            g.get(b).unwrap(),
            &record_bytes(ExpertKey::new(layer, b), LEN)[..]
        );
    }
    let m = s.metrics().total();
    assert_eq!(m.demanded, 400);
    assert_eq!(m.hits + m.misses + m.late_prefetch_hits, 400);
    assert!(
        m.misses > 100,
        "6 slots for 64 experts must miss often: {m:?}"
    );
}

#[test]
fn hinted_expert_is_a_prefetch_hit() {
    let s = sched(2, 8, 16);
    s.hint(1, &[cand(3), cand(4)]);
    // Wait until both prefetches are in, through a demand on another layer.
    drop(s.acquire(0, &[0]).unwrap());
    while !(s.with_core(|c| c.is_ready(ExpertKey::new(1, 3)) && c.is_ready(ExpertKey::new(1, 4)))) {
        std::thread::yield_now();
    }
    let g = s.acquire(1, &[3, 5]).unwrap();
    assert_eq!(
        g.get(3).unwrap(),
        &record_bytes(ExpertKey::new(1, 3), LEN)[..]
    );
    let m = s.metrics().layers[1];
    assert_eq!(m.prefetch_issued, 2);
    assert_eq!(m.hits, 1, "{m:?}");
    assert_eq!(m.misses, 1);
    assert_eq!(m.prefetch_used, 1);
    assert_eq!(
        m.prefetch_wasted, 1,
        "expert 4 was prefetched for this acquire and not used"
    );
    assert_eq!(m.prefetch_bytes, 2 * 12288);
    assert!((m.prefetch_precision() - 0.5).abs() < 1e-9);
    assert!((m.prefetch_recall() - 0.5).abs() < 1e-9);
}

#[test]
fn pinned_slots_are_never_evicted_and_a_full_cache_says_so() {
    let s = sched(1, 8, 2);
    let g = s.acquire(0, &[0, 1]).unwrap();
    let err = s.acquire(0, &[2]).unwrap_err();
    assert!(matches!(err, Error::Budget(_)), "{err}");
    assert!(err.to_string().contains("pinned"), "{err}");
    // The pinned bytes did not change.
    assert_eq!(g.bytes(0), &record_bytes(ExpertKey::new(0, 0), LEN)[..]);
    assert_eq!(g.bytes(1), &record_bytes(ExpertKey::new(0, 1), LEN)[..]);
    drop(g);
    let g = s.acquire(0, &[2]).unwrap();
    assert_eq!(g.bytes(0), &record_bytes(ExpertKey::new(0, 2), LEN)[..]);
}

#[test]
fn unknown_expert_is_an_error_naming_it() {
    let s = sched(2, 8, 4);
    let e = s.acquire(1, &[8]).unwrap_err().to_string();
    assert!(e.contains("layer 1 expert 8"), "{e}");
    let e = s.acquire(2, &[0]).unwrap_err().to_string();
    assert!(e.contains("layer 2 expert 0"), "{e}");
}

#[test]
fn corrupted_record_fails_its_checksum_with_its_location() {
    let (layout, mut image) = model_image(1, 4, LEN);
    let off = layout.get(ExpertKey::new(0, 2)).unwrap().offset as usize;
    image[off + 17] ^= 0xff;
    let s = Scheduler::with_backend(
        layout,
        SchedulerConfig::with_budget(8 * 12288),
        memory_backend(image, 4),
    )
    .unwrap();
    let e = s.acquire(0, &[1, 2]).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("layer 0 expert 2") && msg.contains(&format!("offset {off}")),
        "{msg}"
    );
    // Nothing was left pinned or poisoned: the good expert still comes back.
    let g = s.acquire(0, &[1]).unwrap();
    assert_eq!(g.bytes(0), &record_bytes(ExpertKey::new(0, 1), LEN)[..]);
    assert_eq!(s.metrics().total().failed_loads, 1);
}

/// Records nobody blocks on are checked too: an async acquire of a corrupted record fails its
/// checksum, and a hinted record nobody waits for becomes ready (so `acquire_ready` hands it
/// out and its acquire is a hit).
#[test]
fn records_nobody_blocks_on_are_verified() {
    let (layout, mut image) = model_image(1, 4, LEN);
    let off = layout.get(ExpertKey::new(0, 3)).unwrap().offset as usize;
    image[off + 5] ^= 0x10;
    let s = Scheduler::with_backend(
        layout,
        SchedulerConfig::with_budget(4 * 12288),
        memory_backend(image, 4),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = rt.block_on(s.acquire_async(0, &[3])).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    s.hint(
        0,
        &[Candidate {
            expert: 1,
            confidence: 0.9,
        }],
    );
    let mut polls = 0;
    while s.acquire_ready(0, &[1]).is_empty() {
        polls += 1;
        assert!(polls < 50_000, "a hinted record was never verified");
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    let g = s.acquire(0, &[1]).unwrap();
    assert_eq!(g.bytes(0), &record_bytes(ExpertKey::new(0, 1), LEN)[..]);
    let m = s.metrics().total();
    assert_eq!((m.hits, m.prefetch_used, m.failed_loads), (1, 1, 1));
}

#[test]
fn async_acquire_works_and_dropped_futures_release_their_pins() {
    let s = sched(2, 16, 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..200u32 {
            let layer = round % 2;
            let e = round % 16;
            // Start and drop a future half the time, without polling it to completion.
            let f = s.acquire_async(layer, &[e, (e + 3) % 16]);
            if round % 2 == 0 {
                let _ = tokio::time::timeout(std::time::Duration::from_micros(1), f).await;
                continue;
            }
            let g = f.await.unwrap();
            assert_eq!(
                g.get(e).unwrap(),
                &record_bytes(ExpertKey::new(layer, e), LEN)[..]
            );
        }
    });
    // All pins released: a full-cache acquire of 8 distinct experts succeeds.
    let g = s.acquire(0, &[0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    assert_eq!(g.len(), 8);
}

#[test]
fn a_prefetch_never_evicts_an_expert_a_live_hint_names() {
    let s = sched(2, 8, 3);
    drop(s.acquire(0, &[0, 1, 2]).unwrap()); // LRU order: 0, 1, 2
    s.hint(0, &[cand(1)]); // expert 1 is cached: the hint protects it
    s.hint(1, &[cand(5), cand(6)]); // two prefetches need two victims
    let wait = |k| {
        while !s.with_core(|c| c.is_ready(k)) {
            std::thread::yield_now();
        }
    };
    wait(ExpertKey::new(1, 5));
    wait(ExpertKey::new(1, 6));
    assert!(
        s.with_core(|c| c.is_ready(ExpertKey::new(0, 1))),
        "hinted expert was evicted"
    );
    assert!(!s.with_core(|c| c.is_ready(ExpertKey::new(0, 0))));
    assert!(!s.with_core(|c| c.is_ready(ExpertKey::new(0, 2))));
    let g = s.acquire(0, &[1]).unwrap();
    assert_eq!(g.bytes(0), &record_bytes(ExpertKey::new(0, 1), LEN)[..]);
    assert_eq!(s.metrics().layers[0].hits, 1);
}

/// Completes each batch of reads in reverse order, so checksums stream over out-of-order chunks.
struct Reversing(Box<io_sched::backend::memory::MemoryBackend>);

impl io_sched::backend::ReadBackend for Reversing {
    fn kind(&self) -> io_sched::backend::BackendKind {
        self.0.kind()
    }
    fn describe(&self) -> String {
        "reversing".into()
    }
    fn max_in_flight(&self) -> usize {
        self.0.max_in_flight()
    }
    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
    fn direct(&self) -> bool {
        false
    }
    unsafe fn submit(&mut self, op: io_sched::backend::ReadOp) -> std::io::Result<()> {
        // SAFETY: forwarded under this method's own contract.
        unsafe { self.0.submit(op) }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn reap(
        &mut self,
        out: &mut Vec<io_sched::backend::Completion>,
        timeout: Option<std::time::Duration>,
    ) -> std::io::Result<()> {
        let before = out.len();
        self.0.reap(out, timeout)?;
        out[before..].reverse();
        Ok(())
    }
    fn waker(&self) -> io_sched::backend::BackendWaker {
        self.0.waker()
    }
}

#[test]
fn checksums_stream_over_out_of_order_chunks_and_catch_a_bad_middle_chunk() {
    let len = 5 * 4096 + 100;
    let (layout, mut image) = model_image(1, 4, len);
    let bad = layout.get(ExpertKey::new(0, 3)).unwrap().offset as usize + 2 * 4096 + 7;
    image[bad] ^= 1;
    let mut cfg = SchedulerConfig::with_budget(8 * 6 * 4096);
    cfg = cfg.demand_chunk(4096);
    let s = Scheduler::with_backend(layout, cfg, Box::new(Reversing(memory_backend(image, 16))))
        .unwrap();
    let g = s.acquire(0, &[0, 1, 2]).unwrap();
    for (e, bytes) in g.iter() {
        assert_eq!(bytes, &record_bytes(ExpertKey::new(0, e), len)[..]);
    }
    drop(g);
    let e = s.acquire(0, &[3]).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
}

#[test]
fn multi_block_records_verify_from_out_of_order_chunks() {
    use io_sched::checksum::CHECKSUM_BLOCK;
    let len = 3 * CHECKSUM_BLOCK + 5000;
    let (layout, mut image) = model_image(1, 3, len);
    let bad = layout.get(ExpertKey::new(0, 2)).unwrap().offset as usize + CHECKSUM_BLOCK + 99;
    image[bad] ^= 0x80;
    let slot = len.div_ceil(4096) * 4096;
    let mut cfg = SchedulerConfig::with_budget(3 * slot as u64);
    cfg = cfg.demand_chunk(48 * 1024); // chunks straddle block boundaries
    let s = Scheduler::with_backend(layout, cfg, Box::new(Reversing(memory_backend(image, 64))))
        .unwrap();
    let g = s.acquire(0, &[0, 1]).unwrap();
    for (e, bytes) in g.iter() {
        assert_eq!(bytes, &record_bytes(ExpertKey::new(0, e), len)[..]);
    }
    drop(g);
    let e = s.acquire(0, &[2]).unwrap_err().to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains("layer 0 expert 2"),
        "{e}"
    );
}

/// `acquire_ready` hands out only records already in memory, reads nothing, counts no demand,
/// and its pins keep a record from being evicted while the guard lives.
#[test]
fn acquire_ready_pins_cached_records_without_reading_or_counting() {
    let s = sched(1, 8, 2);
    drop(s.acquire(0, &[3]).unwrap());
    let before = s.metrics().total();
    let g = s.acquire_ready(0, &[5, 3, 6]);
    assert_eq!(g.len(), 1, "only expert 3 is cached");
    assert_eq!(g.expert(0), 3);
    assert_eq!(g.bytes(0), &record_bytes(ExpertKey::new(0, 3), LEN)[..]);
    let m = s.metrics().total();
    assert_eq!(
        (m.demanded, m.hits, m.misses),
        (before.demanded, before.hits, before.misses)
    );
    assert_eq!(m.bytes_read(), before.bytes_read());
    // Two slots: with 3 pinned, loading 1 and then 2 can only ever evict each other.
    drop(s.acquire(0, &[1]).unwrap());
    drop(s.acquire(0, &[2]).unwrap());
    assert!(
        s.with_core(|c| c.is_ready(ExpertKey::new(0, 3))),
        "a pinned record was evicted"
    );
    drop(g);
    assert_eq!(s.acquire_ready(0, &[]).len(), 0);
}

#[test]
fn begin_acquire_queues_the_demand_so_hints_can_follow_before_the_wait() {
    let s = sched(2, 8, 4);
    let pending = s.begin_acquire(0, &[3, 6]).unwrap();
    s.hint(1, &[cand(2), cand(5)]);
    let g = pending.wait().unwrap();
    assert_eq!(g.bytes(0), &record_bytes(ExpertKey::new(0, 3), LEN)[..]);
    assert_eq!(g.bytes(1), &record_bytes(ExpertKey::new(0, 6), LEN)[..]);
    drop(g);
    let g = s.acquire(1, &[2, 5]).unwrap();
    assert_eq!(g.bytes(1), &record_bytes(ExpertKey::new(1, 5), LEN)[..]);
    drop(g);
    let m = s.metrics().total();
    assert_eq!((m.demanded, m.misses, m.prefetch_used), (4, 2, 2));

    // A pending acquire dropped unwaited releases its pins: the 4 slots can be had again.
    drop(s.begin_acquire(0, &[0, 1, 2, 4]).unwrap());
    let g = s.acquire(1, &[0, 1, 3, 4]).unwrap();
    assert_eq!(g.len(), 4);
    assert!(matches!(
        s.begin_acquire(0, &[99]).unwrap_err(),
        Error::UnknownExpert { .. }
    ));
}
