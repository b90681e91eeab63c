//! Expert predictors for the simulator.
//!
//! The trait is a private copy of `io_sched::predictor::Predictor` (being written now); once it
//! lands, replace this trait and the implementations that exist there by `pub use` of
//! `io_sched::predictor::*`, keeping only [`make`] (which wires traces and synthetic scores in).

use std::sync::Arc;

use io_sched::predictor::Candidate;
use io_sched::trace::Trace;

use crate::error::{Result, SimError};
use crate::rng::Rng;

/// Predicted experts of one layer, `tokens_ahead` tokens from now (0 = this token).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPrediction {
    pub layer: u32,
    pub tokens_ahead: u32,
    pub candidates: Vec<Candidate>,
}

/// Same contract as `io_sched::predictor::Predictor`.
pub trait Predictor: Send {
    fn name(&self) -> &'static str;
    /// Real routing, in layer order.
    fn observe(&mut self, layer: u32, experts: &[u32]);
    /// Engine pre-gate scores, given at `layer` for `layer + 1`.
    fn observe_scores(&mut self, _layer: u32, _scores: &[f32]) {}
    /// Predictions for the layers after `layer`, up to `horizon` of them.
    fn predict(
        &mut self,
        layer: u32,
        horizon: u32,
        max_per_layer: usize,
        out: &mut Vec<LayerPrediction>,
    );
}

/// Which predictor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PredictorKind {
    None,
    Temporal,
    Frequency,
    Transition,
    Scores,
    Oracle,
}

impl PredictorKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Temporal => "temporal",
            Self::Frequency => "frequency",
            Self::Transition => "transition",
            Self::Scores => "scores",
            Self::Oracle => "oracle",
        }
    }
}

fn next_layer(layer: u32, h: u32, layers: u32) -> (u32, u32) {
    let x = layer + h;
    (x % layers, x / layers)
}

/// Predicts nothing.
pub struct NoPredictor;
impl Predictor for NoPredictor {
    fn name(&self) -> &'static str {
        "none"
    }
    fn observe(&mut self, _: u32, _: &[u32]) {}
    fn predict(&mut self, _: u32, _: u32, _: usize, _: &mut Vec<LayerPrediction>) {}
}

/// The next layers will route as they did for the previous token.
pub struct Temporal {
    last: Vec<Vec<u32>>,
}
impl Predictor for Temporal {
    fn name(&self) -> &'static str {
        "temporal"
    }
    fn observe(&mut self, layer: u32, experts: &[u32]) {
        self.last[layer as usize] = experts.to_vec();
    }
    fn predict(&mut self, layer: u32, horizon: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let n = self.last.len() as u32;
        for h in 1..=horizon {
            let (l, ahead) = next_layer(layer, h, n);
            let c = self.last[l as usize]
                .iter()
                .take(max)
                .map(|&e| Candidate {
                    expert: e,
                    confidence: 0.5,
                })
                .collect();
            out.push(LayerPrediction {
                layer: l,
                tokens_ahead: ahead,
                candidates: c,
            });
        }
    }
}

/// The most used experts of each layer so far.
pub struct Frequency {
    counts: Vec<Vec<u64>>,
}
impl Predictor for Frequency {
    fn name(&self) -> &'static str {
        "frequency"
    }
    fn observe(&mut self, layer: u32, experts: &[u32]) {
        for &e in experts {
            self.counts[layer as usize][e as usize] += 1;
        }
    }
    fn predict(&mut self, layer: u32, horizon: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let n = self.counts.len() as u32;
        for h in 1..=horizon {
            let (l, ahead) = next_layer(layer, h, n);
            let c = &self.counts[l as usize];
            let total: u64 = c.iter().sum::<u64>().max(1);
            out.push(LayerPrediction {
                layer: l,
                tokens_ahead: ahead,
                candidates: top(c.iter().map(|&x| x as f64 / total as f64), max),
            });
        }
    }
}

/// Learned co-occurrence of (expert at layer L) → (expert at layer L+1) in the same token.
pub struct Transition {
    experts: usize,
    table: Vec<Vec<u32>>,
    current: Vec<u32>,
    current_layer: u32,
}
impl Predictor for Transition {
    fn name(&self) -> &'static str {
        "transition"
    }
    fn observe(&mut self, layer: u32, experts: &[u32]) {
        if layer > 0 && self.current_layer == layer - 1 {
            let t = &mut self.table[layer as usize - 1];
            for &a in &self.current {
                for &b in experts {
                    t[a as usize * self.experts + b as usize] += 1;
                }
            }
        }
        self.current = experts.to_vec();
        self.current_layer = layer;
    }
    fn predict(&mut self, layer: u32, _h: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let n = self.table.len() as u32;
        if layer + 1 >= n {
            return;
        }
        let t = &self.table[layer as usize];
        let mut score = vec![0.0f64; self.experts];
        for &a in &self.current {
            let row = &t[a as usize * self.experts..(a as usize + 1) * self.experts];
            let sum: u32 = row.iter().sum();
            for (s, &c) in score.iter_mut().zip(row) {
                *s += c as f64 / (sum.max(1) as f64 * self.current.len() as f64);
            }
        }
        out.push(LayerPrediction {
            layer: layer + 1,
            tokens_ahead: 0,
            candidates: top(score.into_iter(), max),
        });
    }
}

