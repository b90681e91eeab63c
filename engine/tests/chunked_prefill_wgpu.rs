//! Chunked prefill on the wgpu backend (the row ops' defaults over its vector kernels, its
//! batched kernels where it has them): logits equal its own token-by-token prefill within the
//! bf16 tolerance at chunk sizes from 2 to the prompt length, on both fixtures, and greedy continuations match.
//!
//! Skips (printing why) where no wgpu adapter exists; CI installs lavapipe.

mod common;

use common::{fixture, golden, load_on, max_abs_diff};
use flashmoe_backends::quant::WeightFormat;
use flashmoe_backends::wgpu::{WgpuBackend, WgpuConfig};
use flashmoe_engine::{NoObserver, generate_greedy};

/// The golden tests' bf16 tolerance (both prefills compute in f32 from the same bf16 values).
const LOGIT_TOL: f32 = 1e-4;

fn gpu() -> Option<WgpuBackend> {
    match WgpuBackend::new(&WgpuConfig::default()) {
        Ok(be) => Some(be),
        Err(e) if std::env::var_os("FLASHMOE_REQUIRE_GPU").is_some() => {
            panic!("FLASHMOE_REQUIRE_GPU is set but no wgpu adapter opened: {e}")
        }
        Err(e) => {
            println!("SKIP: no wgpu adapter ({e}); install mesa-vulkan-drivers for lavapipe");
            None
        }
    }
}

fn chunked_matches_on_gpu(name: &str) {
    let Some(dir) = fixture(name) else {
        return;
    };
    let Some(be) = gpu() else {
        return;
    };
    let (mut model, mut experts) = load_on(be, &dir, WeightFormat::Bf16);
    let ids = &golden(&dir)[1].input_ids;
    let mut run = |chunk: usize| {
        model.set_prefill_chunk(chunk);
        model.reset();
        model
            .prefill(ids, 0, &mut experts, &mut NoObserver)
            .expect("prefill")
    };
    let want = run(1);
    let mut worst: f32 = 0.0;
    // A few sizes (the CPU test runs every one; lavapipe is slow): even, odd, most, all.
    for chunk in [2, 5, ids.len() - 1, ids.len()] {
        let d = max_abs_diff(&run(chunk), &want);
        assert!(d <= LOGIT_TOL, "{name} chunk {chunk}: logits off by {d}");
        worst = worst.max(d);
    }
    println!("{name} on wgpu: worst chunked vs token by token {worst:e}");
    let mut greedy = |chunk: usize| {
        model.set_prefill_chunk(chunk);
        model.reset();
        generate_greedy(&mut model, ids, 8, &mut experts, &mut NoObserver).expect("generate")
    };
    let reference = greedy(1);
    assert_eq!(greedy(ids.len()), reference, "{name}: greedy tokens");
}

#[test]
fn qwen3_chunked_prefill_on_wgpu_matches_token_by_token() {
    chunked_matches_on_gpu("tiny-qwen3-moe");
}

#[test]
fn qwen35_chunked_prefill_on_wgpu_matches_token_by_token() {
    chunked_matches_on_gpu("tiny-qwen35-moe");
}
