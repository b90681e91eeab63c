//! Predictors: which experts the next layers will route to, with a confidence for each.
//!
//! The engine reports the real routing of every layer ([`Predictor::observe`]) and, when it has
//! them, pre-gate scores ([`Predictor::observe_scores`]); the scheduler asks for candidates for
//! the next few layers ([`Predictor::predict`]) and turns them into prefetches (`hint`).
//!
//! | kind | idea | file |
//! |---|---|---|
//! | `none` | predicts nothing (the baseline) | [`none`] |
//! | `temporal` | the experts a layer used for the previous token | [`temporal`] |
//! | `frequency` | each layer's most used experts, with exponential decay | [`frequency`] |
//! | `transition` | P(expert j at layer L+1 \| expert i at layer L), learned online | [`transition`] |
//! | `scores` | the engine's scores passed through (pre-gate routers) | [`scores`] |
//! | `oracle` | the true future routing from a trace (upper bound) | [`oracle`] |
//! | `blend` | pre-gate scores of L+1, L+2 and routing history (same layer, cross-layer) in one online logistic model, calibrated | [`blend`] |
//!
//! [`Calibrated`] wraps any of them and replaces its confidences by the hit rates it actually
//! achieves (measured online per distance and confidence bin). [`OverFetch`] decides how many
//! of a layer's candidates to hint: the top k, plus near-ties of the k-th while the device has
//! idle time in the layer's window.
//!
//! Conventions shared by all predictors:
//! - A confidence is an estimate of P(the expert is routed to), in `[0, 1]`.
//! - Target layers run `layer + 1, layer + 2, …`, wrapping to layer 0 of the next token with
//!   `tokens_ahead` counting the wraps. `horizon` is clamped to the number of layers.
//! - `predict` overwrites `out` (reusing its allocations); a predictor may leave out target
//!   layers it has nothing to say about, and never emits an empty candidate list.
//! - Out-of-range input never panics: layers ≥ `layers` are ignored by `observe*` and give no
//!   predictions; experts ≥ `experts` are ignored; non-finite scores count as "no score".

use std::fmt;
use std::str::FromStr;

pub mod blend;
pub mod calibrated;
pub mod frequency;
pub mod none;
pub mod oracle;
pub mod overfetch;
pub mod scores;
pub mod temporal;
pub mod transition;

pub use blend::Blend;
pub use calibrated::Calibrated;
pub use frequency::Frequency;
pub use none::NoPredictor;
pub use oracle::Oracle;
pub use overfetch::OverFetch;
pub use scores::Scores;
pub use temporal::Temporal;
pub use transition::{Combine, Transition};

/// One predicted expert of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Expert index within its layer.
    pub expert: u32,
    /// Estimated probability that `expert` is routed to, in `[0, 1]`.
    pub confidence: f32,
}

/// The candidates for one future layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPrediction {
    /// The predicted layer.
    pub layer: u32,
    /// 0: the current token; 1: the next token; …
    pub tokens_ahead: u32,
    /// Most confident first.
    pub candidates: Vec<Candidate>,
}

