//! Mixtral (`model_type: "mixtral"`): config and checkpoint names.
//!
//! HF module tree, mirrored by [`crate::model`]:
//! ```text
//! model.embed_tokens
//! model.layers.N.input_layernorm
//! model.layers.N.self_attn.{q_proj,k_proj,v_proj,o_proj}     (no q/k norm)
//! model.layers.N.post_attention_layernorm
//! model.layers.N.block_sparse_moe.gate                        router [num_local_experts, hidden]
//! model.layers.N.block_sparse_moe.experts.E.{w1,w3,w2}        gate, up, down
//! model.norm
//! lm_head
//! ```
//! Routing: softmax over all experts, top-k, always renormalised. Full attention only
//! (`sliding_window` must be null), SiLU, unscaled RoPE.

use crate::config::{Family, ModelConfig, RawConfig};
use crate::error::Result;
use crate::model::FamilyNames;
use serde::Deserialize;
use serde_json::Value;

/// Checkpoint names of Mixtral (w1 = gate, w3 = up, w2 = down).
pub const NAMES: FamilyNames = FamilyNames {
    moe: "block_sparse_moe",
    router: "gate",
    experts: ["w1", "w3", "w2"],
};

/// Keys of a Mixtral config this engine understands (beyond the harmless ones).
const KNOWN_KEYS: &[&str] = &[
    "head_dim",
    "hidden_act",
    "hidden_size",
    "intermediate_size",
    "layer_types",
    "max_position_embeddings",
    "num_attention_heads",
    "num_experts_per_tok",
    "num_hidden_layers",
    "num_key_value_heads",
    "num_local_experts",
    "rms_norm_eps",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "router_jitter_noise",
    "sliding_window",
    "tie_word_embeddings",
    "vocab_size",
];

/// The fields of HF `MixtralConfig` that matter for inference.
#[derive(Deserialize)]
struct MixtralConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    num_local_experts: usize,
    num_experts_per_tok: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    sliding_window: Option<Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    layer_types: Option<Vec<String>>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    4096 * 32
}

/// Parses and validates a Mixtral `config.json`.
pub(crate) fn config(raw: &RawConfig) -> Result<ModelConfig> {
    raw.check_keys(KNOWN_KEYS)?;
    let c: MixtralConfig = raw.parse()?;
    if c.hidden_act != "silu" {
        return Err(raw.bad(
            "hidden_act",
            &Value::from(c.hidden_act),
            "only \"silu\" is supported",
        ));
    }
    if let Some(w) = c.sliding_window.filter(|w| !w.is_null()) {
        return Err(raw.bad(
            "sliding_window",
            &w,
            "sliding-window attention is not supported (must be null)",
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
    ModelConfig {
        family: Family::Mixtral,
        hidden_size: c.hidden_size,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim: c
            .head_dim
            .unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
        vocab_size: c.vocab_size,
        rms_norm_eps: c.rms_norm_eps as f32,
        rope_theta: raw.rope_theta(1e6)?,
        num_experts: c.num_local_experts,
        top_k: c.num_experts_per_tok,
        expert_intermediate: c.intermediate_size,
        norm_topk_prob: true,
        tie_word_embeddings: c.tie_word_embeddings,
        qk_norm: false,
        max_position_embeddings: c.max_position_embeddings,
        dtype: raw.dtype()?,
        hybrid: None,
    }
    .validate(&raw.path)
}
