//! Model configuration: the family-independent [`ModelConfig`] and `config.json` loading.
//!
//! Each family (`qwen3_moe`, `mixtral`) parses its own HF `config.json` with serde, refuses every
//! field it does not know (an unknown field could change the maths) and every value it does not
//! implement, then lowers it to a [`ModelConfig`].

use crate::error::{EngineError, Result};
use flashmoe_backends::quant::WeightFormat;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Most `hidden_size` accepted (published MoE models: at most 8192).
pub const MAX_HIDDEN: usize = 1 << 17;
/// Most `num_hidden_layers` accepted (published models: at most 126).
pub const MAX_LAYERS: usize = 4096;
/// Most attention heads (query or key/value) accepted.
pub const MAX_HEADS: usize = 4096;
/// Most `head_dim` accepted.
pub const MAX_HEAD_DIM: usize = 4096;
/// Most `vocab_size` accepted (published models: at most 262,144).
pub const MAX_VOCAB: usize = 1 << 24;
/// Most experts per layer accepted (published models: at most 512).
pub const MAX_EXPERTS: usize = 1 << 16;
/// Most intermediate size of one expert accepted.
pub const MAX_INTERMEDIATE: usize = 1 << 20;
/// Most expert records (layers x experts) in a model accepted (published: at most 30,720).
pub const MAX_EXPERT_RECORDS: usize = 1 << 20;

/// Model families this engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `model_type: "qwen3_moe"` (Qwen3MoeForCausalLM).
    Qwen3Moe,
    /// `model_type: "mixtral"` (MixtralForCausalLM).
    Mixtral,
    /// `model_type: "qwen3_5_moe_text"` / `"qwen3_5_moe"` (Qwen3.5-MoE: Gated DeltaNet + gated
    /// attention + shared expert; see [`crate::qwen35_moe`]).
    Qwen35Moe,
    /// `model_type: "qwen3_next"` (Qwen3-Next: the same maths with fused DeltaNet projections).
    Qwen3Next,
}

/// What the decode loop needs to know about a model, whatever its family.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The family.
    pub family: Family,
    /// Residual stream width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Routed experts per layer.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Intermediate size of one expert.
    pub expert_intermediate: usize,
    /// Renormalise the top-k probabilities to sum 1.
    pub norm_topk_prob: bool,
    /// `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Longest context the model was built for.
    pub max_position_embeddings: usize,
    /// Dtype the config announces for the checkpoint, if any.
    pub dtype: Option<WeightFormat>,
    /// The hybrid (Gated DeltaNet + gated attention + shared expert) part of a Qwen3.5-MoE or
    /// Qwen3-Next config; `None` for the plain full-attention families.
    pub hybrid: Option<crate::qwen35_moe::HybridConfig>,
}

impl ModelConfig {
    /// Reads and validates `config.json`, dispatching on `model_type`.
    ///
    /// ```no_run
    /// let cfg = flashmoe_engine::ModelConfig::from_file("model/config.json".as_ref())?;
    /// println!("{} layers of {} experts", cfg.num_layers, cfg.num_experts);
    /// # Ok::<(), flashmoe_engine::EngineError>(())
    /// ```
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
            op: "read config",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses and validates config JSON; `path` is used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|source| EngineError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let Value::Object(map) = value else {
            return Err(unsupported_value(
                path,
                "<root>",
                &value,
                "config must be a JSON object",
            ));
        };
        let raw = RawConfig {
            path: path.to_path_buf(),
            map,
        };
        match raw.map.get("model_type").and_then(Value::as_str) {
            Some("qwen3_moe") => crate::qwen3_moe::config(&raw),
            Some("mixtral") => crate::mixtral::config(&raw),
            Some("qwen3_5_moe_text" | "qwen3_5_moe" | "qwen3_next") => {
                crate::qwen35_moe::config(&raw)
            }
            Some(other) => Err(unsupported_value(
                path,
                "model_type",
                &Value::from(other),
                "supported: \"qwen3_moe\", \"mixtral\", \"qwen3_5_moe_text\", \"qwen3_5_moe\", \"qwen3_next\"",
            )),
            None => Err(EngineError::MissingField {
                path: path.to_path_buf(),
                field: "model_type".into(),
            }),
        }
    }

    /// Width of q (`num_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of k and v (`num_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Checks that the dims are usable together; `path` is used in error messages.
    pub(crate) fn validate(self, path: &Path) -> Result<Self> {
        let fail = |field: &str, value: usize, reason: &str| {
            Err(unsupported_value(path, field, &Value::from(value), reason))
        };
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("num_experts", self.num_experts),
            ("num_experts_per_tok", self.top_k),
            ("expert intermediate size", self.expert_intermediate),
        ] {
            if v == 0 {
                return fail(field, v, "must be positive");
            }
        }
        // Untrusted sizes: the loader, the packer and `synth --hf` size tensor lists and
        // buffers by them, so each is bounded far above any published model before use.
        for (field, v, max) in [
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("num_hidden_layers", self.num_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("num_experts", self.num_experts, MAX_EXPERTS),
            (
                "expert intermediate size",
                self.expert_intermediate,
                MAX_INTERMEDIATE,
            ),
        ] {
            if v > max {
                return fail(field, v, &format!("at most {max} accepted"));
            }
        }
        if self.num_layers * self.num_experts > MAX_EXPERT_RECORDS {
            return fail(
                "num_hidden_layers",
                self.num_layers,
                &format!(
                    "{} layers x {} experts = {} expert records, at most {MAX_EXPERT_RECORDS} accepted",
                    self.num_layers,
                    self.num_experts,
                    self.num_layers * self.num_experts
                ),
            );
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return fail(
                "num_key_value_heads",
                self.num_kv_heads,
                "must divide num_attention_heads",
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return fail("head_dim", self.head_dim, "must be even for RoPE");
        }
        if self.top_k > self.num_experts {
            return fail(
                "num_experts_per_tok",
                self.top_k,
                "must not exceed the number of experts",
            );
        }
        if self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
            || self.rms_norm_eps.is_nan()
            || self.rms_norm_eps < 0.0
        {
            return Err(unsupported_value(
                path,
                "rope_theta/rms_norm_eps",
                &Value::Null,
                "must be positive",
            ));
        }
        Ok(self)
    }
}

