//! Helpers of the MLX checkpoint tests: the test checkpoints of `tests/data/mlx` (made by its
//! `make.py` with mlx-lm's converter), mlx-lm's recorded outputs, and packing them.
#![allow(dead_code)]

use flashmoe_backends::ComputeBackend;
use flashmoe_engine::{
    MoeModel, NoObserver, PackOptions, PackedModel, SchedExperts, generate_greedy, open_scheduler,
    pack_model_with,
};
use io_sched::SchedulerConfig;
use io_sched::backend::select::BackendConfig;
use std::path::{Path, PathBuf};

/// `tests/data/mlx/<name>`, or `None` (reason printed) when absent; absent is a failure when
/// `FLASHMOE_REQUIRE_MLX=1` (set by CI once `make.py` has regenerated the large ones with
/// mlx-lm) or, for the committed ones, `FLASHMOE_REQUIRE_FIXTURES=1`.
pub fn mlx_dir(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/mlx")
        .join(name);
    if dir.join("config.json").exists() && dir.join("mlx_golden.json").exists() {
        return Some(dir);
    }
    let why = format!(
        "MLX test checkpoint {} not found (made by `python3 engine/tests/data/mlx/make.py`, \
         which needs `pip install \"mlx[cpu]\" mlx-lm` and ../shared/fixtures)",
        dir.display()
    );
    let required = if regenerated(name) {
        std::env::var("FLASHMOE_REQUIRE_MLX").is_ok_and(|v| v == "1")
    } else {
        flashmoe_test_support::fixtures_required()
    };
    if required {
        panic!("the test data is required here but {why}");
    }
    println!("SKIP: {why}");
    None
}

/// Whether `make.py` regenerates checkpoint `name` (listed in tests/data/mlx/.gitignore)
/// rather than it being committed.
fn regenerated(name: &str) -> bool {
    let ignore = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mlx/.gitignore");
    std::fs::read_to_string(ignore)
        .is_ok_and(|t| t.lines().any(|l| l.trim().trim_end_matches('/') == name))
}

/// mlx-lm's outputs on one prompt (`make.py`).
pub struct MlxPrompt {
    pub input_ids: Vec<u32>,
    /// Argmax of the logits after each prompt position.
    pub top1: Vec<u32>,
    /// Logits after the last prompt position (`f32` run only).
    pub last_logits: Vec<f32>,
    /// `generate_step`'s greedy continuation (40 tokens).
    pub greedy_ids: Vec<u32>,
}

/// The prompts of `mlx_golden.json`'s `run` (`"f32"`: float32 activations, as flashmoe; `"bf16"`:
/// the model as converted).
pub fn mlx_golden(dir: &Path, run: &str) -> Vec<MlxPrompt> {
    let text = std::fs::read_to_string(dir.join("mlx_golden.json")).expect("read mlx_golden.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("parse mlx_golden.json");
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect()
            })
            .unwrap_or_default()
    };
    v[run]
        .as_array()
        .expect("run array")
        .iter()
        .map(|p| MlxPrompt {
            input_ids: ids(&p["input_ids"]),
            top1: ids(&p["top1"]),
            last_logits: p["last_logits"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_f64())
                        .map(|v| v as f32)
                        .collect()
                })
                .unwrap_or_default(),
            greedy_ids: ids(&p["greedy_ids"]),
        })
        .collect()
}

/// Packs the MLX checkpoint `dir` (as stored) into a fresh temporary directory.
pub fn pack_mlx(dir: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("packed");
    pack_model_with(dir, &out, &PackOptions::new(), &mut |_, _| {}).expect("pack MLX checkpoint");
    (tmp, out)
}

/// A packed model on `be`, experts streamed through io-sched with room for all of them.
pub struct Running<B: ComputeBackend> {
    pub model: MoeModel<B>,
    pub experts: SchedExperts,
}

impl<B: ComputeBackend> Running<B> {
    pub fn open(m: &PackedModel, be: B) -> Self {
        let (sched, _) = open_scheduler(
            m,
            SchedulerConfig::with_budget(m.expert_bytes() + (1 << 20)),
            &BackendConfig::default(),
        )
        .expect("scheduler");
        Self {
            model: m.load_model(be, 256).expect("load model"),
            experts: SchedExperts::new(sched, m.record).expect("expert source"),
        }
    }

    /// Logits after every position of `ids` from an empty cache.
    pub fn logits(&mut self, ids: &[u32]) -> Vec<Vec<f32>> {
        self.model.reset();
        ids.iter()
            .enumerate()
            .map(|(pos, &t)| {
                self.model
                    .forward(t, pos, &mut self.experts, &mut NoObserver)
                    .expect("forward")
            })
            .collect()
    }

    /// The greedy continuation of `ids`.
    pub fn greedy(&mut self, ids: &[u32], n: usize) -> Vec<u32> {
        self.model.reset();
        generate_greedy(&mut self.model, ids, n, &mut self.experts, &mut NoObserver)
            .expect("greedy")
    }
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `../shared/fixtures/<name>`, or `None` (reason printed) when absent; absent is a failure
/// when `FLASHMOE_REQUIRE_FIXTURES=1` (see `flashmoe_test_support`).
pub fn shared_fixture(name: &str) -> Option<PathBuf> {
    flashmoe_test_support::fixture(&format!("{name}/config.json"))
        .and_then(|p| p.parent().map(Path::to_path_buf))
}
