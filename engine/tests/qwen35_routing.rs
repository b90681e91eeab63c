//! Routing of the tiny Qwen3.5-MoE fixture: the experts chosen for the fixture's routing-trace
//! tokens equal HF transformers' (sets per token and layer, near-ties allowed by the trace's own
//! `topk_margin`, and what follows such a flip in its sequence), and pre-gate recall matches the fixture's stats.json within 2 points.

mod common;
mod qwen35_common;

use common::load;
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::TraceRecorder;
use half::f16;
use qwen35_common::fixture;
use safetensors::SafeTensors;

/// Probability margin under which a different top-k choice is a legitimate near-tie (64 experts:
/// probabilities are small, so this is ~2x the size of one f32-rounding-sized move after 8 layers).
const NEAR_TIE: f32 = 1e-4;

/// Sequences of the trace replayed (256 tokens each, from position 0); the reference used 79.
const DEFAULT_SEQS: usize = 16;

#[test]
fn routing_matches_hf_trace_and_pregate_recall_matches_stats() {
    let Some(dir) = fixture() else { return };
    let bytes = std::fs::read(dir.join("routing_trace.safetensors")).expect("trace");
    let st = SafeTensors::deserialize(&bytes).expect("parse trace");
    let data = |n: &str| st.tensor(n).expect("trace tensor").data().to_vec();
    let ids: Vec<u32> = data("input_ids")
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
        .collect();
    let experts_raw = data("expert_ids");
    let margin_raw = data("topk_margin");
    let u16_at = |raw: &[u8], i: usize| u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]);
    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    let (layers, k) = (model.config().num_layers, model.config().top_k);
    let seq_len = 256;
    let seqs = std::env::var("FLASHMOE_PREGATE_SEQS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEQS)
        .min(ids.len() / seq_len);
    let (mut same, mut ties, mut downstream, mut total) = (0, 0, 0, 0);
    let mut hits = vec![0usize; layers];
    let mut trials = vec![0usize; layers];
    for s in 0..seqs {
        model.reset();
        let mut rec = TraceRecorder::new(true);
        let start = s * seq_len;
        // The first near-tie flip of this sequence, as (position, layer).
        let mut flipped: Option<(usize, u32)> = None;
        for (pos, &t) in ids[start..start + seq_len].iter().enumerate() {
            model
                .forward(t, pos, &mut experts, &mut rec)
                .expect("forward");
        }
        assert_eq!(rec.routing.len(), seq_len * layers);
        for r in &rec.routing {
            let tok = start + r.pos;
            let base = (tok * layers + r.layer as usize) * k;
            let mut want: Vec<u32> = (0..k)
                .map(|j| u32::from(u16_at(&experts_raw, base + j)))
                .collect();
            let mut got = r.ids.clone();
            want.sort_unstable();
            got.sort_unstable();
            total += 1;
            if got == want {
                same += 1;
                continue;
            }
            let margin =
                f16::from_bits(u16_at(&margin_raw, tok * layers + r.layer as usize)).to_f32();
            let at = (r.pos, r.layer);
            if margin < NEAR_TIE {
                ties += 1;
                flipped.get_or_insert(at);
            } else {
                // After a legitimate near-tie flip the two runs' hidden states differ (through
                // the KV cache and the DeltaNet states) for every later token and layer, so
                // later choices may differ by more than a rounding-sized margin.
                let after = flipped.is_some_and(|f| at > f);
                assert!(
                    after,
                    "seq {s} pos {} layer {}: experts {got:?} vs HF {want:?}, margin {margin}, with no near-tie flip before",
                    r.pos, r.layer
                );
                downstream += 1;
            }
        }
        for (pos, layer, scores) in &rec.pregate {
            let predicted = flashmoe_engine::sampler::top_k(scores, k);
            let actual = &rec.routing[pos * layers + *layer as usize];
            hits[*layer as usize] += actual.ids.iter().filter(|i| predicted.contains(i)).count();
            trials[*layer as usize] += k;
        }
    }
    println!(
        "routing vs HF trace over {seqs} sequences: {same}/{total} identical expert sets, {ties} near-tie differences (margin < {NEAR_TIE}), {downstream} downstream of one"
    );
    assert!(
        (ties + downstream) * 100 <= total,
        "{ties} near-tie flips and {downstream} routings after them in {total}: more than 1%"
    );

    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("stats.json")).expect("stats.json"))
            .expect("stats.json is JSON");
    let reference = &stats["routing"]["pregate"]["moe_in"];
    let ref_pairs: Vec<f64> = reference["recall_topk_per_layer_pair"]
        .as_array()
        .expect("per-pair recall")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect();
    let ref_mean = reference["mean_topk"].as_f64().expect("mean_topk");
    let pairs: Vec<f64> = (1..layers)
        .map(|l| hits[l] as f64 / trials[l] as f64)
        .collect();
    let mean = pairs.iter().sum::<f64>() / pairs.len() as f64;
    println!("pre-gate top-{k} recall, pairs: {pairs:.3?}, mean {mean:.4}");
    println!("reference (HF, 79 sequences): {ref_pairs:.3?}, mean {ref_mean:.4}");
    assert!(
        (mean - ref_mean).abs() <= 0.02,
        "mean pre-gate recall {mean:.4} vs the reference's {ref_mean:.4}"
    );
    // Per pair, a subset of the sequences samples a layer pair's recall with a few points of
    // noise (16 of 79: 6->7 measured 2.8 points off with every routing identical to HF's); over
    // all 79 sequences (FLASHMOE_PREGATE_SEQS=79) the reference's 2 points hold per pair too.
    let pair_tol = if seqs * seq_len >= ids.len() {
        0.02
    } else {
        0.04
    };
    for (i, (got, want)) in pairs.iter().zip(&ref_pairs).enumerate() {
        assert!(
            (got - want).abs() <= pair_tol,
            "pair {i}->{}: pre-gate recall {got:.4} vs the reference's {want:.4}",
            i + 1
        );
    }
}
