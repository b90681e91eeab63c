//! [`Scores`]: the engine's own scores for a layer, passed through (pre-gating).

use super::{LayerPrediction, OutFiller, Predictor, push_top, targets};

/// Passes through the most recent scores the engine gave for each layer — typically pre-gate
/// router probabilities: the next layer's router applied to the current hidden state.
///
/// Scores count for a layer until that layer's real routing is observed (then they are stale
/// and that layer gets no candidates until new scores arrive). Candidates are the top experts
/// by score, with confidence = score when every finite score lies in `[0, 1]` (probabilities
/// already, softmax or sigmoid), else the softmax of the scores (logits). Non-finite scores
/// and missing entries (a slice shorter than `experts`) are "no score"; extra entries and
/// layers ≥ `layers` are ignored.
#[derive(Debug, Clone)]
pub struct Scores {
    layers: u32,
    experts: u32,
    probs: Vec<f32>,
    fresh: Vec<bool>,
    idx: Vec<u32>,
}

impl Scores {
    /// A passthrough for a `layers × experts` model.
    pub fn new(layers: u32, experts: u32) -> Self {
        Self {
            layers,
            experts,
            probs: vec![0.0; layers as usize * experts as usize],
            fresh: vec![false; layers as usize],
            idx: Vec::with_capacity(experts as usize),
        }
    }
}

/// Writes `scores` into `row` as probabilities: as given when every finite score lies in
/// `[0, 1]`, else their softmax; non-finite and missing entries become NaN (or 0 after a
/// softmax), extra entries are ignored.
pub(crate) fn normalise_into(scores: &[f32], row: &mut [f32]) {
    let n = scores.len().min(row.len());
    row.fill(f32::NAN);
    row[..n].copy_from_slice(&scores[..n]);
    let finite = || row.iter().copied().filter(|s| s.is_finite());
    let are_probs = finite().all(|s| (0.0..=1.0).contains(&s));
    if !are_probs {
        let max = finite().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in row.iter_mut() {
            *s = if s.is_finite() { (*s - max).exp() } else { 0.0 };
            sum += *s;
        }
        if sum > 0.0 {
            row.iter_mut().for_each(|s| *s /= sum);
        }
    }
}

impl Predictor for Scores {
    fn name(&self) -> &'static str {
        "scores"
    }

    fn observe(&mut self, layer: u32, _experts: &[u32]) {
        if let Some(f) = self.fresh.get_mut(layer as usize) {
            *f = false;
        }
    }

    fn observe_scores(&mut self, layer: u32, scores: &[f32]) {
        if layer >= self.layers {
            return;
        }
        let e = self.experts as usize;
        let row = &mut self.probs[layer as usize * e..(layer as usize + 1) * e];
        normalise_into(scores, row);
        self.fresh[layer as usize] = true;
    }

    fn predict(&mut self, layer: u32, horizon: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let mut fill = OutFiller::new(out);
        let e = self.experts as usize;
        for (t, ahead) in targets(layer, horizon, self.layers) {
            if !self.fresh[t as usize] {
                continue;
            }
            let dst = fill.next(t, ahead);
            let row = &self.probs[t as usize * e..(t as usize + 1) * e];
            push_top(row, max, &mut self.idx, dst, |s| s);
            fill.commit();
        }
    }
}
