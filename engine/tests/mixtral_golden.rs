//! The tiny random Mixtral in tests/data (made by tests/data/make_tiny_mixtral.py with HF
//! transformers) against HF's float32 logits at every position and its greedy continuation.

mod common;

use common::{load, max_abs_diff};
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::{Family, NoObserver, generate_greedy};
use safetensors::SafeTensors;
use std::path::Path;

/// Logits reach |4.8|; both sides compute in f32 from the same bf16 weights (HF's reload vs a
/// fresh model differ by 1.4e-6). 1e-4 leaves room for summation order only.
const LOGIT_TOL: f32 = 1e-4;

fn ints(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).expect("golden tensor");
    t.data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
        .collect()
}

#[test]
fn tiny_mixtral_matches_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-mixtral");
    let bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("parse golden");
    let ids = ints(&st, "input_ids");
    let golden: Vec<f32> = st
        .tensor("logits")
        .expect("logits")
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let greedy_want = ints(&st, "greedy_ids");

    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    assert_eq!(model.config().family, Family::Mixtral);
    assert!(!model.config().qk_norm);
    let vocab = model.config().vocab_size;
    let mut worst = 0f32;
    for (pos, &t) in ids.iter().enumerate() {
        let logits = model
            .forward(t, pos, &mut experts, &mut NoObserver)
            .expect("forward");
        let d = max_abs_diff(&logits, &golden[pos * vocab..(pos + 1) * vocab]);
        assert!(d < LOGIT_TOL, "position {pos}: logits differ by {d}");
        worst = worst.max(d);
    }
    println!(
        "tiny Mixtral: max |logit - HF| over {} positions = {worst:.3e}",
        ids.len()
    );
    let greedy = generate_greedy(
        &mut model,
        &ids,
        greedy_want.len(),
        &mut experts,
        &mut NoObserver,
    )
    .expect("generate");
    assert_eq!(greedy, greedy_want, "greedy continuation");
}