/// Predicts the routing of the next layers from what it has observed.
///
/// ```
/// use io_sched::predictor::{Predictor, Temporal};
/// let mut p = Temporal::new(2, 8);
/// p.observe(0, &[1, 2]);
/// p.observe(1, &[3, 4]);
/// let mut out = Vec::new();
/// p.predict(0, 1, 4, &mut out); // from layer 0, one layer ahead: layer 1
/// assert_eq!(out[0].layer, 1);
/// assert_eq!(out[0].candidates.iter().map(|c| c.expert).collect::<Vec<_>>(), [3, 4]);
/// ```
pub trait Predictor: Send {
    /// A short stable name (the one [`PredictorKind`] parses).
    fn name(&self) -> &'static str;
    /// The real routing of `layer` for the current token (called in layer order, 0..layers, then
    /// the next token).
    fn observe(&mut self, layer: u32, experts: &[u32]);
    /// Scores supplied by the engine for `layer`'s experts (e.g. pre-gate router probabilities
    /// computed from an earlier layer's hidden state). Default: ignore.
    fn observe_scores(&mut self, layer: u32, scores: &[f32]) {
        let _ = (layer, scores);
    }
    /// Candidates for the `horizon` layers after `layer` (wrapping to layer 0 of the next token,
    /// with tokens_ahead = 1), at most `max_per_layer` each, most confident first.
    fn predict(
        &mut self,
        layer: u32,
        horizon: u32,
        max_per_layer: usize,
        out: &mut Vec<LayerPrediction>,
    );
    /// The expected wait of each expert of `layer`, in that layer's demands (tokens) until it
    /// is routed to again — 1: at the layer's next demand — written into `out` (one per
    /// expert), for an eviction policy that keeps what is needed soonest
    /// ([`crate::cache::NextUse`]). Returns false, leaving `out` alone, when the predictor has
    /// no such estimate (the default).
    fn next_use(&mut self, layer: u32, out: &mut [f32]) -> bool {
        let _ = (layer, out);
        false
    }
    /// Whether confidences are calibrated probabilities (a candidate at 0.3 is routed about
    /// 30% of the time), which cost-aware hinting needs ([`crate::SessionConfig::cost_aware`]).
    /// Default: no.
    fn calibrated(&self) -> bool {
        false
    }
    /// Whether [`next_use`](Self::next_use) gives estimates (what the
    /// [`crate::cache::NextUse`] eviction policy needs). Default: no.
    fn estimates_next_use(&self) -> bool {
        false
    }
}

/// The predictors [`build`] can make, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PredictorKind {
    /// [`NoPredictor`].
    None,
    /// [`Temporal`].
    Temporal,
    /// [`Frequency`].
    Frequency,
    /// [`Transition`].
    Transition,
    /// [`Scores`].
    Scores,
    /// [`Oracle`] (needs a trace: not made by [`build`]).
    Oracle,
    /// [`Blend`].
    Blend,
}

impl PredictorKind {
    /// Every kind, in documentation order.
    pub const ALL: [PredictorKind; 7] = [
        PredictorKind::None,
        PredictorKind::Temporal,
        PredictorKind::Frequency,
        PredictorKind::Transition,
        PredictorKind::Scores,
        PredictorKind::Oracle,
        PredictorKind::Blend,
    ];

    /// The name `FromStr` accepts.
    pub fn name(self) -> &'static str {
        match self {
            PredictorKind::None => "none",
            PredictorKind::Temporal => "temporal",
            PredictorKind::Frequency => "frequency",
            PredictorKind::Transition => "transition",
            PredictorKind::Scores => "scores",
            PredictorKind::Oracle => "oracle",
            PredictorKind::Blend => "blend",
        }
    }
}

impl PredictorKind {
    /// Whether predictors of this kind use the engine's scores ([`Predictor::observe_scores`]):
    /// drivers need not compute them for the others.
    pub fn takes_scores(self) -> bool {
        matches!(self, PredictorKind::Scores | PredictorKind::Blend)
    }
}

impl fmt::Display for PredictorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown predictor name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown predictor {0:?} (expected one of none, temporal, frequency, transition, scores, oracle, blend)"
)]
pub struct UnknownPredictor(pub String);

impl FromStr for PredictorKind {
    type Err = UnknownPredictor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        PredictorKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownPredictor(s.to_string()))
    }
}

/// Builds a predictor with default settings for a `layers × experts` model.
///
/// Returns `None` for [`PredictorKind::Oracle`], which needs the routing trace: use
/// [`Oracle::new`].
pub fn build(kind: PredictorKind, layers: u32, experts: u32) -> Option<Box<dyn Predictor>> {
    Some(match kind {
        PredictorKind::None => Box::new(NoPredictor),
        PredictorKind::Temporal => Box::new(Temporal::new(layers, experts)),
        PredictorKind::Frequency => Box::new(Frequency::new(layers, experts)),
        PredictorKind::Transition => Box::new(Transition::new(layers, experts)),
        PredictorKind::Scores => Box::new(Scores::new(layers, experts)),
        PredictorKind::Blend => Box::new(Blend::new(layers, experts)),
        PredictorKind::Oracle => return None,
    })
}

