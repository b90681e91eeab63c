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
//! trained at every observation on the history as it stood. [`Predictor::next_use`] (what the
//! eviction policy [`crate::cache::NextUse`] reads) is an expected wait in tokens: the nearest
//! live prediction of the layer's next demand (else the history-only model's) and the chance
//! of reuse soon after it, from a per-layer reuse model (`reuse`: P(routed within the next
//! [`reuse::HORIZON`] tokens) from that probability, the expert's age and its routing shares).
//!
//! The weights start as "the pre-gate score, scaled to k routed experts": with scores it
//! behaves like [`super::Scores`] from the first token, without them like k/E, and learns the
//! rest. Cost per predicted layer: `experts × FEATURES` multiply-adds to predict, the same to
//! train, plus `k × experts` for the transition feature and one top-2k selection of the
//! scores; no allocation once warm. Features are stored feature-major and `ln` / `exp` are
//! plain arithmetic (`math`), so every loop over a layer's experts vectorizes; a target's
//! features are built once (into its pending record, or for the history model once per
//! observation) and reused to train and for [`Predictor::next_use`]. Memory:
//! `NEAR × layers × experts²` f32 for the transition tables (off above [`MAX_TABLE`] entries:
//! feature 6 is then 0), `(NEAR + 1) × layers × experts × FEATURES` f32 of features.

use super::{Candidate, LayerPrediction, OutFiller, Predictor, targets};
use math::logit;
use model::{Features, Weights};
use reuse::Reuse;

mod features;
mod math;
mod model;
pub mod reuse;
mod top;

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

/// Features and the probabilities given from them, for one future (token, layer) at one
/// distance, or for the history-only model of a layer.
#[derive(Debug, Clone, Default)]
struct Pending {
    token: u64,
    valid: bool,
    x: Features,
    p: Vec<f32>,
}

impl Pending {
    fn new(experts: usize) -> Self {
        Self {
            token: 0,
            valid: false,
            x: Features::new(experts),
            p: vec![0.0; experts],
        }
    }
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
    /// `[layer]` the history-only model's features and probabilities on the history as it
    /// stands (valid until the layer's next observation): what that observation trains on,
    /// and [`Predictor::next_use`] outside the horizon.
    hist: Vec<Pending>,
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
    /// How soon each expert is routed again after the next demand ([`Predictor::next_use`]).
    reuse: Reuse,
    // Scratch, one per expert.
    x: Features,
    p: Vec<f32>,
    err: Vec<f32>,
    keys: Vec<u64>,
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
            hist: vec![Pending::new(e); l],
            recent: vec![0.0; l * e],
            recent_decay: 0.5f32.powf(1.0 / RECENT_HALF_LIFE),
            trans,
            trans_rows,
            global: [Weights::zero(); MODELS],
            local: vec![[Weights::zero(); MODELS]; l],
            pending: vec![std::array::from_fn(|_| Pending::new(e)); l],
            reuse: Reuse::new(l, e),
            x: Features::new(e),
            p: vec![0.0; e],
            err: vec![0.0; e],
            keys: Vec::with_capacity(e),
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

    /// One AdaGrad step of (`t`, `model`) on `x` and the probabilities `p` it gave when it
    /// was predicted, against the routed `experts`. (The weights may have moved a few steps
    /// since: a delayed gradient, which saves recomputing every expert's probability.)
    fn train(&mut self, t: usize, model: usize, x: &Features, p: &[f32], experts: &[u32]) {
        let mut grad = model::gradient(x, p, experts, &mut self.err);
        // Normalise by the positives so that the step does not grow with the expert count.
        let n = self.k.max(1) as f32;
        grad.iter_mut().for_each(|g| *g /= n);
        self.global[model].step(&grad, LR_GLOBAL);
        let local = &mut self.local[t][model];
        local.w.iter_mut().for_each(|w| *w *= LOCAL_SHRINK);
        local.step(&grad, LR_LOCAL);
    }

    /// Makes `hist[l]` hold the history-only features of layer `l` (and, with `probs`, their
    /// probabilities) on the history as it stands.
    fn history(&mut self, l: usize, probs: bool) {
        // `token` of a history record: 1 once its probabilities are computed (once per
        // observation of the layer, like its features), else 0.
        let mut h = std::mem::take(&mut self.hist[l]);
        if !h.valid {
            self.features(l as u32, l as u32, usize::MAX, &mut h.x);
            h.token = 0;
            h.valid = true;
        }
        if probs && h.token == 0 {
            let w = self.weights(l, HISTORY);
            model::probabilities(&w, &h.x, &mut h.p);
            h.token = 1;
        }
        self.hist[l] = h;
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
            let rec = std::mem::take(p);
            self.train(l, m, &rec.x, &rec.p, &cur);
            self.pending[l][m] = rec;
        }
        // The history-only model, on the history as it stood.
        if self.seen[l] > 0 {
            self.history(l, true);
            let rec = std::mem::take(&mut self.hist[l]);
            self.train(l, HISTORY, &rec.x, &rec.p, &cur);
            self.hist[l] = rec;
        }
        self.hist[l].valid = false;
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
        let inv_tokens = 1.0 / self.freq_tokens[l];
        for (f, c) in self.freq_logit[l * e..(l + 1) * e]
            .iter_mut()
            .zip(freq.iter())
        {
            *f = logit(*c * inv_tokens);
        }
        self.fresh[l] = false;
        self.has_older[l] = false;
        self.seen[l] = self.seq;
        // The reuse model trains on the record that has seen its horizon and records the
        // history as it now stands.
        let hist = reuse::History {
            share: &self.freq_logit[l * e..(l + 1) * e],
            recent: &self.recent[l * e..(l + 1) * e],
        };
        self.reuse.observe(l, self.token, &cur, hist);
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
            let tl = t as usize;
            // Features and probabilities straight into the record the observation trains on.
            let mut rec = if model < NEAR {
                std::mem::take(&mut self.pending[tl][model])
            } else {
                Pending {
                    x: std::mem::take(&mut self.x),
                    p: std::mem::take(&mut self.p),
                    ..Pending::default()
                }
            };
            self.features(t, layer, d, &mut rec.x);
            let w = self.weights(tl, model);
            model::probabilities(&w, &rec.x, &mut rec.p);
            let dst = fill.next(t, ahead);
            top::select(&rec.p, max, 0, true, &mut self.keys);
            dst.extend(
                self.keys
                    .iter()
                    .filter(|&&k| top::positive(k))
                    .map(|&k| Candidate {
                        expert: top::expert(k),
                        confidence: rec.p[top::expert(k) as usize].clamp(0.0, 1.0),
                    }),
            );
            fill.commit();
            if model < NEAR {
                rec.token = self.token + ahead as u64;
                rec.valid = true;
                self.pending[tl][model] = rec;
            } else {
                self.x = rec.x;
                self.p = rec.p;
            }
        }
    }

    fn calibrated(&self) -> bool {
        true
    }
    fn estimates_next_use(&self) -> bool {
        true
    }
    fn next_use(&mut self, layer: u32, out: &mut [f32]) -> bool {
        if layer >= self.layers || self.seen[layer as usize] == 0 {
            return false;
        }
        let l = layer as usize;
        // The nearest live prediction for the layer's next demand, else its history.
        let p1 = match (0..NEAR).find(|&m| self.pending[l][m].valid) {
            Some(m) => &self.pending[l][m].p,
            None => {
                self.history(l, true);
                &self.hist[l].p
            }
        };
        self.reuse.waits(l, p1, out)
    }
}

#[cfg(test)]
mod tests;
