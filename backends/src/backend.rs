//! The [`ComputeBackend`] trait: every op a MoE decode step needs.
//!
//! Design choices:
//! - Activations live in opaque [`ComputeBackend::Tensor`] handles owned by the backend, so a GPU
//!   backend keeps them on the device between ops; only router logits and final logits are read
//!   back ([`ComputeBackend::read`]); [`ComputeBackend::upload`] is the way in.
//! - Resident weights (attention, norms, router, embeddings, lm_head) are uploaded once as
//!   [`ComputeBackend::Weight`]. Streamed expert weights arrive as raw bytes ([`WeightView`]) in
//!   the layout documented in [`crate::quant`], straight from I/O buffers, with no copy on the CPU.
//! - Every op checks its operands' sizes and returns `Result`; outputs are written into
//!   caller-provided tensors so that a decode loop allocates nothing per token.
//! - Decode is vector-at-a-time (one token). Prompt chunks use the *row* ops ([`ComputeBackend::matmul`],
//!   [`ComputeBackend::matmul_bytes`], ...): a tensor of `n * dim` elements holds `n` tokens' vectors
//!   row-major. Each row op has a default built on [`ComputeBackend::copy_range`] and the vector op,
//!   so a backend is correct before it has a batched kernel; a backend overrides them for speed.

use crate::error::{BackendError, Result};
use crate::quant::{MatrixLayout, WeightFormat};
use crate::routing::{Routing, top_k_softmax};

/// A matrix in some [`WeightFormat`] borrowed from memory the caller owns (e.g. an I/O buffer).
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    bytes: &'a [u8],
    layout: MatrixLayout,
}

impl<'a> WeightView<'a> {
    /// Wraps `bytes` as a `[rows x cols]` matrix in `format`, checking the byte count.
    ///
    /// ```
    /// use flashmoe_backends::{WeightView, quant::WeightFormat};
    /// let bytes = vec![0u8; 2 * 3 * 2];
    /// assert!(WeightView::new(&bytes, 2, 3, WeightFormat::Bf16).is_ok());
    /// assert!(WeightView::new(&bytes, 2, 4, WeightFormat::Bf16).is_err());
    /// ```
    pub fn new(bytes: &'a [u8], rows: usize, cols: usize, format: WeightFormat) -> Result<Self> {
        let layout = format.layout(rows, cols)?;
        layout.check("WeightView::new", bytes)?;
        Ok(Self { bytes, layout })
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The matrix layout (format, dims, section offsets).
    pub fn layout(&self) -> &MatrixLayout {
        &self.layout
    }
}

/// Names one expert record: a backend that keeps records resident (a GPU's expert slots) keys
/// them by it, so one id must always name the same bytes for the life of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExpertId {
    /// Decoder layer.
    pub layer: u32,
    /// Expert within the layer.
    pub expert: u32,
}

/// One routed expert of a token: `[gate, up, down]` weights and its combine weight.
#[derive(Clone, Copy, Debug)]
pub struct RoutedExpert<'a> {
    /// Which record the weights are.
    pub id: ExpertId,
    /// `gate_proj`, `up_proj`, `down_proj`.
    pub weights: [WeightView<'a>; 3],
    /// The router's combine weight.
    pub combine: f32,
}

/// Scratch tensors for [`ComputeBackend::moe_experts`]: two of the expert intermediate size,
/// one of the model width.
pub struct ExpertScratch<T> {
    /// `gate x`, then `silu(gate x) * up x`.
    pub h1: T,
    /// `up x`.
    pub h2: T,
    /// One expert's output.
    pub out: T,
}

/// Shape of grouped-query attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (`n_heads` is a multiple of it).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
}

/// Size of a KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Decoder layers.
    pub layers: usize,
    /// Most positions it holds.
    pub max_seq: usize,
    /// `n_kv_heads * head_dim`.
    pub kv_dim: usize,
}

