//! The tensors of a synthetic checkpoint: HF names and shapes from the engine's own
//! [`ModelConfig`] and [`FamilyNames`] (so the loader finds exactly what it expects), and how
//! each is drawn ([`Scales`]).

use super::random_view::Init;
use super::scales::Scales;
use crate::config::{Family, ModelConfig};
use crate::model::FamilyNames;

/// One tensor to write.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    /// HF name.
    pub name: String,
    /// Shape (row-major, `[out, in]` for a linear layer).
    pub shape: Vec<usize>,
    /// How its values are drawn.
    pub init: Init,
}

impl TensorPlan {
    /// Bytes in bf16.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * 2
    }
}

/// A linear layer of `fan_in` inputs whose outputs have RMS `gain` for unit-RMS inputs.
fn linear(name: String, out: usize, fan_in: usize, gain: f32) -> TensorPlan {
    TensorPlan {
        name,
        shape: vec![out, fan_in],
        init: Init::Normal {
            mean: 0.0,
            std: gain / (fan_in as f32).sqrt(),
        },
    }
}

fn ones(name: String, len: usize) -> TensorPlan {
    TensorPlan {
        name,
        shape: vec![len],
        init: Init::Const(1.0),
    }
}

/// Every tensor of a plain (full-attention) MoE family in HF order: embeddings, layers,
/// final norm, `lm_head`. `None` for a family this generator does not write.
pub fn plan(cfg: &ModelConfig, s: &Scales) -> Option<Vec<TensorPlan>> {
    if !matches!(cfg.family, Family::Qwen3Moe | Family::Mixtral) {
        return None;
    }
    let names = FamilyNames::of(cfg.family);
    let (h, inter) = (cfg.hidden_size, cfg.expert_intermediate);
    // Each residual branch (attention, MoE) of each layer adds RMS `residual_gain / sqrt(2 L)`
    // per unit of its input, so the stream's growth over all layers is bounded by the gain.
    let branch = s.residual_gain / ((2 * cfg.num_layers) as f32).sqrt();
    let mut out = vec![TensorPlan {
        name: "model.embed_tokens.weight".into(),
        shape: vec![cfg.vocab_size, h],
        init: Init::SharedOffset {
            std: s.embed_std,
            offset_std: s.embed_shared_std,
            cols: h,
        },
    }];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        out.push(ones(format!("{p}.input_layernorm.weight"), h));
        let a = format!("{p}.self_attn");
        out.push(linear(format!("{a}.q_proj.weight"), cfg.q_dim(), h, s.qkv_gain));
        out.push(linear(format!("{a}.k_proj.weight"), cfg.kv_dim(), h, s.qkv_gain));
        out.push(linear(format!("{a}.v_proj.weight"), cfg.kv_dim(), h, 1.0));
        out.push(linear(format!("{a}.o_proj.weight"), h, cfg.q_dim(), branch));
        if cfg.qk_norm {
            out.push(ones(format!("{a}.q_norm.weight"), cfg.head_dim));
            out.push(ones(format!("{a}.k_norm.weight"), cfg.head_dim));
        }
        out.push(ones(format!("{p}.post_attention_layernorm.weight"), h));
        out.push(linear(names.router(l), cfg.num_experts, h, s.router_gain));
        for e in 0..cfg.num_experts {
            out.push(linear(names.expert(l, e, 0), inter, h, 1.0));
            out.push(linear(names.expert(l, e, 1), inter, h, 1.0));
            out.push(linear(names.expert(l, e, 2), h, inter, branch));
        }
    }
    out.push(ones("model.norm.weight".into(), h));
    if !cfg.tie_word_embeddings {
        out.push(linear("lm_head.weight".into(), cfg.vocab_size, h, s.lm_head_gain));
    }
    Some(out)
}

/// Groups `tensors` (in order) into shards of at most `max_bytes` each (a tensor larger than
/// that gets a shard of its own).
pub fn shards(tensors: &[TensorPlan], max_bytes: u64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        if i > start && bytes + t.bytes() > max_bytes {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += t.bytes();
    }
    if start < tensors.len() {
        out.push(start..tensors.len());
    }
    out
}
