//! The tensors of a synthetic checkpoint: HF names and shapes from the engine's own
//! [`ModelConfig`] and [`FamilyNames`] (so the loader finds exactly what it expects), and how
//! each is drawn ([`Scales`]).

use super::random_view::Init;
use super::scales::Scales;
use crate::config::{Family, ModelConfig};
use crate::model::FamilyNames;
use crate::qwen35_moe::{DeltaNetDims, LayerType};

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

fn filled(name: String, shape: Vec<usize>, init: Init) -> TensorPlan {
    TensorPlan { name, shape, init }
}

/// Every tensor of `cfg` in HF order: embeddings, layers, final norm, `lm_head`. Plain
/// families (Qwen3-MoE, Mixtral) and Qwen3.5-MoE (Gated DeltaNet or gated attention per
/// `layer_types`, a shared expert, RMSNorm weights stored as offsets from 1); `None` for a
/// family this generator does not write (Qwen3-Next's fused projections).
pub fn plan(cfg: &ModelConfig, s: &Scales) -> Option<Vec<TensorPlan>> {
    match cfg.family {
        Family::Qwen3Moe | Family::Mixtral | Family::Qwen35Moe => {}
        Family::Qwen3Next => return None,
    }
    let hybrid = cfg.hybrid.as_ref();
    // Hybrid families store RMSNorm weights as offsets from 1: zeros mean a gain of 1.
    let norm = |name: String, len: usize| match hybrid {
        Some(_) => filled(name, vec![len], Init::Const(0.0)),
        None => ones(name, len),
    };
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
        out.push(norm(format!("{p}.input_layernorm.weight"), h));
        let linear_attn = hybrid.is_some_and(|hy| hy.layer_types[l] == LayerType::LinearAttention);
        if let (true, Some(hy)) = (linear_attn, hybrid) {
            out.extend(deltanet(&p, h, &hy.deltanet, branch));
        } else {
            let a = format!("{p}.self_attn");
            // A gated q_proj emits [query; output gate] per head.
            let q_rows = if hybrid.is_some_and(|hy| hy.attn_output_gate) {
                2
            } else {
                1
            };
            out.push(linear(
                format!("{a}.q_proj.weight"),
                q_rows * cfg.q_dim(),
                h,
                s.qkv_gain,
            ));
            out.push(linear(
                format!("{a}.k_proj.weight"),
                cfg.kv_dim(),
                h,
                s.qkv_gain,
            ));
            out.push(linear(format!("{a}.v_proj.weight"), cfg.kv_dim(), h, 1.0));
            out.push(linear(format!("{a}.o_proj.weight"), h, cfg.q_dim(), branch));
            if cfg.qk_norm {
                out.push(norm(format!("{a}.q_norm.weight"), cfg.head_dim));
                out.push(norm(format!("{a}.k_norm.weight"), cfg.head_dim));
            }
        }
        out.push(norm(format!("{p}.post_attention_layernorm.weight"), h));
        out.push(linear(names.router(l), cfg.num_experts, h, s.router_gain));
        if let Some(hy) = hybrid {
            let se = format!("{p}.mlp.shared_expert");
            let si = hy.shared_expert_intermediate;
            out.push(linear(format!("{se}.gate_proj.weight"), si, h, 1.0));
            out.push(linear(format!("{se}.up_proj.weight"), si, h, 1.0));
            out.push(linear(format!("{se}.down_proj.weight"), h, si, branch));
            out.push(linear(
                format!("{p}.mlp.shared_expert_gate.weight"),
                1,
                h,
                1.0,
            ));
        }
        for e in 0..cfg.num_experts {
            out.push(linear(names.expert(l, e, 0), inter, h, 1.0));
            out.push(linear(names.expert(l, e, 1), inter, h, 1.0));
            out.push(linear(names.expert(l, e, 2), h, inter, branch));
        }
    }
    out.push(norm("model.norm.weight".into(), h));
    if !cfg.tie_word_embeddings {
        out.push(linear(
            "lm_head.weight".into(),
            cfg.vocab_size,
            h,
            s.lm_head_gain,
        ));
    }
    Some(out)
}

/// `{p}.linear_attn` of a Qwen3.5 Gated DeltaNet layer, drawn as HF initialises one where it
/// matters for stability: `A_log = ln(U[1, 16])`, `dt_bias` ≈ softplus⁻¹ of dt in
/// [0.001, 0.1] (≈ ln dt), the causal conv as PyTorch's default `U(±1/sqrt(kernel))`, the
/// gated norm's weight 1; `out_proj` is a residual branch.
fn deltanet(p: &str, h: usize, d: &DeltaNetDims, branch: f32) -> Vec<TensorPlan> {
    let la = format!("{p}.linear_attn");
    let nv = d.num_value_heads;
    let bound = 1.0 / (d.conv_kernel as f32).sqrt();
    vec![
        linear(format!("{la}.in_proj_qkv.weight"), d.conv_dim(), h, 1.0),
        linear(format!("{la}.in_proj_z.weight"), d.value_dim(), h, 1.0),
        linear(format!("{la}.in_proj_b.weight"), nv, h, 1.0),
        linear(format!("{la}.in_proj_a.weight"), nv, h, 1.0),
        filled(
            format!("{la}.conv1d.weight"),
            vec![d.conv_dim(), 1, d.conv_kernel],
            Init::Uniform {
                lo: -bound,
                hi: bound,
            },
        ),
        filled(
            format!("{la}.A_log"),
            vec![nv],
            Init::Uniform {
                lo: 0.0,
                hi: 16f32.ln(),
            },
        ),
        filled(
            format!("{la}.dt_bias"),
            vec![nv],
            Init::Uniform {
                lo: 0.001f32.ln(),
                hi: 0.1f32.ln(),
            },
        ),
        ones(format!("{la}.norm.weight"), d.value_head_dim),
        linear(format!("{la}.out_proj.weight"), h, d.value_dim(), branch),
    ]
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
