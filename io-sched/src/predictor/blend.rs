//! [`Blend`]: pre-gate scores and routing history blended into one calibrated probability per
//! expert, by a small online logistic model per (target layer, distance).
//!
//! Features of expert `j` at target layer `t`, predicted `d` layers ahead of the layer `L` just
//! routed ([`FEATURES`] in all):
//!
//! | # | feature | known from |
//! |---|---|---|
//! | 0 | 1 (bias) | |
//! | 1 | logit of the pre-gate probability of `j` (0 without fresh scores) | `observe_scores(t)` |
//! | 2 | 1 when `t` has no fresh scores | |
//! | 3 | 1 when the score ranks `j` in its top k | |
//! | 4 | 1 when `t` routed `j` for the previous token | same layer, previous token |
//! | 5 | logit of `j`'s decayed routing share at `t` (half-life 16 tokens) | same layer, past tokens |
//! | 6 | logit of P(`j` at `t` \| the experts routed at `L`), a transition table per distance | cross-layer |
//! | 7 | logit of the earlier pre-gate probability of `j` (`t`'s scores from two layers back, superseded by fresher ones; 0 without) | `observe_scores(t)` before |
//! | 8 | 1 when the score ranks `j` in its top 2k | |
//! | 9 | `j`'s routing count at `t` decayed with a half-life of 2 tokens (the last few tokens) | same layer, past tokens |
//!
//! `P(j) = σ(w · x)` with `w = global[d] + local[t][d]`; both are trained online by AdaGrad on
//! the log-loss when `t`'s real routing arrives (every expert of `t` is one sample: routed or
//! not), the local part shrunk towards 0 so a layer departs from the shared weights only where
//! its own data says so. Distances 1 and 2 ([`NEAR`]) have models of their own (pre-gate scores
//! and transitions exist there); farther targets use a history-only model (features 4 and 5),
//! trained at every observation on the history as it stood, which is also what
//! [`Predictor::next_use`] gives for layers outside the horizon (the eviction policy
//! [`crate::cache::NextUse`] reads it).
//!
//! The weights start as "the pre-gate score, scaled to k routed experts": with scores it
//! behaves like [`super::Scores`] from the first token, without them like k/E, and learns the
//! rest. Cost per predicted layer: `experts × FEATURES` multiply-adds to predict, the same to
//! train, plus `k × experts` for the transition feature; no allocation once warm. Memory:
//! `NEAR × layers × experts²` f32 for the transition tables (off above [`MAX_TABLE`] entries:
//! feature 6 is then 0), `NEAR × layers × experts × FEATURES` f32 of pending features.

use super::{LayerPrediction, OutFiller, Predictor, targets};

/// Features per (expert, target): see the [module docs](self).
pub const FEATURES: usize = 10;
/// Distances (1..=NEAR layers ahead) with a model of their own.
pub const NEAR: usize = 2;
/// Transition-table entries at most (`NEAR × layers × experts²`); above it feature 6 is off.
pub const MAX_TABLE: usize = 1 << 25;
/// Index of the history-only model.
const HISTORY: usize = NEAR;
const MODELS: usize = NEAR + 1;
/// Half-life of the routing share (feature 5), tokens.
const FREQ_HALF_LIFE: f32 = 16.0;
/// Half-life of the recent routing count (feature 9), tokens.
const RECENT_HALF_LIFE: f32 = 2.0;
/// AdaGrad step of the shared and the per-layer weights.
const LR_GLOBAL: f32 = 0.3;
const LR_LOCAL: f32 = 0.15;
/// Per-update shrink of the per-layer weights towards the shared ones.
const LOCAL_SHRINK: f32 = 0.995;
/// Pseudo-observations of the transition prior P(j | i) = k / E.
const TRANSITION_PRIOR: f32 = 1.0;

fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-3, 1.0 - 1e-3);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// One logistic model's weights with their AdaGrad accumulators.
#[derive(Debug, Clone, Copy)]
struct Weights {
    w: [f32; FEATURES],
    g2: [f32; FEATURES],
}

impl Weights {
    fn zero() -> Self {
        Self {
            w: [0.0; FEATURES],
            g2: [1.0; FEATURES],
        }
    }

