//! Greedy generation on top of [`MoeModel`].

use crate::error::{EngineError, Result};
use crate::experts::ExpertSource;
use crate::hooks::RoutingObserver;
use crate::model::MoeModel;
use crate::sampler::argmax;
use flashmoe_backends::ComputeBackend;

/// Prefills `prompt` from position 0 and appends `n` greedy tokens; returns the new tokens.
pub fn generate_greedy<B: ComputeBackend>(
    model: &mut MoeModel<B>,
    prompt: &[u32],
    n: usize,
    experts: &mut dyn ExpertSource,
    obs: &mut dyn RoutingObserver,
) -> Result<Vec<u32>> {
    model.reset();
    let mut logits = model.prefill(prompt, 0, experts, obs)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let next = argmax(&logits).ok_or(EngineError::OutOfRange {
            what: "vocab size",
            value: 0,
            limit: 1,
        })?;
        out.push(next);
        if i + 1 < n {
            logits = model.forward(next, prompt.len() + i, experts, obs)?;
        }
    }
    Ok(out)
}
