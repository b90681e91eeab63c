//! Chunked prefill against token-by-token prefill on both fixtures: logits within the golden
//! tests' bf16 tolerance at every chunk size from 1 to the prompt length, the same greedy
//! continuations, the same routing seen by observers, and — streamed through io-sched — the
//! same tokens at every budget down to one layer's top-k records, each union expert read at
//! most once per chunk.

mod common;
#[path = "qwen35_common/mod.rs"]
mod qwen35_common;

use common::{fixture, golden, load, max_abs_diff, pack_fixture};
use flashmoe_backends::quant::WeightFormat;
use flashmoe_backends::{ComputeBackend, CpuBackend};
use flashmoe_engine::{
    ExpertSource, MoeModel, NoObserver, PackedModel, Prediction, TraceRecorder, generate_greedy,
    open_scheduler, streamed,
};
use io_sched::backend::select::BackendConfig;
use io_sched::{SchedulerConfig, SessionConfig};

/// The golden tests' bf16 tolerance (`qwen3_golden.rs`): chunked and token-by-token prefill
/// compute the same f32 maths from the same bf16 values; only the order in which a token's
/// experts are summed differs (by expert id in a chunk, by routing rank token by token).
const LOGIT_TOL: f32 = 1e-4;

/// Greedy tokens generated after the prompt.
const TOKENS: usize = 16;

/// Logits after prefilling `prompt` with `chunk` tokens per chunk (from position 0).
fn prefill<B: ComputeBackend>(
    model: &mut MoeModel<B>,
    experts: &mut dyn ExpertSource,
    prompt: &[u32],
    chunk: usize,
) -> Vec<f32> {
    model.reset();
    model.set_prefill_chunk(chunk);
    model
        .prefill(prompt, 0, experts, &mut NoObserver)
        .expect("prefill")
}

/// Every chunk size from 1 to each golden prompt's length gives token-by-token's logits (and
/// the golden ones), and a few give its greedy continuation.
fn every_chunk_size_matches(name: &str) {
    let Some(dir) = fixture(name) else {
        return;
    };
    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    for (i, p) in golden(&dir).iter().enumerate() {
        let ids = &p.input_ids;
        let want = prefill(&mut model, &mut experts, ids, 1);
        let mut worst: f32 = 0.0;
        for chunk in 1..=ids.len() {
            let got = prefill(&mut model, &mut experts, ids, chunk);
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= LOGIT_TOL,
                "{name} prompt {i} chunk {chunk}: logits off by {d}"
            );
            worst = worst.max(d);
            if chunk == ids.len() {
                let g = max_abs_diff(&got, &p.last_logits);
                println!("{name} prompt {i}: chunked vs golden last logits {g:e}");
            }
        }
        println!(
            "{name} prompt {i}: {} chunk sizes, worst vs token by token {worst:e}",
            ids.len()
        );
        model.set_prefill_chunk(1);
        model.reset();
        let reference = generate_greedy(&mut model, ids, TOKENS, &mut experts, &mut NoObserver)
            .expect("generate");
        for chunk in [2, 5, ids.len()] {
            model.set_prefill_chunk(chunk);
            model.reset();
            let got = generate_greedy(&mut model, ids, TOKENS, &mut experts, &mut NoObserver)
                .expect("generate");
            assert_eq!(
                got, reference,
                "{name} prompt {i} chunk {chunk}: greedy tokens"
            );
        }
    }
}

#[test]
fn qwen3_chunked_prefill_matches_token_by_token_at_every_chunk_size() {
    every_chunk_size_matches("tiny-qwen3-moe");
}

#[test]
fn qwen35_chunked_prefill_matches_token_by_token_at_every_chunk_size() {
    // Gated DeltaNet layers scan the chunk token by token, attention layers attend causally.
    if qwen35_common::fixture().is_some() {
        every_chunk_size_matches("tiny-qwen35-moe");
    }
}