    /// AdaGrad ascent on the log-likelihood with batch gradient `grad`.
    fn step(&mut self, grad: &[f32; FEATURES], lr: f32) {
        for ((w, g2), g) in self.w.iter_mut().zip(&mut self.g2).zip(grad) {
            *g2 += g * g;
            *w += lr * g / g2.sqrt();
        }
    }
}

/// What was predicted for one future (token, layer) at one distance: features and the
/// probability given, per expert.
#[derive(Debug, Clone, Default)]
struct Pending {
    token: u64,
    valid: bool,
    x: Vec<[f32; FEATURES]>,
    p: Vec<f32>,
}

/// Pre-gate scores and routing history blended by an online logistic model (see the
/// [module docs](self)).
///
/// ```
/// use io_sched::predictor::{Blend, Predictor};
/// let mut p = Blend::new(2, 8);
/// let mut out = Vec::new();
/// for _ in 0..50 {
///     // Layer 0 routes {1, 2}, and then layer 1 always routes {5, 6}.
///     p.observe(0, &[1, 2]);
///     p.predict(0, 1, 2, &mut out);
///     p.observe(1, &[5, 6]);
/// }
/// let best: Vec<u32> = out[0].candidates.iter().map(|c| c.expert).collect();
/// assert!(best.contains(&5) && best.contains(&6));
/// assert!(out[0].candidates[1].confidence > 0.8, "learned and calibrated");
/// ```
#[derive(Debug, Clone)]
pub struct Blend {
    layers: u32,
    experts: u32,
    /// Experts routed per layer (the longest observation seen; 1 before any).
    k: usize,
    token: u64,
    last_layer: Option<u32>,
    /// Observations so far; `seen[l]` = the number of `l`'s latest one (0: never).
    seq: u64,
    seen: Vec<u64>,
    /// `[layer][expert]` pre-gate probabilities, fresh until the layer is observed, and their
    /// logits.
    score: Vec<f32>,
    score_logit: Vec<f32>,
    fresh: Vec<bool>,
    /// `[layer][expert]` the score logits a fresher set superseded (fresh with `fresh`).
    older: Vec<f32>,
    has_older: Vec<bool>,
    /// `[layer][expert]` 1.0 when routed at the layer's latest observation.
    prev: Vec<f32>,
    /// `[layer]` experts of the latest observation.
    current: Vec<Vec<u32>>,
    /// `[layer][expert]` decayed routing counts and `[layer]` decayed token counts.
    freq: Vec<f32>,
    freq_tokens: Vec<f32>,
    freq_decay: f32,
    /// `[layer][expert]` logit of the routing share (feature 5), updated at each observation.
    freq_logit: Vec<f32>,
    /// `[layer][expert]` the history-only model's probabilities, valid until the layer's next
    /// observation ([`Predictor::next_use`] outside the horizon).
    hist_p: Vec<f32>,
    hist_valid: Vec<bool>,
    /// `[expert]` scratch: 0 = in the score's top k, 1 = top 2k, 2 = other.
    rank_of: Vec<u8>,
    /// `[layer][expert]` routing counts decayed fast (feature 9).
    recent: Vec<f32>,
    recent_decay: f32,
    /// `[d-1][layer][i][j]` counts of `i` at `layer` then `j` at `layer + d`, and
    /// `[d-1][layer][i]` how often `i` had such a successor; empty when off.
    trans: Vec<f32>,
    trans_rows: Vec<f32>,
    global: [Weights; MODELS],
    /// `[layer][model]`
    local: Vec<[Weights; MODELS]>,
    /// `[layer][model]`
    pending: Vec<[Pending; NEAR]>,
    // Scratch.
    x: Vec<[f32; FEATURES]>,
    p: Vec<f32>,
    rank: Vec<u32>,
    row: Vec<f32>,
}

