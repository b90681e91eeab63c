//! The CPU backend: host `Vec<f32>` tensors, ops split over the decode pool ([`cpu_threads`]).

mod attention;
mod block;
#[cfg(target_arch = "x86_64")]
mod block_avx512;
#[cfg(target_arch = "x86_64")]
mod block_prepare;
mod host_bytes;
mod int8;
mod lanes;
mod linear_attn;
mod matmul;
mod matvec;
mod moe;
mod ops;
mod pool;
pub use pool::{cpu_threads, with_cpu_threads};
mod quantize;
mod rows;
#[cfg(feature = "wgpu")]
pub(crate) use ops::rope_table;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod test_values;

use crate::backend::{
    AttnShape, ComputeBackend, DeltaShape, ExpertScratch, KvShape, RoutedExpert, WeightView,
};
use crate::checks::{
    check_attention, check_conv1d, check_delta, check_gated_norm, check_index, check_kv_write,
    check_norm_heads, check_range, check_rope, check_rope_partial, check_rows, check_sigmoid_mul,
};
use crate::error::{BackendError, Result, check_len};
use crate::quant::{MatrixLayout, WeightFormat, dequantize_row};

/// Reference CPU implementation of [`ComputeBackend`]; ops are split over [`cpu_threads`]
/// threads (the calling thread and the pool's helpers).
///
/// Quantized (Q4/Q8) matvecs quantize the activations to int8 per weight group by default, as
/// ggml does ([`Activations::Int8`]); [`Activations::F32`] dots the codes with f32 activations
/// instead (slower; the exact reference).
///
/// ```
/// use flashmoe_backends::{ComputeBackend, CpuBackend, quant::{WeightFormat, quantize}};
/// let be = CpuBackend::new();
/// let w = be.load_weight(&quantize(&[1.0, 2.0, 3.0, 4.0], 2, 2, WeightFormat::F32).unwrap(), 2, 2, WeightFormat::F32).unwrap();
/// let x = be.upload(&[1.0, 1.0]).unwrap();
/// let mut y = be.zeros(2).unwrap();
/// be.matvec(&w, &x, &mut y).unwrap();
/// assert_eq!(be.read(&y).unwrap(), vec![3.0, 7.0]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    activations: Activations,
}

/// How quantized matvecs take their activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activations {
    /// Quantized to int8 once per matvec (per weight group, f32 scale), integer dot products.
    #[default]
    Int8,
    /// f32 activations against the codes (the exact reference; several times slower).
    F32,
}

impl CpuBackend {
    /// A CPU backend (int8 activations for quantized weights).
    pub fn new() -> Self {
        Self::default()
    }

    /// The same backend with `activations` for quantized matvecs.
    pub fn with_activations(mut self, activations: Activations) -> Self {
        self.activations = activations;
        self
    }

    fn int8(&self) -> bool {
        self.activations == Activations::Int8
    }
}

/// A host vector.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor(Vec<f32>);

impl CpuTensor {
    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }
}

thread_local! {
    /// The stacked output of [`CpuBackend::matvec_many`] before it is split into its outputs.
    static STACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A weight in host memory, kept in its storage format.
#[derive(Clone, Debug)]
pub struct CpuWeight {
    bytes: host_bytes::HostBytes,
    layout: MatrixLayout,
}

/// Keys and values, `[layer][position][kv_dim]` each.
#[derive(Clone, Debug)]
pub struct CpuKvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    shape: KvShape,
}

impl CpuKvCache {
    fn layer_range(&self, layer: usize) -> std::ops::Range<usize> {
        let n = self.shape.max_seq * self.shape.kv_dim;
        layer * n..(layer + 1) * n
    }
}