/// Observers see every token's routing, token by token and layer by layer, as without chunks.
#[test]
fn observers_see_the_same_routing_and_pregate_scores() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    let ids = &golden(&dir)[1].input_ids;
    let mut record = |chunk: usize| {
        model.set_prefill_chunk(chunk);
        model.reset();
        let mut rec = TraceRecorder::new(true);
        model
            .prefill(ids, 0, &mut experts, &mut rec)
            .expect("prefill");
        rec
    };
    let (one, chunked) = (record(1), record(7));
    let layers = model.config().num_layers;
    assert_eq!(one.routing.len(), ids.len() * layers);
    assert_eq!(chunked.routing.len(), one.routing.len());
    for (a, b) in one.routing.iter().zip(&chunked.routing) {
        assert_eq!((a.pos, a.layer, &a.ids), (b.pos, b.layer, &b.ids));
        assert!(max_abs_diff(&a.weights, &b.weights) < 1e-5);
    }
    assert_eq!(one.pregate.len(), ids.len() * (layers - 1));
    for (a, b) in one.pregate.iter().zip(&chunked.pregate) {
        assert_eq!((a.0, a.1), (b.0, b.1));
        assert!(max_abs_diff(&a.2, &b.2) < 1e-5);
    }
    let st = model.prefill_stats();
    // One chunked prefill of 26 tokens in chunks of 7: 4 chunks, one union per layer each.
    assert_eq!(
        (st.tokens, st.chunks, st.unions),
        (26, 4, 4 * layers as u64)
    );
    assert!(st.max_union <= model.config().num_experts && st.max_union >= model.config().top_k);
    assert!(st.mean_union() >= model.config().top_k as f64);
}

/// Experts streamed through io-sched at every budget down to one layer's top-k records, with
/// and without pre-gate: the logits and tokens of token-by-token prefill from memory, and each
/// union expert read at most once per chunk (demand reads plus used prefetches).
///
/// f32 activations: the CPU's default int8 activations round each matvec's input, so a
/// last-bit difference from the summation order can move a rounding step (and a near-tied
/// routing); f32 keeps the comparison to the order alone.
fn streamed_matches(name: &str, bits: u32, format: WeightFormat) {
    let Some(dir) = fixture(name) else {
        return;
    };
    let (_tmp, packed) = pack_fixture(&dir, bits);
    let m = PackedModel::open(&packed).expect("open packed");
    let ids = &golden(&dir)[2].input_ids;
    let cpu = || CpuBackend::new().with_activations(flashmoe_backends::Activations::F32);
    let (mut model, mut mem) = {
        let model = m.load_model(cpu(), 256).expect("model");
        let experts = flashmoe_engine::InMemoryExperts::pack(
            &flashmoe_engine::Checkpoint::open(&dir, m.config.dtype).expect("checkpoint"),
            &m.config,
            flashmoe_engine::FamilyNames::of(m.config.family),
            format,
        )
        .expect("pack");
        (model, experts)
    };
    model.set_prefill_chunk(1);
    let want_logits = prefill(&mut model, &mut mem, ids, 1);
    model.reset();
    let want = generate_greedy(&mut model, ids, TOKENS, &mut mem, &mut NoObserver)
        .expect("in-memory generate");
    let slot = m.experts.max_read_len();
    let k = m.config.top_k as u64;
    let all = slot * (m.config.num_layers * m.config.num_experts) as u64;
    // Logits of each chunk size at the first budget: every other budget and prediction gives
    // them bit for bit (a token's experts are summed in routing order, whatever order the
    // cache hands them out in).
    let mut first: std::collections::HashMap<usize, Vec<f32>> = Default::default();
    for budget in [k * slot, (k + 3) * slot, all / 4, all] {
        for pregate in [false, true] {
            for chunk in [1, 8, ids.len()] {
                let (sched, _) = open_scheduler(
                    &m,
                    SchedulerConfig::with_budget(budget),
                    &BackendConfig::default(),
                )
                .expect("scheduler");
                let mode = if pregate {
                    Prediction::Pregate
                } else {
                    Prediction::None
                };
                let policy = SessionConfig::new(m.config.top_k);
                let (mut experts, mut obs) =
                    streamed(sched.clone(), m.record, mode, policy).expect("source");
                model.set_prefill_chunk(chunk);
                model.reset();
                model.reset_prefill_stats();
                let got_logits = model
                    .prefill(ids, 0, &mut experts, &mut obs)
                    .expect("streamed prefill");
                let t = sched.metrics().total();
                let what = format!(
                    "{name} budget {} slots pregate {pregate} chunk {chunk}",
                    budget / slot
                );
                let d = max_abs_diff(&got_logits, &want_logits);
                assert!(d <= LOGIT_TOL, "{what}: logits off by {d}");
                let same = first.entry(chunk).or_insert_with(|| got_logits.clone());
                assert!(
                    *same == got_logits,
                    "{what}: logits differ from the first budget's"
                );
                assert_eq!(t.failed_loads, 0);
                if chunk > 1 {
                    let st = model.prefill_stats();
                    let union = st.union_experts * slot;
                    let used = t.bytes_read() - t.wasted_bytes;
                    println!(
                        "{what}: read {} KiB ({} KiB wasted) for unions of {} KiB; mean union {:.1}",
                        t.bytes_read() >> 10,
                        t.wasted_bytes >> 10,
                        union >> 10,
                        st.mean_union()
                    );
                    assert!(
                        used <= union,
                        "{what}: {used} bytes used of unions of {union}"
                    );
                }
                model.reset();
                let got = generate_greedy(&mut model, ids, TOKENS, &mut experts, &mut obs)
                    .expect("streamed generate");
                assert_eq!(got, want, "{what}: greedy tokens");
            }
        }
    }
}

