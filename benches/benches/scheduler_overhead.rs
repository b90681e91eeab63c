//! All-hit `acquire` latency: every expert already cached, so this is the scheduler's own cost
//! (lock, lookups, pins, guard) per expert; and the same demand through the `Session`, with
//! pre-gate scores fed and the next layer's top k hinted (all cached: no reads), the whole
//! per-layer protocol `generate` runs. Throughput is in elements = experts.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use io_sched::backend::memory::MemoryBackend;
use io_sched::layout::LayoutBuilder;
use io_sched::predictor::Scores;
use io_sched::{ExpertKey, Scheduler, SchedulerConfig, Session, SessionConfig};

const LAYERS: u32 = 4;
const EXPERTS: u32 = 64;
const RECORD: u64 = 8192;

fn scheduler_overhead(c: &mut Criterion) {
    let mut b = LayoutBuilder::new(LAYERS, EXPERTS);
    let f = b.add_file("memory");
    for l in 0..LAYERS {
        for e in 0..EXPERTS {
            let i = (l * EXPERTS + e) as u64;
            b.set(
                ExpertKey::new(l, e),
                f,
                i * RECORD,
                RECORD,
                io_sched::checksum::checksum(&[0u8; RECORD as usize]),
            );
        }
    }
    let layout = b.build().expect("layout");
    let image: Arc<[u8]> = Arc::from(vec![0u8; (LAYERS * EXPERTS) as usize * RECORD as usize]);
    let backend = Box::new(MemoryBackend::new(vec![image], 32));
    let cfg = SchedulerConfig::with_budget(LAYERS as u64 * EXPERTS as u64 * RECORD);
    let sched = Arc::new(Scheduler::with_backend(layout, cfg, backend).expect("scheduler"));
    // Warm: every expert cached.
    for l in 0..LAYERS {
        let all: Vec<u32> = (0..EXPERTS).collect();
        drop(sched.acquire(l, &all).expect("warm"));
    }
    let mut g = c.benchmark_group("scheduler_overhead");
    for k in [1usize, 4, 8] {
        g.throughput(Throughput::Elements(k as u64));
        let mut i = 0u32;
        g.bench_function(format!("all_hit_acquire_k{k}"), |bch| {
            bch.iter(|| {
                i = i.wrapping_add(1);
                let layer = i % LAYERS;
                let experts: Vec<u32> = (0..k as u32).map(|j| (i * 7 + j * 13) % EXPERTS).collect();
                let guard = sched.acquire(layer, &experts).expect("hit");
                std::hint::black_box(guard.bytes(0).len());
            })
        });
    }
    for k in [1usize, 4, 8] {
        g.throughput(Throughput::Elements(k as u64));
        let policy = SessionConfig::new(k);
        let mut session = Session::new(
            sched.clone(),
            policy,
            Box::new(Scores::new(LAYERS, EXPERTS)),
        );
        let scores: Vec<f32> = (0..EXPERTS).map(|e| 1.0 / (1.0 + e as f32)).collect();
        let mut i = 0u32;
        g.bench_function(format!("all_hit_session_k{k}"), |bch| {
            bch.iter(|| {
                i = i.wrapping_add(1);
                let layer = i % LAYERS;
                let experts: Vec<u32> = (0..k as u32).map(|j| (i * 7 + j * 13) % EXPERTS).collect();
                session.scores((layer + 1) % LAYERS, &scores);
                let guard = session.demand(layer, &experts).expect("hit");
                std::hint::black_box(guard.bytes(0).len());
            })
        });
        assert!(session.stats().hinted > 0, "the session hinted");
    }
    g.finish();
    let m = sched.metrics().total();
    assert_eq!(
        m.misses,
        LAYERS as u64 * EXPERTS as u64,
        "only the warm-up may miss"
    );
}

criterion_group!(benches, scheduler_overhead);
criterion_main!(benches);
