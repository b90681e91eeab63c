//! Chunked prefill: a prompt runs through the model a chunk of tokens at a time, each layer
//! once per chunk, so each expert the chunk needs is fetched **once per chunk** (not once per
//! token) and runs on all its tokens as one matrix product.
//!
//! Per layer, for the chunk's `n` tokens (tensors of `n` rows, [`ComputeBackend`]'s row ops):
//! 1. mixer: attention of every row into the KV cache (causal: row `i` sees `0..=start + i`),
//!    or Gated DeltaNet (projections over the chunk, then the exact per-token conv and delta
//!    steps in order);
//! 2. router over the chunk, one read-back of `n x E` logits (with the pre-gate logits of the
//!    next layers when the observer wants them), top-k per token;
//! 3. the **union** of the experts routed to, streamed from the [`ExpertSource`] in groups
//!    ([`ExpertSource::experts_union`], with the next layer's pre-gate union as a hint); each
//!    expert runs on its tokens: gather rows, gate/up matrix products, SwiGLU, down, its
//!    output rows parked by (rank, token); then each token's experts are summed with their
//!    combine weights in routing-rank order, as decode does;
//! 4. the shared expert (hybrid families) over the chunk, the residual.
//!
//! The [`RoutingObserver`] sees the same calls as token by token, in the same order (token
//! by token, layer by layer), once the chunk is done: traces are identical in form.
//! `prefill_chunk == 1` runs token by token through the decode step.

use super::{Mixer, MoeModel};
use crate::error::{BackendContext, EngineError, Result};
use crate::experts::ExpertSource;
use crate::hooks::RoutingObserver;
use crate::hybrid::{DeltaChunk, SharedChunk};
use flashmoe_backends::routing::Routing;
use flashmoe_backends::{AttnShape, ComputeBackend};

mod moe;

/// Chunk tensors are sized so that one chunk's activations take about this much memory.
pub const PREFILL_ACTIVATION_BYTES: usize = 256 << 20;
/// The longest chunk chosen by default (past it the expert reads per token are already small).
pub const MAX_DEFAULT_CHUNK: usize = 2048;

/// What chunked prefills did, summed over every prefill since the model was loaded (or
/// [`MoeModel::reset_prefill_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct PrefillStats {
    /// Prompt tokens prefilled in chunks.
    pub tokens: u64,
    /// Chunks run.
    pub chunks: u64,
    /// (chunk, layer) unions taken.
    pub unions: u64,
    /// Experts in those unions, in all.
    pub union_experts: u64,
    /// The largest union of one layer of one chunk.
    pub max_union: usize,
    /// Bytes of the records in those unions (each union's experts once).
    pub union_bytes: u64,
}

impl PrefillStats {
    /// Mean experts per (chunk, layer) union.
    pub fn mean_union(&self) -> f64 {
        self.union_experts as f64 / self.unions.max(1) as f64
    }
}

/// Chunked-prefill settings and counters a model keeps.
pub(crate) struct Chunking {
    pub(crate) chunk: usize,
    pub(crate) stats: PrefillStats,
}

impl Chunking {
    pub(crate) fn new(chunk: usize) -> Self {
        Self {
            chunk,
            stats: PrefillStats::default(),
        }
    }
}

/// Row tensors of one chunk of `n` tokens.
struct ChunkScratch<B: ComputeBackend> {
    n: usize,
    h: B::Tensor,
    x: B::Tensor,
    o: B::Tensor,
    moe: B::Tensor,
    q: B::Tensor,
    q_gate: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    attn: B::Tensor,
    logits: B::Tensor,
    pre: B::Tensor,
    far: B::Tensor,
    /// One expert's tokens: inputs, gate and up, outputs (sized for all `n`).
    xg: B::Tensor,
    g1: B::Tensor,
    g2: B::Tensor,
    eo: B::Tensor,
    /// Every expert output of the chunk, `[top_k][n]` rows, combined in rank order.
    parked: B::Tensor,
    delta: Option<DeltaChunk<B>>,
    shared: Option<SharedChunk<B>>,
}

/// One token's routing and pre-gate scores in one layer, replayed to the observer.
struct TokenLayer {
    routing: Routing,
    pre: Option<Vec<f32>>,
    far: Option<Vec<f32>>,
}

