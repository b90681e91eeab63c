//! [`NoPredictor`]: predicts nothing; the baseline every other predictor is measured against.

use super::{LayerPrediction, Predictor};

/// Predicts nothing, so the scheduler only ever reads on demand.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPredictor;

impl Predictor for NoPredictor {
    fn name(&self) -> &'static str {
        "none"
    }

    fn observe(&mut self, _layer: u32, _experts: &[u32]) {}

    fn predict(&mut self, _layer: u32, _horizon: u32, _max: usize, out: &mut Vec<LayerPrediction>) {
        out.clear();
    }
}
