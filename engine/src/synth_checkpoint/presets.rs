//! The Hugging Face `config.json` of each real model a synthetic checkpoint can take its
//! geometry from, as published on the Hub (keys that do not change the maths included, so the
//! file reads like the real one). Sources:
//!
//! - `qwen3-30b-a3b`: `Qwen/Qwen3-30B-A3B` `config.json` (transformers 4.51): 48 layers, hidden
//!   2048, 32 query / 4 KV heads of 128, 128 experts, top-8, `moe_intermediate_size` 768,
//!   vocab 151,936, RoPE θ 1e6, `max_position_embeddings` 40,960. The same figures are in
//!   `sim/presets/models.json` and in Megatron's recipe for the model (slime
//!   `scripts/models/qwen3-30B-A3B.sh`: 48 layers, hidden 2048, kv-channels 128, 4 query
//!   groups, moe-ffn-hidden-size 768, 128 experts, top-8, vocab 151936, rotary base 1e6).
//! - `mixtral-8x7b`: `mistralai/Mixtral-8x7B-v0.1` `config.json`: 32 layers, hidden 4096, 32 /
//!   8 heads of 128, 8 experts, top-2, `intermediate_size` 14,336, vocab 32,000, RoPE θ 1e6,
//!   `rms_norm_eps` 1e-5, 32,768 positions.
//! - `qwen3.5-35b-a3b`: `Qwen/Qwen3.5-35B-A3B` (its `text_config`, written as the text-only
//!   `qwen3_5_moe_text` config the tiny fixture uses): 40 layers (every 4th full attention),
//!   hidden 2048, 16 / 2 gated heads of 256, DeltaNet 16 key / 32 value heads of 128, conv 4,
//!   256 experts, top-8, `moe_intermediate_size` 512, shared expert 512, vocab 248,320,
//!   RoPE θ 1e7 on a quarter of each head. Sources: a Qwen3.5 model table
//!   (`"Qwen/Qwen3.5-35B-A3B": {...}` in a public vLLM/flash-moe style script), the
//!   `text_config` of Qwen3.5-35B-A3B derivatives on the Hub (same dims), and
//!   `sim/presets/models.json` (40 layers, 256 experts, top-8, hidden 2048, 512).
//! - `qwen3.5-397b-a17b`: `Qwen/Qwen3.5-397B-A17B`: 60 layers, hidden 4096, 32 / 2 gated heads
//!   of 256, DeltaNet 16 key / 64 value heads of 128, 512 experts, top-10,
//!   `moe_intermediate_size` 1024, shared expert 1024, vocab 248,320, RoPE θ 1e7, 262,144
//!   positions. Sources: Megatron-Bridge's Qwen3.5-397B-A17B test config, a flash-moe packer's
//!   `model_config()` and the model table above (the first gives a shared expert of 4096, the
//!   other two 1024; 1024 is used), and flash-moe's README (60 layers, 512 experts, 4096,
//!   7,077,888 B per 4-bit expert).

use serde_json::{Value, json};

/// Where a synthetic tokenizer puts its special tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    /// (id, content) of each special token.
    pub tokens: Vec<(u32, &'static str)>,
    /// Tokens in the tokenizer (ids `0..len`); the config's `vocab_size` may be larger.
    pub len: usize,
    /// `bos_token_id`.
    pub bos: u32,
    /// `eos_token_id`.
    pub eos: u32,
}

/// A real model whose geometry a synthetic checkpoint copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preset {
    /// Qwen3-30B-A3B (family Qwen3-MoE).
    Qwen3_30bA3b,
    /// Mixtral-8x7B (family Mixtral).
    Mixtral8x7b,
    /// Qwen3.5-35B-A3B (family Qwen3.5-MoE: Gated DeltaNet + gated attention + shared expert).
    Qwen35_35bA3b,
    /// Qwen3.5-397B-A17B (family Qwen3.5-MoE).
    Qwen35_397bA17b,
}

