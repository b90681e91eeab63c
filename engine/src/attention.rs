//! `self_attn` of one layer and its loading: plain (Qwen3-MoE, Mixtral) or gated (Qwen3.5,
//! Qwen3-Next: `q_proj` emits a per-head output gate, split off at load; q/k norms stored as
//! offsets from 1). The forward is in [`crate::model`].

use crate::config::ModelConfig;
use crate::error::Result;
use crate::hybrid::{Loader, gated_q_rows};
use flashmoe_backends::ComputeBackend;

/// `self_attn` of one layer.
pub(crate) struct Attention<B: ComputeBackend> {
    pub(crate) q_proj: B::Weight,
    pub(crate) k_proj: B::Weight,
    pub(crate) v_proj: B::Weight,
    pub(crate) o_proj: B::Weight,
    pub(crate) q_norm: Option<B::Tensor>,
    pub(crate) k_norm: Option<B::Tensor>,
    /// The per-head output gate rows of a gated `q_proj` (Qwen3.5, Qwen3-Next).
    pub(crate) gate_proj: Option<B::Weight>,
    /// This layer's index in the KV cache (only attention layers have one).
    pub(crate) kv_slot: usize,
}

impl<B: ComputeBackend> Attention<B> {
    /// `{p}.self_attn`, with its KV cache slot; a gated `q_proj` is split into query and gate.
    pub(crate) fn load(
        ld: &Loader<'_, B>,
        cfg: &ModelConfig,
        p: &str,
        kv_slot: usize,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let hybrid = cfg.hybrid.as_ref();
        let norm = |n: &str| {
            let name = format!("{p}.self_attn.{n}.weight");
            match (cfg.qk_norm, hybrid) {
                (false, _) => Ok(None),
                (true, Some(_)) => ld.offset_norm(&name, cfg.head_dim).map(Some),
                (true, None) => ld.vector(&name, cfg.head_dim).map(Some),
            }
        };
        let q_name = format!("{p}.self_attn.q_proj.weight");
        let (q_proj, gate_proj) = match hybrid.filter(|hy| hy.attn_output_gate) {
            Some(_) => {
                let rows = 2 * cfg.q_dim();
                let (q, g) = gated_q_rows(cfg.num_heads, cfg.head_dim);
                let part = |r: Vec<std::ops::Range<usize>>| {
                    r.into_iter()
                        .map(|r| (q_name.as_str(), rows, r))
                        .collect::<Vec<_>>()
                };
                (ld.gather(&part(q), h)?, Some(ld.gather(&part(g), h)?))
            }
            None => (ld.matrix(&q_name, cfg.q_dim(), h)?, None),
        };
        Ok(Attention {
            q_proj,
            k_proj: ld.matrix(&format!("{p}.self_attn.k_proj.weight"), cfg.kv_dim(), h)?,
            v_proj: ld.matrix(&format!("{p}.self_attn.v_proj.weight"), cfg.kv_dim(), h)?,
            o_proj: ld.matrix(&format!("{p}.self_attn.o_proj.weight"), h, cfg.q_dim())?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            gate_proj,
            kv_slot,
        })
    }
}
