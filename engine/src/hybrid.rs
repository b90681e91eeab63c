//! The hybrid layers' parts of Qwen3.5-MoE and Qwen3-Next, for [`crate::model`]: the Gated
//! DeltaNet mixer with its decode state, the dense sigmoid-gated shared expert, and the loading
//! helpers (the `(1 + w)` RMSNorm weights, row gathers that split `q_proj` into query and
//! output gate and un-fuse Qwen3-Next's `in_proj_qkvz` / `in_proj_ba`).
//!
//! The DeltaNet state is fixed-size per layer, whatever the context length: the last
//! `conv_kernel - 1` pre-conv inputs (`conv_dim` each) and the recurrent state
//! `[value_heads][key_head_dim][value_head_dim]` in f32.

use crate::error::{BackendContext, EngineError, Result};
use crate::qwen35_moe::{DeltaNetDims, HybridConfig};
use crate::weights::Checkpoint;
use flashmoe_backends::quant::WeightFormat;
use flashmoe_backends::{ComputeBackend, DeltaShape};
use std::ops::Range;

/// Loads resident tensors from a checkpoint onto a backend, checking shapes.
pub(crate) struct Loader<'a, B: ComputeBackend> {
    pub(crate) be: &'a B,
    pub(crate) ckpt: &'a Checkpoint,
}

impl<B: ComputeBackend> Loader<'_, B> {
    /// The `[rows x cols]` matrix `name`: a float weight, or a quantized one
    /// ([`crate::quant_tensors`]) run quantized.
    /// Read (or assembled) straight into the backend's memory for it: never held twice.
    pub(crate) fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<B::Weight> {
        use crate::quant_tensors::{fill_matrix, matrix_format};
        let format = matrix_format(self.ckpt, name, rows, cols)?;
        let layout = format.layout(rows, cols).ctx(|| format!("`{name}`"))?;
        self.be
            .load_weight_with(name, rows, cols, format, |dst| {
                fill_matrix(self.ckpt, name, &layout, dst)
            })
            .ctx(|| format!("uploading `{name}`"))?
    }

    /// The tensor `name` of `shape`, as f32 values.
    pub(crate) fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        // Read, not borrowed from the map (see `quant_tensors::matrix`).
        let mut buf = Vec::new();
        self.ckpt.read_tensor(name, shape, &mut buf)?.to_f32()
    }

    /// The vector `name` of `len`.
    pub(crate) fn vector(&self, name: &str, len: usize) -> Result<B::Tensor> {
        let v = self.values(name, &[len])?;
        self.upload(name, &v)
    }

    /// The RMSNorm weight `name` stored as an offset from 1: uploads `1 + w` (in f32, as HF).
    pub(crate) fn offset_norm(&self, name: &str, len: usize) -> Result<B::Tensor> {
        let mut v = self.values(name, &[len])?;
        v.iter_mut().for_each(|w| *w += 1.0);
        self.upload(name, &v)
    }

    pub(crate) fn upload(&self, name: &str, v: &[f32]) -> Result<B::Tensor> {
        self.be.upload(v).ctx(|| format!("uploading `{name}`"))
    }

    /// One `[sum of rows x cols]` matrix made of row ranges of checkpoint matrices, in order:
    /// `parts` = (tensor name, its rows, the rows taken). All parts must share one format;
    /// quantized parts ([`crate::quant_tensors`]) are gathered section by section (codes,
    /// scales, biases), so nothing is re-quantized.
    pub(crate) fn gather(
        &self,
        parts: &[(&str, usize, Range<usize>)],
        cols: usize,
    ) -> Result<B::Weight> {
        let what = parts.first().map_or("", |p| p.0);
        let mut loaded = Vec::with_capacity(parts.len());
        let mut format: Option<WeightFormat> = None;
        for (name, total, range) in parts {
            let (bytes, f) = crate::quant_tensors::matrix(self.ckpt, name, *total, cols)?;
            if format.is_some_and(|g| g != f) {
                return Err(EngineError::TensorDtype {
                    file: self.ckpt.raw(name)?.file.to_path_buf(),
                    name: (*name).into(),
                    expected: format!("{format:?} like the tensors it is combined with"),
                    got: format!("{f:?}"),
                });
            }
            format = Some(f);
            loaded.push((bytes, *total, range.clone()));
        }
        let format = format.unwrap_or(WeightFormat::F32);
        let rows: usize = parts.iter().map(|p| p.2.len()).sum();
        let ctx = || format!("rows of `{what}`");
        let out_layout = format.layout(rows, cols).ctx(ctx)?;
        let mut out = vec![0u8; out_layout.total];
        // (offset in the matrix, bytes per row) of each section: data, then scales and biases.
        let sections = |l: &flashmoe_backends::quant::MatrixLayout| {
            let per_row_scales = format.group().map_or(0, |g| (cols / g) * 2);
            let mut v = vec![(0, l.data_len / l.rows.max(1))];
            if format.group().is_some() {
                v.push((l.scales_offset, per_row_scales));
                v.push((l.biases_offset, per_row_scales));
            }
            v
        };
        let mut at = 0;
        for (bytes, total, range) in &loaded {
            let in_layout = format.layout(*total, cols).ctx(ctx)?;
            for ((src_off, row), (dst_off, _)) in
                sections(&in_layout).into_iter().zip(sections(&out_layout))
            {
                let src = &bytes[src_off + range.start * row..src_off + range.end * row];
                out[dst_off + at * row..dst_off + (at + range.len()) * row].copy_from_slice(src);
            }
            at += range.len();
        }
        self.be
            .load_weight_named(what, &out, rows, cols, format)
            .ctx(|| format!("uploading rows of `{what}`"))
    }
}