impl Blend {
    /// A predictor for a `layers × experts` model.
    pub fn new(layers: u32, experts: u32) -> Self {
        let (l, e) = (layers as usize, experts as usize);
        let table = NEAR * l * e * e;
        let (trans, trans_rows) = if table <= MAX_TABLE {
            (vec![0.0; table], vec![0.0; NEAR * l * e])
        } else {
            (Vec::new(), Vec::new())
        };
        let mut s = Self {
            layers,
            experts,
            k: 1,
            token: 0,
            last_layer: None,
            seq: 0,
            seen: vec![0; l],
            score: vec![0.0; l * e],
            score_logit: vec![0.0; l * e],
            fresh: vec![false; l],
            older: vec![0.0; l * e],
            has_older: vec![false; l],
            prev: vec![0.0; l * e],
            current: vec![Vec::new(); l],
            freq: vec![0.0; l * e],
            freq_tokens: vec![0.0; l],
            freq_decay: 0.5f32.powf(1.0 / FREQ_HALF_LIFE),
            freq_logit: vec![0.0; l * e],
            hist_p: vec![0.0; l * e],
            hist_valid: vec![false; l],
            rank_of: vec![2; e],
            recent: vec![0.0; l * e],
            recent_decay: 0.5f32.powf(1.0 / RECENT_HALF_LIFE),
            trans,
            trans_rows,
            global: [Weights::zero(); MODELS],
            local: vec![[Weights::zero(); MODELS]; l],
            pending: vec![std::array::from_fn(|_| Pending::default()); l],
            x: vec![[0.0; FEATURES]; e],
            p: vec![0.0; e],
            rank: Vec::with_capacity(e),
            row: vec![0.0; e],
        };
        s.reset_prior();
        s
    }

    /// The starting weights: P(j) = k × the pre-gate probability, or k / E without scores.
    fn reset_prior(&mut self) {
        let k = self.k.max(1) as f32;
        let base = logit(k / self.experts.max(1) as f32);
        for g in &mut self.global {
            g.w = [0.0; FEATURES];
            g.w[0] = k.ln();
            g.w[1] = 1.0;
            g.w[2] = base - k.ln();
        }
    }

    /// The weights of the model for target `layer` at `model` (0..NEAR: distance - 1).
    fn weights(&self, layer: usize, model: usize) -> [f32; FEATURES] {
        let (g, l) = (&self.global[model].w, &self.local[layer][model].w);
        std::array::from_fn(|f| g[f] + l[f])
    }

    /// Fills `self.x` with the features of every expert of target `t`, predicted `d` layers
    /// after `src` (`d > NEAR`: history only).
    fn features(&mut self, t: u32, src: u32, d: usize) {
        let (e, tl) = (self.experts as usize, t as usize);
        let near = d <= NEAR;
        let fresh = near && self.fresh[tl];
        let scores = &self.score[tl * e..(tl + 1) * e];
        let logits = &self.score_logit[tl * e..(tl + 1) * e];
        let older = (fresh && self.has_older[tl]).then(|| &self.older[tl * e..(tl + 1) * e]);
        // Rank: the score's top 2k, best first (ties broken by index).
        self.rank.clear();
        let k = self.k.min(e);
        if fresh {
            self.rank.extend(0..e as u32);
            let by = |a: &u32, b: &u32| {
                scores[*b as usize]
                    .total_cmp(&scores[*a as usize])
                    .then(a.cmp(b))
            };
            let k2 = (2 * k).min(e);
            if k2 > 0 && k2 < e {
                self.rank.select_nth_unstable_by(k2 - 1, by);
            }
            self.rank.truncate(k2);
            self.rank.sort_unstable_by(by);
            for (i, &r) in self.rank.iter().enumerate() {
                self.rank_of[r as usize] = if i < k { 0 } else { 1 };
            }
        }
        // Transition feature from `src`'s latest routing, when it is this token's.
        let trans_on = near && !self.trans.is_empty() && self.seen[src as usize] == self.seq;
        if trans_on {
            self.row.fill(0.0);
            let prior = TRANSITION_PRIOR * self.k as f32 / e as f32;
            let srcs = &self.current[src as usize];
            let base = ((d - 1) * self.layers as usize + src as usize) * e;
            let n = srcs.len().max(1) as f32;
            for &i in srcs {
                let r = base + i as usize;
                let scale = 1.0 / (n * (self.trans_rows[r] + TRANSITION_PRIOR));
                let counts = &self.trans[r * e..(r + 1) * e];
                for (o, c) in self.row.iter_mut().zip(counts) {
                    *o += scale * (c + prior);
                }
            }
        }
        let freq = &self.freq_logit[tl * e..(tl + 1) * e];
        for j in 0..e {
            let x = &mut self.x[j];
            x[0] = 1.0;
            x[1] = if fresh { logits[j] } else { 0.0 };
            x[2] = if fresh { 0.0 } else { 1.0 };
            let rank = self.rank_of[j];
            x[3] = if rank == 0 { 1.0 } else { 0.0 };
            x[8] = if rank <= 1 { 1.0 } else { 0.0 };
            x[7] = older.map_or(0.0, |o| o[j]);
            x[4] = self.prev[tl * e + j];
            x[9] = self.recent[tl * e + j];
            x[5] = freq[j];
            x[6] = if trans_on { logit(self.row[j]) } else { 0.0 };
        }
        for &r in &self.rank {
            self.rank_of[r as usize] = 2;
        }
    }

