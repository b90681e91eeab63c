//! Expert predictors for the simulator: io-sched's own (the shipped code, not a copy), plus
//! the wiring a trace needs — an oracle over the replayed tokens, and the pre-gate scores
//! (recorded or synthetic) a trace feeds io-sched's [`Session`].

use std::sync::Arc;

use io_sched::predictor::{self as io_pred, Oracle};

pub use io_sched::predictor::{LayerPrediction, Predictor, PredictorKind};
use io_sched::trace::Trace;
use io_sched::{Session, SessionIo};

use crate::error::{Result, SimError};
use crate::rng::Rng;

/// Builds io-sched's predictor of `kind` for a run of `steps` tokens over `trace` (the driver
/// replays the trace from its start when a run is longer, and so does the oracle's view).
pub fn make(kind: PredictorKind, trace: &Arc<Trace>, steps: u64) -> Result<Box<dyn Predictor>> {
    let h = trace.header;
    if kind == PredictorKind::Transition && (h.experts as u64).pow(2) * h.layers as u64 > 1 << 28 {
        return Err(SimError::Setup(format!(
            "transition table of {} x {}^2 is too large",
            h.layers, h.experts
        )));
    }
    if kind == PredictorKind::Oracle {
        let tokens = trace.tokens().max(1);
        let routing = (0..steps + 1)
            .map(|step| {
                (0..h.layers)
                    .map(|l| trace.experts_at(step % tokens, l).to_vec())
                    .collect()
            })
            .collect();
        return Ok(Box::new(Oracle::new(routing, h.layers, h.experts)));
    }
    io_pred::build(kind, h.layers, h.experts)
        .ok_or_else(|| SimError::Setup(format!("predictor {} cannot be built", kind.name())))
}

/// The pre-gate scores a trace gives a [`Session`] at each (token, layer) — recorded, or
/// synthesized at `recall` when the trace has none — as the engine would by the time layer
/// `L` is demanded: layer `L + 1`'s, and with a far trace `L + 2`'s. Only the predictors that
/// take scores ([`PredictorKind::takes_scores`]: scores, blend) get them. Predicting is the session's job.
pub struct TraceScores {
    feeds: bool,
    recall: f64,
    rng: Rng,
    scores: Vec<f32>,
    /// Two-layers-ahead pre-gate scores (a far trace of the same run), if given.
    far: Option<Arc<Trace>>,
    /// No recorded far trace: synthesize layer L+2's scores at this top-k recall.
    far_recall: Option<f64>,
}

impl TraceScores {
    /// Scores for a session predicting with `kind` (none unless it takes scores).
    pub fn new(kind: PredictorKind, recall: f64, seed: u64) -> Self {
        Self {
            feeds: kind.takes_scores(),
            recall,
            rng: Rng::new(seed ^ 0x5eed),
            scores: Vec::new(),
            far: None,
            far_recall: None,
        }
    }

    /// Also feeds two-layers-ahead scores synthesized from the trace (layer L+2's routing seen
    /// through pre-gate noise fitted to `recall` at top k, [`crate::pregate`]), where no
    /// recorded far trace is given.
    pub fn with_synthetic_far(mut self, recall: f64) -> Self {
        self.far_recall = Some(recall);
        self
    }

    /// Also gives layer `L + 2`'s scores at layer `L`, from `far` (`generate --trace-far`,
    /// same run as the trace), so the session can hint two layers ahead; at `L + 1` the
    /// ordinary one-ahead scores supersede them.
    pub fn with_far_scores(mut self, far: Arc<Trace>) -> Self {
        self.far = Some(far);
        self
    }

    /// Hands `session` the scores known when layer `layer` of `token` is routed (call it
    /// right before [`Session::demand`]).
    pub fn feed<Io: SessionIo>(
        &mut self,
        session: &mut Session<Io>,
        trace: &Trace,
        token: u64,
        layer: u32,
    ) {
        if !self.feeds {
            return;
        }
        pregate_scores(
            trace,
            token,
            layer,
            self.recall,
            &mut self.rng,
            &mut self.scores,
        );
        if !self.scores.is_empty() {
            session.scores(layer + 1, &self.scores);
        }
        if let Some(far) = &self.far
            && layer + 2 < trace.header.layers
            && let Some(s) = far.scores_at(token % far.tokens().max(1), layer)
        {
            session.scores(layer + 2, s);
        } else if let Some(recall) = self.far_recall
            && self.far.is_none()
            && layer + 2 < trace.header.layers
        {
            synthesized_scores(
                trace,
                token,
                layer + 2,
                recall,
                &mut self.rng,
                &mut self.scores,
            );
            session.scores(layer + 2, &self.scores);
        }
    }
}

