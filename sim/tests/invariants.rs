//! Invariants of the simulator (never on time: on counts, bytes and exact model identities).

use std::sync::Arc;

use flashmoe_sim::belady::belady_hit_rate;
use flashmoe_sim::predict::PredictorKind;
use flashmoe_sim::report;
use flashmoe_sim::ssd::SsdParams;
use flashmoe_sim::synth::{self, SynthParams};
use flashmoe_sim::vtime::{self, Mode, RunSpec};
use io_sched::cache::EvictionKind;
use io_sched::trace::Trace;

const LAYERS: u32 = 4;
const EXPERTS: u32 = 32;
const K: u32 = 4;
/// A whole number of pages, so the simulated records are the real size (scale 1).
const EXPERT_BYTES: u64 = 16 * 4096;

fn trace(tokens: u64) -> Arc<Trace> {
    Arc::new(synth::generate(LAYERS, EXPERTS, K, tokens, &SynthParams::default(), 3).unwrap())
}

fn spec(mode: Mode, predictor: PredictorKind, budget_experts: u64) -> RunSpec {
    RunSpec {
        mode,
        layers: LAYERS,
        experts: EXPERTS,
        expert_bytes: EXPERT_BYTES,
        budget_bytes: budget_experts * EXPERT_BYTES,
        ssd: SsdParams {
            peak_bps: 2e9,
            single_bps: 1e9,
            latency_ns: 50_000.0,
            channels: 8,
        },
        queue_depth: 8,
        compute_pre_ns: 200_000.0,
        compute_post_ns: 50_000.0,
        contention: 0.5,
        copy_bps_per_thread: 4e9,
        trust_os_split: 1,
        dense_reread_bytes_per_layer: 0.0,
        eviction: EvictionKind::Lru,
        predictor,
        horizon: 1,
        max_per_layer: K as usize,
        pregate_recall: 0.9,
        far_recall: None,
        demand_chunk: 4 * 4096,
        prefetch_chunk: 4 * 4096,
        max_prefetch_bytes_in_flight: 16 * 4096,
        min_confidence: 0.0,
        warmup_tokens: 0,
        tokens: 60,
        timeline_tokens: 2,
        seed: 1,
    }
}

#[test]
fn bytes_are_conserved() {
    let t = trace(60);
    for pred in [
        PredictorKind::None,
        PredictorKind::Scores,
        PredictorKind::Temporal,
    ] {
        for mode in [Mode::Flashmoe, Mode::TrustOs] {
            let r = vtime::run(&spec(mode, pred, 24), &t).unwrap();
            let m = r.total();
            let accounted = (m.demand_bytes + m.prefetch_bytes) as f64;
            assert!(
                (r.device_bytes - accounted).abs() < 1.0,
                "{pred:?} {mode:?}: device moved {} B, scheduler counted {accounted}",
                r.device_bytes
            );
            assert_eq!(m.demanded, 60 * LAYERS as u64 * K as u64);
            assert_eq!(m.hits + m.misses + m.late_prefetch_hits, m.demanded);
            if pred == PredictorKind::None || mode == Mode::TrustOs {
                assert_eq!(m.prefetch_bytes, 0);
                assert_eq!(
                    m.demand_bytes,
                    m.misses * EXPERT_BYTES,
                    "every miss reads one whole expert"
                );
            }
        }
    }
}

#[test]
fn bigger_cache_never_lowers_the_belady_bound() {
    let t = trace(200);
    let mut last = 0.0;
    for slots in 1..=(LAYERS * EXPERTS) as usize + 2 {
        let h = belady_hit_rate(&t, slots, 20);
        assert!(
            h >= last,
            "Belady hit rate fell from {last} to {h} at {slots} slots"
        );
        last = h;
    }
    assert!(last > 0.9);
}

#[test]
fn lru_never_beats_belady() {
    let t = trace(100);
    for slots in [8u64, 16, 40, 80] {
        let r = vtime::run(&spec(Mode::Flashmoe, PredictorKind::None, slots), &t).unwrap();
        let bound = belady_hit_rate(&t, r.cache_slots, 0);
        assert!(
            r.total().hit_rate() <= bound + 1e-12,
            "LRU {} > Belady {bound} at {slots} slots",
            r.total().hit_rate()
        );
    }
}