    /// `self.p` from `self.x` with the model for (`t`, `model`).
    fn probabilities(&mut self, t: usize, model: usize) {
        let w = self.weights(t, model);
        for (p, x) in self.p.iter_mut().zip(&self.x) {
            let z: f32 = w.iter().zip(x).map(|(w, x)| w * x).sum();
            *p = sigmoid(z);
        }
    }

    /// One AdaGrad step of (`t`, `model`) on features `x` against the routed `experts`.
    fn train(&mut self, t: usize, model: usize, x: &[[f32; FEATURES]], experts: &[u32]) {
        let w = self.weights(t, model);
        let mut grad = [0.0f32; FEATURES];
        for (j, xj) in x.iter().enumerate() {
            let z: f32 = w.iter().zip(xj).map(|(w, x)| w * x).sum();
            let y = if experts.contains(&(j as u32)) {
                1.0
            } else {
                0.0
            };
            let err = y - sigmoid(z);
            for (g, x) in grad.iter_mut().zip(xj) {
                *g += err * x;
            }
        }
        // Normalise by the positives so that the step does not grow with the expert count.
        let n = self.k.max(1) as f32;
        grad.iter_mut().for_each(|g| *g /= n);
        self.global[model].step(&grad, LR_GLOBAL);
        let local = &mut self.local[t][model];
        local.w.iter_mut().for_each(|w| *w *= LOCAL_SHRINK);
        local.step(&grad, LR_LOCAL);
    }

    /// The current weights of the model for
    /// target `layer` at `distance` (1..=NEAR; others: the history-only model), or `None` out
    /// of range.
    pub fn model_weights(&self, layer: u32, distance: u32) -> Option<[f32; FEATURES]> {
        if layer >= self.layers || distance == 0 {
            return None;
        }
        let m = (distance as usize).min(MODELS) - 1;
        Some(self.weights(layer as usize, m))
    }
}

