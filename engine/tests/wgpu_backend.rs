//! The decode step on the wgpu backend against the CPU backend and the HF golden outputs:
//! bf16 logits and greedy continuations, 4-bit top-1 agreement, and experts streamed through
//! io-sched with pre-gate staging into the GPU's expert ring.
//!
//! Skips (printing why) where no wgpu adapter exists; CI installs lavapipe.

mod common;

use common::{fixture, golden, load_on, max_abs_diff};
use flashmoe_backends::CpuBackend;
use flashmoe_backends::quant::WeightFormat;
use flashmoe_backends::wgpu::{WgpuBackend, WgpuConfig};
use flashmoe_engine::sampler::argmax;
use flashmoe_engine::{
    InMemoryExperts, MoeModel, NoObserver, PackedModel, Prediction, generate_greedy,
    open_scheduler, streamed,
};
use io_sched::SchedulerConfig;
use io_sched::backend::select::BackendConfig;

/// Max |logit difference| between the two backends at bf16: both compute in f32 from the same
/// bf16 values, only the summation order differs (GPU: 32 partial sums per row); measured
/// ~1e-5 on lavapipe. A wrong kernel moves logits by > 1e-2.
const BACKEND_TOL: f32 = 2e-4;

fn gpu(cfg: &WgpuConfig) -> Option<WgpuBackend> {
    match WgpuBackend::new(cfg) {
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

/// The same fixture on the GPU and on the CPU, experts in memory in one format.
struct Both {
    gpu: (MoeModel<WgpuBackend>, InMemoryExperts),
    cpu: (MoeModel<CpuBackend>, InMemoryExperts),
}

impl Both {
    fn load(be: WgpuBackend, dir: &std::path::Path, format: WeightFormat) -> Self {
        Self {
            gpu: load_on(be, dir, format),
            // The GPU computes with f32 activations: compare the CPU's same maths.
            cpu: load_on(
                CpuBackend::new().with_activations(flashmoe_backends::Activations::F32),
                dir,
                format,
            ),
        }
    }

    /// (gpu, cpu) logits after each prompt position, from an empty cache.
    fn prompt_logits(&mut self, ids: &[u32]) -> Vec<(Vec<f32>, Vec<f32>)> {
        let ((gm, ge), (cm, ce)) = (&mut self.gpu, &mut self.cpu);
        gm.reset();
        cm.reset();
        ids.iter()
            .enumerate()
            .map(|(pos, &t)| {
                let g = gm
                    .forward(t, pos, ge, &mut NoObserver)
                    .expect("gpu forward");
                let c = cm
                    .forward(t, pos, ce, &mut NoObserver)
                    .expect("cpu forward");
                (g, c)
            })
            .collect()
    }

    /// (gpu, cpu) greedy continuations of `ids`.
    fn greedy(&mut self, ids: &[u32], n: usize) -> (Vec<u32>, Vec<u32>) {
        let ((gm, ge), (cm, ce)) = (&mut self.gpu, &mut self.cpu);
        let g = generate_greedy(gm, ids, n, ge, &mut NoObserver).expect("gpu greedy");
        let c = generate_greedy(cm, ids, n, ce, &mut NoObserver).expect("cpu greedy");
        (g, c)
    }
}

#[test]
fn bf16_logits_and_greedy_match_cpu_and_golden() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let Some(be) = gpu(&WgpuConfig::default()) else {
        return;
    };
    println!("adapter: {}", be.info());
    let mut both = Both::load(be, &dir, WeightFormat::Bf16);
    let mut worst = 0f32;
    for (i, p) in golden(&dir).iter().enumerate() {
        let logits = both.prompt_logits(&p.input_ids);
        for (pos, (g, c)) in logits.iter().enumerate() {
            let d = max_abs_diff(g, c);
            worst = worst.max(d);
            assert!(
                d < BACKEND_TOL,
                "prompt {i} pos {pos}: wgpu vs cpu logits differ by {d}"
            );
            if pos + 1 == p.input_ids.len() {
                let e = max_abs_diff(g, &p.last_logits);
                assert!(
                    e < BACKEND_TOL,
                    "prompt {i}: wgpu vs golden last logits differ by {e}"
                );
            }
        }
        let n = p.greedy_ids.len();
        let (g, c) = both.greedy(&p.input_ids, n);
        assert_eq!(g, c, "prompt {i}: greedy continuation wgpu vs cpu");
        assert_eq!(
            g, p.greedy_ids,
            "prompt {i}: greedy continuation wgpu vs golden"
        );
        println!("prompt {i}: greedy {n} tokens identical on wgpu, cpu and golden");
    }
    println!("bf16 wgpu vs cpu: max |logit diff| {worst:.3e} over every prompt position");
}

#[test]
fn q4_top1_agreement_on_wgpu() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let Some(be) = gpu(&WgpuConfig::default()) else {
        return;
    };
    let mut both = Both::load(be, &dir, WeightFormat::Q4_64);
    let (mut golden_ok, mut cpu_ok, mut n) = (0, 0, 0);
    for p in golden(&dir) {
        let logits = both.prompt_logits(&p.input_ids);
        for (pos, (g, c)) in logits.iter().enumerate() {
            n += 1;
            golden_ok += usize::from(argmax(g) == Some(p.top5_ids[pos][0]));
            cpu_ok += usize::from(argmax(g) == argmax(c));
        }
    }
    println!("q4 on wgpu: top-1 = golden {golden_ok}/{n}, = cpu q4 {cpu_ok}/{n}");
    assert!(
        golden_ok as f64 >= 0.9 * n as f64,
        "top-1 vs golden {golden_ok}/{n} < 90%"
    );
    assert_eq!(cpu_ok, n, "q4 top-1 differs between wgpu and cpu");
}