impl Preset {
    /// Every preset, in the order `--help` lists them.
    pub const ALL: &'static [Preset] = &[
        Preset::Qwen3_30bA3b,
        Preset::Mixtral8x7b,
        Preset::Qwen35_35bA3b,
        Preset::Qwen35_397bA17b,
    ];

    /// The preset's CLI name (`qwen3-30b-a3b`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Qwen3_30bA3b => "qwen3-30b-a3b",
            Preset::Mixtral8x7b => "mixtral-8x7b",
            Preset::Qwen35_35bA3b => "qwen3.5-35b-a3b",
            Preset::Qwen35_397bA17b => "qwen3.5-397b-a17b",
        }
    }

    /// The preset called `name`, if any.
    pub fn from_name(name: &str) -> Option<Preset> {
        Self::ALL.iter().copied().find(|p| p.name() == name)
    }

    /// The Hub id of the model the geometry comes from.
    pub fn hub_id(self) -> &'static str {
        match self {
            Preset::Qwen3_30bA3b => "Qwen/Qwen3-30B-A3B",
            Preset::Mixtral8x7b => "mistralai/Mixtral-8x7B-v0.1",
            Preset::Qwen35_35bA3b => "Qwen/Qwen3.5-35B-A3B",
            Preset::Qwen35_397bA17b => "Qwen/Qwen3.5-397B-A17B",
        }
    }

    /// The special tokens of a vocabulary of `vocab` ids: their layout in the tokenizer.
    ///
    /// At the preset's own vocabulary size the real ids are kept (Qwen3: `<|endoftext|>`
    /// 151643 = bos, `<|im_start|>` 151644, `<|im_end|>` 151645 = eos, and, as in the real
    /// tokenizer, ids from 151646 up to the config's 151936 are padding that no text encodes
    /// to; Qwen3.5: the same three at 248044..=248046, ids up to 248320 unused; Mixtral:
    /// `<unk>` 0, `<s>` 1 = bos, `</s>` 2 = eos). At another size (a test's tiny geometry)
    /// Qwen's three specials take the last three ids.
    pub fn specials(self, vocab: usize) -> SpecialTokens {
        match self {
            Preset::Qwen3_30bA3b | Preset::Qwen35_35bA3b | Preset::Qwen35_397bA17b => {
                let len = match vocab {
                    151_936 => 151_646,
                    248_320 => 248_047,
                    v => v,
                };
                let b = len as u32 - 3;
                SpecialTokens {
                    tokens: vec![
                        (b, "<|endoftext|>"),
                        (b + 1, "<|im_start|>"),
                        (b + 2, "<|im_end|>"),
                    ],
                    len,
                    bos: b,
                    eos: b + 2,
                }
            }
            Preset::Mixtral8x7b => SpecialTokens {
                tokens: vec![(0, "<unk>"), (1, "<s>"), (2, "</s>")],
                len: vocab,
                bos: 1,
                eos: 2,
            },
        }
    }

    /// The real model's `config.json`.
    pub fn config(self) -> Value {
        match self {
            Preset::Qwen3_30bA3b => json!({
                "architectures": ["Qwen3MoeForCausalLM"],
                "attention_bias": false,
                "attention_dropout": 0.0,
                "bos_token_id": 151643,
                "decoder_sparse_step": 1,
                "eos_token_id": 151645,
                "head_dim": 128,
                "hidden_act": "silu",
                "hidden_size": 2048,
                "initializer_range": 0.02,
                "intermediate_size": 6144,
                "max_position_embeddings": 40960,
                "max_window_layers": 48,
                "mlp_only_layers": [],
                "model_type": "qwen3_moe",
                "moe_intermediate_size": 768,
                "norm_topk_prob": true,
                "num_attention_heads": 32,
                "num_experts": 128,
                "num_experts_per_tok": 8,
                "num_hidden_layers": 48,
                "num_key_value_heads": 4,
                "output_router_logits": false,
                "rms_norm_eps": 1e-06,
                "rope_scaling": null,
                "rope_theta": 1000000.0,
                "router_aux_loss_coef": 0.001,
                "sliding_window": null,
                "tie_word_embeddings": false,
                "torch_dtype": "bfloat16",
                "transformers_version": "4.51.0",
                "use_cache": true,
                "use_sliding_window": false,
                "vocab_size": 151936
            }),
            Preset::Mixtral8x7b => json!({
                "architectures": ["MixtralForCausalLM"],
                "attention_dropout": 0.0,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "hidden_act": "silu",
                "hidden_size": 4096,
                "initializer_range": 0.02,
                "intermediate_size": 14336,
                "max_position_embeddings": 32768,
                "model_type": "mixtral",
                "num_attention_heads": 32,
                "num_experts_per_tok": 2,
                "num_hidden_layers": 32,
                "num_key_value_heads": 8,
                "num_local_experts": 8,
                "output_router_logits": false,
                "rms_norm_eps": 1e-05,
                "rope_theta": 1000000.0,
                "router_aux_loss_coef": 0.02,
                "sliding_window": null,
                "tie_word_embeddings": false,
                "torch_dtype": "bfloat16",
                "transformers_version": "4.36.0.dev0",
                "use_cache": true,
                "vocab_size": 32000
            }),
            Preset::Qwen35_35bA3b => qwen35(json!({
                "hidden_size": 2048,
                "num_hidden_layers": 40,
                "num_attention_heads": 16,
                "linear_num_value_heads": 32,
                "num_experts": 256,
                "num_experts_per_tok": 8,
                "moe_intermediate_size": 512,
                "shared_expert_intermediate_size": 512,
            })),
            Preset::Qwen35_397bA17b => qwen35(json!({
                "hidden_size": 4096,
                "num_hidden_layers": 60,
                "num_attention_heads": 32,
                "linear_num_value_heads": 64,
                "num_experts": 512,
                "num_experts_per_tok": 10,
                "moe_intermediate_size": 1024,
                "shared_expert_intermediate_size": 1024,
            })),
        }
    }

    /// `full_attention_interval` of a hybrid preset (`layer_types` follow it at any depth).
    pub fn full_attention_interval(self) -> Option<usize> {
        matches!(self, Preset::Qwen35_35bA3b | Preset::Qwen35_397bA17b).then_some(4)
    }
}

/// The `layer_types` of `layers` hybrid layers: every `interval`-th is full attention.
pub fn layer_types(layers: usize, interval: usize) -> Value {
    (0..layers)
        .map(|i| {
            Value::from(if (i + 1) % interval.max(1) == 0 {
                "full_attention"
            } else {
                "linear_attention"
            })
        })
        .collect()
}

/// A Qwen3.5-MoE text config: what the family's models share, then `dims`.
fn qwen35(dims: Value) -> Value {
    let mut v = json!({
        "architectures": ["Qwen3_5MoeForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "attn_output_gate": true,
        "bos_token_id": 248044,
        "eos_token_id": 248046,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_value_head_dim": 128,
        "max_position_embeddings": 262144,
        "model_type": "qwen3_5_moe_text",
        "norm_topk_prob": true,
        "num_key_value_heads": 2,
        "output_router_logits": false,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "mrope_interleaved": true,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000.0,
            "rope_type": "default"
        },
        "rope_theta": 10000000.0,
        "router_aux_loss_coef": 0.001,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "transformers_version": "5.17.0",
        "use_cache": true,
        "vocab_size": 248320
    });
    if let (Some(m), Value::Object(d)) = (v.as_object_mut(), dims) {
        m.extend(d);
    }
    let layers = v["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
    v["layer_types"] = layer_types(layers, 4);
    v
}