#[test]
fn qwen3_streamed_chunked_prefill_same_tokens_at_every_budget() {
    streamed_matches("tiny-qwen3-moe", 4, WeightFormat::Q4_64);
}

#[test]
fn qwen35_streamed_chunked_prefill_same_tokens_at_every_budget() {
    // Its experts' 32 columns are below a 4-bit group: packed in bf16.
    streamed_matches("tiny-qwen35-moe", 16, WeightFormat::Bf16);
}

/// A chunk past the KV cache or with a token outside the vocabulary is an error, not a panic.
#[test]
fn bad_chunks_are_errors() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    model.set_prefill_chunk(4);
    let long = vec![1u32; model.max_seq() + 1];
    assert!(
        model
            .prefill(&long, 0, &mut experts, &mut NoObserver)
            .is_err()
    );
    model.reset();
    let vocab = model.config().vocab_size as u32;
    assert!(
        model
            .prefill(&[1, 2, vocab], 0, &mut experts, &mut NoObserver)
            .is_err()
    );
    assert!(
        model
            .prefill(&[1, 2], 5, &mut experts, &mut NoObserver)
            .is_err()
    );
    assert!(
        model
            .prefill(&[], 0, &mut experts, &mut NoObserver)
            .is_err()
    );
    assert_eq!(model.prefill_chunk(), 4);
    model.set_prefill_chunk(0);
    assert_eq!(model.prefill_chunk(), 1);
    let cfg = model.config();
    let free = MoeModel::<CpuBackend>::default_prefill_chunk(cfg);
    assert!(free > 1);
    // A backend whose tensors hold 3 tokens' parked expert outputs gets chunks of 3.
    let widest = cfg.top_k * cfg.hidden_size;
    assert!(widest >= cfg.q_dim() && widest >= cfg.num_experts);
    assert_eq!(
        MoeModel::<CpuBackend>::prefill_chunk_within(cfg, 3 * widest + 1),
        3.min(free)
    );
    assert_eq!(MoeModel::<CpuBackend>::prefill_chunk_within(cfg, 0), 1);
    assert_eq!(
        MoeModel::<CpuBackend>::prefill_chunk_within(cfg, usize::MAX),
        free
    );
}
