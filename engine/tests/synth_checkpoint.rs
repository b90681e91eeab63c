//! `synth_checkpoint`: a tiny geometry of each preset is written, read back through the
//! engine's own loaders, packed and decoded end to end; same seed gives the same bytes.

use flashmoe_backends::CpuBackend;
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::qwen35_moe::LayerType;
use flashmoe_engine::synth_checkpoint::{Preset, SynthError, SynthSpec};
use flashmoe_engine::{
    Checkpoint, FamilyNames, InMemoryExperts, ModelConfig, MoeModel, NoObserver, PackOptions,
    PackedModel, Tokenizer, TraceRecorder, generate_greedy, pack_model_with,
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A model of 2 layers x 8 experts (top-2), hidden 64, vocab 600 (Qwen3.5: 4 layers, the
/// last full attention, small DeltaNet heads).
fn tiny(preset: Preset, seed: u64) -> SynthSpec {
    if matches!(preset, Preset::Qwen35_35bA3b | Preset::Qwen35_397bA17b) {
        return tiny(Preset::Qwen3_30bA3b, seed)
            .with_preset(preset)
            .layers(4)
            .set("linear_num_key_heads", json!(2))
            .set("linear_num_value_heads", json!(4))
            .set("linear_key_head_dim", json!(16))
            .set("linear_value_head_dim", json!(16))
            .set("shared_expert_intermediate_size", json!(32))
            .set(
                "rope_parameters",
                json!({"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25}),
            );
    }
    let experts = match preset {
        Preset::Mixtral8x7b => "num_local_experts",
        _ => "num_experts",
    };
    let inter = match preset {
        Preset::Mixtral8x7b => "intermediate_size",
        _ => "moe_intermediate_size",
    };
    SynthSpec::new(preset)
        .layers(2)
        .seed(seed)
        .set("hidden_size", json!(64))
        .set("num_attention_heads", json!(2))
        .set("num_key_value_heads", json!(1))
        .set("head_dim", json!(32))
        .set(experts, json!(8))
        .set("num_experts_per_tok", json!(2))
        .set(inter, json!(32))
        .set("vocab_size", json!(600))
        // Small shards, so the index spans several files.
        .shard_bytes(60_000)
        .threads(2)
}

fn write(spec: &SynthSpec) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    spec.write(tmp.path(), &|_, _| {}).expect("write");
    tmp
}

/// Every file of `dir` with its bytes' hash.
fn hashes(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let e = e.expect("entry");
        let bytes = std::fs::read(e.path()).expect("read");
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
        }
        out.insert(e.file_name().to_string_lossy().into_owned(), h);
    }
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_weights() {
    let a = write(&tiny(Preset::Qwen3_30bA3b, 7));
    let b = write(&tiny(Preset::Qwen3_30bA3b, 7).threads(1));
    let c = write(&tiny(Preset::Qwen3_30bA3b, 8));
    let (ha, hb, hc) = (hashes(a.path()), hashes(b.path()), hashes(c.path()));
    assert!(ha.len() >= 8, "files: {:?}", ha.keys());
    assert_eq!(ha, hb, "same seed, any thread count: identical files");
    for (name, h) in &ha {
        if name.ends_with(".safetensors") {
            assert_ne!(
                hc.get(name),
                Some(h),
                "{name} must differ under another seed"
            );
        }
    }
    assert_ne!(
        ha["tokenizer.json"], hc["tokenizer.json"],
        "merges come from the seed"
    );
    assert_eq!(ha["config.json"], hc["config.json"], "the config does not");
}

#[test]
fn the_index_names_every_tensor_once_in_the_shard_holding_it() {
    let t = write(&tiny(Preset::Qwen3_30bA3b, 1));
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.path().join("model.safetensors.index.json")).expect("index"),
    )
    .expect("json");
    let map = index["weight_map"].as_object().expect("weight_map");
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    assert!(shards.len() >= 3, "several shards: {shards:?}");
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for shard in &shards {
        let bytes = std::fs::read(t.path().join(shard)).expect("shard");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse shard");
        for (name, view) in st.tensors() {
            assert!(seen.insert(name.clone()), "{name} is in two shards");
            assert_eq!(
                map[&name].as_str(),
                Some(*shard),
                "{name} indexed in its shard"
            );
            assert_eq!(view.dtype(), safetensors::Dtype::BF16);
            total += view.data().len() as u64;
        }
    }
    assert_eq!(seen.len(), map.len(), "no index entry without a tensor");
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    // 2 layers x (2 norms + 4 attention + 2 q/k norms + router + 8 x 3 experts) + 3.
    assert_eq!(seen.len(), 2 * (2 + 4 + 2 + 1 + 24) + 3);
}

