//! Config parsing: both families accepted, unsupported fields and values refused by name.

use flashmoe_engine::{EngineError, Family, ModelConfig};
use serde_json::{Value, json};
use std::path::Path;

fn qwen() -> Value {
    json!({
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "bos_token_id": 0, "decoder_sparse_step": 1, "dtype": "bfloat16", "eos_token_id": 0, "head_dim": 64,
        "hidden_act": "silu", "hidden_size": 256, "initializer_range": 0.02, "intermediate_size": 512,
        "max_position_embeddings": 1024, "mlp_only_layers": [], "model_type": "qwen3_moe",
        "moe_intermediate_size": 128, "norm_topk_prob": true, "num_attention_heads": 4, "num_experts": 32,
        "num_experts_per_tok": 4, "num_hidden_layers": 8, "num_key_value_heads": 2, "num_local_experts": 32,
        "output_router_logits": false, "pad_token_id": 1, "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.02, "sliding_window": null, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "transformers_version": "5.17.0", "use_cache": true,
        "use_sliding_window": false, "vocab_size": 4096
    })
}

fn mixtral() -> Value {
    json!({
        "architectures": ["MixtralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
        "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 1e6, "router_aux_loss_coef": 0.02, "sliding_window": null,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 32000, "hidden_act": "silu"
    })
}

fn parse(v: &Value) -> Result<ModelConfig, EngineError> {
    ModelConfig::from_json(&v.to_string(), Path::new("dir/config.json"))
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

/// Parses, expects an error, and checks its message names the file and `field`.
fn refused(v: Value, field: &str) -> String {
    let msg = parse(&v).expect_err("config should be refused").to_string();
    assert!(
        msg.contains("dir/config.json") && msg.contains(field),
        "message `{msg}` should name the file and `{field}`"
    );
    msg
}

#[test]
fn fixture_like_qwen3_config_is_accepted() {
    let c = parse(&qwen()).expect("qwen3 config");
    assert_eq!(c.family, Family::Qwen3Moe);
    assert_eq!(
        (
            c.num_experts,
            c.top_k,
            c.expert_intermediate,
            c.head_dim,
            c.num_kv_heads
        ),
        (32, 4, 128, 64, 2)
    );
    assert!(c.qk_norm && c.norm_topk_prob);
    assert_eq!(c.rope_theta, 10000.0);
}

#[test]
fn mixtral_config_is_accepted() {
    let c = parse(&mixtral()).expect("mixtral config");
    assert_eq!(c.family, Family::Mixtral);
    assert_eq!(
        (c.num_experts, c.top_k, c.expert_intermediate, c.head_dim),
        (8, 2, 14336, 128)
    );
    assert!(!c.qk_norm && c.norm_topk_prob);
    assert_eq!(c.rope_theta, 1e6);
}

#[test]
fn unsupported_qwen3_features_are_refused() {
    refused(
        with(qwen(), "mlp_only_layers", json!([0, 3])),
        "mlp_only_layers",
    );
    refused(
        with(qwen(), "decoder_sparse_step", json!(2)),
        "decoder_sparse_step",
    );
    refused(
        with(qwen(), "use_sliding_window", json!(true)),
        "use_sliding_window",
    );
    refused(with(qwen(), "hidden_act", json!("gelu")), "hidden_act");
    let m = refused(
        with(qwen(), "shared_expert_intermediate_size", json!(512)),
        "shared_expert_intermediate_size",
    );
    assert!(m.contains("shared experts"), "{m}");
    refused(
        with(
            qwen(),
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0}),
        ),
        "rope_scaling",
    );
    refused(
        with(qwen(), "quantization_config", json!({"bits": 4})),
        "quantization_config",
    );
    refused(
        with(qwen(), "num_local_experts", json!(16)),
        "num_local_experts",
    );
    refused(
        with(qwen(), "num_experts_per_tok", json!(64)),
        "num_experts_per_tok",
    );
    refused(
        with(qwen(), "num_key_value_heads", json!(3)),
        "num_key_value_heads",
    );
    refused(with(qwen(), "dtype", json!("int8")), "dtype");
}

#[test]
fn unsupported_mixtral_features_are_refused() {
    refused(
        with(mixtral(), "sliding_window", json!(4096)),
        "sliding_window",
    );
    refused(
        with(mixtral(), "hidden_act", json!("gelu_pytorch_tanh")),
        "hidden_act",
    );
    refused(with(mixtral(), "model_type", json!("llama")), "model_type");
    let mut v = mixtral();
    v.as_object_mut()
        .expect("object")
        .remove("num_local_experts");
    refused(v, "num_local_experts");
}

#[test]
fn invalid_json_names_the_file() {
    let msg = ModelConfig::from_json("{ not json", Path::new("dir/config.json"))
        .expect_err("bad json")
        .to_string();
    assert!(msg.contains("dir/config.json"), "{msg}");
}

/// Sizes far past any model were accepted and then sized tensor lists by them: `synth --hf
/// --set num_hidden_layers=1000000` grew past 3 GB building its plan, a `vocab_size` of
/// 2^64 - 1 hung. Each is refused, naming the field and the limit.
#[test]
fn sizes_past_any_model_are_refused() {
    for (field, value) in [
        ("num_hidden_layers", json!(1_000_000u64)),
        ("vocab_size", json!(u64::MAX)),
        ("hidden_size", json!(1u64 << 40)),
        ("num_experts", json!(1u64 << 20)),
        ("moe_intermediate_size", json!(1u64 << 30)),
        ("num_attention_heads", json!(1u64 << 20)),
    ] {
        let v = if field == "num_experts" {
            with(
                with(qwen(), field, value),
                "num_local_experts",
                json!(1u64 << 20),
            )
        } else {
            with(qwen(), field, value)
        };
        let m = parse(&v).expect_err(field).to_string();
        assert!(
            m.contains("dir/config.json") && m.contains("at most"),
            "{field}: {m}"
        );
    }
    // Each within its own bound, but too many expert records together.
    let m = parse(&with(
        with(
            with(qwen(), "num_hidden_layers", json!(4096)),
            "num_experts",
            json!(4096),
        ),
        "num_local_experts",
        json!(4096),
    ))
    .expect_err("4096 x 4096 experts")
    .to_string();
    assert!(m.contains("expert records"), "{m}");
}
