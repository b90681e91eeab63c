//! Qwen3-Next (fused `in_proj_qkvz` / `in_proj_ba`, grouped per key head) against transformers:
//! a tiny random Qwen3-Next written by `tests/data/make_tiny_qwen3_next.py` (transformers
//! 5.24, saved in bf16) with the float32 logits of transformers' own forward on those weights.

mod common;

use common::{load, max_abs_diff};
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::NoObserver;
use safetensors::SafeTensors;

/// Max |logit - transformers| at any position. Both sides compute in f32 from the same bf16
/// weights; transformers runs the chunked delta rule (chunks of 64) and F.conv1d, we run the
/// recurrence step by step, so only summation order differs. The logits are O(1) (random init,
/// initializer_range 0.1); the smallest routing margin is 1.5e-3 (golden.json), so no
/// rounding-sized flip can change the experts. A wrong fused-row order, gate or norm offset
/// moves logits by > 1e-2.
const TOL: f32 = 1e-4;

#[test]
fn fused_projections_match_transformers_logits() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-qwen3-next");
    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    assert_eq!(model.config().family, flashmoe_engine::Family::Qwen3Next);
    let bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden");
    let st = SafeTensors::deserialize(&bytes).expect("golden safetensors");
    let ids: Vec<u32> = st
        .tensor("input_ids")
        .expect("input_ids")
        .data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
        .collect();
    let want: Vec<f32> = st
        .tensor("logits")
        .expect("logits")
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let v = model.config().vocab_size;
    let mut worst = 0f32;
    for (pos, &t) in ids.iter().enumerate() {
        let got = model
            .forward(t, pos, &mut experts, &mut NoObserver)
            .expect("forward");
        let d = max_abs_diff(&got, &want[pos * v..(pos + 1) * v]);
        worst = worst.max(d);
        assert!(
            d < TOL,
            "position {pos}: logits differ from transformers by {d}"
        );
    }
    println!(
        "qwen3_next: max |logit - transformers| over {} positions: {worst:.3e}",
        ids.len()
    );
}