/// The backend's shape of a DeltaNet step.
pub(crate) fn delta_shape(d: &DeltaNetDims) -> DeltaShape {
    DeltaShape {
        key_heads: d.num_key_heads,
        value_heads: d.num_value_heads,
        key_dim: d.key_head_dim,
        value_dim: d.value_head_dim,
    }
}

/// `linear_attn` of one layer (Gated DeltaNet).
pub(crate) struct DeltaNet<B: ComputeBackend> {
    /// `in_proj_qkv`: `[q; k; v]` rows.
    qkv: B::Weight,
    /// `in_proj_z`: the output gate of the gated norm.
    z: B::Weight,
    /// `[in_proj_b; in_proj_a]`.
    ba: B::Weight,
    /// `conv1d.weight`, `[conv_dim][kernel]`.
    conv: B::Tensor,
    /// `[-exp(A_log); dt_bias]`.
    decay: B::Tensor,
    /// `norm.weight` (plain `w`, one value head wide).
    norm: B::Tensor,
    out_proj: B::Weight,
}

/// One DeltaNet layer's decode state.
pub(crate) struct DeltaState<B: ComputeBackend> {
    conv: B::Tensor,
    recurrent: B::Tensor,
}

/// Work tensors of a DeltaNet step.
pub(crate) struct DeltaScratch<B: ComputeBackend> {
    qkv: B::Tensor,
    z: B::Tensor,
    ba: B::Tensor,
    o: B::Tensor,
}

