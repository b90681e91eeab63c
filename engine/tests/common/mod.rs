//! Shared helpers of the engine's integration tests: fixture lookup and golden data.
#![allow(dead_code)]

use flashmoe_backends::quant::WeightFormat;
use flashmoe_backends::{ComputeBackend, CpuBackend};
use flashmoe_engine::{Checkpoint, FamilyNames, InMemoryExperts, ModelConfig, MoeModel};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

/// `shared/fixtures/<name>` beside the workspace, or `None` (with the reason printed) if absent.
/// Fails instead when `FLASHMOE_REQUIRE_FIXTURES=1` (see `flashmoe_test_support`).
pub fn fixture(name: &str) -> Option<PathBuf> {
    flashmoe_test_support::fixture(&format!("{name}/config.json"))
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The golden data of one prompt.
pub struct GoldenPrompt {
    pub text: String,
    pub input_ids: Vec<u32>,
    pub last_logits: Vec<f32>,
    /// `[T][5]`.
    pub top5_ids: Vec<Vec<u32>>,
    pub top5_logits: Vec<Vec<f32>>,
    pub greedy_ids: Vec<u32>,
}

fn i32s(st: &SafeTensors, name: &str) -> Vec<i32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Reads `golden.safetensors` (numbers) and `golden.json` (prompt texts).
pub fn golden(dir: &Path) -> Vec<GoldenPrompt> {
    let bytes = std::fs::read(dir.join("golden.safetensors")).expect("read golden.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("parse golden.safetensors");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("golden.json")).expect("read golden.json"),
    )
    .expect("golden.json");
    let prompts = json["prompts"].as_array().expect("prompts");
    (0..prompts.len())
        .map(|i| {
            let u = |v: Vec<i32>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
            let top5_ids = u(i32s(&st, &format!("p{i}.top5_ids")))
                .chunks(5)
                .map(<[u32]>::to_vec)
                .collect();
            let top5_logits = f32s(&st, &format!("p{i}.top5_logits"))
                .chunks(5)
                .map(<[f32]>::to_vec)
                .collect();
            GoldenPrompt {
                text: prompts[i]["text"].as_str().expect("text").to_string(),
                input_ids: u(i32s(&st, &format!("p{i}.input_ids"))),
                last_logits: f32s(&st, &format!("p{i}.last_logits")),
                top5_ids,
                top5_logits,
                greedy_ids: u(i32s(&st, &format!("p{i}.greedy_ids"))),
            }
        })
        .collect()
}

/// Loads the model in `dir` on the CPU with its experts packed in memory in `format`.
pub fn load(dir: &Path, format: WeightFormat) -> (MoeModel<CpuBackend>, InMemoryExperts) {
    load_on(CpuBackend::new(), dir, format)
}

/// Loads the model in `dir` on `be` with its experts packed in memory in `format`.
pub fn load_on<B: ComputeBackend>(
    be: B,
    dir: &Path,
    format: WeightFormat,
) -> (MoeModel<B>, InMemoryExperts) {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let ckpt = Checkpoint::open(dir, cfg.dtype).expect("checkpoint");
    let experts = InMemoryExperts::pack(&ckpt, &cfg, FamilyNames::of(cfg.family), format)
        .expect("pack experts");
    let model = MoeModel::load(be, cfg, &ckpt, 256).expect("model");
    (model, experts)
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Packs the fixture `dir` with `bits` into a fresh temporary directory; returns
/// (the tempdir that owns it, the packed model directory).
pub fn pack_fixture(dir: &Path, bits: u32) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("packed");
    flashmoe_engine::pack_model(dir, &out, bits, false, &mut |_, _| {}).expect("pack fixture");
    (tmp, out)
}
