//! Writing a packed model's `dense.safetensors` with quantized non-expert weights:
//! `pack --dense-bits 4|8` on a Hugging Face checkpoint quantizes every 2-D weight (attention
//! projections, routers, embeddings, lm_head) with [`flashmoe_backends::quant::quantize`]
//! and stores it as [`crate::quant_tensors`] describes (codes, f16 scales, f16 biases).
//!
//! Routers are kept at 8 bits at least (as mlx-lm does): they are tiny, and a coarse router
//! flips near-tied expert choices. A matrix whose width is not a multiple of the group stays
//! in its float type.

use crate::config::ModelConfig;
use crate::error::{BackendContext, EngineError, Result};
use crate::model::FamilyNames;
use crate::quant_tensors::split;
use crate::weights::Checkpoint;
use flashmoe_backends::quant::{MatrixLayout, WeightFormat, dequantize, quantize};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;

/// Group size of quantized dense weights written by the packer.
pub const DENSE_GROUP: u32 = 64;

/// One tensor to write into `dense.safetensors`.
#[derive(Clone, Debug)]
pub struct DenseTensor<'a> {
    /// Its name.
    pub name: String,
    /// Its safetensors dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its little-endian bytes.
    pub bytes: Cow<'a, [u8]>,
}

impl DenseTensor<'static> {
    /// The three tensors (`{module}.weight` codes, `.scales`, `.biases`) of a matrix held in
    /// our quantized layout in `bytes`; empty for a float layout.
    pub fn quantized(module: &str, bytes: &[u8], layout: &MatrixLayout) -> Vec<Self> {
        let Some(p) = split(bytes, layout) else {
            return Vec::new();
        };
        let t = |suffix: &str, dtype, shape: [usize; 2], b: &[u8]| DenseTensor {
            name: format!("{module}.{suffix}"),
            dtype,
            shape: shape.to_vec(),
            bytes: Cow::Owned(b.to_vec()),
        };
        vec![
            t("weight", Dtype::U32, p.codes_shape, p.codes),
            t("scales", Dtype::F16, p.groups_shape, p.scales),
            t("biases", Dtype::F16, p.groups_shape, p.biases),
        ]
    }
}

/// Serializes `tensors` (any order: sorted by name here) to `path`; returns the bytes written.
pub fn serialize_dense(mut tensors: Vec<DenseTensor<'_>>, path: &Path) -> Result<u64> {
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut views = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).map_err(|e| {
            EngineError::Safetensors {
                path: path.to_path_buf(),
                reason: format!("tensor `{}`: {e}", t.name),
            }
        })?;
        views.push((t.name.as_str(), view));
    }
    let bytes = safetensors::serialize(views, None).map_err(|e| EngineError::Safetensors {
        path: path.to_path_buf(),
        reason: format!("cannot serialize: {e}"),
    })?;
    std::fs::write(path, &bytes).map_err(|source| EngineError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(bytes.len() as u64)
}

/// The format `--dense-bits` gives a dense matrix (`None`: keep it as stored).
pub fn dense_format(bits: u32, is_router: bool) -> Option<WeightFormat> {
    match (bits, is_router) {
        (4, false) => Some(WeightFormat::Q4 { group: DENSE_GROUP }),
        (4 | 8, _) => Some(WeightFormat::Q8 { group: DENSE_GROUP }),
        _ => None,
    }
}

/// Writes every non-expert tensor of the HF checkpoint `ckpt` to `path`, its 2-D float weights
/// quantized to `bits` (4 or 8; 16 keeps them as they are), the rest unchanged.
pub fn write_dense_quantized(
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
    bits: u32,
    path: &Path,
) -> Result<u64> {
    let names = FamilyNames::of(cfg.family);
    let mut experts = BTreeSet::new();
    let mut routers = BTreeSet::new();
    for l in 0..cfg.num_layers {
        routers.insert(names.router(l));
        for e in 0..cfg.num_experts {
            for k in 0..3 {
                experts.insert(names.expert(l, e, k));
            }
        }
    }
    let mut out = Vec::new();
    for name in ckpt.names().filter(|n| !experts.contains(*n)) {
        let t = ckpt.raw(name)?;
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
            out.push(DenseTensor {
                name: name.into(),
                dtype: t.dtype,
                shape: t.shape.to_vec(),
                bytes: Cow::Borrowed(t.bytes),
            });
            continue;
        };
        let ctx = || format!("{}: quantizing `{name}`", t.file.display());
        let values = dequantize(t.bytes, rows, cols, from).ctx(ctx)?;
        let q = quantize(&values, rows, cols, to).ctx(ctx)?;
        let layout = to.layout(rows, cols).ctx(ctx)?;
        out.extend(DenseTensor::quantized(module, &q, &layout));
    }
    serialize_dense(out, path)
}