#[test]
fn the_config_parses_as_the_engine_reads_it() {
    for preset in [Preset::Qwen3_30bA3b, Preset::Mixtral8x7b] {
        let t = write(&tiny(preset, 1));
        let cfg = ModelConfig::from_file(&t.path().join("config.json")).expect("config");
        assert_eq!(
            (
                cfg.num_layers,
                cfg.num_experts,
                cfg.top_k,
                cfg.hidden_size,
                cfg.vocab_size
            ),
            (2, 8, 2, 64, 600),
            "{preset:?}"
        );
        assert_eq!(cfg.dtype, Some(WeightFormat::Bf16));
    }
    // The full presets parse too, at their real geometry.
    let (_, q, _) = SynthSpec::new(Preset::Qwen3_30bA3b)
        .layers(8)
        .config()
        .expect("qwen3");
    assert_eq!(
        (
            q.num_layers,
            q.num_experts,
            q.top_k,
            q.hidden_size,
            q.expert_intermediate
        ),
        (8, 128, 8, 2048, 768)
    );
    assert_eq!(
        (q.num_heads, q.num_kv_heads, q.head_dim, q.vocab_size),
        (32, 4, 128, 151_936)
    );
    let (_, m, _) = SynthSpec::new(Preset::Mixtral8x7b)
        .config()
        .expect("mixtral");
    assert_eq!(
        (m.num_layers, m.num_experts, m.top_k, m.expert_intermediate),
        (32, 8, 2, 14_336)
    );
}

#[test]
fn the_tokenizer_round_trips_text_and_fills_the_vocabulary() {
    let t = write(&tiny(Preset::Qwen3_30bA3b, 1));
    let tok = Tokenizer::from_file(&t.path().join("tokenizer.json")).expect("tokenizer");
    for text in [
        "The Rust programming language helps you write faster, more reliable software.",
        "fn main() {\n    let v = vec![1, 2, 3];\n}\n",
        "naïve café — 東京 🚀",
    ] {
        let ids = tok.encode(text).expect("encode");
        assert!(ids.iter().all(|&i| i < 600), "ids inside the vocabulary");
        assert_eq!(tok.decode(&ids).expect("decode"), text);
    }
    // Merges apply: most merged tokens encode back to themselves from their own text.
    let merged: Vec<u32> = (300..597).collect();
    let whole = merged
        .iter()
        .filter(|&&id| {
            let text = tok.decode(&[id]).expect("decode");
            text.len() > 1 && tok.encode(&text).expect("encode") == [id]
        })
        .count();
    assert!(
        whole * 2 > merged.len(),
        "{whole} of {} merged tokens are produced",
        merged.len()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = json["model"]["vocab"].as_object().expect("vocab");
    assert_eq!(
        vocab.len() + 3,
        600,
        "regular tokens + 3 specials = vocab_size"
    );
    let ids: BTreeSet<u64> = vocab.values().filter_map(|v| v.as_u64()).collect();
    assert_eq!(ids.len(), 597);
    assert_eq!(ids.last(), Some(&596), "specials take 597..600");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["eos_token_id"], json!(599));
    assert_eq!(json["added_tokens"][2]["content"], json!("<|im_end|>"));
}

