//! `engine/examples/c/generate.c`, compiled with `cc` against the committed header and this
//! crate's static library, generates the default model's greedy tokens: the same tokens as
//! the Rust path `flashmoe generate` takes, then checks cancel and reset.

use std::path::{Path, PathBuf};

use flashmoe_capi_common::testing::{compile_c, static_lib};
use std::process::Command;

use flashmoe_backends::CpuBackend;
use flashmoe_engine::sampler::Sampler;
use flashmoe_engine::{PackedModel, Prediction, generate, open_scheduler, streamed};
use io_sched::backend::select::BackendConfig;
use io_sched::{SchedulerConfig, SessionConfig};

const PROMPT: &str = "The Rust programming language";
const TOKENS: usize = 32;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `generate.c` compiled into `dir`.
fn compile(dir: &Path) -> PathBuf {
    let root = repo();
    let out = dir.join("generate");
    compile_c(
        &root.join("engine/examples/c/generate.c"),
        &root.join("capi/engine/include"),
        &static_lib("libflashmoe_engine_capi.a"),
        &out,
    );
    out
}

/// The greedy tokens of the Rust path `flashmoe generate` takes (src/cmd/generate.rs): the
/// packed model, its experts through io-sched at a 25% budget with pre-gate hints.
fn rust_greedy(dir: &Path) -> Vec<u32> {
    let m = PackedModel::open(dir).expect("open the default model");
    let all =
        m.experts.max_read_len() * (m.experts.num_layers() as u64 * m.experts.num_experts() as u64);
    let budget = (all as f64 * 0.25).ceil() as u64;
    let (sched, _) = open_scheduler(
        &m,
        SchedulerConfig::with_budget(budget),
        &BackendConfig::default(),
    )
    .expect("scheduler");
    let prompt = m.tokenizer.encode(PROMPT).unwrap();
    let cfg = &m.config;
    let mut model = m
        .load_model(CpuBackend::new(), prompt.len() + TOKENS)
        .unwrap();
    let policy = SessionConfig::new(cfg.top_k).with_per_layer(cfg.top_k + 2);
    let (mut experts, mut prefetch) =
        streamed(sched, m.record, Prediction::Pregate, policy).unwrap();
    let g = generate(
        &mut model,
        &prompt,
        TOKENS,
        &m.eos,
        &mut Sampler::new(0.0, 1.0, 0),
        &mut experts,
        &mut prefetch,
        &mut |_| Ok(()),
    )
    .unwrap();
    g.tokens
}

#[test]
fn generate_c_example_matches_the_rust_greedy_tokens_and_cancels_and_resets() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile(tmp.path());
    let model = repo().join("models/tiny-qwen3-moe-q4");
    let o = Command::new(&exe)
        .arg(&model)
        .arg(TOKENS.to_string())
        .arg(PROMPT)
        .output()
        .expect("run generate");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "generate failed:\n{stdout}{stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tokens:"))
        .unwrap_or_else(|| panic!("no tokens line:\n{stdout}"));
    let from_c: Vec<u32> = line
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    assert!(!from_c.is_empty());
    assert_eq!(
        from_c,
        rust_greedy(&model),
        "C and Rust greedy tokens differ"
    );
    assert!(stdout.contains("cancel: ok"), "{stdout}");
    assert!(stdout.contains("reset: same tokens"), "{stdout}");
    assert!(
        stdout.contains("expected error: FME_STATUS_NULL fme_generate: `prompt` is NULL"),
        "{stdout}"
    );
    // The streamed text is what the prompt continues with.
    assert!(stderr.starts_with(PROMPT), "{stderr}");
}

#[test]
fn a_missing_model_dir_is_reported_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile(tmp.path());
    let missing = tmp.path().join("no-model");
    let o = Command::new(&exe)
        .arg(&missing)
        .output()
        .expect("run generate");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("FME_STATUS_MODEL") && stderr.contains(&*missing.to_string_lossy()),
        "{stderr}"
    );
}
