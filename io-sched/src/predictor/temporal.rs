//! [`Temporal`]: a layer will reuse the experts it used for the previous token.

use super::{Candidate, LayerPrediction, OutFiller, Predictor, targets};

/// Weight, in pseudo-observations, of the prior on the reuse rate (whose mean is `k / experts`).
const PRIOR_WEIGHT: f64 = 4.0;

/// Predicts that each layer routes the next token to the experts it used for the last one.
///
/// The confidence of every candidate of a layer is that layer's measured reuse rate: the share
/// of the previous token's experts that the next token used again, learned online (starting
/// from the random-routing rate `k / experts`). Experts ≥ `experts` and layers ≥ `layers` are
/// ignored; duplicate experts in one observation count once.
#[derive(Debug, Clone)]
pub struct Temporal {
    layers: u32,
    experts: u32,
    prev: Vec<Vec<u32>>,
    hits: Vec<u64>,
    trials: Vec<u64>,
}

impl Temporal {
    /// A predictor for a `layers × experts` model.
    pub fn new(layers: u32, experts: u32) -> Self {
        Self {
            layers,
            experts,
            prev: vec![Vec::new(); layers as usize],
            hits: vec![0; layers as usize],
            trials: vec![0; layers as usize],
        }
    }

    /// The learned reuse rate of `layer` (the confidence its candidates get), or `None` before
    /// the layer has been observed or when it is out of range.
    pub fn reuse_rate(&self, layer: u32) -> Option<f32> {
        let l = layer as usize;
        let k = self.prev.get(l)?.len();
        if k == 0 {
            return None;
        }
        let prior = k as f64 / self.experts.max(1) as f64;
        let rate =
            (self.hits[l] as f64 + PRIOR_WEIGHT * prior) / (self.trials[l] as f64 + PRIOR_WEIGHT);
        Some(rate.clamp(0.0, 1.0) as f32)
    }
}

impl Predictor for Temporal {
    fn name(&self) -> &'static str {
        "temporal"
    }

    fn observe(&mut self, layer: u32, experts: &[u32]) {
        if layer >= self.layers {
            return;
        }
        let l = layer as usize;
        let mut cur = std::mem::take(&mut self.prev[l]);
        let prev_len = cur.len();
        // Count reuse against the old set, then overwrite it in place (no allocation).
        let hits = experts
            .iter()
            .enumerate()
            .filter(|&(i, e)| !experts[..i].contains(e) && cur.contains(e))
            .count();
        if prev_len > 0 {
            self.hits[l] += hits as u64;
            self.trials[l] += prev_len as u64;
        }
        cur.clear();
        for &e in experts {
            if e < self.experts && !cur.contains(&e) {
                cur.push(e);
            }
        }
        self.prev[l] = cur;
    }

    fn predict(&mut self, layer: u32, horizon: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let mut fill = OutFiller::new(out);
        for (t, ahead) in targets(layer, horizon, self.layers) {
            let Some(conf) = self.reuse_rate(t) else {
                continue;
            };
            let dst = fill.next(t, ahead);
            dst.extend(
                self.prev[t as usize]
                    .iter()
                    .take(max)
                    .map(|&expert| Candidate {
                        expert,
                        confidence: conf,
                    }),
            );
            fill.commit();
        }
    }
}
