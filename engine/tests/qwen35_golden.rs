//! The tiny Qwen3.5-MoE fixture (Gated DeltaNet + gated attention + shared expert) against HF
//! transformers' float32 golden outputs, on the CPU backend.
//!
//! Run with `--release` (the model runs a few hundred decode steps).

mod common;

use common::{golden, load, max_abs_diff};
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::sampler::{argmax, top_k};
use flashmoe_engine::{NoObserver, generate_greedy};

/// The fixture, or `None` with the reason printed; fails instead when
/// `FLASHMOE_REQUIRE_FIXTURES=1`.
fn fixture() -> Option<std::path::PathBuf> {
    let dir = common::fixture("tiny-qwen35-moe");
    if dir.is_none() && std::env::var("FLASHMOE_REQUIRE_FIXTURES").as_deref() == Ok("1") {
        panic!("FLASHMOE_REQUIRE_FIXTURES=1 but the tiny-qwen35-moe fixture is absent");
    }
    dir
}

#[test]
fn probe() {
    let Some(dir) = fixture() else { return };
    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    for (i, p) in golden(&dir).iter().enumerate() {
        model.reset();
        let mut logits = Vec::new();
        let mut top1 = 0;
        for (pos, &t) in p.input_ids.iter().enumerate() {
            logits = model.forward(t, pos, &mut experts, &mut NoObserver).expect("forward");
            top1 += usize::from(argmax(&logits) == Some(p.top5_ids[pos][0]));
            let _ = top_k(&logits, 5);
        }
        println!("prompt {i}: last diff {:.3e}, top1 {top1}/{}", max_abs_diff(&logits, &p.last_logits), p.input_ids.len());
        let greedy = generate_greedy(&mut model, &p.input_ids, p.greedy_ids.len(), &mut experts, &mut NoObserver).expect("gen");
        let same = greedy.iter().zip(&p.greedy_ids).take_while(|(a, b)| a == b).count();
        println!("prompt {i}: greedy prefix {same}/40");
    }
}
