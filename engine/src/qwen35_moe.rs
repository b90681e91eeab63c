//! Qwen3.5-MoE (`model_type: "qwen3_5_moe_text"`, or `"qwen3_5_moe"` with the text model under
//! `text_config`) and Qwen3-Next (`"qwen3_next"`): config and checkpoint names.
//!
//! HF module tree, mirrored by [`crate::model`] and `hybrid.rs`:
//! ```text
//! model.embed_tokens
//! model.layers.N.input_layernorm                               RMSNorm with (1 + w)
//! model.layers.N.linear_attn.{in_proj_qkv,in_proj_z,in_proj_b,in_proj_a,   (layer_types[N] =
//!     conv1d,A_log,dt_bias,norm,out_proj}                                   "linear_attention")
//!   Qwen3-Next: in_proj_qkvz, in_proj_ba (fused, grouped per key head) instead of the four
//! model.layers.N.self_attn.{q_proj,k_proj,v_proj,o_proj,q_norm,k_norm}       ("full_attention")
//!   q_proj emits per head [query (head_dim), output gate (head_dim)]
//! model.layers.N.post_attention_layernorm
//! model.layers.N.mlp.gate                                      router [num_experts, hidden]
//! model.layers.N.mlp.experts.E.{gate_proj,up_proj,down_proj}   or fused experts.{gate_up_proj,down_proj}
//! model.layers.N.mlp.shared_expert.{gate_proj,up_proj,down_proj}, mlp.shared_expert_gate [1, hidden]
//! model.norm
//! lm_head
//! ```
//! Multimodal checkpoints keep the same tree under `model.language_model.`; vision (`model.visual.`)
//! and multi-token-prediction (`mtp.`) tensors are skipped ([`crate::Checkpoint::text_only`]).
//! Every dimension, the layer types, the rotary fraction and the conv width come from the config.

use crate::config::{Family, ModelConfig, RawConfig};
use crate::error::{EngineError, Result};
use crate::model::FamilyNames;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Checkpoint names of the routed experts and router (as Qwen3-MoE).
pub const NAMES: FamilyNames = crate::qwen3_moe::NAMES;

/// The mixer of one decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerType {
    /// Gated DeltaNet (`"linear_attention"`).
    LinearAttention,
    /// Gated softmax attention over a KV cache (`"full_attention"`).
    FullAttention,
}

/// Geometry of the Gated DeltaNet layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeltaNetDims {
    /// `linear_num_key_heads`.
    pub num_key_heads: usize,
    /// `linear_num_value_heads` (a multiple of the key heads).
    pub num_value_heads: usize,
    /// `linear_key_head_dim`.
    pub key_head_dim: usize,
    /// `linear_value_head_dim`.
    pub value_head_dim: usize,
    /// `linear_conv_kernel_dim`.
    pub conv_kernel: usize,
}

impl DeltaNetDims {
    /// `num_key_heads * key_head_dim`.
    pub fn key_dim(&self) -> usize {
        self.num_key_heads * self.key_head_dim
    }
    /// `num_value_heads * value_head_dim`.
    pub fn value_dim(&self) -> usize {
        self.num_value_heads * self.value_head_dim
    }
    /// Channels of the causal conv (`2 * key_dim + value_dim`: q, k, v).
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
    /// f32 values of one layer's recurrent state (`value heads * dk * dv`).
    pub fn state_len(&self) -> usize {
        self.num_value_heads * self.key_head_dim * self.value_head_dim
    }
}

/// The hybrid part of a Qwen3.5-MoE / Qwen3-Next config.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HybridConfig {
    /// The mixer of every layer (`layer_types`, else every `full_attention_interval`-th full).
    pub layer_types: Vec<LayerType>,
    /// Gated DeltaNet geometry.
    pub deltanet: DeltaNetDims,
    /// Dims of each q/k head that are rotated (`head_dim * partial_rotary_factor`).
    pub rotary_dim: usize,
    /// Intermediate size of the dense shared expert.
    pub shared_expert_intermediate: usize,
    /// `q_proj` also emits a per-head output gate (`attn_output_gate`).
    pub attn_output_gate: bool,
    /// DeltaNet projections are fused (`in_proj_qkvz`, `in_proj_ba`: Qwen3-Next).
    pub fused_projections: bool,
}

/// Keys this engine understands (beyond the harmless ones).
/// Longest causal convolution of a DeltaNet layer accepted (published models: 4).
const MAX_CONV_KERNEL: usize = 256;

const KNOWN_KEYS: &[&str] = &[
    "attention_bias",
    "attn_output_gate",
    "decoder_sparse_step",
    "full_attention_interval",
    "head_dim",
    "hidden_act",
    "hidden_size",
    "intermediate_size",
    "layer_types",
    "linear_conv_kernel_dim",
    "linear_key_head_dim",
    "linear_num_key_heads",
    "linear_num_value_heads",
    "linear_value_head_dim",
    "max_position_embeddings",
    "mlp_only_layers",
    "moe_intermediate_size",
    "mtp_num_hidden_layers",
    "mtp_use_dedicated_embeddings",
    "norm_topk_prob",
    "num_attention_heads",
    "num_experts",
    "num_experts_per_tok",
    "num_hidden_layers",
    "num_key_value_heads",
    "partial_rotary_factor",
    "rms_norm_eps",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "shared_expert_intermediate_size",
    "tie_word_embeddings",
    "vocab_size",
];

