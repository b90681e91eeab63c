//! [`Transition`]: a cross-layer table P(expert j at layer L+1 | expert i at layer L).

use super::{Candidate, LayerPrediction, OutFiller, Predictor, push_top, targets};

/// Weight, in pseudo-observations, of the prior P(j | i) = k / experts.
const PRIOR_WEIGHT: f32 = 1.0;
/// Most experts carried from one chained layer to the next (as a multiple of k).
const CHAIN_WIDTH_K: usize = 2;

/// Learns, online, how routing at one layer predicts routing at the next.
///
/// For every pair of consecutive observations (layer L, then L+1 of the same token, or the last
/// layer then layer 0 of the next token) it counts `c[L][i][j]`: expert `i` routed at L and `j`
/// at L+1, and `n[L][i]`: how often `i` had a successor observed. Then
/// `P(j | i) = (c + w·k/E) / (n + w)` (a prior of weight `w = 1` towards random routing).
///
/// `predict(layer, …)` starts from the experts observed at `layer` for the current token and
/// mixes their rows with equal weights: `P(j) = mean_i P(j | i)`, the confidence of `j`. Further
/// layers chain: the `2k` most likely experts of one predicted layer, weighted by their
/// probability, mix their rows for the next. Confidences are therefore conservative (a certain
/// `i → j` seen among k experts gives `j` about `1/k` plus the co-occurrence noise).
///
/// Memory: `layers × experts² × 4` bytes (60 × 512² ≈ 63 MB). `predict` costs about
/// `k × experts` per predicted layer. Out-of-range layers and experts are ignored.
#[derive(Debug, Clone)]
pub struct Transition {
    layers: u32,
    experts: u32,
    counts: Vec<f32>,
    rows: Vec<f32>,
    current: Vec<Vec<u32>>,
    last_layer: Option<u32>,
    k: usize,
    weights: Vec<(u32, f32)>,
    next: Vec<f32>,
    idx: Vec<u32>,
    top: Vec<Candidate>,
}

impl Transition {
    /// An empty table for a `layers × experts` model.
    pub fn new(layers: u32, experts: u32) -> Self {
        let e = experts as usize;
        Self {
            layers,
            experts,
            counts: vec![0.0; layers as usize * e * e],
            rows: vec![0.0; layers as usize * e],
            current: vec![Vec::new(); layers as usize],
            last_layer: None,
            k: 0,
            weights: Vec::new(),
            next: vec![0.0; e],
            idx: Vec::with_capacity(e),
            top: Vec::new(),
        }
    }

    /// The learned P(expert `j` at `(layer + 1) % layers` | expert `i` at `layer`), or `None`
    /// out of range.
    pub fn probability(&self, layer: u32, i: u32, j: u32) -> Option<f32> {
        if layer >= self.layers || i >= self.experts || j >= self.experts {
            return None;
        }
        let e = self.experts as usize;
        let r = layer as usize * e + i as usize;
        let prior = self.k as f32 / self.experts as f32;
        Some(
            (self.counts[r * e + j as usize] + PRIOR_WEIGHT * prior)
                / (self.rows[r] + PRIOR_WEIGHT),
        )
    }

    /// `next[j] = Σ (i, w) in weights: w · P(j | i at src)`.
    fn mix(&mut self, src: u32) {
        let e = self.experts as usize;
        let prior = self.k as f32 / self.experts as f32;
        self.next.fill(0.0);
        for &(i, w) in &self.weights {
            let r = src as usize * e + i as usize;
            let scale = w / (self.rows[r] + PRIOR_WEIGHT);
            let row = &self.counts[r * e..(r + 1) * e];
            for (n, c) in self.next.iter_mut().zip(row) {
                *n += scale * (c + PRIOR_WEIGHT * prior);
            }
        }
    }
}

impl Predictor for Transition {
    fn name(&self) -> &'static str {
        "transition"
    }

    fn observe(&mut self, layer: u32, experts: &[u32]) {
        if layer >= self.layers {
            return;
        }
        let e = self.experts as usize;
        let mut cur = std::mem::take(&mut self.current[layer as usize]);
        cur.clear();
        for &x in experts {
            if x < self.experts && !cur.contains(&x) {
                cur.push(x);
            }
        }
        if let Some(prev) = self.last_layer
            && (prev + 1) % self.layers == layer
        {
            for &i in &self.current[prev as usize] {
                let r = prev as usize * e + i as usize;
                self.rows[r] += 1.0;
                for &j in &cur {
                    self.counts[r * e + j as usize] += 1.0;
                }
            }
        }
        if !cur.is_empty() {
            self.k = cur.len();
        }
        self.current[layer as usize] = cur;
        self.last_layer = Some(layer);
    }

    fn predict(&mut self, layer: u32, horizon: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let mut fill = OutFiller::new(out);
        let Some(start) = self.current.get(layer as usize).filter(|c| !c.is_empty()) else {
            return;
        };
        let w = 1.0 / start.len() as f32;
        self.weights.clear();
        self.weights.extend(start.iter().map(|&i| (i, w)));
        let width = (CHAIN_WIDTH_K * self.k).max(max).max(1);
        let mut src = layer;
        let mut idx = std::mem::take(&mut self.idx);
        for (t, ahead) in targets(layer, horizon, self.layers) {
            self.mix(src);
            let dst = fill.next(t, ahead);
            push_top(&self.next, max, &mut idx, dst, |p| p);
            fill.commit();
            // Carry the most likely experts of `t` on to the next step, as a mixture.
            let mut top = std::mem::take(&mut self.top);
            top.clear();
            push_top(&self.next, width, &mut idx, &mut top, |p| p);
            let total: f32 = top.iter().map(|c| c.confidence).sum();
            self.weights.clear();
            if total > 0.0 {
                self.weights
                    .extend(top.iter().map(|c| (c.expert, c.confidence / total)));
            }
            self.top = top;
            src = t;
        }
        self.idx = idx;
    }
}
