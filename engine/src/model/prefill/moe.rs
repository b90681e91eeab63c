//! The MoE block over a prompt chunk: route every row, take the union of the experts routed
//! to, run each expert once on all of its tokens as it arrives from the source, combine.
//!
//! Each expert's output rows are parked by (routing rank, token) and combined at the end in
//! routing-rank order, as the decode step sums a token's experts: the result does not depend
//! on the order the source hands the experts out in (the budget, what was cached), and with
//! row kernels that match the vector ones it is bit-identical to token-by-token prefill.

use super::{ChunkScratch, TokenLayer};
use crate::error::{BackendContext, EngineError, Result};
use crate::experts::{ExpertBatch, ExpertSource};
use crate::hooks::RoutingObserver;
use crate::model::MoeModel;
use flashmoe_backends::ComputeBackend;
use flashmoe_backends::routing::{softmax, top_k_softmax};
use std::collections::BTreeMap;

/// The tokens (rows of the chunk) routed to one expert, and where its output for each is
/// parked: row `rank * n + token` of the chunk's expert outputs.
type Tokens = (Vec<usize>, Vec<usize>);

impl<B: ComputeBackend> MoeModel<B> {
    /// `h += moe(post_attention_layernorm(h))` for layer `l`, every row of the chunk; returns
    /// each token's routing (and pre-gate scores) for the observer.
    pub(super) fn chunk_moe(
        &mut self,
        l: usize,
        cs: &mut ChunkScratch<B>,
        experts: &mut dyn ExpertSource,
        obs: &dyn RoutingObserver,
    ) -> Result<Vec<TokenLayer>> {
        let (be, cfg, n) = (&self.be, &self.cfg, cs.n);
        let layer = &self.layers[l];
        let layer_id = l as u32;
        let ctx = |what: &str| format!("model.layers.{l}.moe.{what}");
        be.rms_norm_rows(
            &cs.h,
            &layer.post_attention_layernorm,
            cfg.rms_norm_eps,
            n,
            &mut cs.x,
        )
        .ctx(|| format!("model.layers.{l}.post_attention_layernorm"))?;
        be.matmul(&layer.router, &cs.x, n, &mut cs.logits)
            .ctx(|| ctx("router"))?;
        let next = self.layers.get(l + 1).filter(|_| obs.wants_pregate());
        let far = self.layers.get(l + 2).filter(|_| obs.wants_pregate_far());
        if let Some(next) = next {
            be.matmul(&next.router, &cs.x, n, &mut cs.pre)
                .ctx(|| ctx("pre-gate"))?;
        }
        if let Some(far) = far {
            be.matmul(&far.router, &cs.x, n, &mut cs.far)
                .ctx(|| ctx("pre-gate two layers ahead"))?;
        }
        // One read-back of every logit the chunk's routing needs.
        let mut wanted = vec![&cs.logits];
        wanted.extend(next.map(|_| &cs.pre));
        wanted.extend(far.map(|_| &cs.far));
        let mut back = be
            .read_many(&wanted)
            .ctx(|| ctx("router and pre-gate logits"))?
            .into_iter();
        let wrong = || EngineError::Expert {
            layer: layer_id,
            expert: 0,
            reason: "read_many returned the wrong number of tensors".into(),
        };
        let logits = back.next().ok_or_else(wrong)?;
        let pre = next.map(|_| back.next().ok_or_else(wrong)).transpose()?;
        let far = far.map(|_| back.next().ok_or_else(wrong)).transpose()?;

        let e = cfg.num_experts;
        let row = |v: &[f32], i: usize| v[i * e..(i + 1) * e].to_vec();
        let mut seen = Vec::with_capacity(n);
        let mut union: BTreeMap<u32, Tokens> = BTreeMap::new();
        let mut next_score = vec![0f32; e];
        for i in 0..n {
            let routing = top_k_softmax(&logits[i * e..(i + 1) * e], cfg.top_k, cfg.norm_topk_prob)
                .ctx(|| ctx("router top-k"))?;
            for (r, &id) in routing.ids.iter().enumerate() {
                let t = union.entry(id).or_default();
                t.0.push(i);
                t.1.push(r * n + i);
            }
            let pre_i = match &pre {
                Some(p) => Some(softmax(&row(p, i)).ctx(|| ctx("pre-gate"))?),
                None => None,
            };
            if let Some(p) = &pre_i {
                for id in crate::sampler::top_k(p, cfg.top_k) {
                    next_score[id as usize] += p[id as usize];
                }
            }
            let far_i = match &far {
                Some(p) => Some(softmax(&row(p, i)).ctx(|| ctx("pre-gate far"))?),
                None => None,
            };
            seen.push(TokenLayer {
                routing,
                pre: pre_i,
                far: far_i,
            });
        }
        let ids: Vec<u32> = union.keys().copied().collect();
        // The next layer's pre-gate union, most probable first.
        let mut next_union: Vec<u32> = (0..e as u32)
            .filter(|&x| next_score[x as usize] > 0.0)
            .collect();
        next_union.sort_by(|&a, &b| {
            next_score[b as usize]
                .total_cmp(&next_score[a as usize])
                .then(a.cmp(&b))
        });
        let layout = *experts.layout();
        let st = &mut self.chunking.stats;
        st.unions += 1;
        st.union_experts += ids.len() as u64;
        st.max_union = st.max_union.max(ids.len());
        st.union_bytes += (ids.len() * layout.record_len) as u64;

        be.fill_zero(&mut cs.parked).ctx(|| ctx("combine"))?;
        let (h, inter) = (cfg.hidden_size, cfg.expert_intermediate);
        let ones = vec![1.0f32; n];
        let mut compute = |group: &[u32], batch: &ExpertBatch<'_>| -> Result<()> {
            if batch.len() != group.len() {
                return Err(EngineError::Expert {
                    layer: layer_id,
                    expert: group.first().copied().unwrap_or(0),
                    reason: format!(
                        "source returned {} records for {} ids",
                        batch.len(),
                        group.len()
                    ),
                });
            }
            for (j, &id) in group.iter().enumerate() {
                let bad = |reason: String| EngineError::Expert {
                    layer: layer_id,
                    expert: id,
                    reason,
                };
                // Taken out of the union: an expert handed out twice (or never asked for) is
                // an error, not a second combine.
                let (rows, parked) = union.remove(&id).ok_or_else(|| {
                    bad("handed out but not (or no longer) in the chunk's union".into())
                })?;
                let rec = batch.record(j).unwrap_or_default();
                let [g, u, d] = layout.views(rec).map_err(|e| bad(e.to_string()))?;
                let m = rows.len();
                let mut run = || -> flashmoe_backends::Result<()> {
                    be.gather_rows(&cs.x, h, &rows, &mut cs.xg)?;
                    be.matmul_bytes(g, &cs.xg, m, &mut cs.g1)?;
                    be.matmul_bytes(u, &cs.xg, m, &mut cs.g2)?;
                    be.swiglu_rows(&mut cs.g1, &cs.g2, m, inter)?;
                    be.matmul_bytes(d, &cs.g1, m, &mut cs.eo)?;
                    // Into zeros with weight 1: the rows exactly.
                    be.scatter_add_rows(&mut cs.parked, h, &parked, &ones[..m], &cs.eo)
                };
                run().map_err(|e| bad(format!("computing on {m} tokens of the chunk: {e}")))?;
            }
            Ok(())
        };
        let hint = next.map(|_| (layer_id + 1, next_union.as_slice()));
        experts.experts_union(layer_id, &ids, hint, &mut compute)?;
        if let Some((&id, _)) = union.iter().next() {
            return Err(EngineError::Expert {
                layer: layer_id,
                expert: id,
                reason: format!(
                    "the source never handed out {} experts of the union",
                    union.len()
                ),
            });
        }
        // moe[i] = sum over ranks r, in order, of w[i][r] * parked[r][i].
        be.fill_zero(&mut cs.moe).ctx(|| ctx("combine"))?;
        let all: Vec<usize> = (0..n).collect();
        for r in 0..cfg.top_k {
            let w: Vec<f32> = seen
                .iter()
                .map(|t| t.routing.weights.get(r).copied().unwrap_or(0.0))
                .collect();
            be.copy_range(&cs.parked, r * n * h, &mut cs.xg, 0, n * h)
                .and_then(|_| be.scatter_add_rows(&mut cs.moe, h, &all, &w, &cs.xg))
                .ctx(|| ctx("combine"))?;
        }
        if let (Some(sh), Some(sc)) = (&layer.shared, &mut cs.shared) {
            sh.add_rows(be, (&cs.x, n), sc, &mut cs.moe, &|w: &str| {
                format!("model.layers.{l}.mlp.{w}")
            })?;
        }
        be.axpy(&mut cs.h, 1.0, &cs.moe).ctx(|| ctx("residual"))?;
        Ok(seen)
    }
}