/// The committed default model, streamed through io-sched at a 25 % budget with pre-gate
/// hints, on a ring too small to hold every expert: same tokens as the CPU, and the staging
/// path really runs (predicted experts uploaded ahead and later used from the ring).
#[test]
fn streamed_experts_with_pregate_staging_match_cpu() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4");
    let m = PackedModel::open(&dir).expect("default model");
    let slot = m.record.record_len as u64;
    let Some(be) = gpu(&WgpuConfig {
        expert_ring_bytes: Some(24 * slot.div_ceil(256) * 256),
        ..WgpuConfig::default()
    }) else {
        return;
    };
    let prompt = m
        .tokenizer
        .encode("The Rust programming language")
        .expect("encode");
    let k = m.config.top_k;
    let run = |tokens: &mut Vec<u32>, model_gpu: Option<WgpuBackend>| {
        let budget = m.experts.max_read_len() * 64;
        let (sched, _) = open_scheduler(
            &m,
            SchedulerConfig::with_budget(budget),
            &BackendConfig::default(),
        )
        .expect("scheduler");
        let policy = io_sched::SessionConfig::new(k).with_per_layer(k + 2);
        let (mut experts, mut prefetch) =
            streamed(sched, m.record, Prediction::Pregate, policy).expect("experts");
        *tokens = match model_gpu {
            Some(be) => {
                let mut model = m.load_model(be, 256).expect("gpu model");
                // The prompt in one chunk: its experts run through `matmul_bytes` on the
                // chunk's rows, not through the ring, which sees the 31 decode steps.
                model.set_prefill_chunk(prompt.len());
                let out = generate_greedy(&mut model, &prompt, 32, &mut experts, &mut prefetch)
                    .expect("gpu generate");
                let s = model.backend().stats().ring;
                println!("ring: {s:?}");
                let routed = 31 * m.config.num_layers * k;
                assert_eq!(
                    s.resident_hits + s.demand_uploads,
                    routed as u64,
                    "every routed expert is either resident or uploaded at demand"
                );
                assert!(s.staged_uploads > 0, "no predicted expert was staged ahead");
                assert!(s.staged_hits > 0, "no staged expert was used");
                assert!(s.demand_uploads > 0, "the small ring should still miss");
                out
            }
            None => {
                let mut model = m
                    .load_model(
                        flashmoe_backends::CpuBackend::new()
                            .with_activations(flashmoe_backends::Activations::F32),
                        256,
                    )
                    .expect("cpu model");
                generate_greedy(&mut model, &prompt, 32, &mut experts, &mut prefetch)
                    .expect("cpu generate")
            }
        };
    };
    let (mut on_gpu, mut on_cpu) = (Vec::new(), Vec::new());
    run(&mut on_gpu, Some(be));
    run(&mut on_cpu, None);
    assert_eq!(on_gpu, on_cpu, "streamed greedy tokens wgpu vs cpu");
}
