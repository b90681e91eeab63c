//! The MoE decoder, top-down with HF names: embeddings, layers of (attention, MoE block), final
//! norm, lm_head. Family differences (tensor names, q/k norm, routing renormalisation) come from
//! [`FamilyNames`] and [`ModelConfig`]; the experts come from an [`ExpertSource`]. Hybrid
//! families (Qwen3.5-MoE, Qwen3-Next) mix Gated DeltaNet layers with gated attention and add a
//! dense shared expert to every MoE block (`hybrid.rs`).

mod embeddings;
mod prefill;

pub use prefill::{MAX_DEFAULT_CHUNK, PREFILL_ACTIVATION_BYTES, PrefillStats};

use crate::attention::Attention;
use crate::config::{Family, ModelConfig};
use crate::error::{BackendContext, EngineError, Result};
use crate::experts::ExpertSource;
use crate::hooks::RoutingObserver;
use crate::hybrid::{DeltaNet, DeltaScratch, DeltaState, Loader, SharedExpert, SharedScratch};
use crate::qwen35_moe::LayerType;
use crate::weights::Checkpoint;
use embeddings::{Embeddings, FileRows};
use flashmoe_backends::profile::Phase;
use flashmoe_backends::routing::{softmax, top_k_softmax};
use flashmoe_backends::{
    AttnShape, ComputeBackend, ExpertId, ExpertScratch, KvShape, RoutedExpert,
};

/// How a family names its MoE tensors (`model.layers.N.{moe}.{router}`, `...experts.E.{experts[k]}`).
#[derive(Clone, Copy, Debug)]
pub struct FamilyNames {
    /// The MoE block's module name (`mlp`, `block_sparse_moe`).
    pub moe: &'static str,
    /// The router's module name inside it.
    pub router: &'static str,
    /// Names of the gate, up and down projections of one expert.
    pub experts: [&'static str; 3],
}

impl FamilyNames {
    /// The names used by `family`.
    pub fn of(family: Family) -> &'static FamilyNames {
        match family {
            Family::Qwen3Moe => &crate::qwen3_moe::NAMES,
            Family::Mixtral => &crate::mixtral::NAMES,
            Family::Qwen35Moe | Family::Qwen3Next => &crate::qwen35_moe::NAMES,
        }
    }

    /// Router weight of `layer`.
    pub fn router(&self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}.weight", self.moe, self.router)
    }

    /// The fused expert tensors of `layer` (`experts.gate_up_proj` `[E, 2 inter, hidden]`,
    /// `experts.down_proj` `[E, hidden, inter]`), the layout transformers 5 saves.
    pub fn fused_experts(&self, layer: usize) -> [String; 2] {
        let p = format!("model.layers.{layer}.{}.experts", self.moe);
        [format!("{p}.gate_up_proj"), format!("{p}.down_proj")]
    }

    /// Projection `k` (0 gate, 1 up, 2 down) of expert `e` in `layer`.
    pub fn expert(&self, layer: usize, e: usize, k: usize) -> String {
        format!(
            "model.layers.{layer}.{}.experts.{e}.{}.weight",
            self.moe, self.experts[k]
        )
    }
}

/// What mixes positions in a layer.
enum Mixer<B: ComputeBackend> {
    /// Softmax attention over the KV cache.
    Attention(Attention<B>),
    /// Gated DeltaNet; its state is `delta_states[index]`.
    DeltaNet(DeltaNet<B>, usize),
}

/// One decoder layer (its experts live outside, in an [`ExpertSource`]).
struct DecoderLayer<B: ComputeBackend> {
    input_layernorm: B::Tensor,
    mixer: Mixer<B>,
    post_attention_layernorm: B::Tensor,
    /// The MoE router (`mlp.gate` / `block_sparse_moe.gate`).
    router: B::Weight,
    /// The dense shared expert (hybrid families).
    shared: Option<SharedExpert<B>>,
}

/// Per-token work tensors, allocated once.
struct Scratch<B: ComputeBackend> {
    h: B::Tensor,
    x: B::Tensor,
    q: B::Tensor,
    q_gate: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    attn: B::Tensor,
    o: B::Tensor,
    router_logits: B::Tensor,
    pregate_logits: B::Tensor,
    moe_out: B::Tensor,
    experts: ExpertScratch<B::Tensor>,
    logits: B::Tensor,
    delta: Option<DeltaScratch<B>>,
    shared: Option<SharedScratch<B>>,
}