impl<B: ComputeBackend> MoeModel<B> {
    /// Prompt tokens per chunk of [`Self::prefill`] (1: token by token).
    pub fn prefill_chunk(&self) -> usize {
        self.chunking.chunk
    }

    /// Sets the prefill chunk (`n >= 1`; 1 runs the prompt token by token, as decode does).
    pub fn set_prefill_chunk(&mut self, n: usize) {
        self.chunking.chunk = n.max(1);
    }

    /// The default chunk for `cfg`: as many tokens as fit [`PREFILL_ACTIVATION_BYTES`] of
    /// chunk tensors (f32 rows of every activation a layer keeps for the chunk, plus the
    /// routing kept for the observer), at most [`MAX_DEFAULT_CHUNK`].
    pub fn default_prefill_chunk(cfg: &crate::config::ModelConfig) -> usize {
        Self::prefill_chunk_within(cfg, usize::MAX)
    }

    /// [`Self::default_prefill_chunk`] for a backend whose tensors hold at most
    /// `max_tensor_len` values ([`ComputeBackend::max_tensor_len`]): the widest chunk tensor
    /// (the parked expert outputs, `top_k` rows per token) must fit it too.
    pub fn prefill_chunk_within(cfg: &crate::config::ModelConfig, max_tensor_len: usize) -> usize {
        let (h, e) = (cfg.hidden_size, cfg.num_experts);
        let mut floats = 6 * h + 3 * cfg.q_dim() + 2 * cfg.kv_dim() + 3 * e;
        floats += 2 * cfg.expert_intermediate + 2 * cfg.num_layers * e + cfg.top_k * h;
        let mut widest = (cfg.top_k * h)
            .max(cfg.q_dim())
            .max(e)
            .max(cfg.expert_intermediate);
        if let Some(hy) = &cfg.hybrid {
            let d = &hy.deltanet;
            floats += d.conv_dim() + 2 * d.value_dim() + 2 * d.num_value_heads;
            floats += 2 * hy.shared_expert_intermediate + h + 1;
            widest = widest.max(d.conv_dim()).max(hy.shared_expert_intermediate);
        }
        let by_memory = PREFILL_ACTIVATION_BYTES / (4 * floats.max(1));
        let by_tensor = max_tensor_len / widest.max(1);
        by_memory.min(by_tensor).clamp(1, MAX_DEFAULT_CHUNK)
    }

    /// What chunked prefills did so far.
    pub fn prefill_stats(&self) -> PrefillStats {
        self.chunking.stats
    }

    /// Zeroes [`Self::prefill_stats`].
    pub fn reset_prefill_stats(&mut self) {
        self.chunking.stats = PrefillStats::default();
    }