/// A parsed but not yet interpreted `config.json`.
pub(crate) struct RawConfig {
    pub(crate) path: PathBuf,
    pub(crate) map: Map<String, Value>,
}

/// Keys every family may carry that do not change inference maths.
pub(crate) const HARMLESS_KEYS: &[&str] = &[
    "_name_or_path",
    "architectures",
    "attention_dropout",
    "bos_token_id",
    "dtype",
    "eos_token_id",
    "initializer_range",
    "model_type",
    "output_router_logits",
    "pad_token_id",
    "router_aux_loss_coef",
    "torch_dtype",
    "transformers_version",
    "use_cache",
];

impl RawConfig {
    /// Refuses any key outside `HARMLESS_KEYS` and `known`.
    pub(crate) fn check_keys(&self, known: &[&str]) -> Result<()> {
        for (key, value) in &self.map {
            if matches!(key.as_str(), "quantization" | "quantization_config") {
                // MLX's quantization is honoured (crate::mlx checks every tensor against it);
                // anything else (GPTQ, AWQ, ...) is refused there, naming the field.
                crate::mlx::MlxQuantization::from_value(&self.path, key, value)?;
                continue;
            }
            if !HARMLESS_KEYS.contains(&key.as_str()) && !known.contains(&key.as_str()) {
                return Err(EngineError::UnsupportedField {
                    path: self.path.clone(),
                    field: key.clone(),
                    reason: "not implemented by this engine (it could change the model's maths)"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// Deserializes into a family's typed config.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.map.clone())).map_err(|source| {
            EngineError::Json {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// The checkpoint dtype announced by `dtype` or `torch_dtype`.
    pub(crate) fn dtype(&self) -> Result<Option<WeightFormat>> {
        for key in ["dtype", "torch_dtype"] {
            if let Some(v) = self.map.get(key).filter(|v| !v.is_null()) {
                return match v.as_str() {
                    Some("bfloat16") => Ok(Some(WeightFormat::Bf16)),
                    Some("float16") => Ok(Some(WeightFormat::F16)),
                    Some("float32") => Ok(Some(WeightFormat::F32)),
                    _ => Err(unsupported_value(
                        &self.path,
                        key,
                        v,
                        "supported: bfloat16, float16, float32",
                    )),
                };
            }
        }
        Ok(None)
    }

    /// An error for `field` having `value`.
    pub(crate) fn bad(&self, field: &str, value: &Value, reason: &str) -> EngineError {
        unsupported_value(&self.path, field, value, reason)
    }

    /// RoPE base from `rope_parameters` / `rope_scaling` / `rope_theta`, refusing scaled RoPE.
    pub(crate) fn rope_theta(&self, default: f64) -> Result<f32> {
        for key in ["rope_scaling", "rope_parameters"] {
            if let Some(v) = self.map.get(key).filter(|v| !v.is_null()) {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(Value::as_str);
                if kind.is_some_and(|k| k != "default") {
                    return Err(self.bad(
                        key,
                        v,
                        "only rope_type \"default\" (unscaled RoPE) is supported",
                    ));
                }
                if let Some(extra) = v.as_object().and_then(|o| {
                    o.keys()
                        .find(|k| !["rope_type", "type", "rope_theta"].contains(&k.as_str()))
                }) {
                    return Err(self.bad(key, v, &format!("unknown RoPE parameter `{extra}`")));
                }
            }
        }
        let nested = self
            .map
            .get("rope_parameters")
            .and_then(|v| v.get("rope_theta"))
            .and_then(Value::as_f64);
        let top = self.map.get("rope_theta").and_then(Value::as_f64);
        if let (Some(a), Some(b)) = (nested, top)
            && a != b
        {
            return Err(self.bad(
                "rope_theta",
                &Value::from(b),
                &format!("disagrees with rope_parameters.rope_theta = {a}"),
            ));
        }
        Ok(nested.or(top).unwrap_or(default) as f32)
    }
}

pub(crate) fn unsupported_value(
    path: &Path,
    field: &str,
    value: &Value,
    reason: &str,
) -> EngineError {
    EngineError::UnsupportedValue {
        path: path.to_path_buf(),
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}
