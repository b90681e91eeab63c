//! [`Profiled`]: a [`ComputeBackend`] that forwards every op to another one and charges its wall
//! time to a [`Phase`] of a shared [`Profile`].
//!
//! Resident matrices are labelled at load time from their HF name
//! ([`ComputeBackend::load_weight_named`], [`Phase::of_weight`]), so a matvec is charged to
//! `q_proj`, the router or `lm_head` without the engine saying so. A GPU backend queues work
//! asynchronously: its op times are submission times, and the wait shows up where results are
//! read back.

use crate::backend::{
    AttnShape, ComputeBackend, DeltaShape, ExpertId, ExpertScratch, KvShape, RoutedExpert,
    WeightView,
};
use crate::error::Result;
use crate::profile::{Phase, Profile};
use crate::quant::WeightFormat;
use crate::routing::Routing;
use std::sync::Arc;
use std::time::Instant;

/// Times every op of the backend `B` it wraps.
///
/// ```
/// use flashmoe_backends::{ComputeBackend, CpuBackend, Profiled, profile::Phase, quant::WeightFormat};
/// let be = Profiled::new(CpuBackend::new());
/// let w = be.load_weight_named("lm_head.weight", &[0u8; 16], 2, 2, WeightFormat::F32).unwrap();
/// let x = be.upload(&[1.0, 1.0]).unwrap();
/// let mut y = be.zeros(2).unwrap();
/// be.matvec(&w, &x, &mut y).unwrap();
/// let snap = be.profile().unwrap().snapshot();
/// assert_eq!(snap.iter().find(|r| r.0 == Phase::LmHead).unwrap().2, 1);
/// ```
#[derive(Debug)]
pub struct Profiled<B> {
    inner: B,
    profile: Arc<Profile>,
}

/// A weight of the wrapped backend and the phase its matvecs are charged to.
#[derive(Debug)]
pub struct ProfiledWeight<W> {
    inner: W,
    phase: Phase,
}

impl<B: ComputeBackend> Profiled<B> {
    /// Wraps `inner` with an empty profile.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            profile: Arc::new(Profile::new()),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The profile being filled (shared: it can be read while the model runs).
    pub fn shared_profile(&self) -> Arc<Profile> {
        self.profile.clone()
    }

    fn timed<T>(&self, phase: Phase, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.profile.record(phase, t.elapsed());
        r
    }
}

