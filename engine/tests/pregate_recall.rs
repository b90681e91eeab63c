//! Pre-gate recall on the fixture against the reference's own figure (stats.json,
//! `routing.pregate.moe_in`): layer L+1's router applied to layer L's MoE input predicts layer
//! L+1's top-4 as well here as in HF transformers.

mod common;

use common::{fixture, load};
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::TraceRecorder;
use safetensors::SafeTensors;

/// Sequences of the routing trace replayed (each 256 tokens, from position 0). The reference
/// used all 79; `FLASHMOE_PREGATE_SEQS` raises it.
const DEFAULT_SEQS: usize = 16;

#[test]
fn pregate_recall_matches_the_reference_within_two_points() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
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

    let bytes = std::fs::read(dir.join("routing_trace.safetensors")).expect("trace");
    let st = SafeTensors::deserialize(&bytes).expect("parse trace");
    let ids: Vec<u32> = st
        .tensor("input_ids")
        .expect("input_ids")
        .data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
        .collect();
    let seq_len = 256;
    let seqs = std::env::var("FLASHMOE_PREGATE_SEQS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEQS)
        .min(ids.len() / seq_len);
    let (layers, k) = (8usize, 4usize);

    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    let mut hits = vec![0usize; layers];
    let mut trials = vec![0usize; layers];
    for s in 0..seqs {
        model.reset();
        let mut rec = TraceRecorder::new(true);
        for (pos, &t) in ids[s * seq_len..(s + 1) * seq_len].iter().enumerate() {
            model
                .forward(t, pos, &mut experts, &mut rec)
                .expect("forward");
        }
        for (pos, layer, scores) in &rec.pregate {
            let predicted = flashmoe_engine::sampler::top_k(scores, k);
            let actual = &rec.routing[pos * layers + *layer as usize];
            hits[*layer as usize] += actual.ids.iter().filter(|i| predicted.contains(i)).count();
            trials[*layer as usize] += k;
        }
    }
    let pairs: Vec<f64> = (1..layers)
        .map(|l| hits[l] as f64 / trials[l] as f64)
        .collect();
    let mean = pairs.iter().sum::<f64>() / pairs.len() as f64;
    println!(
        "pre-gate recall over {seqs} sequences, pairs 0->1..6->7: {pairs:.3?}, mean {mean:.4}"
    );
    println!(
        "reference (HF, 79 sequences):                           {ref_pairs:.3?}, mean {ref_mean:.4}"
    );
    assert!(
        (mean - ref_mean).abs() <= 0.02,
        "mean pre-gate recall {mean:.4} vs the reference's {ref_mean:.4}"
    );
    for (i, (got, want)) in pairs.iter().zip(&ref_pairs).enumerate() {
        assert!(
            (got - want).abs() <= 0.02,
            "pair {i}->{}: pre-gate recall {got:.4} vs the reference's {want:.4}",
            i + 1
        );
    }
}