/// A loaded MoE causal LM on backend `B`, with its KV cache.
pub struct MoeModel<B: ComputeBackend> {
    cfg: ModelConfig,
    be: B,
    embed_tokens: Embeddings<B::Weight>,
    layers: Vec<DecoderLayer<B>>,
    norm: B::Tensor,
    lm_head: B::Weight,
    kv: B::KvCache,
    /// Decode state of each DeltaNet layer.
    delta_states: Vec<DeltaState<B>>,
    max_seq: usize,
    /// Positions `0..next_pos` hold valid keys and values.
    next_pos: usize,
    s: Scratch<B>,
    /// The next layer's most probable experts by pre-gate, staged on backends that keep
    /// expert records (a GPU) while this layer computes.
    stage_next: Vec<u32>,
    /// The prefill chunk and what chunked prefills did.
    chunking: prefill::Chunking,
}

impl<B: ComputeBackend> MoeModel<B> {
    /// Loads every resident tensor (all but the experts) of `cfg` from `ckpt`, with a KV cache
    /// of `max_seq` positions (at most `max_position_embeddings`).
    pub fn load(be: B, cfg: ModelConfig, ckpt: &Checkpoint, max_seq: usize) -> Result<Self> {
        let max_seq = max_seq.min(cfg.max_position_embeddings);
        if max_seq == 0 {
            return Err(EngineError::OutOfRange {
                what: "KV cache length",
                value: 0,
                limit: 1,
            });
        }
        let names = FamilyNames::of(cfg.family);
        let ld = Loader { be: &be, ckpt };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed_name = "model.embed_tokens.weight";
        let embed_tokens = match cfg.tie_word_embeddings {
            true => Embeddings::Tied,
            false => match FileRows::open(ckpt, embed_name, v, h)? {
                Some(rows) => Embeddings::File(rows),
                None => Embeddings::Resident(ld.matrix(embed_name, v, h)?),
            },
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        let (mut kv_layers, mut delta_states) = (0, Vec::new());
        let hybrid = cfg.hybrid.as_ref();
        // Hybrid families store RMSNorm weights as offsets from 1.
        let norm_vec = |name: &str, len: usize| {
            if hybrid.is_some() {
                ld.offset_norm(name, len)
            } else {
                ld.vector(name, len)
            }
        };
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let kind = hybrid.map_or(LayerType::FullAttention, |hy| hy.layer_types[l]);
            let mixer = match (kind, hybrid) {
                (LayerType::LinearAttention, Some(hy)) => {
                    delta_states.push(DeltaState::new(&be, &hy.deltanet)?);
                    Mixer::DeltaNet(DeltaNet::load(&ld, &p, h, hy)?, delta_states.len() - 1)
                }
                _ => {
                    kv_layers += 1;
                    Mixer::Attention(Attention::load(&ld, &cfg, &p, kv_layers - 1)?)
                }
            };
            let shared = match hybrid {
                Some(hy) => Some(SharedExpert::load(
                    &ld,
                    &p,
                    h,
                    hy.shared_expert_intermediate,
                )?),
                None => None,
            };
            layers.push(DecoderLayer {
                input_layernorm: norm_vec(&format!("{p}.input_layernorm.weight"), h)?,
                mixer,
                post_attention_layernorm: norm_vec(
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                )?,
                router: ld.matrix(&names.router(l), cfg.num_experts, h)?,
                shared,
            });
        }
        let norm = norm_vec("model.norm.weight", h)?;
        let lm_head_name = if cfg.tie_word_embeddings {
            embed_name
        } else {
            "lm_head.weight"
        };
        let lm_head = ld.matrix(lm_head_name, v, h)?;
        let kv = be
            .kv_cache(KvShape {
                layers: kv_layers.max(1),
                max_seq,
                kv_dim: cfg.kv_dim(),
            })
            .ctx(|| "allocating the KV cache".into())?;
        let z = |n: usize| be.zeros(n).ctx(|| "allocating scratch".into());
        let s = Scratch {
            h: z(h)?,
            x: z(h)?,
            q: z(cfg.q_dim())?,
            q_gate: z(cfg.q_dim())?,
            k: z(cfg.kv_dim())?,
            v: z(cfg.kv_dim())?,
            attn: z(cfg.q_dim())?,
            o: z(h)?,
            router_logits: z(cfg.num_experts)?,
            pregate_logits: z(cfg.num_experts)?,
            moe_out: z(h)?,
            experts: ExpertScratch {
                h1: z(cfg.expert_intermediate)?,
                h2: z(cfg.expert_intermediate)?,
                out: z(h)?,
            },
            logits: z(v)?,
            delta: match hybrid {
                Some(hy) if !delta_states.is_empty() => Some(DeltaScratch::new(&be, &hy.deltanet)?),
                _ => None,
            },
            shared: match hybrid {
                Some(hy) => Some(SharedScratch::new(&be, h, hy.shared_expert_intermediate)?),
                None => None,
            },
        };
        let chunking =
            prefill::Chunking::new(Self::prefill_chunk_within(&cfg, be.max_tensor_len()));
        Ok(Self {
            chunking,
            cfg,
            be,
            embed_tokens,
            layers,
            norm,
            lm_head,
            kv,
            delta_states,
            max_seq,
            next_pos: 0,
            s,
            stage_next: Vec::new(),
        })
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.be
    }