/// Greedy tokens of the checkpoint in memory (bf16 experts) and packed at 16 bits and
/// streamed: the same, finite logits, and routing that varies with the token.
fn decodes_end_to_end(preset: Preset) {
    let t = write(&tiny(preset, 3));
    let dir = t.path();
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let ckpt = Checkpoint::open(dir, cfg.dtype).expect("checkpoint");
    let mut mem =
        InMemoryExperts::pack(&ckpt, &cfg, FamilyNames::of(cfg.family), WeightFormat::Bf16)
            .expect("experts");
    let mut model = MoeModel::load(CpuBackend::new(), cfg.clone(), &ckpt, 64).expect("model");
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 590).collect();
    let mut rec = TraceRecorder::new(false);
    for (pos, &tok) in prompt.iter().enumerate() {
        let logits = model
            .forward(tok, pos, &mut mem, &mut rec)
            .expect("forward");
        assert!(
            logits.iter().all(|x| x.is_finite()),
            "finite logits at {pos}"
        );
        let spread = logits.iter().fold(f32::MIN, |a, &b| a.max(b))
            - logits.iter().fold(f32::MAX, |a, &b| a.min(b));
        assert!(
            spread > 1.0,
            "logits are not flat at {pos}: spread {spread}"
        );
    }
    // Routing depends on the token: layer 0 uses most experts and many distinct sets.
    let l0: Vec<BTreeSet<u32>> = rec
        .routing
        .iter()
        .filter(|r| r.layer == 0)
        .map(|r| r.ids.iter().copied().collect())
        .collect();
    let used: BTreeSet<u32> = l0.iter().flatten().copied().collect();
    let distinct: BTreeSet<&BTreeSet<u32>> = l0.iter().collect();
    assert!(
        used.len() >= 7,
        "{preset:?}: experts used at layer 0: {used:?}"
    );
    assert!(
        distinct.len() >= 8,
        "{preset:?}: distinct expert sets: {}",
        distinct.len()
    );
    model.reset();
    let want = generate_greedy(&mut model, &prompt, 12, &mut mem, &mut NoObserver).expect("greedy");

    let out = tempfile::tempdir().expect("tempdir");
    let packed = out.path().join("packed");
    pack_model_with(dir, &packed, &PackOptions::new().bits(16), &mut |_, _| {}).expect("pack");
    let m = PackedModel::open(&packed).expect("open packed");
    let (sched, _) = flashmoe_engine::open_scheduler(
        &m,
        io_sched::SchedulerConfig::with_budget(m.expert_bytes() / 4 + (1 << 16)),
        &io_sched::backend::select::BackendConfig::default(),
    )
    .expect("scheduler");
    let mut streamed = flashmoe_engine::SchedExperts::new(sched, m.record).expect("experts");
    let mut pm = m.load_model(CpuBackend::new(), 64).expect("load packed");
    let got =
        generate_greedy(&mut pm, &prompt, 12, &mut streamed, &mut NoObserver).expect("greedy");
    assert_eq!(
        got, want,
        "{preset:?}: packed and streamed at a 25% budget = in memory"
    );
}

#[test]
fn a_tiny_qwen3_geometry_packs_and_decodes_end_to_end() {
    decodes_end_to_end(Preset::Qwen3_30bA3b);
}

#[test]
fn a_tiny_mixtral_geometry_packs_and_decodes_end_to_end() {
    decodes_end_to_end(Preset::Mixtral8x7b);
}

#[test]
fn a_tiny_qwen35_geometry_packs_and_decodes_end_to_end() {
    decodes_end_to_end(Preset::Qwen35_397bA17b);
}

#[test]
fn qwen35_presets_parse_with_their_hybrid_layout() {
    for (preset, layers, experts, k, hidden) in [
        (Preset::Qwen35_35bA3b, 40, 256, 8, 2048),
        (Preset::Qwen35_397bA17b, 60, 512, 10, 4096),
    ] {
        let (_, c, sp) = SynthSpec::new(preset).config().expect("config");
        assert_eq!(
            (c.num_layers, c.num_experts, c.top_k, c.hidden_size),
            (layers, experts, k, hidden)
        );
        let hy = c.hybrid.expect("hybrid");
        let full = hy
            .layer_types
            .iter()
            .filter(|t| **t == LayerType::FullAttention)
            .count();
        assert_eq!(full, layers / 4, "every 4th layer is full attention");
        assert_eq!((sp.len, sp.bos, sp.eos), (248_047, 248_044, 248_046));
        // Fewer layers keep the pattern.
        let (_, c, _) = SynthSpec::new(preset).layers(6).config().expect("config");
        let types = c.hybrid.expect("hybrid").layer_types;
        assert_eq!(types.len(), 6);
        assert_eq!(types[3], LayerType::FullAttention);
        assert_eq!(types[5], LayerType::LinearAttention);
    }
}

#[test]
fn bad_specs_are_refused_with_what_is_wrong() {
    let t = tempfile::tempdir().expect("tempdir");
    let e = tiny(Preset::Qwen3_30bA3b, 1)
        .set("hidden_act", json!("gelu"))
        .write(t.path(), &|_, _| {})
        .unwrap_err();
    assert!(matches!(e, SynthError::Config(_)), "{e}");
    let e = tiny(Preset::Qwen3_30bA3b, 1)
        .set("vocab_size", json!(100))
        .write(t.path(), &|_, _| {})
        .unwrap_err();
    assert!(e.to_string().contains("tokenizer"), "{e}");
    write_into(t.path());
    let e = tiny(Preset::Qwen3_30bA3b, 1)
        .write(t.path(), &|_, _| {})
        .unwrap_err();
    assert!(matches!(e, SynthError::Exists(_)), "{e}");
    tiny(Preset::Qwen3_30bA3b, 1)
        .force(true)
        .write(t.path(), &|_, _| {})
        .expect("force");
}

fn write_into(dir: &Path) {
    tiny(Preset::Qwen3_30bA3b, 1)
        .write(dir, &|_, _| {})
        .expect("first write");
}
