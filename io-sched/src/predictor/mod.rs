//! Placeholder: replaced by the predictor module on merge.

/// One predicted expert with a confidence in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub expert: u32,
    pub confidence: f32,
}