    /// Positions the KV cache holds.
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// Forgets the KV cache and the DeltaNet states (the next token must be at position 0).
    pub fn reset(&mut self) {
        self.next_pos = 0;
    }

    /// One decode step: runs `token` at `pos` (0..=the number of tokens already cached; a smaller
    /// `pos` rewinds) and returns the logits of the next token.
    pub fn forward(
        &mut self,
        token: u32,
        pos: usize,
        experts: &mut dyn ExpertSource,
        obs: &mut dyn RoutingObserver,
    ) -> Result<Vec<f32>> {
        self.step(token, pos, experts, obs)?;
        self.logits()
    }

    /// Runs every layer for one token, leaving the final hidden state in `s.h`.
    fn step(
        &mut self,
        token: u32,
        pos: usize,
        experts: &mut dyn ExpertSource,
        obs: &mut dyn RoutingObserver,
    ) -> Result<()> {
        if token as usize >= self.cfg.vocab_size {
            return Err(EngineError::OutOfRange {
                what: "token id",
                value: token as usize,
                limit: self.cfg.vocab_size,
            });
        }
        if pos > self.next_pos || pos >= self.max_seq {
            return Err(EngineError::OutOfRange {
                what: "position",
                value: pos,
                limit: self.next_pos.min(self.max_seq - 1) + 1,
            });
        }
        if !self.delta_states.is_empty() && pos != 0 && pos != self.next_pos {
            // A recurrent state cannot be rewound to an earlier position.
            return Err(EngineError::OutOfRange {
                what: "position (DeltaNet layers continue only at the next position or restart at 0)",
                value: pos,
                limit: self.next_pos + 1,
            });
        }
        if pos == 0 {
            for st in &mut self.delta_states {
                st.clear(&self.be)?;
            }
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
        obs.on_token(token, pos);
        self.embed_tokens
            .token(&self.be, &self.lm_head, token, &mut self.s.h)?;
        for l in 0..self.layers.len() {
            self.mixer(l, pos)?;
            self.moe(l, experts, obs)?;
        }
        self.next_pos = pos + 1;
        Ok(())
    }

    /// `h += mixer(input_layernorm(h))` for layer `l` at `pos` (attention or Gated DeltaNet).
    fn mixer(&mut self, l: usize, pos: usize) -> Result<()> {
        let (be, cfg, s) = (&self.be, &self.cfg, &mut self.s);
        let layer = &self.layers[l];
        be.rms_norm(&s.h, &layer.input_layernorm, cfg.rms_norm_eps, &mut s.x)
            .ctx(|| format!("model.layers.{l}.input_layernorm"))?;
        let a = match &layer.mixer {
            Mixer::Attention(a) => a,
            Mixer::DeltaNet(d, i) => {
                let (Some(hy), Some(ds)) = (&cfg.hybrid, &mut s.delta) else {
                    return Err(EngineError::OutOfRange {
                        what: "DeltaNet layer without a hybrid config",
                        value: l,
                        limit: 0,
                    });
                };
                let ctx = |what: &str| format!("model.layers.{l}.linear_attn.{what}");
                d.step(
                    be,
                    &hy.deltanet,
                    cfg.rms_norm_eps,
                    &s.x,
                    &mut self.delta_states[*i],
                    ds,
                    &mut s.o,
                    &ctx,
                )?;
                return be.axpy(&mut s.h, 1.0, &s.o).ctx(|| ctx("residual"));
            }
        };
        let ctx = |what: &str| format!("model.layers.{l}.self_attn.{what}");
        let (eps, hd) = (cfg.rms_norm_eps, cfg.head_dim);
        // q, (the output gate,) k and v read the same input: one pass.
        match &a.gate_proj {
            Some(g) => be.matvec_many(
                &[&a.q_proj, g, &a.k_proj, &a.v_proj],
                &s.x,
                &mut [&mut s.q, &mut s.q_gate, &mut s.k, &mut s.v],
            ),
            None => be.matvec_many(
                &[&a.q_proj, &a.k_proj, &a.v_proj],
                &s.x,
                &mut [&mut s.q, &mut s.k, &mut s.v],
            ),
        }
        .ctx(|| ctx("q_proj, k_proj, v_proj"))?;
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            be.rms_norm_heads(&mut s.q, qn, hd, eps)
                .ctx(|| ctx("q_norm"))?;
            be.rms_norm_heads(&mut s.k, kn, hd, eps)
                .ctx(|| ctx("k_norm"))?;
        }
        match cfg.hybrid.as_ref().map(|hy| hy.rotary_dim) {
            Some(rot) if rot != hd => {
                be.rope_partial(&mut s.q, cfg.num_heads, hd, rot, pos, cfg.rope_theta)
                    .ctx(|| ctx("rope q"))?;
                be.rope_partial(&mut s.k, cfg.num_kv_heads, hd, rot, pos, cfg.rope_theta)
                    .ctx(|| ctx("rope k"))?;
            }
            _ => {
                be.rope(&mut s.q, cfg.num_heads, hd, pos, cfg.rope_theta)
                    .ctx(|| ctx("rope q"))?;
                be.rope(&mut s.k, cfg.num_kv_heads, hd, pos, cfg.rope_theta)
                    .ctx(|| ctx("rope k"))?;
            }
        }
        let slot = a.kv_slot;
        be.kv_write(&mut self.kv, slot, pos, &s.k, &s.v)
            .ctx(|| ctx("kv cache"))?;
        let shape = AttnShape {
            n_heads: cfg.num_heads,
            n_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
        };
        be.attention(&s.q, &self.kv, slot, pos + 1, shape, &mut s.attn)
            .ctx(|| ctx("attention"))?;
        if a.gate_proj.is_some() {
            be.sigmoid_mul(&mut s.attn, &s.q_gate)
                .ctx(|| ctx("output gate"))?;
        }
        be.matvec(&a.o_proj, &s.attn, &mut s.o)
            .ctx(|| ctx("o_proj"))?;
        be.axpy(&mut s.h, 1.0, &s.o).ctx(|| ctx("residual"))
    }

