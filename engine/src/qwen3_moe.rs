//! Qwen3-MoE (`model_type: "qwen3_moe"`): config and checkpoint names.
//!
//! HF module tree, mirrored by [`crate::model`]:
//! ```text
//! model.embed_tokens
//! model.layers.N.input_layernorm
//! model.layers.N.self_attn.{q_proj,k_proj,v_proj,o_proj,q_norm,k_norm}
//! model.layers.N.post_attention_layernorm
//! model.layers.N.mlp.gate                       router [num_experts, hidden]
//! model.layers.N.mlp.experts.E.{gate_proj,up_proj,down_proj}
//! model.norm
//! lm_head
//! ```
//! Every layer is a MoE layer (no `mlp_only_layers`, `decoder_sparse_step` 1), no shared expert,
//! full attention (no sliding window), SiLU, unscaled RoPE.

use crate::config::{Family, ModelConfig, RawConfig};
use crate::error::Result;
use crate::model::FamilyNames;
use serde::Deserialize;
use serde_json::Value;

/// Checkpoint names of Qwen3-MoE.
pub const NAMES: FamilyNames = FamilyNames {
    moe: "mlp",
    router: "gate",
    experts: ["gate_proj", "up_proj", "down_proj"],
};

/// Keys of a Qwen3-MoE config this engine understands (beyond the harmless ones).
const KNOWN_KEYS: &[&str] = &[
    "attention_bias",
    "decoder_sparse_step",
    "head_dim",
    "hidden_act",
    "hidden_size",
    "intermediate_size",
    "layer_types",
    "max_position_embeddings",
    "max_window_layers",
    "mlp_only_layers",
    "moe_intermediate_size",
    "norm_topk_prob",
    "num_attention_heads",
    "num_experts",
    "num_experts_per_tok",
    "num_hidden_layers",
    "num_key_value_heads",
    "num_local_experts",
    "rms_norm_eps",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "sliding_window",
    "tie_word_embeddings",
    "use_sliding_window",
    "vocab_size",
];

/// The fields of HF `Qwen3MoeConfig` that matter for inference.
#[derive(Deserialize)]
struct Qwen3MoeConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    num_experts: Option<usize>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: usize,
    moe_intermediate_size: usize,
    #[serde(default)]
    norm_topk_prob: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    decoder_sparse_step: Option<usize>,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    layer_types: Option<Vec<String>>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    32768
}

/// Parses and validates a Qwen3-MoE `config.json`.
pub(crate) fn config(raw: &RawConfig) -> Result<ModelConfig> {
    for key in [
        "shared_expert_intermediate_size",
        "shared_expert",
        "moe_shared_expert_intermediate_size",
    ] {
        if raw.map.contains_key(key) {
            return Err(crate::error::EngineError::UnsupportedField {
                path: raw.path.clone(),
                field: key.into(),
                reason: "shared experts are not supported".into(),
            });
        }
    }
    raw.check_keys(KNOWN_KEYS)?;
    let c: Qwen3MoeConfig = raw.parse()?;
    if c.hidden_act != "silu" {
        return Err(raw.bad(
            "hidden_act",
            &Value::from(c.hidden_act),
            "only \"silu\" is supported",
        ));
    }
    if !c.mlp_only_layers.is_empty() {
        return Err(raw.bad(
            "mlp_only_layers",
            &Value::from(c.mlp_only_layers),
            "dense (non-MoE) layers are not supported",
        ));
    }
    if let Some(step) = c.decoder_sparse_step.filter(|&s| s != 1) {
        return Err(raw.bad(
            "decoder_sparse_step",
            &Value::from(step),
            "only 1 (every layer MoE) is supported",
        ));
    }
    if c.use_sliding_window {
        return Err(raw.bad(
            "use_sliding_window",
            &Value::Bool(true),
            "sliding-window attention is not supported",
        ));
    }
    if let Some(types) = &c.layer_types
        && let Some(t) = types.iter().find(|t| *t != "full_attention")
    {
        return Err(raw.bad(
            "layer_types",
            &Value::from(t.as_str()),
            "only \"full_attention\" layers are supported",
        ));
    }
    if c.attention_bias {
        return Err(raw.bad(
            "attention_bias",
            &Value::Bool(true),
            "attention biases are not supported",
        ));
    }
    let num_experts = match (c.num_experts, c.num_local_experts) {
        (Some(a), Some(b)) if a != b => {
            return Err(raw.bad(
                "num_local_experts",
                &Value::from(b),
                &format!("disagrees with num_experts = {a}"),
            ));
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(crate::error::EngineError::MissingField {
                path: raw.path.clone(),
                field: "num_experts".into(),
            });
        }
    };
    ModelConfig {
        family: Family::Qwen3Moe,
        hidden_size: c.hidden_size,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim: c
            .head_dim
            .unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
        vocab_size: c.vocab_size,
        rms_norm_eps: c.rms_norm_eps as f32,
        rope_theta: raw.rope_theta(10000.0)?,
        num_experts,
        top_k: c.num_experts_per_tok,
        expert_intermediate: c.moe_intermediate_size,
        norm_topk_prob: c.norm_topk_prob,
        tie_word_embeddings: c.tie_word_embeddings,
        qk_norm: true,
        max_position_embeddings: c.max_position_embeddings,
        dtype: raw.dtype()?,
        hybrid: None,
    }
    .validate(&raw.path)
}