/// Top-level keys of a multimodal `qwen3_5_moe` config around its `text_config`.
const MULTIMODAL_KEYS: &[&str] = &[
    "text_config",
    "vision_config",
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "tie_word_embeddings",
];

#[derive(Deserialize)]
struct HybridMoeConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    num_experts: usize,
    num_experts_per_tok: usize,
    moe_intermediate_size: usize,
    shared_expert_intermediate_size: usize,
    norm_topk_prob: Option<bool>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    decoder_sparse_step: Option<usize>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    layer_types: Option<Vec<String>>,
    full_attention_interval: Option<usize>,
    partial_rotary_factor: Option<f64>,
    attn_output_gate: Option<bool>,
    linear_conv_kernel_dim: usize,
    linear_key_head_dim: usize,
    linear_value_head_dim: usize,
    linear_num_key_heads: usize,
    linear_num_value_heads: usize,
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

/// The text model's config: `raw` itself, or its `text_config` for a multimodal `qwen3_5_moe`.
fn text_config(raw: &RawConfig) -> Result<RawConfig> {
    if raw.map.get("model_type").and_then(Value::as_str) != Some("qwen3_5_moe") {
        return Ok(RawConfig {
            path: raw.path.clone(),
            map: raw.map.clone(),
        });
    }
    let Some(Value::Object(text)) = raw.map.get("text_config") else {
        return Err(EngineError::MissingField {
            path: raw.path.clone(),
            field: "text_config".into(),
        });
    };
    let mut map: Map<String, Value> = text.clone();
    for key in ["dtype", "torch_dtype", "tie_word_embeddings"] {
        if let Some(v) = raw.map.get(key)
            && !map.contains_key(key)
        {
            map.insert(key.into(), v.clone());
        }
    }
    for key in raw.map.keys() {
        // MLX's quantization is honoured where the packer reads it (crate::mlx, which checks
        // every quantized tensor against it).
        let mlx = matches!(key.as_str(), "quantization" | "quantization_config");
        if !mlx
            && !MULTIMODAL_KEYS.contains(&key.as_str())
            && !crate::config::HARMLESS_KEYS.contains(&key.as_str())
        {
            return Err(EngineError::UnsupportedField {
                path: raw.path.clone(),
                field: key.clone(),
                reason: "not implemented by this engine (it could change the model's maths)".into(),
            });
        }
    }
    Ok(RawConfig {
        path: raw.path.clone(),
        map,
    })
}

/// Takes the partial-rotary and multimodal-RoPE entries out of `rope_parameters` (they do not
/// change text positions) so the shared RoPE parser sees only what it knows; returns the
/// partial rotary factor found there.
fn split_rope_parameters(raw: &mut RawConfig) -> Result<Option<f64>> {
    let Some(Value::Object(rp)) = raw.map.get_mut("rope_parameters") else {
        return Ok(None);
    };
    rp.remove("mrope_section");
    rp.remove("mrope_interleaved");
    match rp.remove("partial_rotary_factor") {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            crate::config::unsupported_value(
                &raw.path,
                "rope_parameters.partial_rotary_factor",
                &v,
                "must be a number",
            )
        }),
    }
}

