//! One routing trace, three drivers, one protocol: `generate` (the engine's streamed experts
//! on the real default model), `replay` (the real scheduler on the real files) and the
//! virtual-time simulator all drive io-sched's `Session`, and make the same calls on it —
//! demands, hints (expert by expert) and waits, in the same order.

use std::path::Path;
use std::sync::Arc;

use flashmoe_backends::CpuBackend;
use flashmoe_engine::{
    PackedModel, Prediction, Tee, TraceRecorder, generate_greedy, open_scheduler, streamed,
};
use flashmoe_sim::predict::PredictorKind;
use flashmoe_sim::replay::{OverFetchRow, ReplaySpec, RowKind, run_row};
use flashmoe_sim::vtime::{self, Mode, RunSpec};
use io_sched::backend::select::BackendConfig;
use io_sched::cache::EvictionKind;
use io_sched::trace::{Real, Trace};
use io_sched::{Call, SchedulerConfig};

const TOKENS: usize = 6;

/// The default model (committed to the repository).
fn model() -> PackedModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen3-moe-q4");
    PackedModel::open(&dir).expect("the default model opens")
}

/// `generate` through the engine with `kind`'s session policy: the session's calls, and the
/// routing and pre-gate scores it saw as a trace (scores in f32, exactly as computed).
fn generate_calls(m: &PackedModel, kind: RowKind, budget: u64) -> (Vec<Call>, Trace) {
    let (sched, _) = open_scheduler(
        m,
        SchedulerConfig::with_budget(budget),
        &BackendConfig::default(),
    )
    .expect("scheduler");
    let k = m.config.top_k;
    let policy = kind.policy(k, 1, 0).record_calls(true);
    let (mut experts, mut prefetch) =
        streamed(sched, m.record, Prediction::Pregate, policy).expect("streamed");
    let mut model = m.load_model(CpuBackend::new(), 64).expect("model");
    // Replay and the simulator run a trace token by token (they do not model chunked
    // prefill's union demands yet): the prompt runs so here too.
    model.set_prefill_chunk(1);
    let prompt = m.tokenizer.encode("fn main() {").expect("encode");
    let mut rec = TraceRecorder::new(true);
    let mut obs = Tee(&mut prefetch, &mut rec);
    generate_greedy(&mut model, &prompt, TOKENS, &mut experts, &mut obs).expect("generate");
    let calls = experts.session().lock().expect("session").take_calls();

    let (layers, e) = (m.config.num_layers as u32, m.config.num_experts);
    let ids: Vec<u32> = rec.routing.iter().flat_map(|r| r.ids.clone()).collect();
    let mut trace = Trace::from_ids(layers, e as u32, k as u32, ids).expect("trace");
    // Record (t, L) holds the pre-gate scores for layer L + 1 (zeros for the last layer).
    let mut scores = vec![0.0f32; trace.tokens() as usize * layers as usize * e];
    let mut pos_of = Vec::new();
    for r in rec.routing.iter().filter(|r| r.layer == 0) {
        pos_of.push(r.pos);
    }
    for (pos, layer, s) in &rec.pregate {
        let t = pos_of
            .iter()
            .rposition(|p| p == pos)
            .expect("a routed position");
        let at = (t * layers as usize + (*layer as usize - 1)) * e;
        scores[at..at + e].copy_from_slice(s);
    }
    trace.scores = Some(scores);
    trace.header.scores = Some(Real::F32);
    (calls, trace)
}

fn replay_calls(m: &PackedModel, kind: RowKind, trace: &Arc<Trace>, budget: u64) -> Vec<Call> {
    let spec = ReplaySpec {
        budget_bytes: budget,
        compute_ns: 0,
        pre_share: 0.5,
        warmup: 0,
        tokens: trace.tokens(),
        horizon: 1,
        max_per_layer: m.config.top_k,
        pregate_recall: 1.0,
        seed: 1,
        queue_depth: 8,
        max_prefetch_bytes: None,
        max_prefetch_ops: None,
        sync_read_gbps: None,
        far_trace: None,
        record_calls: true,
    };
    run_row(kind, &m.experts, trace, &spec)
        .expect("replay")
        .calls
}

fn sim_calls(m: &PackedModel, kind: RowKind, trace: &Arc<Trace>, budget: u64) -> Vec<Call> {
    let device = flashmoe_sim::device::device_profile("macbook-m3-max").expect("preset");
    let spec = RunSpec {
        mode: Mode::Flashmoe,
        layers: m.experts.num_layers(),
        experts: m.experts.num_experts(),
        expert_bytes: m.experts.max_read_len(),
        budget_bytes: budget,
        ssd: device.ssd_direct.params(),
        queue_depth: 8,
        compute_pre_ns: 100_000.0,
        compute_post_ns: 100_000.0,
        contention: 0.0,
        copy_bps_per_thread: 4e9,
        trust_os_split: 1,
        dense_reread_bytes_per_layer: 0.0,
        eviction: EvictionKind::Lru,
        predictor: PredictorKind::Scores,
        horizon: 1,
        max_per_layer: m.config.top_k,
        pregate_recall: 1.0,
        far_recall: None,
        demand_chunk: 1 << 20,
        prefetch_chunk: 1 << 20,
        max_prefetch_bytes_in_flight: 8 << 20,
        min_confidence: 0.0,
        warmup_tokens: 0,
        tokens: trace.tokens(),
        timeline_tokens: 0,
        seed: 1,
    };
    let policy = kind.policy(m.config.top_k, 1, 0).record_calls(true);
    vtime::run_session(&spec, trace, None, policy)
        .expect("simulate")
        .calls
}

