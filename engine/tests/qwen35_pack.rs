//! `flashmoe pack` of the tiny Qwen3.5-MoE fixture and the packed model streamed through
//! io-sched: the same tokens as golden at every budget and read backend; the Hub's layouts
//! (multimodal names under `model.language_model.`, fused `experts.gate_up_proj` / `down_proj`,
//! vision and MTP tensors) pack to the very same bytes.

mod common;
mod qwen35_common;

use common::{golden, pack_fixture};
use flashmoe_backends::CpuBackend;
use flashmoe_engine::{PackedModel, Prediction, generate_greedy, open_scheduler};
use io_sched::backend::BackendKind;
use io_sched::backend::select::BackendConfig;
use io_sched::{SchedulerConfig, SessionConfig};
use qwen35_common::fixture;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// Greedy tokens of `prompt` through io-sched at `budget` bytes with pre-gate hints, or `None`
/// (printed) if the read backend cannot start here.
fn streamed(
    m: &PackedModel,
    prompt: &[u32],
    n: usize,
    budget: u64,
    kind: BackendKind,
) -> Option<Vec<u32>> {
    let backend = BackendConfig::default().kind(kind);
    let (sched, _) = match open_scheduler(m, SchedulerConfig::with_budget(budget), &backend) {
        Ok(s) => s,
        Err(e) => {
            println!("SKIP backend {kind:?}: {e}");
            return None;
        }
    };
    let mut model = m.load_model(CpuBackend::new(), 256).expect("model");
    let k = m.config.top_k;
    let policy = SessionConfig::new(k).with_per_layer(k + 2);
    let (mut experts, mut obs) =
        flashmoe_engine::streamed(sched, m.record, Prediction::Pregate, policy).expect("source");
    Some(generate_greedy(&mut model, prompt, n, &mut experts, &mut obs).expect("generate"))
}

#[test]
fn packed_bf16_streams_golden_tokens_at_every_budget_and_backend() {
    let Some(dir) = fixture() else { return };
    let (_tmp, out) = pack_fixture(&dir, 16);
    let m = PackedModel::open(&out).expect("open packed");
    assert_eq!(m.config.family, flashmoe_engine::Family::Qwen35Moe);
    let p = &golden(&dir)[1]; // no documented near-tie: greedy must be exact
    let all = m.expert_bytes();
    let mut runs = 0;
    for kind in [BackendKind::IoUring, BackendKind::Pread, BackendKind::Mmap] {
        for (name, budget) in [("25%", all / 4), ("100%", all)] {
            let Some(got) = streamed(&m, &p.input_ids, p.greedy_ids.len(), budget, kind) else {
                continue;
            };
            assert_eq!(got, p.greedy_ids, "{kind:?} at {name}: greedy tokens");
            runs += 1;
        }
    }
    assert!(runs >= 4, "pread and mmap always run: only {runs} runs");
    println!("{runs} (backend, budget) runs gave the golden 40 tokens");
}

