//! [`Transition`]: a cross-layer table P(expert j at layer L+1 | expert i at layer L).

use super::{Candidate, LayerPrediction, OutFiller, Predictor, push_top, targets};

/// Weight, in pseudo-observations, of the prior P(j | i) = k / experts.
const PRIOR_WEIGHT: f32 = 1.0;

/// How the rows of the current layer's k experts are combined into one prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Combine {
    /// `P(j) = Σ_i (p_i / Σp) · P(j | i)`: a mixture. Ranks best on real routing (fixture
    /// tiny-qwen3-moe, one layer ahead: recall 0.373 vs 0.316 for `Max`) but its confidence is
    /// conservative (0.23 there; a certain `i → j` among k experts gives about `1/k`).
    #[default]
    Mean,
    /// `P(j) = max_i p_i · P(j | i)`: the strongest single path. A certain `i → j` gives `j`
    /// confidence near 1 however many other experts are active, so it learns deterministic
    /// structure from fewer tokens; on real routing it ranks worse and is over-confident one
    /// layer ahead (0.38 for a 0.32 recall).
    Max,
}

/// Learns, online, how routing at one layer predicts routing at the next.
///
/// For every pair of consecutive observations (layer L, then L+1 of the same token, or the last
/// layer then layer 0 of the next token) it counts `c[L][i][j]`: expert `i` routed at L and `j`
/// at L+1, and `n[L][i]`: how often `i` had a successor observed. Then
/// `P(j | i) = (c + w·k/E) / (n + w)` (a prior of weight `w = 1` towards random routing).
///
/// `predict(layer, …)` starts from the experts observed at `layer` for the current token
/// (`p_i = 1`) and combines their rows ([`Combine`], default `Mean`) into the confidence of each
/// expert of the next layer. Further layers chain: the k most likely experts of one predicted
/// layer, with their confidences as `p_i`, are combined the same way for the next.
///
/// Memory: `layers × experts² × 4` bytes (60 × 512² ≈ 63 MB). `predict` costs about
/// `k × experts` per predicted layer and does not allocate once warm. Out-of-range layers and
/// experts are ignored; duplicates in one observation count once.
#[derive(Debug, Clone)]
pub struct Transition {
    layers: u32,
    experts: u32,
    combine: Combine,
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
    /// An empty table for a `layers × experts` model, combining with [`Combine::Mean`].
    pub fn new(layers: u32, experts: u32) -> Self {
        Self::with_combine(layers, experts, Combine::default())
    }

    /// An empty table combining rows with `combine`.
    pub fn with_combine(layers: u32, experts: u32, combine: Combine) -> Self {
        let e = experts as usize;
        Self {
            layers,
            experts,
            combine,
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

    /// Combines the rows of `self.weights` (expert, p) at `src` into `self.next`.
    fn combine_rows(&mut self, src: u32) {
        let e = self.experts as usize;
        let prior = PRIOR_WEIGHT * self.k as f32 / self.experts as f32;
        self.next.fill(0.0);
        let total: f32 = self.weights.iter().map(|w| w.1).sum();
        for &(i, p) in &self.weights {
            let r = src as usize * e + i as usize;
            let row = &self.counts[r * e..(r + 1) * e];
            match self.combine {
                Combine::Max => {
                    let scale = p / (self.rows[r] + PRIOR_WEIGHT);
                    for (n, c) in self.next.iter_mut().zip(row) {
                        *n = n.max(scale * (c + prior));
                    }
                }
                Combine::Mean => {
                    let scale = p / total / (self.rows[r] + PRIOR_WEIGHT);
                    for (n, c) in self.next.iter_mut().zip(row) {
                        *n += scale * (c + prior);
                    }
                }
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
        self.weights.clear();
        self.weights.extend(start.iter().map(|&i| (i, 1.0)));
        let width = self.k.max(1);
        let mut src = layer;
        let mut idx = std::mem::take(&mut self.idx);
        let mut top = std::mem::take(&mut self.top);
        for (t, ahead) in targets(layer, horizon, self.layers) {
            if self.weights.is_empty() {
                break;
            }
            self.combine_rows(src);
            let dst = fill.next(t, ahead);
            push_top(&self.next, max, &mut idx, dst, |p| p);
            fill.commit();
            // Carry the most likely experts of `t` on to the next step.
            top.clear();
            push_top(&self.next, width, &mut idx, &mut top, |p| p);
            self.weights.clear();
            self.weights
                .extend(top.iter().map(|c| (c.expert, c.confidence)));
            src = t;
        }
        self.idx = idx;
        self.top = top;
    }
}