    /// Runs `tokens` at positions `start..start + len` and returns the logits after the last
    /// one, [`Self::prefill_chunk`] tokens at a time.
    pub fn prefill(
        &mut self,
        tokens: &[u32],
        start: usize,
        experts: &mut dyn ExpertSource,
        obs: &mut dyn RoutingObserver,
    ) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(EngineError::OutOfRange {
                what: "prefill length",
                value: 0,
                limit: 1,
            });
        }
        let chunk = self.chunking.chunk;
        if chunk <= 1 {
            for (i, &t) in tokens.iter().enumerate() {
                self.step(t, start + i, experts, obs)?;
            }
            return self.logits();
        }
        self.stage_next.clear();
        let mut scratch: Option<ChunkScratch<B>> = None;
        for (c, part) in tokens.chunks(chunk).enumerate() {
            let pos = start + c * chunk;
            if scratch.as_ref().is_none_or(|s| s.n != part.len()) {
                scratch = Some(self.chunk_scratch(part.len())?);
            }
            if let Some(cs) = scratch.as_mut() {
                self.run_chunk(part, pos, cs, experts, obs)?;
                // The last row is the hidden state the logits (and decode) continue from.
                let h = self.cfg.hidden_size;
                self.be
                    .copy_range(&cs.h, (part.len() - 1) * h, &mut self.s.h, 0, h)
                    .ctx(|| "last prompt row".into())?;
            }
        }
        self.logits()
    }

    fn chunk_scratch(&self, n: usize) -> Result<ChunkScratch<B>> {
        let cfg = &self.cfg;
        let be = &self.be;
        let z = |w: usize| be.zeros(n * w).ctx(|| "allocating chunk scratch".into());
        let (h, e) = (cfg.hidden_size, cfg.num_experts);
        Ok(ChunkScratch {
            n,
            h: z(h)?,
            x: z(h)?,
            o: z(h)?,
            moe: z(h)?,
            q: z(cfg.q_dim())?,
            q_gate: z(cfg.q_dim())?,
            k: z(cfg.kv_dim())?,
            v: z(cfg.kv_dim())?,
            attn: z(cfg.q_dim())?,
            logits: z(e)?,
            pre: z(e)?,
            far: z(e)?,
            xg: z(h)?,
            g1: z(cfg.expert_intermediate)?,
            g2: z(cfg.expert_intermediate)?,
            eo: z(h)?,
            parked: z(cfg.top_k * h)?,
            delta: match &cfg.hybrid {
                Some(hy) if !self.delta_states.is_empty() => {
                    Some(DeltaChunk::new(be, &hy.deltanet, n)?)
                }
                _ => None,
            },
            shared: match &cfg.hybrid {
                Some(hy) => Some(SharedChunk::new(be, h, hy.shared_expert_intermediate, n)?),
                None => None,
            },
        })
    }

    /// Checks a chunk at `start` as [`Self::step`] checks a token.
    fn check_chunk(
        &mut self,
        tokens: &[u32],
        start: usize,
        experts: &dyn ExpertSource,
    ) -> Result<()> {
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(EngineError::OutOfRange {
                what: "token id",
                value: t as usize,
                limit: self.cfg.vocab_size,
            });
        }
        let end = start + tokens.len();
        if start > self.next_pos || end > self.max_seq {
            return Err(EngineError::OutOfRange {
                what: "position",
                value: if start > self.next_pos {
                    start
                } else {
                    end - 1
                },
                limit: self.next_pos.min(self.max_seq - 1) + 1,
            });
        }
        if !self.delta_states.is_empty() && start != 0 && start != self.next_pos {
            return Err(EngineError::OutOfRange {
                what: "position (DeltaNet layers continue only at the next position or restart at 0)",
                value: start,
                limit: self.next_pos + 1,
            });
        }
        let el = experts.layout();
        if (el.hidden, el.inter) != (self.cfg.hidden_size, self.cfg.expert_intermediate) {
            return Err(EngineError::Expert {
                layer: 0,
                expert: 0,
                reason: format!(
                    "source records are for [{} x {}] experts, model needs [{} x {}]",
                    el.hidden, el.inter, self.cfg.hidden_size, self.cfg.expert_intermediate
                ),
            });
        }
        if start == 0 {
            for st in &mut self.delta_states {
                st.clear(&self.be)?;
            }
        }
        Ok(())
    }

    /// Every layer for the chunk `tokens` at `start..`, leaving its hidden rows in `cs.h`;
    /// then the observer's calls, token by token.
    fn run_chunk(
        &mut self,
        tokens: &[u32],
        start: usize,
        cs: &mut ChunkScratch<B>,
        experts: &mut dyn ExpertSource,
        obs: &mut dyn RoutingObserver,
    ) -> Result<()> {
        self.check_chunk(tokens, start, experts)?;
        self.embed_tokens
            .rows(&self.be, &self.lm_head, tokens, &mut cs.h)?;
        let mut seen: Vec<Vec<TokenLayer>> = Vec::with_capacity(self.layers.len());
        for l in 0..self.layers.len() {
            self.chunk_mixer(l, start, cs)?;
            seen.push(self.chunk_moe(l, cs, experts, obs)?);
        }
        self.next_pos = start + tokens.len();
        let st = &mut self.chunking.stats;
        st.tokens += tokens.len() as u64;
        st.chunks += 1;
        for (i, &t) in tokens.iter().enumerate() {
            obs.on_token(t, start + i);
            for (l, layer) in seen.iter().enumerate() {
                let tl = &layer[i];
                obs.on_routing(l as u32, &tl.routing.ids, &tl.routing.weights);
                if let Some(p) = &tl.pre {
                    obs.on_pregate(l as u32 + 1, p);
                }
                if let Some(p) = &tl.far {
                    obs.on_pregate_far(l as u32 + 2, p);
                }
            }
        }
        Ok(())
    }

    /// `h += mixer(input_layernorm(h))` for layer `l`, every row of the chunk.
    fn chunk_mixer(&mut self, l: usize, start: usize, cs: &mut ChunkScratch<B>) -> Result<()> {
        let (be, cfg, n) = (&self.be, &self.cfg, cs.n);
        let layer = &self.layers[l];
        be.rms_norm_rows(
            &cs.h,
            &layer.input_layernorm,
            cfg.rms_norm_eps,
            n,
            &mut cs.x,
        )
        .ctx(|| format!("model.layers.{l}.input_layernorm"))?;
        let a = match &layer.mixer {
            Mixer::Attention(a) => a,
            Mixer::DeltaNet(d, i) => {
                let (Some(hy), Some(dc)) = (&cfg.hybrid, &mut cs.delta) else {
                    return Err(EngineError::OutOfRange {
                        what: "DeltaNet layer without a hybrid config",
                        value: l,
                        limit: 0,
                    });
                };
                let Some(ds) = &mut self.s.delta else {
                    return Err(EngineError::OutOfRange {
                        what: "DeltaNet layer without its scratch",
                        value: l,
                        limit: 0,
                    });
                };
                let ctx = |what: &str| format!("model.layers.{l}.linear_attn.{what}");
                d.chunk(
                    be,
                    &hy.deltanet,
                    cfg.rms_norm_eps,
                    (&cs.x, n),
                    &mut self.delta_states[*i],
                    ds,
                    dc,
                    &mut cs.o,
                    &ctx,
                )?;
                return be.axpy(&mut cs.h, 1.0, &cs.o).ctx(|| ctx("residual"));
            }
        };
        let ctx = |what: &str| format!("model.layers.{l}.self_attn.{what}");
        let (eps, hd) = (cfg.rms_norm_eps, cfg.head_dim);
        be.matmul(&a.q_proj, &cs.x, n, &mut cs.q)
            .ctx(|| ctx("q_proj"))?;
        if let Some(g) = &a.gate_proj {
            be.matmul(g, &cs.x, n, &mut cs.q_gate)
                .ctx(|| ctx("q_proj (output gate)"))?;
        }
        be.matmul(&a.k_proj, &cs.x, n, &mut cs.k)
            .ctx(|| ctx("k_proj"))?;
        be.matmul(&a.v_proj, &cs.x, n, &mut cs.v)
            .ctx(|| ctx("v_proj"))?;
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            be.rms_norm_heads(&mut cs.q, qn, hd, eps)
                .ctx(|| ctx("q_norm"))?;
            be.rms_norm_heads(&mut cs.k, kn, hd, eps)
                .ctx(|| ctx("k_norm"))?;
        }
        let (theta, nh, nkv) = (cfg.rope_theta, cfg.num_heads, cfg.num_kv_heads);
        match cfg.hybrid.as_ref().map(|hy| hy.rotary_dim) {
            Some(rot) if rot != hd => {
                be.rope_partial_rows(&mut cs.q, n, (nh, hd, rot), start, theta)
                    .ctx(|| ctx("rope q"))?;
                be.rope_partial_rows(&mut cs.k, n, (nkv, hd, rot), start, theta)
                    .ctx(|| ctx("rope k"))?;
            }
            _ => {
                be.rope_rows(&mut cs.q, n, (nh, hd), start, theta)
                    .ctx(|| ctx("rope q"))?;
                be.rope_rows(&mut cs.k, n, (nkv, hd), start, theta)
                    .ctx(|| ctx("rope k"))?;
            }
        }
        let slot = a.kv_slot;
        be.kv_write_rows(&mut self.kv, slot, start, n, cfg.kv_dim(), &cs.k, &cs.v)
            .ctx(|| ctx("kv cache"))?;
        let shape = AttnShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        be.attention_rows(&cs.q, &self.kv, slot, start, n, shape, &mut cs.attn)
            .ctx(|| ctx("attention"))?;
        if a.gate_proj.is_some() {
            be.sigmoid_mul(&mut cs.attn, &cs.q_gate)
                .ctx(|| ctx("output gate"))?;
        }
        be.matmul(&a.o_proj, &cs.attn, n, &mut cs.o)
            .ctx(|| ctx("o_proj"))?;
        be.axpy(&mut cs.h, 1.0, &cs.o).ctx(|| ctx("residual"))
    }
}