/// Pre-gate: the next layer's router applied to this layer's hidden state (scores from the
/// engine, or synthesized from the trace with a given recall).
pub struct Scores {
    layers: u32,
    scores: Option<(u32, Vec<f32>)>,
}
impl Predictor for Scores {
    fn name(&self) -> &'static str {
        "scores"
    }
    fn observe(&mut self, _: u32, _: &[u32]) {}
    fn observe_scores(&mut self, layer: u32, scores: &[f32]) {
        self.scores = Some((layer, scores.to_vec()));
    }
    fn predict(&mut self, layer: u32, _h: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        if let Some((_, s)) = self
            .scores
            .take()
            .filter(|(l, _)| *l == layer && layer + 1 < self.layers)
        {
            out.push(LayerPrediction {
                layer: layer + 1,
                tokens_ahead: 0,
                candidates: top(s.iter().map(|&x| x as f64), max),
            });
        }
    }
}

/// Knows the trace: the true routing of the next layers (an upper bound).
pub struct Oracle {
    trace: Arc<Trace>,
    token: u64,
}
impl Predictor for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }
    fn observe(&mut self, layer: u32, _: &[u32]) {
        if layer + 1 == self.trace.header.layers {
            self.token += 1;
        }
    }
    fn predict(&mut self, layer: u32, horizon: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let n = self.trace.header.layers;
        // `layer` was observed already; if it was the last, `token` has moved on.
        let token = if layer + 1 == n {
            self.token - 1
        } else {
            self.token
        };
        for h in 1..=horizon {
            let (l, ahead) = next_layer(layer, h, n);
            // Runs longer than the trace replay it from the start, as the driver does.
            let t = (token + ahead as u64) % self.trace.tokens();
            let c = self
                .trace
                .experts_at(t, l)
                .iter()
                .take(max)
                .map(|&e| Candidate {
                    expert: e,
                    confidence: 1.0,
                })
                .collect();
            out.push(LayerPrediction {
                layer: l,
                tokens_ahead: ahead,
                candidates: c,
            });
        }
    }
}

fn top(scores: impl Iterator<Item = f64>, max: usize) -> Vec<Candidate> {
    let mut v: Vec<(usize, f64)> = scores.enumerate().filter(|(_, s)| *s > 0.0).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let best = v.first().map_or(1.0, |x| x.1);
    v.into_iter()
        .take(max)
        .map(|(e, s)| Candidate {
            expert: e as u32,
            confidence: (s / best).clamp(0.0, 1.0) as f32,
        })
        .collect()
}

/// Builds a predictor for `trace`.
pub fn make(kind: PredictorKind, trace: &Arc<Trace>) -> Result<Box<dyn Predictor>> {
    let h = trace.header;
    let (l, e) = (h.layers as usize, h.experts as usize);
    Ok(match kind {
        PredictorKind::None => Box::new(NoPredictor),
        PredictorKind::Temporal => Box::new(Temporal {
            last: vec![Vec::new(); l],
        }),
        PredictorKind::Frequency => Box::new(Frequency {
            counts: vec![vec![0; e]; l],
        }),
        PredictorKind::Transition => {
            if e * e * l > 1 << 28 {
                return Err(SimError::Setup(format!(
                    "transition table of {l} x {e}^2 is too large"
                )));
            }
            Box::new(Transition {
                experts: e,
                table: vec![vec![0; e * e]; l],
                current: Vec::new(),
                current_layer: u32::MAX,
            })
        }
        PredictorKind::Scores => Box::new(Scores {
            layers: h.layers,
            scores: None,
        }),
        PredictorKind::Oracle => Box::new(Oracle {
            trace: trace.clone(),
            token: 0,
        }),
    })
}

/// Pre-gate scores for layer `layer + 1` of `token`: recorded ones if the trace has them,
/// else synthesized so that the top-k recovers each true expert with probability `recall`
/// (a missed one is replaced by a random decoy).
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
    let e = trace.header.experts;
    out.resize(e as usize, 0.0);
    for x in out.iter_mut() {
        *x = (rng.f64() * 0.5) as f32;
    }
    for &t in trace.experts_at(token, layer + 1) {
        let target = if rng.f64() < recall {
            t
        } else {
            rng.below(e as u64) as u32
        };
        out[target as usize] = 1.0 + rng.f64() as f32;
    }
}
