//! [`ComputeBackend`] for [`WgpuBackend`]: operand checks, then commands recorded (see
//! `record`); the routed experts live in `moe`.

use super::kernels::{Fmt, Kernel, check_gpu_dims};
use super::record::{Bind, grown, to_u32, words};
use super::tensor::{GpuKvCache, GpuTensor, GpuWeight, MatRef, TENSOR_USAGE, tensor_bytes};
use super::{WG, WgpuBackend};
use crate::backend::{
    AttnShape, ComputeBackend, DeltaShape, ExpertId, ExpertScratch, KvShape, RoutedExpert,
    WeightView,
};
use crate::checks::{
    check_attention, check_conv1d, check_delta, check_gated_norm, check_index, check_kv_write,
    check_norm_heads, check_range, check_rope, check_rope_partial, check_sigmoid_mul,
};
use crate::error::{BackendError, Result, check_len};
use crate::quant::WeightFormat;
use ::wgpu::util::DeviceExt;

impl ComputeBackend for WgpuBackend {
    type Tensor = GpuTensor;
    type Weight = GpuWeight;
    type KvCache = GpuKvCache;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn max_tensor_len(&self) -> usize {
        usize::try_from(self.gpu.info.max_binding / 4).unwrap_or(usize::MAX)
    }

    fn zeros(&self, len: usize) -> Result<GpuTensor> {
        let buf = self.gpu.device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("tensor"),
            size: tensor_bytes(len),
            usage: TENSOR_USAGE,
            mapped_at_creation: false,
        });
        Ok(GpuTensor { buf, len })
    }

    fn upload(&self, data: &[f32]) -> Result<GpuTensor> {
        let mut padded = data.to_vec();
        padded.resize(tensor_bytes(data.len()) as usize / 4, 0.0);
        let buf = self
            .gpu
            .device
            .create_buffer_init(&::wgpu::util::BufferInitDescriptor {
                label: Some("tensor"),
                contents: bytemuck::cast_slice(&padded),
                usage: TENSOR_USAGE,
            });
        Ok(GpuTensor {
            buf,
            len: data.len(),
        })
    }

    fn len(&self, t: &GpuTensor) -> usize {
        t.len
    }

    fn read(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        Ok(self.read_many(&[t])?.pop().unwrap_or_default())
    }

    fn read_many(&self, ts: &[&GpuTensor]) -> Result<Vec<Vec<f32>>> {
        self.read_back(ts)
    }

    fn copy(&self, src: &GpuTensor, dst: &mut GpuTensor) -> Result<()> {
        check_len("copy", "dst", src.len, dst.len)?;
        let mut st = self.state.lock();
        st.encoder(&self.gpu.device).copy_buffer_to_buffer(
            &src.buf,
            0,
            &dst.buf,
            0,
            tensor_bytes(src.len),
        );
        Ok(())
    }

    fn copy_range(
        &self,
        src: &GpuTensor,
        src_start: usize,
        dst: &mut GpuTensor,
        dst_start: usize,
        len: usize,
    ) -> Result<()> {
        check_range("copy_range", "src range end", src_start, len, src.len)?;
        check_range("copy_range", "dst range end", dst_start, len, dst.len)?;
        if len == 0 {
            return Ok(());
        }
        // f32 offsets and sizes are multiples of wgpu's 4-byte copy alignment.
        let mut st = self.state.lock();
        st.encoder(&self.gpu.device).copy_buffer_to_buffer(
            &src.buf,
            (src_start * 4) as u64,
            &dst.buf,
            (dst_start * 4) as u64,
            (len * 4) as u64,
        );
        Ok(())
    }

    fn weight_dims(&self, w: &GpuWeight) -> (usize, usize) {
        (w.layout.rows, w.layout.cols)
    }

    fn load_weight(
        &self,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<GpuWeight> {
        let w = GpuWeight::upload(
            &self.gpu.device,
            bytes,
            rows,
            cols,
            format,
            self.gpu.info.max_binding,
        )?;
        self.gpu.check("load_weight")?;
        Ok(w)
    }

    fn kv_cache(&self, shape: KvShape) -> Result<GpuKvCache> {
        let bytes = (shape.max_seq as u64)
            .checked_mul(shape.kv_dim as u64 * 4)
            .filter(|&b| b <= self.gpu.info.max_binding)
            .ok_or(BackendError::OutOfRange {
                op: "kv_cache",
                what: "bytes per layer (max_seq * kv_dim * 4)",
                index: shape.max_seq.saturating_mul(shape.kv_dim * 4),
                limit: self.gpu.info.max_binding as usize,
            })?;
        let layer = |label| {
            self.gpu.device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(16),
                usage: TENSOR_USAGE,
                mapped_at_creation: false,
            })
        };
        Ok(GpuKvCache {
            k: (0..shape.layers).map(|_| layer("k cache")).collect(),
            v: (0..shape.layers).map(|_| layer("v cache")).collect(),
            shape,
        })
    }

    fn embedding(&self, table: &GpuWeight, token: u32, out: &mut GpuTensor) -> Result<()> {
        let l = table.layout;
        check_index("embedding", "token", token as usize, l.rows)?;
        check_len("embedding", "out", l.cols, out.len)?;
        let t = token as usize;
        let block = table
            .blocks
            .iter()
            .find(|b| (b.row0..b.row0 + b.rows).contains(&t))
            .expect("row blocks cover every row");
        let fmt = Fmt::of(l.format);
        let mut st = self.state.lock();
        let p = self.arena_item(
            &mut st,
            &words(&[
                (t - block.row0) as u32,
                l.cols as u32,
                l.format.group().unwrap_or(0) as u32,
                fmt.group_shift(l.format),
                block.mat.data,
                block.mat.scales,
                block.mat.biases,
                0,
            ]),
        );
        let mut bindings = vec![(0, Bind::Buf(&block.buf)), (2, Bind::Buf(&out.buf)), (3, p)];
        if fmt.quantized() {
            bindings.push((5, Bind::Buf(&block.buf)));
        }
        self.dispatch(
            &mut st,
            Kernel::Embed(fmt),
            &bindings,
            ((l.cols as u32).div_ceil(WG), 1, 1),
        );
        Ok(())
    }

    fn matvec(&self, w: &GpuWeight, x: &GpuTensor, out: &mut GpuTensor) -> Result<()> {
        let l = w.layout;
        check_len("matvec", "x", l.cols, x.len)?;
        check_len("matvec", "out", l.rows, out.len)?;
        let mut st = self.state.lock();
        for b in &w.blocks {
            self.matvec_at(
                &mut st,
                Bind::Buf(&b.buf),
                b.mat,
                l.format,
                b.rows,
                l.cols,
                x,
                out,
                b.row0,
            )?;
        }
        Ok(())
    }

    fn matvec_bytes(&self, w: WeightView<'_>, x: &GpuTensor, out: &mut GpuTensor) -> Result<()> {
        let l = *w.layout();
        check_len("matvec", "x", l.cols, x.len)?;
        check_len("matvec", "out", l.rows, out.len)?;
        check_gpu_dims(l.format, l.rows, l.cols)?;
        if l.total as u64 > self.gpu.info.max_binding {
            // Larger than one binding: split into row blocks like a resident weight.
            let tmp = self.load_weight(w.bytes(), l.rows, l.cols, l.format)?;
            return self.matvec(&tmp, x, out);
        }
        let buf = self.storage(w.bytes());
        let mut st = self.state.lock();
        self.matvec_at(
            &mut st,
            Bind::Temp(&buf),
            MatRef::at(0, &l)?,
            l.format,
            l.rows,
            l.cols,
            x,
            out,
            0,
        )
    }

    /// One tiled dispatch per row block for all `n` tokens (`matmul.wgsl`).
    fn matmul(&self, w: &GpuWeight, x: &GpuTensor, n: usize, out: &mut GpuTensor) -> Result<()> {
        self.matmul_resident(w, x, n, out)
    }

    /// As [`Self::matmul`], the bytes uploaded once for all `n` tokens.
    fn matmul_bytes(
        &self,
        w: WeightView<'_>,
        x: &GpuTensor,
        n: usize,
        out: &mut GpuTensor,
    ) -> Result<()> {
        self.matmul_view(w, x, n, out)
    }

    fn rms_norm(
        &self,
        x: &GpuTensor,
        weight: &GpuTensor,
        eps: f32,
        out: &mut GpuTensor,
    ) -> Result<()> {
        check_len("rms_norm", "weight", x.len, weight.len)?;
        check_len("rms_norm", "out", x.len, out.len)?;
        let n = to_u32("rms_norm", "length", x.len)?;
        let mut st = self.state.lock();
        let p = self.arena_item(&mut st, &words(&[n, eps.to_bits(), 0, 0]));
        self.dispatch(
            &mut st,
            Kernel::RmsNorm,
            &[
                (0, Bind::Buf(&out.buf)),
                (1, Bind::Buf(&x.buf)),
                (2, Bind::Buf(&weight.buf)),
                (3, p),
            ],
            (1, 1, 1),
        );
        Ok(())
    }

    fn rms_norm_heads(
        &self,
        x: &mut GpuTensor,
        weight: &GpuTensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        check_norm_heads(x.len, weight.len, head_dim)?;
        let mut st = self.state.lock();
        let p = self.arena_item(&mut st, &words(&[head_dim as u32, eps.to_bits(), 0, 0]));
        self.dispatch(
            &mut st,
            Kernel::RmsNormHeads,
            &[(0, Bind::Buf(&x.buf)), (2, Bind::Buf(&weight.buf)), (3, p)],
            (to_u32("rms_norm_heads", "heads", x.len / head_dim)?, 1, 1),
        );
        Ok(())
    }

    fn rope(
        &self,
        x: &mut GpuTensor,
        n_heads: usize,
        head_dim: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()> {
        check_rope(x.len, n_heads, head_dim)?;
        self.rope_dims(x, n_heads, head_dim, head_dim, pos, theta)
    }

    fn rope_partial(
        &self,
        x: &mut GpuTensor,
        n_heads: usize,
        head_dim: usize,
        rot_dim: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()> {
        check_rope_partial(x.len, n_heads, head_dim, rot_dim)?;
        self.rope_dims(x, n_heads, head_dim, rot_dim, pos, theta)
    }

    fn sigmoid_mul(&self, x: &mut GpuTensor, gate: &GpuTensor) -> Result<()> {
        check_sigmoid_mul(x.len, gate.len)?;
        self.sigmoid_gate(x, gate)
    }

    fn conv1d_silu_step(
        &self,
        x: &mut GpuTensor,
        state: &mut GpuTensor,
        weight: &GpuTensor,
        kernel: usize,
    ) -> Result<()> {
        check_conv1d(x.len, state.len, weight.len, kernel)?;
        self.conv1d(x, state, weight, kernel)
    }

    fn gated_delta_step(
        &self,
        qkv: &GpuTensor,
        ba: &GpuTensor,
        decay: &GpuTensor,
        state: &mut GpuTensor,
        shape: DeltaShape,
        out: &mut GpuTensor,
    ) -> Result<()> {
        check_delta(shape, qkv.len, ba.len, decay.len, state.len, out.len)?;
        self.delta_rule(qkv, ba, decay, state, shape, out)
    }

    fn gated_rms_norm_heads(
        &self,
        x: &mut GpuTensor,
        z: &GpuTensor,
        weight: &GpuTensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        check_gated_norm(x.len, z.len, weight.len, head_dim)?;
        self.gated_norm(x, z, weight, head_dim, eps)
    }

    fn kv_write(
        &self,
        cache: &mut GpuKvCache,
        layer: usize,
        pos: usize,
        k: &GpuTensor,
        v: &GpuTensor,
    ) -> Result<()> {
        let s = cache.shape;
        check_kv_write(s, layer, pos, k.len, v.len)?;
        let (off, n) = ((pos * s.kv_dim * 4) as u64, (s.kv_dim * 4) as u64);
        let mut st = self.state.lock();
        let enc = st.encoder(&self.gpu.device);
        enc.copy_buffer_to_buffer(&k.buf, 0, &cache.k[layer], off, n);
        enc.copy_buffer_to_buffer(&v.buf, 0, &cache.v[layer], off, n);
        Ok(())
    }

    fn attention(
        &self,
        q: &GpuTensor,
        cache: &GpuKvCache,
        layer: usize,
        seq_len: usize,
        shape: AttnShape,
        out: &mut GpuTensor,
    ) -> Result<()> {
        let s = cache.shape;
        check_attention(s, layer, seq_len, shape, q.len, out.len)?;
        let mut st = self.state.lock();
        let p = self.arena_item(
            &mut st,
            &words(&[
                seq_len as u32,
                shape.head_dim as u32,
                s.kv_dim as u32,
                (shape.n_heads / shape.n_kv_heads) as u32,
                s.max_seq as u32,
                0,
                (1.0 / (shape.head_dim as f32).sqrt()).to_bits(),
                0,
            ]),
        );
        let scores = grown(
            &mut st.scores,
            &self.gpu.device,
            (shape.n_heads * s.max_seq * 4) as u64,
            ::wgpu::BufferUsages::STORAGE,
            "attention scores",
        );
        self.dispatch(
            &mut st,
            Kernel::Attention,
            &[
                (0, Bind::Buf(&q.buf)),
                (1, Bind::Buf(&cache.k[layer])),
                (2, Bind::Buf(&cache.v[layer])),
                (3, Bind::Buf(&scores)),
                (4, Bind::Buf(&out.buf)),
                (5, p),
            ],
            (shape.n_heads as u32, 1, 1),
        );
        Ok(())
    }

    fn swiglu(&self, gate: &mut GpuTensor, up: &GpuTensor) -> Result<()> {
        check_len("swiglu", "up", gate.len, up.len)?;
        self.elementwise(Kernel::Swiglu, gate, up, 0.0)
    }

    fn axpy(&self, y: &mut GpuTensor, alpha: f32, x: &GpuTensor) -> Result<()> {
        check_len("axpy", "x", y.len, x.len)?;
        self.elementwise(Kernel::Axpy, y, x, alpha)
    }

    fn fill_zero(&self, y: &mut GpuTensor) -> Result<()> {
        let mut st = self.state.lock();
        st.encoder(&self.gpu.device).clear_buffer(&y.buf, 0, None);
        Ok(())
    }

    fn moe_experts(
        &self,
        experts: &[RoutedExpert<'_>],
        x: &GpuTensor,
        _scratch: &mut ExpertScratch<GpuTensor>,
        out: &mut GpuTensor,
    ) -> Result<()> {
        self.run_experts(experts, x, out)
    }

    fn stages_experts(&self) -> bool {
        true
    }

    fn stage_expert(&self, id: ExpertId, weights: [WeightView<'_>; 3]) -> Result<bool> {
        self.stage(id, weights)
    }
}