/// Shape of one Gated DeltaNet step ([`ComputeBackend::gated_delta_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaShape {
    /// Key (and query) heads.
    pub key_heads: usize,
    /// Value heads (a multiple of `key_heads`; value head `j` uses key head `j / (value_heads / key_heads)`).
    pub value_heads: usize,
    /// Dimension of one key head.
    pub key_dim: usize,
    /// Dimension of one value head.
    pub value_dim: usize,
}

impl DeltaShape {
    /// Length of the q/k/v input: `2 * key_heads * key_dim + value_heads * value_dim`.
    pub fn qkv_len(&self) -> usize {
        2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim
    }
    /// Length of the recurrent state: `value_heads * key_dim * value_dim`.
    pub fn state_len(&self) -> usize {
        self.value_heads * self.key_dim * self.value_dim
    }
    /// Length of the output: `value_heads * value_dim`.
    pub fn out_len(&self) -> usize {
        self.value_heads * self.value_dim
    }
}

/// The compute operations of a decode step, on backend-owned tensors.
///
/// All tensors are f32 vectors of a fixed length chosen at allocation.
/// A test body that runs on each backend lives in this crate's tests.
pub trait ComputeBackend: Send + Sync {
    /// An f32 vector owned by the backend (host memory on CPU, a buffer on a GPU).
    type Tensor: Send;
    /// A resident weight matrix owned by the backend.
    type Weight: Send + Sync;
    /// Keys and values of every layer and position.
    type KvCache: Send;

    /// A short name for logs ("cpu", "wgpu").
    fn name(&self) -> &'static str;