/// Parses and validates a Qwen3.5-MoE or Qwen3-Next `config.json`.
pub(crate) fn config(raw: &RawConfig) -> Result<ModelConfig> {
    let family = match raw.map.get("model_type").and_then(Value::as_str) {
        Some("qwen3_next") => Family::Qwen3Next,
        _ => Family::Qwen35Moe,
    };
    let mut raw = text_config(raw)?;
    let nested_factor = split_rope_parameters(&mut raw)?;
    raw.check_keys(KNOWN_KEYS)?;
    let c: HybridMoeConfig = raw.parse()?;
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
    if c.attention_bias {
        return Err(raw.bad(
            "attention_bias",
            &Value::Bool(true),
            "attention biases are not supported",
        ));
    }
    let layer_types = layer_types(&raw, &c)?;
    let head_dim = c
        .head_dim
        .unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
    let factor = match (c.partial_rotary_factor, nested_factor) {
        (Some(a), Some(b)) if a != b => {
            return Err(raw.bad(
                "partial_rotary_factor",
                &Value::from(a),
                &format!("disagrees with rope_parameters.partial_rotary_factor = {b}"),
            ));
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => 1.0,
    };
    let rotary_dim = (head_dim as f64 * factor) as usize;
    if !(factor > 0.0 && factor <= 1.0) || rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
        return Err(raw.bad(
            "partial_rotary_factor",
            &Value::from(factor),
            &format!("head_dim {head_dim} x factor must give an even number of rotated dims in 2..=head_dim"),
        ));
    }
    let deltanet = DeltaNetDims {
        num_key_heads: c.linear_num_key_heads,
        num_value_heads: c.linear_num_value_heads,
        key_head_dim: c.linear_key_head_dim,
        value_head_dim: c.linear_value_head_dim,
        conv_kernel: c.linear_conv_kernel_dim,
    };
    use crate::config::{MAX_HEAD_DIM, MAX_HEADS, MAX_INTERMEDIATE};
    for (field, v, max) in [
        ("linear_num_key_heads", deltanet.num_key_heads, MAX_HEADS),
        (
            "linear_num_value_heads",
            deltanet.num_value_heads,
            MAX_HEADS,
        ),
        ("linear_key_head_dim", deltanet.key_head_dim, MAX_HEAD_DIM),
        (
            "linear_value_head_dim",
            deltanet.value_head_dim,
            MAX_HEAD_DIM,
        ),
        (
            "linear_conv_kernel_dim",
            deltanet.conv_kernel,
            MAX_CONV_KERNEL,
        ),
        (
            "shared_expert_intermediate_size",
            c.shared_expert_intermediate_size,
            MAX_INTERMEDIATE,
        ),
    ] {
        if v == 0 {
            return Err(raw.bad(field, &Value::from(v), "must be positive"));
        }
        if v > max {
            return Err(raw.bad(field, &Value::from(v), &format!("at most {max} accepted")));
        }
    }
    if !deltanet
        .num_value_heads
        .is_multiple_of(deltanet.num_key_heads)
    {
        return Err(raw.bad(
            "linear_num_value_heads",
            &Value::from(deltanet.num_value_heads),
            "must be a multiple of linear_num_key_heads",
        ));
    }
    // `norm_topk_prob`: Qwen3.5's router always renormalises (transformers has no switch);
    // Qwen3-Next reads the flag.
    let norm_topk_prob = match family {
        Family::Qwen3Next => c.norm_topk_prob.unwrap_or(true),
        _ => {
            if c.norm_topk_prob == Some(false) {
                return Err(raw.bad(
                    "norm_topk_prob",
                    &Value::Bool(false),
                    "Qwen3.5-MoE always renormalises the top-k probabilities",
                ));
            }
            true
        }
    };
    ModelConfig {
        family,
        hidden_size: c.hidden_size,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads,
        head_dim,
        vocab_size: c.vocab_size,
        rms_norm_eps: c.rms_norm_eps as f32,
        rope_theta: raw.rope_theta(10000.0)?,
        num_experts: c.num_experts,
        top_k: c.num_experts_per_tok,
        expert_intermediate: c.moe_intermediate_size,
        norm_topk_prob,
        tie_word_embeddings: c.tie_word_embeddings,
        qk_norm: true,
        max_position_embeddings: c.max_position_embeddings,
        dtype: raw.dtype()?,
        hybrid: Some(HybridConfig {
            layer_types,
            deltanet,
            rotary_dim,
            shared_expert_intermediate: c.shared_expert_intermediate_size,
            attn_output_gate: c.attn_output_gate.unwrap_or(true),
            fused_projections: family == Family::Qwen3Next,
        }),
    }
    .validate(&raw.path)
}

/// `layer_types`, refusing unknown entries; else every `full_attention_interval`-th layer full.
fn layer_types(raw: &RawConfig, c: &HybridMoeConfig) -> Result<Vec<LayerType>> {
    // Bounded here as well as in `ModelConfig::validate`, which runs later: the default
    // `layer_types` below is a list of `num_hidden_layers` entries.
    let max = crate::config::MAX_LAYERS;
    if c.num_hidden_layers > max {
        return Err(raw.bad(
            "num_hidden_layers",
            &Value::from(c.num_hidden_layers),
            &format!("at most {max} accepted"),
        ));
    }
    let types = match &c.layer_types {
        Some(t) => t
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                "linear_attention" => Ok(LayerType::LinearAttention),
                "full_attention" => Ok(LayerType::FullAttention),
                other => Err(raw.bad(
                    &format!("layer_types[{i}]"),
                    &Value::from(other),
                    "supported: \"linear_attention\", \"full_attention\"",
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        None => {
            let interval = c.full_attention_interval.unwrap_or(4);
            if interval == 0 {
                return Err(raw.bad(
                    "full_attention_interval",
                    &Value::from(0),
                    "must be positive",
                ));
            }
            (0..c.num_hidden_layers)
                .map(|i| {
                    if (i + 1).is_multiple_of(interval) {
                        LayerType::FullAttention
                    } else {
                        LayerType::LinearAttention
                    }
                })
                .collect()
        }
    };
    if types.len() != c.num_hidden_layers {
        return Err(raw.bad(
            "layer_types",
            &Value::from(types.len()),
            &format!(
                "has {} entries for {} layers",
                types.len(),
                c.num_hidden_layers
            ),
        ));
    }
    Ok(types)
}