/// Pre-gate scores for layer `layer + 1` of `token`: recorded ones if the trace has them,
/// else synthesized ([`crate::pregate`]: the router's logits seen through noise fitted so that
/// the top k holds `recall` of the routed experts; a missed one is a near-tie below rank k).
pub fn pregate_scores(
    trace: &Trace,
    token: u64,
    layer: u32,
    recall: f64,
    rng: &mut Rng,
    out: &mut Vec<f32>,
) {
    out.clear();
    if layer + 1 >= trace.header.layers {
        return;
    }
    if let Some(s) = trace.scores_at(token, layer) {
        out.extend_from_slice(s);
        return;
    }
    synthesized_scores(trace, token, layer + 1, recall, rng, out);
}

/// Synthetic pre-gate scores for layer `target` of `token` ([`crate::pregate`]), with the
/// noise whose top k holds `recall` of the experts `target` routes.
fn synthesized_scores(
    trace: &Trace,
    token: u64,
    target: u32,
    recall: f64,
    rng: &mut Rng,
    out: &mut Vec<f32>,
) {
    let h = trace.header;
    let noise = crate::pregate::noise_for_recall(h.experts, h.k, recall);
    crate::pregate::synthesize(trace.experts_at(token, target), h.experts, noise, rng, out);
}

/// Over every (token, layer) with recorded pre-gate scores: the share of layer `L + ahead`'s
/// routed experts that the scores' top `n` contain (`n = k`: the pre-gate's recall; `n > k`:
/// what over-fetching `n - k` more would catch). `ahead` is 1 for an ordinary trace, 2 for a
/// far one (`generate --trace-far`) with `trace` giving its routing. `None` without scores.
pub fn recorded_pregate_recall(scored: &Trace, trace: &Trace, n: usize, ahead: u32) -> Option<f64> {
    scored.scores.as_ref()?;
    let h = scored.header;
    if scored.tokens() != trace.tokens() {
        return None;
    }
    let (mut hit, mut all) = (0u64, 0u64);
    let mut idx: Vec<u32> = Vec::with_capacity(h.experts as usize);
    for token in 0..trace.tokens() {
        for layer in 0..h.layers.saturating_sub(ahead) {
            let Some(s) = scored.scores_at(token, layer) else {
                continue;
            };
            idx.clear();
            idx.extend(0..h.experts);
            let key = |e: &u32| {
                let v = s[*e as usize];
                if v.is_finite() { v } else { f32::NEG_INFINITY }
            };
            idx.sort_by(|a, b| key(b).total_cmp(&key(a)));
            let top = &idx[..n.min(idx.len())];
            for e in trace.experts_at(token, layer + ahead) {
                all += 1;
                hit += top.contains(e) as u64;
            }
        }
    }
    (all > 0).then(|| hit as f64 / all as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_recall_counts_next_layer_experts_in_the_top_n() {
        // 1 token, 2 layers, 4 experts, k = 2; scores at layer 0 rank 3 > 0 > 1 > 2.
        let mut t = Trace::from_ids(2, 4, 2, vec![0, 1, 3, 2]).unwrap();
        t.scores = Some(vec![0.3, 0.2, 0.1, 0.4, 0.0, 0.0, 0.0, 0.0]);
        t.header.scores = Some(io_sched::trace::Real::F32);
        // Layer 1 routes {3, 2}: top-2 {3, 0} holds one, top-4 both.
        assert_eq!(recorded_pregate_recall(&t, &t, 2, 1), Some(0.5));
        assert_eq!(recorded_pregate_recall(&t, &t, 4, 1), Some(1.0));
        assert_eq!(
            recorded_pregate_recall(&t, &t, 4, 2),
            None,
            "no layer two ahead"
        );
        let bare = Trace::from_ids(2, 4, 2, vec![0, 1, 3, 2]).unwrap();
        assert_eq!(recorded_pregate_recall(&bare, &bare, 2, 1), None);
    }
}