    /// A zero-filled tensor of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Tensor>;
    /// A tensor holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Tensor>;
    /// The length of a tensor.
    fn len(&self, t: &Self::Tensor) -> usize;
    /// Copies a tensor back to the host.
    fn read(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Copies several tensors back at once: a GPU waits for its queue once, not once per tensor.
    fn read_many(&self, ts: &[&Self::Tensor]) -> Result<Vec<Vec<f32>>> {
        ts.iter().map(|t| self.read(t)).collect()
    }

    /// Copies `src` into `dst` (same length).
    fn copy(&self, src: &Self::Tensor, dst: &mut Self::Tensor) -> Result<()>;

    /// Copies `len` elements of `src` starting at `src_start` into `dst` at `dst_start`
    /// (moving one token's row in or out of a chunk tensor).
    fn copy_range(
        &self,
        src: &Self::Tensor,
        src_start: usize,
        dst: &mut Self::Tensor,
        dst_start: usize,
        len: usize,
    ) -> Result<()>;

    /// Writes host values `data` into `dst[dst_start..dst_start + data.len()]`, in order with
    /// the ops queued around it. The default uploads them and copies the range.
    fn write_range(&self, data: &[f32], dst: &mut Self::Tensor, dst_start: usize) -> Result<()> {
        let src = self.upload(data)?;
        self.copy_range(&src, 0, dst, dst_start, data.len())
    }

    /// Uploads a `[rows x cols]` weight in `format` (bytes as documented in [`crate::quant`]).
    fn load_weight(
        &self,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<Self::Weight>;
    /// `(rows, cols)` of a resident weight.
    fn weight_dims(&self, w: &Self::Weight) -> (usize, usize);
    /// [`Self::load_weight`] for the tensor called `name` (its HF name): a backend that labels
    /// weights (such as [`crate::Profiled`]) keeps the name; the default ignores it.
    fn load_weight_named(
        &self,
        name: &str,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<Self::Weight> {
        let _ = name;
        self.load_weight(bytes, rows, cols, format)
    }
    /// [`Self::load_weight_named`] for a weight whose `layout.total` bytes `fill` writes in
    /// place: where the backend keeps weights in host memory it hands `fill` that memory, so
    /// a large weight (a 175 MB `lm_head`) is never held twice while loading. The outer error
    /// is the backend's, the inner one `fill`'s. The default fills a buffer and loads it.
    fn load_weight_with<E>(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        format: WeightFormat,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<Self::Weight, E>> {
        let mut bytes = vec![0u8; format.layout(rows, cols)?.total];
        if let Err(e) = fill(&mut bytes) {
            return Ok(Err(e));
        }
        self.load_weight_named(name, &bytes, rows, cols, format)
            .map(Ok)
    }
    /// The per-phase profile this backend fills, if it is profiling ([`crate::Profiled`]); the
    /// engine charges the phases it owns (expert wait, sampling) to it. `None` by default, so
    /// nothing is timed when profiling is off.
    fn profile(&self) -> Option<&crate::profile::Profile> {
        None
    }
    /// The most f32 values one tensor may hold on this backend (a GPU's storage-binding
    /// limit); callers size batch tensors under it. Unbounded by default.
    fn max_tensor_len(&self) -> usize {
        usize::MAX
    }
    /// Allocates an empty KV cache.
    fn kv_cache(&self, shape: KvShape) -> Result<Self::KvCache>;

    /// `out = table[token]` (one row of an embedding matrix).
    fn embedding(&self, table: &Self::Weight, token: u32, out: &mut Self::Tensor) -> Result<()>;
    /// `out = W x` for a resident weight.
    fn matvec(&self, w: &Self::Weight, x: &Self::Tensor, out: &mut Self::Tensor) -> Result<()>;
    /// `outs[i] = ws[i] x` for weights that share their input (a layer's q, k and v): one
    /// call, so a backend can run them as one pass with `x` prepared once. The default runs
    /// [`Self::matvec`] per weight.
    fn matvec_many(
        &self,
        ws: &[&Self::Weight],
        x: &Self::Tensor,
        outs: &mut [&mut Self::Tensor],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(BackendError::Shape {
                op: "matvec_many",
                what: "outputs",
                expected: ws.len(),
                got: outs.len(),
            });
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matvec(w, x, out)?;
        }
        Ok(())
    }
    /// `out = W x` for a weight given as raw bytes (an expert tensor from an I/O buffer).
    fn matvec_bytes(
        &self,
        w: WeightView<'_>,
        x: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// `out[i] = W x[i]` for the first `n` rows of `x` (`[n][cols]`, row-major) into the first
    /// `n` rows of `out` (`[n][rows]`), for a resident weight. The default runs
    /// [`Self::matvec`] per row.
    fn matmul(
        &self,
        w: &Self::Weight,
        x: &Self::Tensor,
        n: usize,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let (rows, cols) = self.weight_dims(w);
        crate::checks::check_rows("matmul", "x", n, cols, self.len(x))?;
        crate::checks::check_rows("matmul", "out", n, rows, self.len(out))?;
        rows_by_vector(self, (x, cols), (out, rows), n, |xi, yi| {
            self.matvec(w, xi, yi)
        })
    }

    /// [`Self::matmul`] for a weight given as raw bytes (an expert tensor run on all the chunk's
    /// tokens routed to it). The default runs [`Self::matvec_bytes`] per row.
    fn matmul_bytes(
        &self,
        w: WeightView<'_>,
        x: &Self::Tensor,
        n: usize,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let l = w.layout();
        crate::checks::check_rows("matmul_bytes", "x", n, l.cols, self.len(x))?;
        crate::checks::check_rows("matmul_bytes", "out", n, l.rows, self.len(out))?;
        rows_by_vector(self, (x, l.cols), (out, l.rows), n, |xi, yi| {
            self.matvec_bytes(w, xi, yi)
        })
    }

    /// `out[i] = table[tokens[i]]`: a chunk's embedding rows (`[tokens.len()][cols]`). The
    /// default runs [`Self::embedding`] per token.
    fn embedding_rows(
        &self,
        table: &Self::Weight,
        tokens: &[u32],
        out: &mut Self::Tensor,
    ) -> Result<()> {
        crate::rows::embedding_rows(self, table, tokens, out)
    }

    /// [`Self::rms_norm`] of each of the first `n` rows of `x` (as wide as `weight`) into the
    /// rows of `out`. The default runs the vector op per row.
    fn rms_norm_rows(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        n: usize,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        crate::rows::rms_norm_rows(self, x, weight, eps, n, out)
    }

    /// [`Self::rope`] in place on the first `n` rows of `x` (`n_heads * head_dim` wide), row
    /// `i` at position `start + i`. The default runs the vector op per row.
    fn rope_rows(
        &self,
        x: &mut Self::Tensor,
        n: usize,
        (n_heads, head_dim): (usize, usize),
        start: usize,
        theta: f32,
    ) -> Result<()> {
        let width = n_heads * head_dim;
        crate::checks::check_rows("rope_rows", "x", n, width, self.len(x))?;
        crate::rows::in_place(self, x, width, n, |i, row| {
            self.rope(row, n_heads, head_dim, start + i, theta)
        })
    }

    /// [`Self::rope_partial`] in place on the first `n` rows of `x`, row `i` at position
    /// `start + i`. The default runs the vector op per row.
    fn rope_partial_rows(
        &self,
        x: &mut Self::Tensor,
        n: usize,
        (n_heads, head_dim, rot_dim): (usize, usize, usize),
        start: usize,
        theta: f32,
    ) -> Result<()> {
        let width = n_heads * head_dim;
        crate::checks::check_rows("rope_partial_rows", "x", n, width, self.len(x))?;
        crate::rows::in_place(self, x, width, n, |i, row| {
            self.rope_partial(row, n_heads, head_dim, rot_dim, start + i, theta)
        })
    }

    /// [`Self::kv_write`] of the first `n` rows of `k` and `v` (`kv_dim` wide), row `i` at
    /// position `start + i`. The default runs the vector op per row.
    #[allow(clippy::too_many_arguments)]
    fn kv_write_rows(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        start: usize,
        n: usize,
        kv_dim: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
    ) -> Result<()> {
        crate::rows::kv_write_rows(self, cache, layer, start, n, kv_dim, k, v)
    }

    /// Causal [`Self::attention`] of the first `n` rows of `q`: row `i` (position `start + i`)
    /// attends to positions `0..=start + i` of `layer` (written before, e.g. by
    /// [`Self::kv_write_rows`]). The default runs the vector op per row.
    #[allow(clippy::too_many_arguments)]
    fn attention_rows(
        &self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        start: usize,
        n: usize,
        shape: AttnShape,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        crate::rows::attention_rows(self, q, cache, layer, start, n, shape, out)
    }

    /// `out[j] = x[rows[j]]` for rows `width` wide (the chunk's tokens routed to one expert).
    /// The default copies row by row.
    fn gather_rows(
        &self,
        x: &Self::Tensor,
        width: usize,
        rows: &[usize],
        out: &mut Self::Tensor,
    ) -> Result<()> {
        crate::rows::gather_rows(self, x, width, rows, out)
    }

    /// `y[rows[j]] += weights[j] * x[j]` for rows `width` wide (one expert's outputs combined
    /// into its tokens' rows). The default runs [`Self::axpy`] per row.
    fn scatter_add_rows(
        &self,
        y: &mut Self::Tensor,
        width: usize,
        rows: &[usize],
        weights: &[f32],
        x: &Self::Tensor,
    ) -> Result<()> {
        crate::rows::scatter_add_rows(self, y, width, rows, weights, x)
    }

    /// [`Self::swiglu`] on the first `n` rows (`width` wide) of `gate` and `up` (one expert's
    /// tokens in buffers sized for the whole chunk). The default runs the vector op on the
    /// whole tensors when they hold exactly `n` rows, else per row.
    fn swiglu_rows(
        &self,
        gate: &mut Self::Tensor,
        up: &Self::Tensor,
        n: usize,
        width: usize,
    ) -> Result<()> {
        crate::rows::swiglu_rows(self, gate, up, n, width)
    }

    /// `out = x / sqrt(mean(x^2) + eps) * weight`.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// RMSNorm of each `head_dim` slice of `x` in place, with one `weight` of `head_dim` (q/k norm).
    fn rms_norm_heads(
        &self,
        x: &mut Self::Tensor,
        weight: &Self::Tensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// Rotary embedding in place on `x` = `n_heads` heads of `head_dim`, at position `pos`.
    ///
    /// Rotate-half convention (HF Llama/Qwen/Mixtral): element `i < head_dim/2` pairs with
    /// `i + head_dim/2`, angle `pos * theta^(-2i/head_dim)`.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        n_heads: usize,
        head_dim: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()>;

    /// Partial rotary embedding in place: rotate-half RoPE over the first `rot_dim` dims of each
    /// of `n_heads` heads of `head_dim` (element `i < rot_dim/2` pairs with `i + rot_dim/2`,
    /// angle `pos * theta^(-2i/rot_dim)`); dims `rot_dim..head_dim` are left unchanged.
    /// `rot_dim == head_dim` is [`Self::rope`].
    fn rope_partial(
        &self,
        x: &mut Self::Tensor,
        n_heads: usize,
        head_dim: usize,
        rot_dim: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()>;

    /// `x[i] *= sigmoid(gate[i / (len(x) / len(gate))])`: an element-wise output gate (equal
    /// lengths) or one scalar gate broadcast over `x` (`gate` of length 1), or one per group.
    fn sigmoid_mul(&self, x: &mut Self::Tensor, gate: &Self::Tensor) -> Result<()>;

    /// One step of a causal depthwise conv1d of width `kernel` followed by SiLU, in place on the
    /// `channels` values of `x`: `y[c] = sum_j weight[c * kernel + j] * in[j][c]` over the
    /// previous `kernel - 1` inputs (`state`, oldest first, `[kernel - 1][channels]`) and `x`
    /// itself, then `x = silu(y)`; `state` shifts by one and keeps `x`'s input.
    fn conv1d_silu_step(
        &self,
        x: &mut Self::Tensor,
        state: &mut Self::Tensor,
        weight: &Self::Tensor,
        kernel: usize,
    ) -> Result<()>;

    /// One token of the gated delta rule (Gated DeltaNet), all in f32.
    ///
    /// `qkv` = `[q (key_heads x key_dim), k (same), v (value_heads x value_dim)]`; `ba` =
    /// `[b (value_heads), a (value_heads)]`; `decay` = `[-exp(A_log) (value_heads), dt_bias
    /// (value_heads)]`; `state` = `[value_heads][key_dim][value_dim]`. Per value head `j` (key
    /// head `j / (value_heads / key_heads)`): q, k L2-normalised (`x / sqrt(sum x^2 + 1e-6)`),
    /// q scaled by `1/sqrt(key_dim)`, `beta = sigmoid(b)`, `g = -exp(A_log) * softplus(a +
    /// dt_bias)`; `S = exp(g) S; S += k (beta (v - S^T k))^T; out = S^T q`.
    fn gated_delta_step(
        &self,
        qkv: &Self::Tensor,
        ba: &Self::Tensor,
        decay: &Self::Tensor,
        state: &mut Self::Tensor,
        shape: DeltaShape,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// Gated RMSNorm of each `head_dim` slice of `x` in place:
    /// `x = x / sqrt(mean(x^2) + eps) * weight * silu(z)` (one `weight` of `head_dim` for every
    /// head, `z` as long as `x`).
    fn gated_rms_norm_heads(
        &self,
        x: &mut Self::Tensor,
        z: &Self::Tensor,
        weight: &Self::Tensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()>;

    /// Stores `k` and `v` (each `kv_dim`) of `layer` at position `pos`.
    fn kv_write(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        pos: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
    ) -> Result<()>;
    /// Causal grouped-query attention of `q` (`n_heads * head_dim`) over positions `0..seq_len`
    /// of `layer`, scaled by `1/sqrt(head_dim)`; writes `n_heads * head_dim` to `out`.
    fn attention(
        &self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        seq_len: usize,
        shape: AttnShape,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// `gate = silu(gate) * up` in place (SwiGLU).
    fn swiglu(&self, gate: &mut Self::Tensor, up: &Self::Tensor) -> Result<()>;
    /// `y += alpha * x` (residual add with `alpha = 1`, weighted expert combine).
    fn axpy(&self, y: &mut Self::Tensor, alpha: f32, x: &Self::Tensor) -> Result<()>;
    /// `y = 0`.
    fn fill_zero(&self, y: &mut Self::Tensor) -> Result<()>;

    /// Router: softmax over `logits`, top-`k`, optionally renormalised to sum 1.
    ///
    /// The default reads the logits back and routes on the host (they are tiny).
    fn router_top_k(&self, logits: &Self::Tensor, k: usize, renormalize: bool) -> Result<Routing> {
        top_k_softmax(&self.read(logits)?, k, renormalize)
    }

    /// One SwiGLU expert: `out = down(silu(gate x) * up x)`, `w` = `[gate, up, down]`.
    ///
    /// `h1`, `h2` are scratch tensors of the expert's intermediate size.
    /// The default composes [`Self::matvec_bytes`] and [`Self::swiglu`]; a GPU may fuse it.
    fn expert_ffn(
        &self,
        w: [WeightView<'_>; 3],
        x: &Self::Tensor,
        h1: &mut Self::Tensor,
        h2: &mut Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let [gate, up, down] = w;
        self.matvec_bytes(gate, x, h1)?;
        self.matvec_bytes(up, x, h2)?;
        self.swiglu(h1, h2)?;
        self.matvec_bytes(down, h1, out)
    }

    /// The MoE block's experts for one token: `out = sum_i experts[i].combine * ffn_i(x)`.
    ///
    /// The default runs [`Self::expert_ffn`] per expert and accumulates with [`Self::axpy`]; a
    /// GPU backend runs all of them in a couple of dispatches over its resident copies.
    fn moe_experts(
        &self,
        experts: &[RoutedExpert<'_>],
        x: &Self::Tensor,
        scratch: &mut ExpertScratch<Self::Tensor>,
        out: &mut Self::Tensor,
    ) -> Result<()> {
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

    /// Whether [`Self::stage_expert`] does anything: the backend keeps expert records in its own
    /// memory (a GPU), so copying predicted records early takes the copy off the critical path.
    fn stages_experts(&self) -> bool {
        false
    }

    /// Copies the record `id` into backend memory ahead of its use (e.g. a prefetched expert of
    /// the next layer while this one computes). The bytes are no longer needed once this
    /// returns. Returns whether the record was copied (`false`: already resident, or the
    /// backend reads records in place, as the CPU does).
    fn stage_expert(&self, _id: ExpertId, _weights: [WeightView<'_>; 3]) -> Result<bool> {
        Ok(false)
    }
}

/// Runs the vector op `op` once per row: row `i` of `x` (`in_width` wide) is copied into a
/// scratch vector, `op` writes a scratch output `out_width` wide, which is copied into row `i`
/// of `out`. The default of every row op that has a vector op.
pub(crate) fn rows_by_vector<B: ComputeBackend + ?Sized>(
    be: &B,
    (x, in_width): (&B::Tensor, usize),
    (out, out_width): (&mut B::Tensor, usize),
    n: usize,
    mut op: impl FnMut(&B::Tensor, &mut B::Tensor) -> Result<()>,
) -> Result<()> {
    let (mut xi, mut yi) = (be.zeros(in_width)?, be.zeros(out_width)?);
    for i in 0..n {
        be.copy_range(x, i * in_width, &mut xi, 0, in_width)?;
        op(&xi, &mut yi)?;
        be.copy_range(&yi, 0, out, i * out_width, out_width)?;
    }
    Ok(())
}