impl<B: ComputeBackend> ComputeBackend for Profiled<B> {
    type Tensor = B::Tensor;
    type Weight = ProfiledWeight<B::Weight>;
    type KvCache = B::KvCache;

    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn zeros(&self, len: usize) -> Result<B::Tensor> {
        self.inner.zeros(len)
    }
    fn max_tensor_len(&self) -> usize {
        self.inner.max_tensor_len()
    }
    fn upload(&self, data: &[f32]) -> Result<B::Tensor> {
        self.inner.upload(data)
    }
    fn len(&self, t: &B::Tensor) -> usize {
        self.inner.len(t)
    }
    fn read(&self, t: &B::Tensor) -> Result<Vec<f32>> {
        self.timed(Phase::OtherOps, || self.inner.read(t))
    }
    fn read_many(&self, ts: &[&B::Tensor]) -> Result<Vec<Vec<f32>>> {
        // The engine reads many only for router and pre-gate logits.
        self.timed(Phase::Router, || self.inner.read_many(ts))
    }
    fn copy(&self, src: &B::Tensor, dst: &mut B::Tensor) -> Result<()> {
        self.timed(Phase::OtherOps, || self.inner.copy(src, dst))
    }
    fn copy_range(
        &self,
        src: &B::Tensor,
        src_start: usize,
        dst: &mut B::Tensor,
        dst_start: usize,
        len: usize,
    ) -> Result<()> {
        self.timed(Phase::OtherOps, || {
            self.inner.copy_range(src, src_start, dst, dst_start, len)
        })
    }
    fn write_range(&self, data: &[f32], dst: &mut B::Tensor, dst_start: usize) -> Result<()> {
        self.timed(Phase::Embedding, || {
            self.inner.write_range(data, dst, dst_start)
        })
    }
    fn weight_dims(&self, w: &Self::Weight) -> (usize, usize) {
        self.inner.weight_dims(&w.inner)
    }
    fn load_weight(
        &self,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<Self::Weight> {
        self.load_weight_named("", bytes, rows, cols, format)
    }
    fn load_weight_with<E>(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        format: WeightFormat,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<Self::Weight, E>> {
        let loaded = self
            .inner
            .load_weight_with(name, rows, cols, format, fill)?;
        Ok(loaded.map(|inner| ProfiledWeight {
            inner,
            phase: Phase::of_weight(name),
        }))
    }
    fn load_weight_named(
        &self,
        name: &str,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<Self::Weight> {
        Ok(ProfiledWeight {
            inner: self
                .inner
                .load_weight_named(name, bytes, rows, cols, format)?,
            phase: Phase::of_weight(name),
        })
    }
    fn profile(&self) -> Option<&Profile> {
        Some(&self.profile)
    }
    fn kv_cache(&self, shape: KvShape) -> Result<B::KvCache> {
        self.inner.kv_cache(shape)
    }
    fn embedding(&self, table: &Self::Weight, token: u32, out: &mut B::Tensor) -> Result<()> {
        self.timed(Phase::Embedding, || {
            self.inner.embedding(&table.inner, token, out)
        })
    }
    fn matvec(&self, w: &Self::Weight, x: &B::Tensor, out: &mut B::Tensor) -> Result<()> {
        self.timed(w.phase, || self.inner.matvec(&w.inner, x, out))
    }
    fn matvec_many(
        &self,
        ws: &[&Self::Weight],
        x: &B::Tensor,
        outs: &mut [&mut B::Tensor],
    ) -> Result<()> {
        let inner: Vec<&B::Weight> = ws.iter().map(|w| &w.inner).collect();
        // One pass is one phase: its own when there is one weight, else the q+k+v row.
        let phase = match ws {
            [w] => w.phase,
            _ => Phase::QkvProj,
        };
        self.timed(phase, || self.inner.matvec_many(&inner, x, outs))
    }
    fn matvec_bytes(&self, w: WeightView<'_>, x: &B::Tensor, out: &mut B::Tensor) -> Result<()> {
        self.timed(Phase::Experts, || self.inner.matvec_bytes(w, x, out))
    }
    fn matmul(&self, w: &Self::Weight, x: &B::Tensor, n: usize, out: &mut B::Tensor) -> Result<()> {
        self.timed(w.phase, || self.inner.matmul(&w.inner, x, n, out))
    }
    fn matmul_bytes(
        &self,
        w: WeightView<'_>,
        x: &B::Tensor,
        n: usize,
        out: &mut B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::Experts, || self.inner.matmul_bytes(w, x, n, out))
    }
    fn embedding_rows(&self, t: &Self::Weight, tokens: &[u32], out: &mut B::Tensor) -> Result<()> {
        self.timed(Phase::Embedding, || {
            self.inner.embedding_rows(&t.inner, tokens, out)
        })
    }
    fn rms_norm_rows(
        &self,
        x: &B::Tensor,
        w: &B::Tensor,
        eps: f32,
        n: usize,
        out: &mut B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::Norms, || self.inner.rms_norm_rows(x, w, eps, n, out))
    }
    fn rope_rows(
        &self,
        x: &mut B::Tensor,
        n: usize,
        heads: (usize, usize),
        start: usize,
        theta: f32,
    ) -> Result<()> {
        self.timed(Phase::AttnCore, || {
            self.inner.rope_rows(x, n, heads, start, theta)
        })
    }
    fn rope_partial_rows(
        &self,
        x: &mut B::Tensor,
        n: usize,
        heads: (usize, usize, usize),
        start: usize,
        theta: f32,
    ) -> Result<()> {
        self.timed(Phase::AttnCore, || {
            self.inner.rope_partial_rows(x, n, heads, start, theta)
        })
    }
    fn kv_write_rows(
        &self,
        cache: &mut B::KvCache,
        layer: usize,
        start: usize,
        n: usize,
        kv_dim: usize,
        k: &B::Tensor,
        v: &B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::AttnCore, || {
            self.inner
                .kv_write_rows(cache, layer, start, n, kv_dim, k, v)
        })
    }
    fn attention_rows(
        &self,
        q: &B::Tensor,
        cache: &B::KvCache,
        layer: usize,
        start: usize,
        n: usize,
        shape: AttnShape,
        out: &mut B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::AttnCore, || {
            self.inner
                .attention_rows(q, cache, layer, start, n, shape, out)
        })
    }
    fn swiglu_rows(
        &self,
        gate: &mut B::Tensor,
        up: &B::Tensor,
        n: usize,
        width: usize,
    ) -> Result<()> {
        self.timed(Phase::Experts, || {
            self.inner.swiglu_rows(gate, up, n, width)
        })
    }
    fn gather_rows(
        &self,
        x: &B::Tensor,
        width: usize,
        rows: &[usize],
        out: &mut B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::Experts, || {
            self.inner.gather_rows(x, width, rows, out)
        })
    }
    fn scatter_add_rows(
        &self,
        y: &mut B::Tensor,
        width: usize,
        rows: &[usize],
        weights: &[f32],
        x: &B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::Experts, || {
            self.inner.scatter_add_rows(y, width, rows, weights, x)
        })
    }
    fn rms_norm(&self, x: &B::Tensor, w: &B::Tensor, eps: f32, out: &mut B::Tensor) -> Result<()> {
        self.timed(Phase::Norms, || self.inner.rms_norm(x, w, eps, out))
    }
    fn rms_norm_heads(
        &self,
        x: &mut B::Tensor,
        w: &B::Tensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.timed(Phase::Norms, || {
            self.inner.rms_norm_heads(x, w, head_dim, eps)
        })
    }
    fn rope(
        &self,
        x: &mut B::Tensor,
        n_heads: usize,
        head_dim: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()> {
        self.timed(Phase::AttnCore, || {
            self.inner.rope(x, n_heads, head_dim, pos, theta)
        })
    }
    fn rope_partial(
        &self,
        x: &mut B::Tensor,
        n_heads: usize,
        head_dim: usize,
        rot_dim: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()> {
        self.timed(Phase::AttnCore, || {
            self.inner
                .rope_partial(x, n_heads, head_dim, rot_dim, pos, theta)
        })
    }
    fn sigmoid_mul(&self, x: &mut B::Tensor, gate: &B::Tensor) -> Result<()> {
        self.timed(Phase::AttnCore, || self.inner.sigmoid_mul(x, gate))
    }
    fn conv1d_silu_step(
        &self,
        x: &mut B::Tensor,
        state: &mut B::Tensor,
        weight: &B::Tensor,
        kernel: usize,
    ) -> Result<()> {
        self.timed(Phase::DeltaNet, || {
            self.inner.conv1d_silu_step(x, state, weight, kernel)
        })
    }
    fn gated_delta_step(
        &self,
        qkv: &B::Tensor,
        ba: &B::Tensor,
        decay: &B::Tensor,
        state: &mut B::Tensor,
        shape: DeltaShape,
        out: &mut B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::DeltaNet, || {
            self.inner
                .gated_delta_step(qkv, ba, decay, state, shape, out)
        })
    }
    fn gated_rms_norm_heads(
        &self,
        x: &mut B::Tensor,
        z: &B::Tensor,
        weight: &B::Tensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.timed(Phase::Norms, || {
            self.inner.gated_rms_norm_heads(x, z, weight, head_dim, eps)
        })
    }
    fn kv_write(
        &self,
        cache: &mut B::KvCache,
        layer: usize,
        pos: usize,
        k: &B::Tensor,
        v: &B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::AttnCore, || {
            self.inner.kv_write(cache, layer, pos, k, v)
        })
    }
    fn attention(
        &self,
        q: &B::Tensor,
        cache: &B::KvCache,
        layer: usize,
        seq_len: usize,
        shape: AttnShape,
        out: &mut B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::AttnCore, || {
            self.inner.attention(q, cache, layer, seq_len, shape, out)
        })
    }
    fn swiglu(&self, gate: &mut B::Tensor, up: &B::Tensor) -> Result<()> {
        self.timed(Phase::OtherOps, || self.inner.swiglu(gate, up))
    }
    fn axpy(&self, y: &mut B::Tensor, alpha: f32, x: &B::Tensor) -> Result<()> {
        self.timed(Phase::OtherOps, || self.inner.axpy(y, alpha, x))
    }
    fn fill_zero(&self, y: &mut B::Tensor) -> Result<()> {
        self.timed(Phase::OtherOps, || self.inner.fill_zero(y))
    }
    fn router_top_k(&self, logits: &B::Tensor, k: usize, renormalize: bool) -> Result<Routing> {
        self.timed(Phase::Router, || {
            self.inner.router_top_k(logits, k, renormalize)
        })
    }
    fn expert_ffn(
        &self,
        w: [WeightView<'_>; 3],
        x: &B::Tensor,
        h1: &mut B::Tensor,
        h2: &mut B::Tensor,
        out: &mut B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::Experts, || self.inner.expert_ffn(w, x, h1, h2, out))
    }
    fn moe_experts(
        &self,
        experts: &[RoutedExpert<'_>],
        x: &B::Tensor,
        scratch: &mut ExpertScratch<B::Tensor>,
        out: &mut B::Tensor,
    ) -> Result<()> {
        self.timed(Phase::Experts, || {
            self.inner.moe_experts(experts, x, scratch, out)
        })
    }
    fn stages_experts(&self) -> bool {
        self.inner.stages_experts()
    }
    fn stage_expert(&self, id: ExpertId, weights: [WeightView<'_>; 3]) -> Result<bool> {
        self.timed(Phase::ExpertWait, || self.inner.stage_expert(id, weights))
    }
}