fn hints(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Hint { .. }))
        .count()
}

#[test]
fn generate_replay_and_sim_make_the_same_session_calls() {
    let m = model();
    let budget = m.experts.max_read_len() * 24;
    let over = OverFetchRow {
        max_extra: 2,
        tie_pct: 0,
        idle_bound: false,
        horizon: 0,
        ..Default::default()
    };
    for kind in [
        RowKind::Sched(PredictorKind::Scores),
        RowKind::SchedOver(PredictorKind::Scores, over),
    ] {
        let (generated, trace) = generate_calls(&m, kind, budget);
        let trace = Arc::new(trace);
        let layers = m.config.num_layers;
        let demands = generated
            .iter()
            .filter(|c| matches!(c, Call::Demand { .. }))
            .count();
        assert_eq!(demands as u64, trace.tokens() * layers as u64, "{kind:?}");
        assert!(
            hints(&generated) >= demands * (layers - 1) / layers,
            "{kind:?}: every layer but the last hints its successor"
        );
        // The protocol's order, in every driver: a layer's demand, then its hints, then the
        // wait on that demand.
        for w in generated.windows(2) {
            if let [Call::Demand { layer, .. }, next] = w {
                assert!(
                    matches!(next, Call::Hint { layer: h, .. } if *h == layer + 1)
                        || matches!(next, Call::Wait { layer: l } if l == layer),
                    "{kind:?}: {w:?}"
                );
            }
        }
        let replayed = replay_calls(&m, kind, &trace, budget);
        assert_eq!(
            replayed, generated,
            "{kind:?}: replay differs from generate"
        );
        let simulated = sim_calls(&m, kind, &trace, budget);
        assert_eq!(
            simulated, generated,
            "{kind:?}: the simulator differs from generate"
        );
    }
}

/// Demand hits of `kind` in the replay (real scheduler, real files) and in the simulator.
fn replay_and_sim_hits(
    m: &PackedModel,
    kind: RowKind,
    trace: &Arc<Trace>,
    budget: u64,
) -> (u64, u64) {
    let spec = ReplaySpec {
        budget_bytes: budget,
        compute_ns: 0,
        pre_share: 0.5,
        warmup: 0,
        tokens: trace.tokens(),
        horizon: 1,
        max_per_layer: m.config.top_k,
        pregate_recall: 1.0,
        seed: 1,
        queue_depth: 8,
        max_prefetch_bytes: None,
        max_prefetch_ops: None,
        sync_read_gbps: None,
        far_trace: None,
        record_calls: false,
    };
    let replayed = run_row(kind, &m.experts, trace, &spec)
        .expect("replay")
        .hits;
    let device = flashmoe_sim::device::device_profile("macbook-m3-max").expect("preset");
    let rs = RunSpec {
        mode: Mode::Flashmoe,
        layers: m.experts.num_layers(),
        experts: m.experts.num_experts(),
        expert_bytes: m.experts.max_read_len(),
        budget_bytes: budget,
        ssd: device.ssd_direct.params(),
        queue_depth: 8,
        compute_pre_ns: 100_000.0,
        compute_post_ns: 100_000.0,
        contention: 0.0,
        copy_bps_per_thread: 4e9,
        trust_os_split: 1,
        dense_reread_bytes_per_layer: 0.0,
        eviction: kind.eviction(),
        predictor: kind.predictor(),
        horizon: 1,
        max_per_layer: m.config.top_k,
        pregate_recall: 1.0,
        far_recall: None,
        demand_chunk: 1 << 20,
        prefetch_chunk: 1 << 20,
        max_prefetch_bytes_in_flight: 8 << 20,
        min_confidence: 0.0,
        warmup_tokens: 0,
        tokens: trace.tokens(),
        timeline_tokens: 0,
        seed: 1,
    };
    let policy = kind.policy(m.config.top_k, 1, 0);
    let simulated = vtime::run_session(&rs, trace, None, policy)
        .expect("simulate")
        .total()
        .hits;
    (replayed, simulated)
}

#[test]
fn replay_and_sim_count_the_same_hits_with_next_use_eviction() {
    let m = model();
    let budget = m.experts.max_read_len() * 24;
    let (_, trace) = generate_calls(&m, RowKind::Sched(PredictorKind::Scores), budget);
    let trace = Arc::new(trace);
    // The blend's probabilities feed the eviction only (no hints): hits depend on the
    // routing alone, not on how fast a disk is.
    let next_use = RowKind::SchedOver(
        PredictorKind::Blend,
        OverFetchRow {
            no_hints: true,
            eviction: EvictionKind::NextUse,
            ..Default::default()
        },
    );
    let (replayed, simulated) = replay_and_sim_hits(&m, next_use, &trace, budget);
    assert_eq!(replayed, simulated, "replay and sim differ");
    let demanded = trace.tokens() * m.config.num_layers as u64 * m.config.top_k as u64;
    assert!(
        replayed > 0 && replayed < demanded,
        "{replayed} of {demanded}"
    );
}