impl Predictor for Blend {
    fn name(&self) -> &'static str {
        "blend"
    }

    fn observe(&mut self, layer: u32, experts: &[u32]) {
        if layer >= self.layers {
            return;
        }
        let (e, l) = (self.experts as usize, layer as usize);
        if self.last_layer.is_some_and(|p| layer <= p) {
            self.token += 1;
        }
        self.last_layer = Some(layer);
        let mut cur = std::mem::take(&mut self.current[l]);
        cur.clear();
        for &x in experts {
            if x < self.experts && !cur.contains(&x) {
                cur.push(x);
            }
        }
        if cur.len() > self.k {
            let first = self.seq == 0;
            self.k = cur.len();
            if first {
                self.reset_prior();
            }
        }
        self.seq += 1;
        // Train the near models on what they predicted for this (token, layer).
        for m in 0..NEAR {
            let p = &mut self.pending[l][m];
            if !(p.valid && p.token == self.token) {
                p.valid = false;
                continue;
            }
            p.valid = false;
            let x = std::mem::take(&mut p.x);
            self.train(l, m, &x, &cur);
            self.pending[l][m].x = x;
        }
        // The history-only model, on the history as it stood.
        if self.seen[l] > 0 {
            self.features(layer, layer, usize::MAX);
            let x = std::mem::take(&mut self.x);
            self.train(l, HISTORY, &x, &cur);
            self.x = x;
        }
        // Transitions into this layer from the layers routed 1..=NEAR observations ago.
        if !self.trans.is_empty() {
            for d in 1..=NEAR.min(self.layers as usize) {
                let src = (l + self.layers as usize - d) % self.layers as usize;
                // (`src == l`: a model of at most NEAR layers; its previous routing is gone.)
                if src == l || self.seen[src] == 0 || self.seen[src] + d as u64 != self.seq {
                    continue;
                }
                let base = ((d - 1) * self.layers as usize + src) * e;
                for &i in &self.current[src] {
                    let r = base + i as usize;
                    self.trans_rows[r] += 1.0;
                    for &j in &cur {
                        self.trans[r * e + j as usize] += 1.0;
                    }
                }
            }
        }
        // History.
        let prev = &mut self.prev[l * e..(l + 1) * e];
        prev.fill(0.0);
        let freq = &mut self.freq[l * e..(l + 1) * e];
        for c in freq.iter_mut() {
            *c *= self.freq_decay;
        }
        let recent = &mut self.recent[l * e..(l + 1) * e];
        for c in recent.iter_mut() {
            *c *= self.recent_decay;
        }
        for &j in &cur {
            prev[j as usize] = 1.0;
            freq[j as usize] += 1.0;
            recent[j as usize] += 1.0;
        }
        self.freq_tokens[l] = self.freq_tokens[l] * self.freq_decay + 1.0;
        let tokens = self.freq_tokens[l];
        for (f, c) in self.freq_logit[l * e..(l + 1) * e]
            .iter_mut()
            .zip(freq.iter())
        {
            *f = logit(*c / tokens);
        }
        self.hist_valid[l] = false;
        self.fresh[l] = false;
        self.has_older[l] = false;
        self.seen[l] = self.seq;
        self.current[l] = cur;
    }

    fn observe_scores(&mut self, layer: u32, scores: &[f32]) {
        if layer >= self.layers {
            return;
        }
        let (e, l) = (self.experts as usize, layer as usize);
        self.has_older[l] = self.fresh[l];
        if self.fresh[l] {
            let (logits, older) = (
                &self.score_logit[l * e..(l + 1) * e],
                &mut self.older[l * e..],
            );
            older[..e].copy_from_slice(logits);
        }
        let row = &mut self.score[l * e..(l + 1) * e];
        super::scores::normalise_into(scores, row);
        row.iter_mut()
            .filter(|s| !s.is_finite())
            .for_each(|s| *s = 0.0);
        for (lg, p) in self.score_logit[l * e..(l + 1) * e]
            .iter_mut()
            .zip(row.iter())
        {
            *lg = logit(*p);
        }
        self.fresh[layer as usize] = true;
    }

    fn predict(&mut self, layer: u32, horizon: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let mut fill = OutFiller::new(out);
        if layer >= self.layers || max == 0 {
            return;
        }
        for (d, (t, ahead)) in targets(layer, horizon, self.layers).enumerate() {
            let d = d + 1;
            let model = (d - 1).min(HISTORY);
            self.features(t, layer, d);
            self.probabilities(t as usize, model);
            if model < NEAR {
                let p = &mut self.pending[t as usize][model];
                p.token = self.token + ahead as u64;
                p.valid = true;
                p.x.clone_from(&self.x);
                p.p.clone_from(&self.p);
            }
            let dst = fill.next(t, ahead);
            let mut idx = std::mem::take(&mut self.rank);
            super::push_top(&self.p, max, &mut idx, dst, |p| p);
            self.rank = idx;
            fill.commit();
        }
    }

    fn next_use(&mut self, layer: u32, out: &mut [f32]) -> bool {
        if layer >= self.layers || self.seen[layer as usize] == 0 {
            return false;
        }
        let l = layer as usize;
        // The nearest live prediction for the layer's next demand, else its history.
        let live = (0..NEAR).find(|&m| self.pending[l][m].valid);
        match live {
            Some(m) => {
                let p = &self.pending[l][m].p;
                for (o, p) in out.iter_mut().zip(p) {
                    *o = *p;
                }
            }
            None => {
                let e = self.experts as usize;
                if !self.hist_valid[l] {
                    self.features(layer, layer, usize::MAX);
                    self.probabilities(l, HISTORY);
                    self.hist_p[l * e..(l + 1) * e].copy_from_slice(&self.p);
                    self.hist_valid[l] = true;
                }
                for (o, p) in out.iter_mut().zip(&self.hist_p[l * e..(l + 1) * e]) {
                    *o = *p;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