    /// `h += moe(post_attention_layernorm(h))` for layer `l`, experts from `experts`.
    fn moe(
        &mut self,
        l: usize,
        experts: &mut dyn ExpertSource,
        obs: &mut dyn RoutingObserver,
    ) -> Result<()> {
        let (be, cfg, s) = (&self.be, &self.cfg, &mut self.s);
        let layer = &self.layers[l];
        let ctx = |what: &str| format!("model.layers.{l}.moe.{what}");
        be.rms_norm(
            &s.h,
            &layer.post_attention_layernorm,
            cfg.rms_norm_eps,
            &mut s.x,
        )
        .ctx(|| format!("model.layers.{l}.post_attention_layernorm"))?;
        be.matvec(&layer.router, &s.x, &mut s.router_logits)
            .ctx(|| ctx("router"))?;
        let layer_id = l as u32;
        let predicted = std::mem::take(&mut self.stage_next);
        if be.stages_experts() && !predicted.is_empty() {
            stage_ready(be, experts, layer_id, &predicted)?;
        }
        let next = self.layers.get(l + 1).filter(|_| obs.wants_pregate());
        let routing = match next {
            None => {
                let routing = be
                    .router_top_k(&s.router_logits, cfg.top_k, cfg.norm_topk_prob)
                    .ctx(|| ctx("router top-k"))?;
                obs.on_routing(layer_id, &routing.ids, &routing.weights);
                routing
            }
            Some(next) => {
                // Pre-gate: the next layer's router on this layer's MoE input, read back
                // together with this layer's router logits (one wait on a GPU).
                be.matvec(&next.router, &s.x, &mut s.pregate_logits)
                    .ctx(|| ctx("pre-gate"))?;
                let [logits, pre]: [Vec<f32>; 2] = be
                    .read_many(&[&s.router_logits, &s.pregate_logits])
                    .ctx(|| ctx("router and pre-gate logits"))?
                    .try_into()
                    .map_err(|_| EngineError::Expert {
                        layer: layer_id,
                        expert: 0,
                        reason: "read_many returned the wrong number of tensors".into(),
                    })?;
                let routing = top_k_softmax(&logits, cfg.top_k, cfg.norm_topk_prob)
                    .ctx(|| ctx("router top-k"))?;
                obs.on_routing(layer_id, &routing.ids, &routing.weights);
                let scores = softmax(&pre).ctx(|| ctx("pre-gate"))?;
                obs.on_pregate(layer_id + 1, &scores);
                if be.stages_experts() {
                    self.stage_next = crate::sampler::top_k(&scores, cfg.top_k);
                }
                routing
            }
        };
        if obs.wants_pregate_far()
            && let Some(far) = self.layers.get(l + 2)
        {
            be.matvec(&far.router, &s.x, &mut s.router_logits)
                .ctx(|| ctx("pre-gate two layers ahead"))?;
            let scores = softmax(&be.read(&s.router_logits).ctx(|| ctx("pre-gate far"))?)
                .ctx(|| ctx("pre-gate far"))?;
            obs.on_pregate_far(layer_id + 2, &scores);
        }
        let layout = *experts.layout();
        let waited = be.profile().map(|_| std::time::Instant::now());
        let batch = experts.experts(layer_id, &routing.ids)?;
        if let (Some(p), Some(t)) = (be.profile(), waited) {
            p.record(Phase::ExpertWait, t.elapsed());
        }
        if batch.len() != routing.ids.len() {
            return Err(EngineError::Expert {
                layer: layer_id,
                expert: routing.ids[0],
                reason: format!(
                    "source returned {} records for {} ids",
                    batch.len(),
                    routing.ids.len()
                ),
            });
        }
        let mut routed = Vec::with_capacity(routing.ids.len());
        for (i, (&id, &w)) in routing.ids.iter().zip(&routing.weights).enumerate() {
            let rec = batch.record(i).unwrap_or_default();
            let weights = layout.views(rec).map_err(|e| EngineError::Expert {
                layer: layer_id,
                expert: id,
                reason: e.to_string(),
            })?;
            routed.push(RoutedExpert {
                id: ExpertId {
                    layer: layer_id,
                    expert: id,
                },
                weights,
                combine: w,
            });
        }
        be.moe_experts(&routed, &s.x, &mut s.experts, &mut s.moe_out)
            .map_err(|e| EngineError::Expert {
                layer: layer_id,
                expert: routing.ids[0],
                reason: format!("computing experts {:?}: {e}", routing.ids),
            })?;
        drop(routed);
        drop(batch);
        if let (Some(sh), Some(ss)) = (&layer.shared, &mut s.shared) {
            sh.add(be, &s.x, ss, &mut s.moe_out, &|w: &str| {
                format!("model.layers.{l}.mlp.{w}")
            })?;
        }
        be.axpy(&mut s.h, 1.0, &s.moe_out).ctx(|| ctx("residual"))
    }

