//! How well a predictor ranks a trace's routing, offline: recall, precision and calibration of
//! its top `n` candidates, per distance (1 and 2 layers ahead, targets within the same token,
//! where pre-gate scores exist), with the trace's recorded
//! pre-gate scores fed as a [`Session`](io_sched::Session) driver feeds them (layer `L + 1`'s
//! at layer `L`, and `L + 2`'s from a far trace).

use std::sync::Arc;

use io_sched::trace::Trace;

use crate::error::{Result, SimError};
use crate::predict::{self, PredictorKind};

/// The quality of one predictor at one distance and candidate count.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Quality {
    /// The predictor's name.
    pub predictor: String,
    /// Layers ahead of the layer just routed.
    pub distance: u32,
    /// Candidates counted (the top `n`).
    pub n: usize,
    /// Share of the target layer's routed experts among the top `n`.
    pub recall: f64,
    /// Share of the top `n` that were routed.
    pub precision: f64,
    /// Mean confidence the predictor gave its top `n` (calibrated: ≈ precision).
    pub confidence: f64,
    /// Predicted layers scored.
    pub layers_scored: u64,
}

/// Runs `kind` over `trace` (tokens in order, horizon 2) and scores its top `n` for every `n`
/// of `ns`, at distances 1 and 2. `far` gives the two-layers-ahead scores (same run).
pub fn evaluate(
    kind: PredictorKind,
    trace: &Arc<Trace>,
    far: Option<&Trace>,
    ns: &[usize],
) -> Result<Vec<Quality>> {
    if kind == PredictorKind::Oracle {
        return Err(SimError::Setup(
            "the oracle is exact by construction: nothing to evaluate".into(),
        ));
    }
    let h = trace.header;
    let tokens = trace.tokens();
    let mut p = predict::make(kind, trace, tokens)?;
    let max = ns.iter().copied().max().unwrap_or(0);
    // [distance - 1][n index]: (hits, routed, candidates, confidence sum), layers scored.
    let mut acc = vec![vec![(0u64, 0u64, 0u64, 0.0f64); ns.len()]; 2];
    let mut scored = [0u64; 2];
    let mut out = Vec::new();
    for token in 0..tokens {
        for layer in 0..h.layers {
            if kind.takes_scores() {
                if layer + 1 < h.layers
                    && let Some(s) = trace.scores_at(token, layer)
                {
                    p.observe_scores(layer + 1, s);
                }
                if let Some(f) = far
                    && layer + 2 < h.layers
                    && let Some(s) = f.scores_at(token % f.tokens().max(1), layer)
                {
                    p.observe_scores(layer + 2, s);
                }
            }
            p.observe(layer, trace.experts_at(token, layer));
            p.predict(layer, 2, max, &mut out);
            for lp in &out {
                let d = (lp.tokens_ahead * h.layers + lp.layer).saturating_sub(layer);
                let target = token + lp.tokens_ahead as u64;
                // Targets of the same token only: the layers pre-gate scores exist for (layer 0
                // of the next token has none), so every predictor is scored on the same ones.
                if !(1..=2).contains(&d) || lp.tokens_ahead > 0 || target >= tokens {
                    continue;
                }
                let routed = trace.experts_at(target, lp.layer);
                let d = d as usize - 1;
                scored[d] += 1;
                for (a, &n) in acc[d].iter_mut().zip(ns) {
                    let top = &lp.candidates[..n.min(lp.candidates.len())];
                    a.0 += top.iter().filter(|c| routed.contains(&c.expert)).count() as u64;
                    a.1 += routed.len() as u64;
                    a.2 += top.len() as u64;
                    a.3 += top.iter().map(|c| c.confidence as f64).sum::<f64>();
                }
            }
        }
    }
    let ratio = |a: f64, b: u64| if b == 0 { 0.0 } else { a / b as f64 };
    let mut q = Vec::new();
    for (d, row) in acc.iter().enumerate() {
        for (&(hits, routed, cands, conf), &n) in row.iter().zip(ns) {
            q.push(Quality {
                predictor: kind.name().into(),
                distance: d as u32 + 1,
                n,
                recall: ratio(hits as f64, routed),
                precision: ratio(hits as f64, cands),
                confidence: ratio(conf, cands),
                layers_scored: scored[d],
            });
        }
    }
    Ok(q)
}

/// The qualities as a table, one row per (predictor, distance, n).
pub fn table(rows: &[(String, Quality)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:<12} {:>4} {:>4} {:>8} {:>8} {:>8} {:>8}",
        "trace", "predictor", "dist", "n", "recall%", "prec%", "conf%", "layers"
    );
    for (trace, q) in rows {
        let _ = writeln!(
            s,
            "{:<24} {:<12} {:>4} {:>4} {:>8.1} {:>8.1} {:>8.1} {:>8}",
            trace,
            q.predictor,
            q.distance,
            q.n,
            100.0 * q.recall,
            100.0 * q.precision,
            100.0 * q.confidence,
            q.layers_scored
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporal_on_a_constant_trace_is_perfect_from_the_second_token() {
        // 2 layers x 4 experts, k = 2, every token routes the same experts.
        let ids: Vec<u32> = (0..10).flat_map(|_| [0, 1, 2, 3]).collect();
        let t = Arc::new(Trace::from_ids(2, 4, 2, ids).unwrap());
        let q = evaluate(PredictorKind::Temporal, &t, None, &[2]).unwrap();
        let d1 = q.iter().find(|q| q.distance == 1).unwrap();
        // Layer 1 of token 0 is predicted before layer 1 was ever seen: one miss of 19.
        assert!(d1.recall > 0.9 && d1.precision > 0.9, "{d1:?}");
        assert!(evaluate(PredictorKind::Oracle, &t, None, &[2]).is_err());
    }
}
