//! The blend's reuse model: how many tokens until a layer routes each expert again, for the
//! eviction policy ([`crate::cache::NextUse`]) through [`Predictor::next_use`](super::Predictor::next_use).
//!
//! The next-demand probability `p1` (the blend's own, from pre-gate scores where a live
//! prediction exists, else its history-only model) says whether an expert is needed at the
//! layer's next demand; what eviction also needs is the tail — how soon after that. Per layer,
//! an online logistic model estimates `P_H` = P(routed within the next [`HORIZON`] tokens)
//! from
//!
//! | # | feature |
//! |---|---|
//! | 0 | 1 (bias) |
//! | 1 | logit of `p1` |
//! | 2 | ln(1 + tokens since the expert was last routed at the layer) / 4 (capped at [`MAX_AGE`]) |
//! | 3 | logit of its routing share, half-life 16 tokens (the blend's feature 5) |
//! | 4 | its routing count, half-life 2 tokens (the blend's feature 9) |
//! | 5 | logit of its routing share, half-life [`SLOW_HALF_LIFE`] tokens |
//!
//! trained by AdaGrad on the log-loss once a record's [`HORIZON`] tokens have passed (the label
//! is "routed since", read off the last-use tokens: no per-record label bookkeeping), with
//! shared weights plus a per-layer part shrunk towards them, as the blend's own models.
//!
//! The wait follows from `p1` and `P_H`: the next demand routes the expert with probability
//! `p1`; after it, each token with the constant rate `q` that gives `P_H` over the horizon,
//! `(1 - q)^H = 1 - P_H` (a geometric tail), so the expected wait is `1 + (1 - p1) / q` tokens
//! (1 = the layer's next demand). Belady evicts the longest actual wait;
//! [`crate::cache::NextUse`] the longest expected one. (Deriving `q` from the difference
//! `P_H - p1` instead ranks by the difference of two noisy estimates: measurably worse.)
//!
//! Cost per observation of a layer: `experts × ROWS` to build a record and the same twice to
//! train on the one that matured; per [`Blend::next_use`](super::Blend) call `experts × ROWS`.
//! Memory: `layers × HORIZON × ROWS × experts` f32.

use super::math::{exp, ln, logit, sigmoid};

/// Tokens over which a record's label is counted.
pub const HORIZON: usize = 4;
/// Half-life of the slow routing share (feature 5), tokens.
pub const SLOW_HALF_LIFE: f32 = 64.0;
/// Ages above this many tokens count as this many.
pub const MAX_AGE: f32 = 64.0;
/// Features (bias included).
const FEATURES: usize = 6;
/// Stored rows (features 1..): `p1` logit, age, share, recent count, slow share.
const ROWS: usize = FEATURES - 1;
/// The longest expected wait reported, tokens.
pub const MAX_WAIT: f32 = 1e4;
const LR_GLOBAL: f32 = 0.3;
const LR_LOCAL: f32 = 0.15;
const LOCAL_SHRINK: f32 = 0.995;

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

    fn step(&mut self, grad: &[f32; FEATURES], lr: f32) {
        for ((w, g2), g) in self.w.iter_mut().zip(&mut self.g2).zip(grad) {
            *g2 += g * g;
            *w += lr * g / g2.sqrt();
        }
    }
}

/// One layer's features at one observation: `ROWS × experts`, feature-major.
#[derive(Debug, Clone, Default)]
struct Record {
    token: u64,
    valid: bool,
    /// Whether [`Reuse::waits`] was asked (and wrote row 0, the `p1` it was given): only then
    /// is the record trained on.
    asked: bool,
    rows: Vec<f32>,
}

/// The reuse model of every layer (see the [module docs](self)).
#[derive(Debug, Clone)]
pub(super) struct Reuse {
    experts: usize,
    /// `[layer][expert]` 1 + the token it was last routed at (0: never).
    last: Vec<u64>,
    /// `[layer][expert]` slowly decayed routing counts, `[layer]` decayed token counts.
    slow: Vec<f32>,
    slow_tokens: Vec<f32>,
    slow_decay: f32,
    /// `[layer][token % HORIZON]`
    ring: Vec<[Record; HORIZON]>,
    /// `[layer]` the ring slot of the latest record.
    latest: Vec<usize>,
    global: Weights,
    local: Vec<Weights>,
    // Scratch, one per expert.
    p: Vec<f32>,
    err: Vec<f32>,
}

/// What the blend knows of a layer right after observing it (rows of `experts`).
pub(super) struct History<'a> {
    /// Logit of the routing share, half-life 16 tokens.
    pub(super) share: &'a [f32],
    /// Routing count, half-life 2 tokens.
    pub(super) recent: &'a [f32],
}

impl Reuse {
    pub(super) fn new(layers: usize, experts: usize) -> Self {
        let record = || Record {
            token: 0,
            valid: false,
            asked: false,
            rows: vec![0.0; ROWS * experts],
        };
        let mut global = Weights::zero();
        // Before any training: P_H ≈ H × p1 for a rare expert.
        global.w[0] = (HORIZON as f32).ln();
        global.w[1] = 1.0;
        Self {
            experts,
            last: vec![0; layers * experts],
            slow: vec![0.0; layers * experts],
            slow_tokens: vec![0.0; layers],
            slow_decay: 0.5f32.powf(1.0 / SLOW_HALF_LIFE),
            ring: (0..layers)
                .map(|_| std::array::from_fn(|_| record()))
                .collect(),
            latest: vec![0; layers],
            global,
            local: vec![Weights::zero(); layers],
            p: vec![0.0; experts],
            err: vec![0.0; experts],
        }
    }