impl<B: ComputeBackend> DeltaNet<B> {
    /// Loads `{p}.linear_attn` (fused Qwen3-Next names when `hy.fused_projections`).
    pub(crate) fn load(
        ld: &Loader<'_, B>,
        p: &str,
        hidden: usize,
        hy: &HybridConfig,
    ) -> Result<Self> {
        let d = &hy.deltanet;
        let (nk, nv, dk, dv) = (
            d.num_key_heads,
            d.num_value_heads,
            d.key_head_dim,
            d.value_head_dim,
        );
        let r = nv / nk;
        let la = format!("{p}.linear_attn");
        let (qkv, z, ba) = if hy.fused_projections {
            // Qwen3-Next groups per key head: [q (dk), k (dk), v (r dv), z (r dv)] and [b (r), a (r)].
            let qkvz = format!("{la}.in_proj_qkvz.weight");
            let g = 2 * dk + 2 * r * dv;
            let rows = nk * g;
            let part = |off: usize, len: usize| {
                (0..nk)
                    .map(|h| (qkvz.as_str(), rows, h * g + off..h * g + off + len))
                    .collect::<Vec<_>>()
            };
            let mut qkv_parts = part(0, dk);
            qkv_parts.extend(part(dk, dk));
            qkv_parts.extend(part(2 * dk, r * dv));
            let qkv = ld.gather(&qkv_parts, hidden)?;
            let z = ld.gather(&part(2 * dk + r * dv, r * dv), hidden)?;
            let ba_name = format!("{la}.in_proj_ba.weight");
            let ba_part = |off: usize| {
                (0..nk)
                    .map(|h| {
                        (
                            ba_name.as_str(),
                            nk * 2 * r,
                            h * 2 * r + off..h * 2 * r + off + r,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let mut ba_parts = ba_part(0);
            ba_parts.extend(ba_part(r));
            (qkv, z, ld.gather(&ba_parts, hidden)?)
        } else {
            let b = format!("{la}.in_proj_b.weight");
            let a = format!("{la}.in_proj_a.weight");
            (
                ld.matrix(&format!("{la}.in_proj_qkv.weight"), d.conv_dim(), hidden)?,
                ld.matrix(&format!("{la}.in_proj_z.weight"), d.value_dim(), hidden)?,
                ld.gather(&[(b.as_str(), nv, 0..nv), (a.as_str(), nv, 0..nv)], hidden)?,
            )
        };
        let conv_name = format!("{la}.conv1d.weight");
        let conv = ld.values(&conv_name, &[d.conv_dim(), 1, d.conv_kernel])?;
        let mut decay: Vec<f32> = ld
            .values(&format!("{la}.A_log"), &[nv])?
            .into_iter()
            .map(|a| -a.exp())
            .collect();
        decay.extend(ld.values(&format!("{la}.dt_bias"), &[nv])?);
        Ok(Self {
            qkv,
            z,
            ba,
            conv: ld.upload(&conv_name, &conv)?,
            decay: ld.upload(&format!("{la}.A_log"), &decay)?,
            norm: ld.vector(&format!("{la}.norm.weight"), dv)?,
            out_proj: ld.matrix(&format!("{la}.out_proj.weight"), hidden, d.value_dim())?,
        })
    }

    /// `out = linear_attn(x)` for one token, advancing `state`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step(
        &self,
        be: &B,
        d: &DeltaNetDims,
        eps: f32,
        x: &B::Tensor,
        state: &mut DeltaState<B>,
        s: &mut DeltaScratch<B>,
        out: &mut B::Tensor,
        ctx: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        be.matvec(&self.qkv, x, &mut s.qkv)
            .ctx(|| ctx("in_proj_qkv"))?;
        be.matvec(&self.z, x, &mut s.z).ctx(|| ctx("in_proj_z"))?;
        be.matvec(&self.ba, x, &mut s.ba)
            .ctx(|| ctx("in_proj_b/a"))?;
        be.conv1d_silu_step(&mut s.qkv, &mut state.conv, &self.conv, d.conv_kernel)
            .ctx(|| ctx("conv1d"))?;
        be.gated_delta_step(
            &s.qkv,
            &s.ba,
            &self.decay,
            &mut state.recurrent,
            delta_shape(d),
            &mut s.o,
        )
        .ctx(|| ctx("gated delta rule"))?;
        be.gated_rms_norm_heads(&mut s.o, &s.z, &self.norm, d.value_head_dim, eps)
            .ctx(|| ctx("norm"))?;
        be.matvec(&self.out_proj, &s.o, out).ctx(|| ctx("out_proj"))
    }
}

/// Work tensors of a DeltaNet layer over a prompt chunk of `n` tokens (`n` rows each).
pub(crate) struct DeltaChunk<B: ComputeBackend> {
    qkv: B::Tensor,
    z: B::Tensor,
    ba: B::Tensor,
    o: B::Tensor,
}

impl<B: ComputeBackend> DeltaChunk<B> {
    pub(crate) fn new(be: &B, d: &DeltaNetDims, n: usize) -> Result<Self> {
        let z = |w: usize| be.zeros(n * w).ctx(|| "allocating chunk scratch".into());
        Ok(Self {
            qkv: z(d.conv_dim())?,
            z: z(d.value_dim())?,
            ba: z(2 * d.num_value_heads)?,
            o: z(d.value_dim())?,
        })
    }
}

impl<B: ComputeBackend> DeltaNet<B> {
    /// `out = linear_attn(x)` for the `n` tokens of a chunk (`x`, `out`: `n` rows), advancing
    /// `state` through them in order: the projections as matrix products over the chunk, the
    /// conv and the delta rule as the same per-token steps as decode (exact), the gated norm
    /// and `out_proj` over the chunk again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn chunk(
        &self,
        be: &B,
        d: &DeltaNetDims,
        eps: f32,
        (x, n): (&B::Tensor, usize),
        state: &mut DeltaState<B>,
        s: &mut DeltaScratch<B>,
        c: &mut DeltaChunk<B>,
        out: &mut B::Tensor,
        ctx: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        be.matmul(&self.qkv, x, n, &mut c.qkv)
            .ctx(|| ctx("in_proj_qkv"))?;
        be.matmul(&self.z, x, n, &mut c.z)
            .ctx(|| ctx("in_proj_z"))?;
        be.matmul(&self.ba, x, n, &mut c.ba)
            .ctx(|| ctx("in_proj_b/a"))?;
        let (cd, vd, bd) = (d.conv_dim(), d.value_dim(), 2 * d.num_value_heads);
        for i in 0..n {
            be.copy_range(&c.qkv, i * cd, &mut s.qkv, 0, cd)
                .and_then(|_| be.copy_range(&c.ba, i * bd, &mut s.ba, 0, bd))
                .ctx(|| ctx("chunk row"))?;
            be.conv1d_silu_step(&mut s.qkv, &mut state.conv, &self.conv, d.conv_kernel)
                .ctx(|| ctx("conv1d"))?;
            be.gated_delta_step(
                &s.qkv,
                &s.ba,
                &self.decay,
                &mut state.recurrent,
                delta_shape(d),
                &mut s.o,
            )
            .ctx(|| ctx("gated delta rule"))?;
            be.copy_range(&s.o, 0, &mut c.o, i * vd, vd)
                .ctx(|| ctx("chunk row"))?;
        }
        be.gated_rms_norm_heads(&mut c.o, &c.z, &self.norm, d.value_head_dim, eps)
            .ctx(|| ctx("norm"))?;
        be.matmul(&self.out_proj, &c.o, n, out)
            .ctx(|| ctx("out_proj"))
    }
}

impl<B: ComputeBackend> DeltaState<B> {
    /// A zero state.
    pub(crate) fn new(be: &B, d: &DeltaNetDims) -> Result<Self> {
        Ok(Self {
            conv: be
                .zeros((d.conv_kernel - 1) * d.conv_dim())
                .ctx(|| "allocating the conv state".into())?,
            recurrent: be
                .zeros(d.state_len())
                .ctx(|| "allocating the recurrent state".into())?,
        })
    }

    /// Back to the sequence start.
    pub(crate) fn clear(&mut self, be: &B) -> Result<()> {
        be.fill_zero(&mut self.conv)
            .and_then(|_| be.fill_zero(&mut self.recurrent))
            .ctx(|| "clearing the DeltaNet state".into())
    }
}

impl<B: ComputeBackend> DeltaScratch<B> {
    pub(crate) fn new(be: &B, d: &DeltaNetDims) -> Result<Self> {
        let z = |n: usize| be.zeros(n).ctx(|| "allocating scratch".into());
        Ok(Self {
            qkv: z(d.conv_dim())?,
            z: z(d.value_dim())?,
            ba: z(2 * d.num_value_heads)?,
            o: z(d.value_dim())?,
        })
    }
}

/// `mlp.shared_expert` and `mlp.shared_expert_gate` of one layer: dense, resident.
pub(crate) struct SharedExpert<B: ComputeBackend> {
    gate_proj: B::Weight,
    up_proj: B::Weight,
    down_proj: B::Weight,
    /// `[1 x hidden]`: one scalar gate per token.
    gate: B::Weight,
}

/// Work tensors of the shared expert.
pub(crate) struct SharedScratch<B: ComputeBackend> {
    h1: B::Tensor,
    h2: B::Tensor,
    out: B::Tensor,
    g: B::Tensor,
}

impl<B: ComputeBackend> SharedExpert<B> {
    /// Loads `{p}.mlp.shared_expert{,_gate}`.
    pub(crate) fn load(ld: &Loader<'_, B>, p: &str, hidden: usize, inter: usize) -> Result<Self> {
        let se = format!("{p}.mlp.shared_expert");
        Ok(Self {
            gate_proj: ld.matrix(&format!("{se}.gate_proj.weight"), inter, hidden)?,
            up_proj: ld.matrix(&format!("{se}.up_proj.weight"), inter, hidden)?,
            down_proj: ld.matrix(&format!("{se}.down_proj.weight"), hidden, inter)?,
            gate: ld.matrix(&format!("{p}.mlp.shared_expert_gate.weight"), 1, hidden)?,
        })
    }

    /// `acc += sigmoid(gate . x) * down(silu(gate_proj x) * up_proj x)`.
    pub(crate) fn add(
        &self,
        be: &B,
        x: &B::Tensor,
        s: &mut SharedScratch<B>,
        acc: &mut B::Tensor,
        ctx: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        be.matvec(&self.gate_proj, x, &mut s.h1)
            .ctx(|| ctx("shared_expert.gate_proj"))?;
        be.matvec(&self.up_proj, x, &mut s.h2)
            .ctx(|| ctx("shared_expert.up_proj"))?;
        be.swiglu(&mut s.h1, &s.h2).ctx(|| ctx("shared_expert"))?;
        be.matvec(&self.down_proj, &s.h1, &mut s.out)
            .ctx(|| ctx("shared_expert.down_proj"))?;
        be.matvec(&self.gate, x, &mut s.g)
            .ctx(|| ctx("shared_expert_gate"))?;
        be.sigmoid_mul(&mut s.out, &s.g)
            .ctx(|| ctx("shared_expert_gate"))?;
        be.axpy(acc, 1.0, &s.out).ctx(|| ctx("shared expert add"))
    }
}

/// Work tensors of the shared expert over a chunk of `n` tokens.
pub(crate) struct SharedChunk<B: ComputeBackend> {
    h1: B::Tensor,
    h2: B::Tensor,
    out: B::Tensor,
    g: B::Tensor,
}

impl<B: ComputeBackend> SharedChunk<B> {
    pub(crate) fn new(be: &B, hidden: usize, inter: usize, n: usize) -> Result<Self> {
        let z = |w: usize| be.zeros(n * w).ctx(|| "allocating chunk scratch".into());
        Ok(Self {
            h1: z(inter)?,
            h2: z(inter)?,
            out: z(hidden)?,
            g: z(1)?,
        })
    }
}

impl<B: ComputeBackend> SharedExpert<B> {
    /// [`Self::add`] for the `n` rows of a chunk: matrix products over the chunk, one scalar
    /// gate per token.
    pub(crate) fn add_rows(
        &self,
        be: &B,
        (x, n): (&B::Tensor, usize),
        s: &mut SharedChunk<B>,
        acc: &mut B::Tensor,
        ctx: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        be.matmul(&self.gate_proj, x, n, &mut s.h1)
            .ctx(|| ctx("shared_expert.gate_proj"))?;
        be.matmul(&self.up_proj, x, n, &mut s.h2)
            .ctx(|| ctx("shared_expert.up_proj"))?;
        be.swiglu(&mut s.h1, &s.h2).ctx(|| ctx("shared_expert"))?;
        be.matmul(&self.down_proj, &s.h1, n, &mut s.out)
            .ctx(|| ctx("shared_expert.down_proj"))?;
        be.matmul(&self.gate, x, n, &mut s.g)
            .ctx(|| ctx("shared_expert_gate"))?;
        // One gate per token: `out` has `n` rows of `hidden`, `g` has `n` values.
        be.sigmoid_mul(&mut s.out, &s.g)
            .ctx(|| ctx("shared_expert_gate"))?;
        be.axpy(acc, 1.0, &s.out).ctx(|| ctx("shared expert add"))
    }
}

impl<B: ComputeBackend> SharedScratch<B> {
    pub(crate) fn new(be: &B, hidden: usize, inter: usize) -> Result<Self> {
        let z = |n: usize| be.zeros(n).ctx(|| "allocating scratch".into());
        Ok(Self {
            h1: z(inter)?,
            h2: z(inter)?,
            out: z(hidden)?,
            g: z(1)?,
        })
    }
}

/// Rows of head `i`'s query and output gate in a gated `q_proj` (`[heads][2][head_dim]`).
pub(crate) fn gated_q_rows(
    heads: usize,
    head_dim: usize,
) -> (Vec<Range<usize>>, Vec<Range<usize>>) {
    (0..heads)
        .map(|i| {
            let q = 2 * head_dim * i;
            (q..q + head_dim, q + head_dim..q + 2 * head_dim)
        })
        .unzip()
}