/// Rewrites the fixture as the Hub stores Qwen3.5: `qwen3_5_moe` config with the text model
/// under `text_config`, tensors under `model.language_model.`, experts fused, plus a vision and
/// an MTP tensor that must be skipped.
fn hub_layout(src: &Path, dst: &Path) {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).expect("config"))
            .expect("json");
    let wrapped = serde_json::json!({
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "text_config": cfg,
        "vision_config": {"depth": 1},
        "image_token_id": 4000,
        "tie_word_embeddings": false,
        "transformers_version": "5.17.0",
    });
    std::fs::write(dst.join("config.json"), wrapped.to_string()).expect("write config");
    std::fs::copy(src.join("tokenizer.json"), dst.join("tokenizer.json")).expect("tokenizer");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(src.join("model.safetensors.index.json")).expect("index"),
    )
    .expect("index json");
    let mut files: Vec<String> = index["weight_map"]
        .as_object()
        .expect("weight_map")
        .values()
        .map(|v| v.as_str().expect("file").to_string())
        .collect();
    files.sort();
    files.dedup();
    let blobs: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(src.join(f)).expect("shard"))
        .collect();
    let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for b in &blobs {
        let st = SafeTensors::deserialize(b).expect("shard");
        for (name, t) in st.tensors() {
            tensors.insert(name, (t.dtype(), t.shape().to_vec(), t.data().to_vec()));
        }
    }
    let n_layers = cfg["num_hidden_layers"].as_u64().expect("layers") as usize;
    let n_exp = cfg["num_experts"].as_u64().expect("experts") as usize;
    let (h, i) = (
        cfg["hidden_size"].as_u64().expect("h") as usize,
        cfg["moe_intermediate_size"].as_u64().expect("i") as usize,
    );
    let mut out: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for l in 0..n_layers {
        let (mut gu, mut down) = (Vec::new(), Vec::new());
        for e in 0..n_exp {
            let p = format!("model.layers.{l}.mlp.experts.{e}");
            for k in ["gate_proj", "up_proj"] {
                gu.extend(
                    tensors
                        .remove(&format!("{p}.{k}.weight"))
                        .expect("expert")
                        .2,
                );
            }
            down.extend(
                tensors
                    .remove(&format!("{p}.down_proj.weight"))
                    .expect("expert")
                    .2,
            );
        }
        let p = format!("model.language_model.layers.{l}.mlp.experts");
        out.insert(
            format!("{p}.gate_up_proj"),
            (Dtype::BF16, vec![n_exp, 2 * i, h], gu),
        );
        out.insert(
            format!("{p}.down_proj"),
            (Dtype::BF16, vec![n_exp, h, i], down),
        );
    }
    for (name, t) in tensors {
        let name = match name.strip_prefix("model.") {
            Some(rest) => format!("model.language_model.{rest}"),
            None => name,
        };
        out.insert(name, t);
    }
    out.insert(
        "model.visual.patch_embed.proj.weight".into(),
        (Dtype::BF16, vec![4, 4], vec![0; 32]),
    );
    out.insert(
        "mtp.fc.weight".into(),
        (Dtype::BF16, vec![4, 4], vec![0; 32]),
    );
    let views: Vec<(String, TensorView<'_>)> = out
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serialize");
    std::fs::write(dst.join("model.safetensors"), bytes).expect("write model");
}

#[test]
fn hub_layout_with_fused_experts_packs_to_the_same_bytes() {
    let Some(dir) = fixture() else { return };
    let (_t1, plain) = pack_fixture(&dir, 16);
    let hub = tempfile::tempdir().expect("tempdir");
    hub_layout(&dir, hub.path());
    let (_t2, fused) = pack_fixture(hub.path(), 16);
    for f in std::fs::read_dir(&plain).expect("packed dir") {
        let name = f.expect("entry").file_name();
        let n = name.to_string_lossy();
        if n.starts_with("experts-") || n == "dense.safetensors" {
            let a = std::fs::read(plain.join(&name)).expect("plain");
            let b = std::fs::read(fused.join(&name)).expect("fused");
            assert!(a == b, "{n}: the Hub layout packs to different bytes");
        }
    }
    let m = PackedModel::open(&fused).expect("open hub-layout pack");
    let p = &golden(&dir)[1];
    let got = streamed(
        &m,
        &p.input_ids,
        8,
        m.expert_bytes() / 4,
        BackendKind::Pread,
    )
    .expect("pread runs everywhere");
    assert_eq!(
        got,
        p.greedy_ids[..8],
        "greedy tokens of the hub-layout pack"
    );
}

/// A library user's path: `Checkpoint::open` on the Hub's multimodal layout reads the text
/// model under its own names (no `text_only()` call), and it runs to the golden tokens.
#[test]
fn hub_layout_opens_as_its_text_model() {
    let Some(dir) = fixture() else { return };
    let hub = tempfile::tempdir().expect("tempdir");
    hub_layout(&dir, hub.path());
    let ckpt = flashmoe_engine::Checkpoint::open(hub.path(), None).expect("open hub layout");
    assert!(
        ckpt.names()
            .all(|n| !n.contains("language_model") && !n.contains("visual"))
    );
    assert!(ckpt.contains("model.layers.0.linear_attn.conv1d.weight"));
    let (mut model, mut experts) =
        common::load(hub.path(), flashmoe_backends::quant::WeightFormat::Bf16);
    let p = &golden(&dir)[1];
    let got = generate_greedy(
        &mut model,
        &p.input_ids,
        8,
        &mut experts,
        &mut flashmoe_engine::NoObserver,
    )
    .expect("generate");
    assert_eq!(
        got,
        p.greedy_ids[..8],
        "greedy tokens from the opened hub layout"
    );
}
