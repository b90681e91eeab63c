//! [`Frequency`]: each layer's most used experts, with exponential decay.

use super::{LayerPrediction, OutFiller, Predictor, push_top, targets};

/// Default half-life of a routing's weight, in tokens.
pub const DEFAULT_HALF_LIFE: f32 = 128.0;

/// Predicts each layer's most popular experts over the recent past.
///
/// Per layer it keeps a count per expert and a token count, both multiplied by a decay factor
/// (half-life in tokens) at every observation. The confidence of an expert is its decayed count
/// over the decayed token count: the share of recent tokens that routed to it. Out-of-range
/// layers and experts are ignored; duplicates in one observation count once.
#[derive(Debug, Clone)]
pub struct Frequency {
    layers: u32,
    experts: u32,
    decay: f32,
    counts: Vec<f32>,
    tokens: Vec<f32>,
    idx: Vec<u32>,
}

impl Frequency {
    /// A predictor with the [`DEFAULT_HALF_LIFE`].
    pub fn new(layers: u32, experts: u32) -> Self {
        Self::with_half_life(layers, experts, DEFAULT_HALF_LIFE)
    }

    /// A predictor whose counts halve every `half_life` tokens (non-finite or < 1 is taken as 1;
    /// `f32::INFINITY` is allowed and means no decay).
    pub fn with_half_life(layers: u32, experts: u32, half_life: f32) -> Self {
        let decay = if half_life == f32::INFINITY {
            1.0
        } else if half_life.is_finite() && half_life >= 1.0 {
            0.5f32.powf(1.0 / half_life)
        } else {
            0.5
        };
        Self {
            layers,
            experts,
            decay,
            counts: vec![0.0; layers as usize * experts as usize],
            tokens: vec![0.0; layers as usize],
            idx: Vec::with_capacity(experts as usize),
        }
    }

    fn row(&self, layer: u32) -> &[f32] {
        let e = self.experts as usize;
        &self.counts[layer as usize * e..(layer as usize + 1) * e]
    }
}

impl Predictor for Frequency {
    fn name(&self) -> &'static str {
        "frequency"
    }

    fn observe(&mut self, layer: u32, experts: &[u32]) {
        if layer >= self.layers {
            return;
        }
        let e = self.experts as usize;
        let row = &mut self.counts[layer as usize * e..(layer as usize + 1) * e];
        for c in row.iter_mut() {
            *c *= self.decay;
            if *c < 1e-12 {
                *c = 0.0; // keep long-unused experts out of denormals
            }
        }
        for (i, &x) in experts.iter().enumerate() {
            if x < self.experts && !experts[..i].contains(&x) {
                row[x as usize] += 1.0;
            }
        }
        let t = &mut self.tokens[layer as usize];
        *t = *t * self.decay + 1.0;
    }

    fn predict(&mut self, layer: u32, horizon: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let mut fill = OutFiller::new(out);
        let mut idx = std::mem::take(&mut self.idx);
        for (t, ahead) in targets(layer, horizon, self.layers) {
            let tokens = self.tokens[t as usize];
            if tokens <= 0.0 {
                continue;
            }
            let dst = fill.next(t, ahead);
            push_top(self.row(t), max, &mut idx, dst, |c| c / tokens);
            fill.commit();
        }
        self.idx = idx;
    }
}