impl ComputeBackend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn zeros(&self, len: usize) -> Result<CpuTensor> {
        Ok(CpuTensor(vec![0.0; len]))
    }

    fn upload(&self, data: &[f32]) -> Result<CpuTensor> {
        Ok(CpuTensor(data.to_vec()))
    }

    fn len(&self, t: &CpuTensor) -> usize {
        t.0.len()
    }

    fn read(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.0.clone())
    }

    fn copy(&self, src: &CpuTensor, dst: &mut CpuTensor) -> Result<()> {
        check_len("copy", "dst", src.0.len(), dst.0.len())?;
        dst.0.copy_from_slice(&src.0);
        Ok(())
    }

    fn copy_range(
        &self,
        src: &CpuTensor,
        src_start: usize,
        dst: &mut CpuTensor,
        dst_start: usize,
        len: usize,
    ) -> Result<()> {
        check_range("copy_range", "src range end", src_start, len, src.0.len())?;
        check_range("copy_range", "dst range end", dst_start, len, dst.0.len())?;
        dst.0[dst_start..dst_start + len].copy_from_slice(&src.0[src_start..src_start + len]);
        Ok(())
    }

    fn write_range(&self, data: &[f32], dst: &mut CpuTensor, dst_start: usize) -> Result<()> {
        check_range(
            "write_range",
            "dst range end",
            dst_start,
            data.len(),
            dst.0.len(),
        )?;
        dst.0[dst_start..dst_start + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn weight_dims(&self, w: &CpuWeight) -> (usize, usize) {
        (w.layout.rows, w.layout.cols)
    }

    fn load_weight(
        &self,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<CpuWeight> {
        let layout = format.layout(rows, cols)?;
        layout.check("load_weight", bytes)?;
        Ok(CpuWeight {
            bytes: host_bytes::HostBytes::copy_of(bytes),
            layout,
        })
    }

    fn load_weight_with<E>(
        &self,
        _name: &str,
        rows: usize,
        cols: usize,
        format: WeightFormat,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<CpuWeight, E>> {
        let layout = format.layout(rows, cols)?;
        Ok(host_bytes::HostBytes::filled(layout.total, fill)
            .map(|bytes| CpuWeight { bytes, layout }))
    }

    fn kv_cache(&self, shape: KvShape) -> Result<CpuKvCache> {
        let n = shape
            .layers
            .checked_mul(shape.max_seq)
            .and_then(|n| n.checked_mul(shape.kv_dim))
            .ok_or(BackendError::OutOfRange {
                op: "kv_cache",
                what: "size",
                index: usize::MAX,
                limit: usize::MAX,
            })?;
        Ok(CpuKvCache {
            k: vec![0.0; n],
            v: vec![0.0; n],
            shape,
        })
    }

    fn embedding(&self, table: &CpuWeight, token: u32, out: &mut CpuTensor) -> Result<()> {
        check_index("embedding", "token", token as usize, table.layout.rows)?;
        dequantize_row(&table.bytes, &table.layout, token as usize, &mut out.0)
    }

    fn matvec(&self, w: &CpuWeight, x: &CpuTensor, out: &mut CpuTensor) -> Result<()> {
        self.matvec_bytes(
            WeightView::new(&w.bytes, w.layout.rows, w.layout.cols, w.layout.format)?,
            x,
            out,
        )
    }

    /// Quantized weights of one format and width (whole 8-row blocks each) with int8
    /// activations: one stacked pass (`matvec::matvec_stacked`), bit-identical to a matvec
    /// each. Anything else: one matvec each.
    fn matvec_many(
        &self,
        ws: &[&CpuWeight],
        x: &CpuTensor,
        outs: &mut [&mut CpuTensor],
    ) -> Result<()> {
        check_len("matvec_many", "outputs", ws.len(), outs.len())?;
        for (w, out) in ws.iter().zip(outs.iter()) {
            check_len("matvec_many", "x", w.layout.cols, x.0.len())?;
            check_len("matvec_many", "out", w.layout.rows, out.0.len())?;
        }
        let Some(first) = ws.first() else {
            return Ok(());
        };
        let stack = self.int8()
            && ws.len() > 1
            && first.layout.format.group().is_some()
            && ws.iter().all(|w| {
                w.layout.format == first.layout.format && w.layout.rows.is_multiple_of(block::ROWS)
            });
        if !stack {
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                self.matvec(w, x, out)?;
            }
            return Ok(());
        }
        let mats: Vec<(&[u8], &MatrixLayout)> = ws.iter().map(|w| (&*w.bytes, &w.layout)).collect();
        STACKED.with(|cell| {
            let mut fresh = Vec::new();
            let mut held = cell.try_borrow_mut();
            let buf = match &mut held {
                Ok(b) => &mut **b,
                // Re-entered on this thread (a nested parallel job): a fresh buffer.
                Err(_) => &mut fresh,
            };
            buf.resize(ws.iter().map(|w| w.layout.rows).sum(), 0.0);
            matvec::matvec_stacked(int8::Isa::detect(), &mats, &x.0, buf);
            let mut at = 0;
            for out in outs.iter_mut() {
                let n = out.0.len();
                out.0.copy_from_slice(&buf[at..at + n]);
                at += n;
            }
        });
        Ok(())
    }

    fn matvec_bytes(&self, w: WeightView<'_>, x: &CpuTensor, out: &mut CpuTensor) -> Result<()> {
        let l = w.layout();
        check_len("matvec", "x", l.cols, x.0.len())?;
        check_len("matvec", "out", l.rows, out.0.len())?;
        matvec::matvec(w.bytes(), l, &x.0, &mut out.0, self.int8());
        Ok(())
    }

    /// Blocked: each weight row is read once for all `n` rows of `x` (`cpu/matmul.rs`); every
    /// output has the bits [`Self::matvec`] gives its row.
    fn matmul(&self, w: &CpuWeight, x: &CpuTensor, n: usize, out: &mut CpuTensor) -> Result<()> {
        self.matmul_bytes(
            WeightView::new(&w.bytes, w.layout.rows, w.layout.cols, w.layout.format)?,
            x,
            n,
            out,
        )
    }

    /// As [`Self::matmul`], on raw bytes.
    fn matmul_bytes(
        &self,
        w: WeightView<'_>,
        x: &CpuTensor,
        n: usize,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let l = w.layout();
        check_rows("matmul_bytes", "x", n, l.cols, x.0.len())?;
        check_rows("matmul_bytes", "out", n, l.rows, out.0.len())?;
        matmul::matmul(w.bytes(), l, &x.0, n, &mut out.0, self.int8());
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &CpuTensor,
        weight: &CpuTensor,
        eps: f32,
        out: &mut CpuTensor,
    ) -> Result<()> {
        check_len("rms_norm", "weight", x.0.len(), weight.0.len())?;
        check_len("rms_norm", "out", x.0.len(), out.0.len())?;
        ops::rms_norm(&x.0, &weight.0, eps, &mut out.0);
        Ok(())
    }

    fn rms_norm_heads(
        &self,
        x: &mut CpuTensor,
        weight: &CpuTensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        check_norm_heads(x.0.len(), weight.0.len(), head_dim)?;
        for head in x.0.chunks_exact_mut(head_dim) {
            ops::rms_norm_in_place(head, &weight.0, eps);
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        n_heads: usize,
        head_dim: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()> {
        check_rope(x.0.len(), n_heads, head_dim)?;
        ops::rope(&mut x.0, n_heads, head_dim, pos, theta);
        Ok(())
    }

    fn rope_partial(
        &self,
        x: &mut CpuTensor,
        n_heads: usize,
        head_dim: usize,
        rot_dim: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()> {
        check_rope_partial(x.0.len(), n_heads, head_dim, rot_dim)?;
        linear_attn::rope_partial(&mut x.0, n_heads, head_dim, rot_dim, pos, theta);
        Ok(())
    }

    fn sigmoid_mul(&self, x: &mut CpuTensor, gate: &CpuTensor) -> Result<()> {
        check_sigmoid_mul(x.0.len(), gate.0.len())?;
        linear_attn::sigmoid_mul(&mut x.0, &gate.0);
        Ok(())
    }

    fn conv1d_silu_step(
        &self,
        x: &mut CpuTensor,
        state: &mut CpuTensor,
        weight: &CpuTensor,
        kernel: usize,
    ) -> Result<()> {
        check_conv1d(x.0.len(), state.0.len(), weight.0.len(), kernel)?;
        linear_attn::conv1d_silu_step(&mut x.0, &mut state.0, &weight.0, kernel);
        Ok(())
    }

    fn gated_delta_step(
        &self,
        qkv: &CpuTensor,
        ba: &CpuTensor,
        decay: &CpuTensor,
        state: &mut CpuTensor,
        shape: DeltaShape,
        out: &mut CpuTensor,
    ) -> Result<()> {
        check_delta(
            shape,
            qkv.0.len(),
            ba.0.len(),
            decay.0.len(),
            state.0.len(),
            out.0.len(),
        )?;
        linear_attn::gated_delta_step(&qkv.0, &ba.0, &decay.0, &mut state.0, shape, &mut out.0);
        Ok(())
    }

    fn gated_rms_norm_heads(
        &self,
        x: &mut CpuTensor,
        z: &CpuTensor,
        weight: &CpuTensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        check_gated_norm(x.0.len(), z.0.len(), weight.0.len(), head_dim)?;
        linear_attn::gated_rms_norm_heads(&mut x.0, &z.0, &weight.0, head_dim, eps);
        Ok(())
    }

    fn kv_write(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        pos: usize,
        k: &CpuTensor,
        v: &CpuTensor,
    ) -> Result<()> {
        let s = cache.shape;
        check_kv_write(s, layer, pos, k.0.len(), v.0.len())?;
        let off = cache.layer_range(layer).start + pos * s.kv_dim;
        cache.k[off..off + s.kv_dim].copy_from_slice(&k.0);
        cache.v[off..off + s.kv_dim].copy_from_slice(&v.0);
        Ok(())
    }

    fn attention(
        &self,
        q: &CpuTensor,
        cache: &CpuKvCache,
        layer: usize,
        seq_len: usize,
        shape: AttnShape,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let s = cache.shape;
        check_attention(s, layer, seq_len, shape, q.0.len(), out.0.len())?;
        let r = cache.layer_range(layer);
        attention::attention(
            &q.0,
            &cache.k[r.clone()],
            &cache.v[r],
            seq_len,
            shape,
            &mut out.0,
        );
        Ok(())
    }

    fn swiglu(&self, gate: &mut CpuTensor, up: &CpuTensor) -> Result<()> {
        check_len("swiglu", "up", gate.0.len(), up.0.len())?;
        ops::swiglu(&mut gate.0, &up.0);
        Ok(())
    }

    fn axpy(&self, y: &mut CpuTensor, alpha: f32, x: &CpuTensor) -> Result<()> {
        check_len("axpy", "x", y.0.len(), x.0.len())?;
        if y.0.len() >= 1 << 18 {
            pool::for_chunks(&mut y.0, 1 << 14, |i, y| {
                let x = &x.0[i << 14..];
                y.iter_mut().zip(x).for_each(|(a, b)| *a += alpha * b)
            });
        } else {
            y.0.iter_mut().zip(&x.0).for_each(|(a, b)| *a += alpha * b);
        }
        Ok(())
    }

    fn fill_zero(&self, y: &mut CpuTensor) -> Result<()> {
        if y.0.len() >= 1 << 18 {
            pool::for_chunks(&mut y.0, 1 << 16, |_, c| c.fill(0.0));
        } else {
            y.0.fill(0.0);
        }
        Ok(())
    }

    /// Two parallel regions for all the experts (gate and up of every expert, then every
    /// down with the combine fused), bit-identical to the default composition.
    fn moe_experts(
        &self,
        experts: &[RoutedExpert<'_>],
        x: &CpuTensor,
        scratch: &mut ExpertScratch<CpuTensor>,
        out: &mut CpuTensor,
    ) -> Result<()> {
        if moe::fits(experts, x.0.len(), out.0.len()) {
            moe::moe_experts(int8::Isa::detect(), self.int8(), experts, &x.0, &mut out.0);
            return Ok(());
        }
        // Mixed formats or shapes: one expert at a time (each op checks its sizes).
        self.fill_zero(out)?;
        for e in experts {
            self.expert_ffn(
                e.weights,
                x,
                &mut scratch.h1,
                &mut scratch.h2,
                &mut scratch.out,
            )?;
            self.axpy(out, e.combine, &scratch.out)?;
        }
        Ok(())
    }

    fn rms_norm_rows(
        &self,
        x: &CpuTensor,
        weight: &CpuTensor,
        eps: f32,
        n: usize,
        out: &mut CpuTensor,
    ) -> Result<()> {
        rows::rms_norm_rows(x, weight, eps, n, out)
    }

    fn rope_rows(
        &self,
        x: &mut CpuTensor,
        n: usize,
        (n_heads, head_dim): (usize, usize),
        start: usize,
        theta: f32,
    ) -> Result<()> {
        rows::rope_rows(x, n, (n_heads, head_dim, head_dim), start, theta)
    }

    fn rope_partial_rows(
        &self,
        x: &mut CpuTensor,
        n: usize,
        heads: (usize, usize, usize),
        start: usize,
        theta: f32,
    ) -> Result<()> {
        rows::rope_rows(x, n, heads, start, theta)
    }

    fn attention_rows(
        &self,
        q: &CpuTensor,
        cache: &CpuKvCache,
        layer: usize,
        start: usize,
        n: usize,
        shape: AttnShape,
        out: &mut CpuTensor,
    ) -> Result<()> {
        rows::attention_rows(q, cache, layer, (start, n), shape, out)
    }

    fn swiglu_rows(
        &self,
        gate: &mut CpuTensor,
        up: &CpuTensor,
        n: usize,
        width: usize,
    ) -> Result<()> {
        rows::swiglu_rows(gate, up, n, width)
    }

    fn gather_rows(
        &self,
        x: &CpuTensor,
        width: usize,
        rows: &[usize],
        out: &mut CpuTensor,
    ) -> Result<()> {
        rows::gather_rows(x, width, rows, out)
    }

    fn scatter_add_rows(
        &self,
        y: &mut CpuTensor,
        width: usize,
        rows: &[usize],
        weights: &[f32],
        x: &CpuTensor,
    ) -> Result<()> {
        rows::scatter_add_rows(y, width, rows, weights, x)
    }
}
