//! What a Hugging Face checkpoint's `dense.safetensors` holds: every tensor that is not a
//! routed expert, either as stored (`--dense-bits 16`) or with its 2-D float weights
//! (attention projections, routers, embeddings, lm_head) quantized by
//! [`flashmoe_backends::quant::quantize`] and stored as [`crate::quant_tensors`] describes
//! (codes, f16 scales, f16 biases). `plan_dense` decides, from the headers alone; the bytes
//! are made and written one tensor at a time by `dense_writer.rs`.
//!
//! Routers are kept at 8 bits at least (as mlx-lm does): they are tiny, and a coarse router
//! flips near-tied expert choices. Norms and other 1-D tensors stay as stored, and so does a
//! matrix whose width is not a multiple of the group.

use crate::config::ModelConfig;
use crate::dense_writer::{Planned, Produce};
use crate::error::{BackendContext, Result};
use crate::model::FamilyNames;
use crate::weights::Checkpoint;
use flashmoe_backends::quant::WeightFormat;
use safetensors::Dtype;
use std::collections::BTreeSet;

/// Group size of quantized dense weights written by the packer.
pub const DENSE_GROUP: u32 = 64;

/// The format `--dense-bits` gives a dense matrix (`None`: keep it as stored).
pub fn dense_format(bits: u32, is_router: bool) -> Option<WeightFormat> {
    match (bits, is_router) {
        (4, false) => Some(WeightFormat::Q4 { group: DENSE_GROUP }),
        (4 | 8, _) => Some(WeightFormat::Q8 { group: DENSE_GROUP }),
        _ => None,
    }
}

/// The names of every routed-expert tensor of `cfg` (one per expert, and fused).
pub fn expert_names(cfg: &ModelConfig, names: &FamilyNames) -> BTreeSet<String> {
    let mut experts = BTreeSet::new();
    for l in 0..cfg.num_layers {
        for e in 0..cfg.num_experts {
            for k in 0..3 {
                experts.insert(names.expert(l, e, k));
            }
        }
        experts.extend(names.fused_experts(l));
    }
    experts
}

/// Plans `dense.safetensors` for the HF checkpoint `ckpt`: every non-expert tensor, its 2-D
/// float weights quantized to `bits` (4 or 8; 16 keeps every tensor as stored). No I/O.
pub(crate) fn plan_dense(ckpt: &Checkpoint, cfg: &ModelConfig, bits: u32) -> Result<Vec<Planned>> {
    let names = FamilyNames::of(cfg.family);
    let experts = expert_names(cfg, names);
    let routers: BTreeSet<String> = (0..cfg.num_layers).map(|l| names.router(l)).collect();
    let mut dense: Vec<&str> = ckpt.names().filter(|n| !experts.contains(*n)).collect();
    dense.sort_unstable();
    let mut out = Vec::with_capacity(dense.len());
    for name in dense {
        let t = ckpt.meta(name)?;
        let float = match t.dtype {
            Dtype::BF16 => Some(WeightFormat::Bf16),
            Dtype::F16 => Some(WeightFormat::F16),
            Dtype::F32 => Some(WeightFormat::F32),
            _ => None,
        };
        let target = dense_format(bits, routers.contains(name));
        let quantizable = match (t.shape, float, target, name.strip_suffix(".weight")) {
            ([rows, cols], Some(from), Some(to), Some(module))
                if cols % DENSE_GROUP as usize == 0 =>
            {
                Some((*rows, *cols, from, to, module))
            }
            _ => None,
        };
        let Some((rows, cols, from, to, module)) = quantizable else {
            out.push(Planned {
                name: name.into(),
                dtype: t.dtype,
                shape: t.shape.to_vec(),
                len: t.len,
                how: Produce::Stored(name.into()),
            });
            continue;
        };
        let layout = to
            .layout(rows, cols)
            .ctx(|| format!("{}: quantizing `{name}`", t.file.display()))?;
        out.extend(Planned::quantized(module, &layout, |part| {
            Produce::Quantize {
                name: name.into(),
                module: module.into(),
                from,
                layout,
                part,
            }
        }));
    }
    Ok(out)
}
