//! Callbacks the decode step makes: actual routing (for traces and predictors) and pre-gate
//! scores (next layer's router applied early, for prefetching).

/// Observes routing decisions while the model runs. All methods default to doing nothing.
///
/// Order within layer `L` of one token:
/// 1. [`on_routing`](Self::on_routing)`(L, ids, weights)` as soon as layer `L`'s router has run;
/// 2. if [`wants_pregate`](Self::wants_pregate) and `L + 1` exists:
///    [`on_pregate`](Self::on_pregate)`(L + 1, scores)`, where `scores` are the softmax
///    probabilities of layer `L + 1`'s router applied to layer `L`'s MoE input (the hidden state
///    after layer `L`'s attention, through `L`'s `post_attention_layernorm`);
/// 3. only then are layer `L`'s experts requested from the [`crate::ExpertSource`] and computed,
///    so reads hinted in steps 1–2 overlap with that compute.
pub trait RoutingObserver {
    /// Called before the first layer of each token.
    fn on_token(&mut self, _token: u32, _pos: usize) {}
    /// Whether to compute pre-gate scores (costs one router matvec per layer).
    fn wants_pregate(&self) -> bool {
        false
    }
    /// Predicted router probabilities (`num_experts` values) for `layer`.
    fn on_pregate(&mut self, _layer: u32, _scores: &[f32]) {}
    /// Whether to compute pre-gate scores two layers ahead too (one more router matvec).
    fn wants_pregate_far(&self) -> bool {
        false
    }
    /// Layer `L + 2`'s router probabilities on layer `L`'s MoE input (the input of step 2),
    /// called right after step 2 when [`wants_pregate_far`](Self::wants_pregate_far) and
    /// `L + 2` exists: `layer` is `L + 2`.
    fn on_pregate_far(&mut self, _layer: u32, _scores: &[f32]) {}
    /// The experts actually chosen for `layer`, best first, with their combine weights.
    fn on_routing(&mut self, _layer: u32, _ids: &[u32], _weights: &[f32]) {}
}

/// Observes nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl RoutingObserver for NoObserver {}

/// One routing decision.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingRecord {
    /// Position of the token.
    pub pos: usize,
    /// Layer.
    pub layer: u32,
    /// Chosen experts, best first.
    pub ids: Vec<u32>,
    /// Their combine weights.
    pub weights: Vec<f32>,
}

/// Records every routing decision (and optionally pre-gate scores).
#[derive(Clone, Debug, Default)]
pub struct TraceRecorder {
    pos: usize,
    /// Whether to ask for pre-gate scores.
    pub record_pregate: bool,
    /// Actual routing, in order.
    pub routing: Vec<RoutingRecord>,
    /// `(pos, layer, scores)` for each pre-gate call.
    pub pregate: Vec<(usize, u32, Vec<f32>)>,
}

impl TraceRecorder {
    /// An empty recorder; `record_pregate` asks the model for pre-gate scores too.
    pub fn new(record_pregate: bool) -> Self {
        Self {
            record_pregate,
            ..Self::default()
        }
    }
}

impl RoutingObserver for TraceRecorder {
    fn on_token(&mut self, _token: u32, pos: usize) {
        self.pos = pos;
    }
    fn wants_pregate(&self) -> bool {
        self.record_pregate
    }
    fn on_pregate(&mut self, layer: u32, scores: &[f32]) {
        self.pregate.push((self.pos, layer, scores.to_vec()));
    }
    fn on_routing(&mut self, layer: u32, ids: &[u32], weights: &[f32]) {
        self.routing.push(RoutingRecord {
            pos: self.pos,
            layer,
            ids: ids.to_vec(),
            weights: weights.to_vec(),
        });
    }
}