    fn weights(&self, l: usize) -> [f32; FEATURES] {
        std::array::from_fn(|f| self.global.w[f] + self.local[l].w[f])
    }

    /// Layer `l` routed `routed` at `token`: trains on the record that has now seen its
    /// [`HORIZON`] tokens, then records the features of the history as it now stands
    /// (`hist`, already updated with this routing).
    pub(super) fn observe(&mut self, l: usize, token: u64, routed: &[u32], hist: History<'_>) {
        let e = self.experts;
        let last = &mut self.last[l * e..(l + 1) * e];
        for &j in routed {
            if let Some(t) = last.get_mut(j as usize) {
                *t = token + 1;
            }
        }
        let slot = (token % HORIZON as u64) as usize;
        // The record in this slot is this layer's from `HORIZON` (or more) tokens ago.
        let mut rec = std::mem::take(&mut self.ring[l][slot]);
        if rec.valid && rec.asked && rec.token < token {
            self.train(l, &rec);
        }
        // This observation's features.
        let slow = &mut self.slow[l * e..(l + 1) * e];
        slow.iter_mut().for_each(|c| *c *= self.slow_decay);
        for &j in routed {
            if let Some(c) = slow.get_mut(j as usize) {
                *c += 1.0;
            }
        }
        self.slow_tokens[l] = self.slow_tokens[l] * self.slow_decay + 1.0;
        let inv = 1.0 / self.slow_tokens[l];
        let mut rows = rec.rows.chunks_exact_mut(e);
        let mut row = || rows.next().expect("ROWS rows");
        // Row 0, the `p1` logit, is written by each `waits` (the blend's probability for
        // the next demand, which may come from a fresher prediction than this history).
        row().fill(0.0);
        for (o, t) in row().iter_mut().zip(&self.last[l * e..(l + 1) * e]) {
            let age = if *t == 0 {
                MAX_AGE
            } else {
                ((token + 1 - *t) as f32).min(MAX_AGE)
            };
            *o = 0.25 * ln(1.0 + age);
        }
        row().copy_from_slice(hist.share);
        row().copy_from_slice(hist.recent);
        for (o, c) in row().iter_mut().zip(slow.iter()) {
            *o = logit(*c * inv);
        }
        rec.token = token;
        rec.valid = true;
        rec.asked = false;
        self.ring[l][slot] = rec;
        self.latest[l] = slot;
    }

    /// One AdaGrad step on `rec` against "routed since `rec.token`".
    fn train(&mut self, l: usize, rec: &Record) {
        let e = self.experts;
        let w = self.weights(l);
        let mut p = std::mem::take(&mut self.p);
        z_into(&w, &rec.rows, &mut p);
        let mut err = std::mem::take(&mut self.err);
        let mut positives = 0usize;
        for ((d, p), t) in err.iter_mut().zip(&p).zip(&self.last[l * e..(l + 1) * e]) {
            let y = (*t > rec.token + 1) as u8 as f32;
            positives += y as usize;
            *d = y - sigmoid(*p);
        }
        let mut g = [0.0f32; FEATURES];
        g[0] = err.iter().sum();
        for (f, row) in rec.rows.chunks_exact(e).enumerate() {
            g[f + 1] = err.iter().zip(row).map(|(d, x)| d * x).sum();
        }
        let n = positives.max(1) as f32;
        g.iter_mut().for_each(|g| *g /= n);
        self.global.step(&g, LR_GLOBAL);
        let local = &mut self.local[l];
        local.w.iter_mut().for_each(|w| *w *= LOCAL_SHRINK);
        local.step(&g, LR_LOCAL);
        self.p = p;
        self.err = err;
    }

    /// Expected tokens until layer `l` routes each expert again, given the next-demand
    /// probabilities `p1` (any source, the freshest last: the record trains on the last
    /// given), into `out`. False before `l`'s first observation.
    // `max(..).min(..)` rather than `clamp`: NaN goes to the bound instead of through.
    #[allow(clippy::manual_clamp)]
    pub(super) fn waits(&mut self, l: usize, p1: &[f32], out: &mut [f32]) -> bool {
        let (w, e) = (self.weights(l), self.experts);
        let rec = &mut self.ring[l][self.latest[l]];
        if !rec.valid {
            return false;
        }
        // `max` / `min` send NaN to the bound and keep the loops branch-free (vectorized).
        for (o, p) in rec.rows[..e].iter_mut().zip(p1) {
            *o = logit(p.max(1e-3).min(0.999));
        }
        rec.asked = true;
        let mut z = std::mem::take(&mut self.p);
        z_into(&w, &rec.rows, &mut z);
        let inv_h = 1.0 / HORIZON as f32;
        for ((o, z), p1) in out.iter_mut().zip(&z).zip(p1) {
            let p1 = p1.max(1e-3).min(0.999);
            let ph = sigmoid(*z).max(p1);
            // The per-token reuse rate `q` that gives `ph` over the horizon, (1 - q)^H = 1 - ph.
            let q = (1.0 - exp(ln((1.0 - ph).clamp(1e-6, 1.0)) * inv_h)).max(1e-4);
            let w = 1.0 + (1.0 - p1) / q;
            *o = w.min(MAX_WAIT);
        }
        self.p = z;
        true
    }
}

/// `z[j] = w · x_j`.
fn z_into(w: &[f32; FEATURES], rows: &[f32], z: &mut [f32]) {
    let e = z.len();
    z.fill(w[0]);
    for (f, row) in rows.chunks_exact(e).enumerate() {
        let wf = w[f + 1];
        for (z, x) in z.iter_mut().zip(row) {
            *z += wf * x;
        }
    }
}