/// The `(layer, tokens_ahead)` targets after `layer`, `horizon` of them (clamped to `layers`).
pub(crate) fn targets(layer: u32, horizon: u32, layers: u32) -> impl Iterator<Item = (u32, u32)> {
    let steps = if layer < layers {
        horizon.min(layers)
    } else {
        0
    };
    (1..=steps).map(move |s| {
        let t = layer as u64 + s as u64;
        ((t % layers as u64) as u32, (t / layers as u64) as u32)
    })
}

/// Fills `out` while reusing the candidate vectors it already holds.
pub(crate) struct OutFiller<'a> {
    out: &'a mut Vec<LayerPrediction>,
    used: usize,
}

impl<'a> OutFiller<'a> {
    pub(crate) fn new(out: &'a mut Vec<LayerPrediction>) -> Self {
        Self { out, used: 0 }
    }

    /// A cleared candidate list for `(layer, tokens_ahead)`; call [`Self::commit`] to keep it.
    pub(crate) fn next(&mut self, layer: u32, tokens_ahead: u32) -> &mut Vec<Candidate> {
        if self.used == self.out.len() {
            self.out.push(LayerPrediction {
                layer,
                tokens_ahead,
                candidates: Vec::new(),
            });
        }
        let p = &mut self.out[self.used];
        p.layer = layer;
        p.tokens_ahead = tokens_ahead;
        p.candidates.clear();
        &mut p.candidates
    }

    /// Keeps the entry last returned by [`Self::next`] if it has candidates.
    pub(crate) fn commit(&mut self) {
        if self
            .out
            .get(self.used)
            .is_some_and(|p| !p.candidates.is_empty())
        {
            self.used += 1;
        }
    }
}

impl Drop for OutFiller<'_> {
    fn drop(&mut self) {
        self.out.truncate(self.used);
    }
}

/// Pushes the `max` highest `(expert, score)` pairs of `scores` (skipping scores ≤ 0 and
/// non-finite ones) into `dst`, most confident first, with confidence `conf(score)`.
/// `idx` is a scratch buffer.
pub(crate) fn push_top(
    scores: &[f32],
    max: usize,
    idx: &mut Vec<u32>,
    dst: &mut Vec<Candidate>,
    conf: impl Fn(f32) -> f32,
) {
    idx.clear();
    idx.extend(
        (0..scores.len() as u32)
            .filter(|&e| scores[e as usize].is_finite() && scores[e as usize] > 0.0),
    );
    let by_score = |a: &u32, b: &u32| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    };
    if max == 0 || idx.is_empty() {
        return;
    }
    if idx.len() > max {
        idx.select_nth_unstable_by(max - 1, by_score);
        idx.truncate(max);
    }
    idx.sort_unstable_by(by_score);
    dst.extend(idx.iter().map(|&e| Candidate {
        expert: e,
        confidence: conf(scores[e as usize]).clamp(0.0, 1.0),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_wrap_and_clamp() {
        let t: Vec<_> = targets(2, 3, 4).collect();
        assert_eq!(t, [(3, 0), (0, 1), (1, 1)]);
        assert_eq!(targets(3, 100, 4).count(), 4);
        assert_eq!(targets(4, 2, 4).count(), 0);
    }

    #[test]
    fn kinds_parse() {
        for k in PredictorKind::ALL {
            assert_eq!(k.name().parse::<PredictorKind>(), Ok(k));
        }
        assert!("bogus".parse::<PredictorKind>().is_err());
        assert!(build(PredictorKind::Oracle, 2, 2).is_none());
        assert_eq!(
            build(PredictorKind::Transition, 2, 2).map(|p| p.name()),
            Some("transition")
        );
    }

    #[test]
    fn top_is_sorted_and_skips_zeros() {
        let (mut idx, mut dst) = (Vec::new(), Vec::new());
        push_top(
            &[0.1, 0.0, 0.5, f32::NAN, 0.3],
            2,
            &mut idx,
            &mut dst,
            |s| s,
        );
        let e: Vec<u32> = dst.iter().map(|c| c.expert).collect();
        assert_eq!(e, [2, 4]);
    }
}