    /// `lm_head(norm(h))`, read back.
    fn logits(&mut self) -> Result<Vec<f32>> {
        let (be, s) = (&self.be, &mut self.s);
        be.rms_norm(&s.h, &self.norm, self.cfg.rms_norm_eps, &mut s.x)
            .ctx(|| "model.norm".into())?;
        be.matvec(&self.lm_head, &s.x, &mut s.logits)
            .ctx(|| "lm_head".into())?;
        be.read(&s.logits).ctx(|| "reading logits".into())
    }
}

/// Copies those of `predicted` experts of `layer` that `experts` holds ready into the backend's
/// own memory (a GPU's expert slots), so the upload is off the critical path when the routing
/// agrees. The records' pins are released as soon as the backend has its copy.
fn stage_ready<B: ComputeBackend>(
    be: &B,
    experts: &mut dyn ExpertSource,
    layer: u32,
    predicted: &[u32],
) -> Result<()> {
    let layout = *experts.layout();
    let (ids, batch) = experts.ready(layer, predicted)?;
    for (i, &id) in ids.iter().enumerate() {
        let bad = |e: flashmoe_backends::BackendError| EngineError::Expert {
            layer,
            expert: id,
            reason: format!("staging: {e}"),
        };
        let rec = batch.record(i).unwrap_or_default();
        be.stage_expert(
            ExpertId { layer, expert: id },
            layout.views(rec).map_err(bad)?,
        )
        .map_err(bad)?;
    }
    Ok(())
}