#[test]
fn cache_hits_never_beat_belady_even_with_prefetch() {
    // Ready prefetches make `ready_rate` exceed the bound; the cache hit rate (first uses of
    // a prefetch not counted) must not: a prefetching cache is a non-lazy paging schedule.
    let t = trace(100);
    let mut ready_above_bound = false;
    for pred in [
        PredictorKind::Oracle,
        PredictorKind::Scores,
        PredictorKind::Temporal,
    ] {
        for slots in [8u64, 16, 40] {
            let r = vtime::run(&spec(Mode::Flashmoe, pred, slots), &t).unwrap();
            let bound = belady_hit_rate(&t, r.cache_slots, 0);
            let m = r.total();
            let cache = report::cache_hit_rate(&m);
            let ready = report::ready_rate(&m);
            assert!(
                cache <= bound + 1e-12,
                "{pred:?} at {slots} slots: cache hits {cache} > Belady {bound}"
            );
            assert!(cache <= ready, "{pred:?}: cache {cache} > ready {ready}");
            ready_above_bound |= ready > bound;
        }
    }
    assert!(
        ready_above_bound,
        "the oracle's prefetches should serve more than Belady's cache alone"
    );
}

#[test]
fn zero_latency_io_reduces_to_compute_time() {
    let t = trace(40);
    for pred in [PredictorKind::None, PredictorKind::Oracle] {
        let mut s = spec(Mode::Flashmoe, pred, 16);
        s.ssd = SsdParams::instant();
        s.tokens = 40;
        let r = vtime::run(&s, &t).unwrap();
        let compute_only = 40.0 * LAYERS as f64 * (s.compute_pre_ns + s.compute_post_ns);
        assert!(
            (r.elapsed_ns - compute_only).abs() <= 1e-6 * compute_only,
            "{pred:?}: {} vs {compute_only}",
            r.elapsed_ns
        );
        assert_eq!(r.time_total().stall_ns, 0.0);
    }
}

#[test]
fn perfect_prediction_with_idle_time_hides_all_io() {
    perfect_prediction_case((LAYERS * EXPERTS) as u64);
}

/// With a cache smaller than the model, `SchedCore::hint` can evict a candidate that is
/// already cached (it does not refresh its recency) to make room for another candidate of the
/// same acquire: the acquire then misses. Needs the io-sched change in the sim report.
#[test]

fn perfect_prediction_hides_all_io_with_a_partial_cache() {
    perfect_prediction_case(64);
}

fn perfect_prediction_case(budget_experts: u64) {
    let t = trace(80);
    let mut s = spec(Mode::Flashmoe, PredictorKind::Oracle, budget_experts);
    // Reading k experts takes ~0.3 ms; each layer computes 5 ms.
    s.compute_pre_ns = 4_000_000.0;
    s.compute_post_ns = 1_000_000.0;
    s.warmup_tokens = 2;
    s.tokens = 70;
    let r = vtime::run(&s, &t).unwrap();
    let m = r.total();
    assert_eq!(
        r.time_total().stall_ns,
        0.0,
        "stalled although every read was predicted in time"
    );
    assert_eq!(m.misses, 0);
    assert_eq!(m.late_prefetch_hits, 0);
    assert_eq!(m.hits, m.demanded);
    // Without prediction the same run stalls.
    s.predictor = PredictorKind::None;
    let r = vtime::run(&s, &t).unwrap();
    assert!(r.time_total().stall_ns > 0.0);
}

#[test]
fn runs_are_deterministic_and_timeline_is_recorded() {
    let t = trace(30);
    let mut s = spec(Mode::Flashmoe, PredictorKind::Scores, 20);
    s.tokens = 30;
    let a = vtime::run(&s, &t).unwrap();
    let b = vtime::run(&s, &t).unwrap();
    assert_eq!(a.elapsed_ns, b.elapsed_ns);
    assert_eq!(a.metrics, b.metrics);
    assert!(!a.spans.is_empty());
    let svg = flashmoe_sim::timeline::svg(&a.spans, "test");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn too_small_a_budget_is_a_clear_error() {
    let t = trace(5);
    let err = vtime::run(&spec(Mode::Flashmoe, PredictorKind::None, 2), &t).unwrap_err();
    assert!(err.to_string().contains("fewer than k"), "{err}");
}

#[test]
fn horizon_two_with_synthetic_far_scores_hints_two_layers_ahead() {
    let t = trace(40);
    let mut s = spec(Mode::Flashmoe, PredictorKind::Scores, 24);
    s.horizon = 2;
    s.tokens = 40;
    let near = vtime::run(&s, &t).unwrap();
    s.far_recall = Some(1.0);
    let far = vtime::run(&s, &t).unwrap();
    // One ahead, layers 1..L get scores; two ahead, layers 2..L as well.
    let layers = LAYERS as u64;
    assert_eq!(near.session.hint_calls, 40 * (layers - 1));
    assert_eq!(far.session.hint_calls, 40 * (layers - 1 + layers - 2));
    assert!(far.session.hinted > near.session.hinted);
    // Perfect two-ahead scores leave no demand unready that the near run had ready.
    let (n, f) = (near.total(), far.total());
    assert_eq!(n.demanded, f.demanded);
    assert!(
        f.misses <= n.misses,
        "far {} misses vs near {}",
        f.misses,
        n.misses
    );
}
