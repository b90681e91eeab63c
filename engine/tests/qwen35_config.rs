//! Qwen3.5-MoE / Qwen3-Next `config.json` parsing without any fixture: every dimension read from
//! the file (another geometry gives other dims), the layer types from `layer_types` or
//! `full_attention_interval`, the multimodal `text_config`, and clear refusals.

use flashmoe_engine::qwen35_moe::LayerType;
use flashmoe_engine::{Family, ModelConfig};
use serde_json::{Value, json};
use std::path::Path;

/// A Qwen3.5-MoE text config of a geometry unlike the tiny fixture's.
fn text() -> Value {
    json!({
        "model_type": "qwen3_5_moe_text",
        "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
        "num_key_value_heads": 3, "head_dim": 48, "vocab_size": 1000,
        "num_experts": 40, "num_experts_per_tok": 5, "moe_intermediate_size": 96,
        "shared_expert_intermediate_size": 192, "linear_conv_kernel_dim": 3,
        "linear_key_head_dim": 24, "linear_value_head_dim": 40,
        "linear_num_key_heads": 3, "linear_num_value_heads": 9,
        "full_attention_interval": 3, "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e5,
            "partial_rotary_factor": 0.5, "mrope_section": [3, 3, 2], "mrope_interleaved": true},
        "dtype": "bfloat16"
    })
}

fn parse(v: &Value) -> Result<ModelConfig, String> {
    ModelConfig::from_json(&v.to_string(), Path::new("cfg/config.json")).map_err(|e| e.to_string())
}

#[test]
fn every_dimension_comes_from_the_config() {
    let c = parse(&text()).expect("valid");
    assert_eq!(c.family, Family::Qwen35Moe);
    assert_eq!((c.hidden_size, c.num_layers, c.head_dim), (384, 6, 48));
    assert_eq!((c.num_experts, c.top_k, c.expert_intermediate), (40, 5, 96));
    assert_eq!(c.rope_theta, 5e5);
    let hy = c.hybrid.expect("hybrid");
    use LayerType::{FullAttention as F, LinearAttention as L};
    assert_eq!(
        hy.layer_types,
        vec![L, L, F, L, L, F],
        "every 3rd layer full"
    );
    assert_eq!(hy.rotary_dim, 24, "head_dim 48 x 0.5");
    assert_eq!(hy.shared_expert_intermediate, 192);
    let d = hy.deltanet;
    assert_eq!(
        (
            d.num_key_heads,
            d.num_value_heads,
            d.key_head_dim,
            d.value_head_dim,
            d.conv_kernel
        ),
        (3, 9, 24, 40, 3)
    );
    assert_eq!(d.conv_dim(), 2 * 3 * 24 + 9 * 40);
    assert!(!hy.fused_projections && hy.attn_output_gate);
}

#[test]
fn multimodal_config_reads_text_config_and_qwen3_next_is_fused() {
    let wrapped = json!({
        "model_type": "qwen3_5_moe", "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "text_config": text(), "vision_config": {"depth": 2}, "image_token_id": 5,
        "tie_word_embeddings": false
    });
    let c = parse(&wrapped).expect("multimodal");
    assert_eq!(c.family, Family::Qwen35Moe);
    assert_eq!(c.hidden_size, 384);
    let mut next = text();
    next["model_type"] = "qwen3_next".into();
    next["norm_topk_prob"] = false.into();
    let c = parse(&next).expect("qwen3_next");
    assert_eq!(c.family, Family::Qwen3Next);
    assert!(!c.norm_topk_prob, "Qwen3-Next reads norm_topk_prob");
    assert!(c.hybrid.expect("hybrid").fused_projections);
}

#[test]
fn unsupported_values_are_refused_with_file_and_field() {
    let cases: [(&str, Value, &str); 5] = [
        (
            "linear_num_value_heads",
            json!(8),
            "multiple of linear_num_key_heads",
        ),
        ("partial_rotary_factor", json!(0.25), "disagrees"),
        ("norm_topk_prob", json!(false), "always renormalises"),
        ("mlp_only_layers", json!([1]), "dense"),
        ("sliding_window_size", json!(4), "not implemented"),
    ];
    for (field, value, why) in cases {
        let mut v = text();
        v[field] = value;
        let err = parse(&v).expect_err(field);
        assert!(
            err.contains("cfg/config.json") && err.contains(field),
            "{field}: {err}"
        );
        assert!(err.contains(why), "{field}: {err}");
    }
}

/// The default `layer_types` is a list of `num_hidden_layers` entries, built before the
/// config's dims are checked: a huge count is refused before it is allocated.
#[test]
fn a_huge_layer_count_is_refused_before_the_layer_types_are_built() {
    let mut v = text();
    v["num_hidden_layers"] = json!(1u64 << 50);
    let m = parse(&v).expect_err("2^50 layers");
    assert!(
        m.contains("num_hidden_layers") && m.contains("at most"),
        "{m}"
    );
    let mut v = text();
    v["linear_num_value_heads"] = json!(1u64 << 40);
    let m = parse(&v).expect_err("2^40 heads");
    assert!(
        m.contains("linear_num_value_heads") && m.contains("at most"),
        "{m}"
    );
}
