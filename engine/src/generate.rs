//! Generation on top of [`MoeModel`]: greedy, or sampled with a [`Sampler`], streaming each
//! token to a callback as it is chosen.

use crate::error::{EngineError, Result};
use crate::experts::ExpertSource;
use crate::hooks::RoutingObserver;
use crate::model::MoeModel;
use crate::sampler::{Sampler, argmax};
use flashmoe_backends::ComputeBackend;
use flashmoe_backends::profile::Phase;
use std::ops::ControlFlow;
use std::time::Instant;

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

/// What [`generate`] produced, with its timing (wall clock, for reporting only).
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// The new tokens (a stop token, if one ended generation, is included).
    pub tokens: Vec<u32>,
    /// Whether a stop token ended generation.
    pub stopped: bool,
    /// Seconds spent on the prompt (prefill).
    pub prefill_secs: f64,
    /// Seconds spent on decode steps after the prompt.
    pub decode_secs: f64,
    /// Decode steps run after the prompt (tokens fed back).
    pub decode_steps: usize,
}

/// Prefills `prompt` from position 0, then chooses up to `max_tokens` tokens with `sampler`,
/// calling `on_token` with each as soon as it is chosen. Stops after a token in `stop`.
#[allow(clippy::too_many_arguments)]
pub fn generate<B: ComputeBackend>(
    model: &mut MoeModel<B>,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[u32],
    sampler: &mut Sampler,
    experts: &mut dyn ExpertSource,
    obs: &mut dyn RoutingObserver,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    model.reset();
    let mut each = |id: u32| on_token(id).map(|()| ControlFlow::Continue(()));
    generate_from(
        model, prompt, 0, max_tokens, stop, sampler, experts, obs, &mut each,
    )
}

/// Like [`generate`], but the model's cache already holds `prompt[..cached]` at positions
/// `0..cached` (see [`crate::prompt_cache::PromptCache`]): only `prompt[cached..]` is
/// prefilled (at least its last token, for the logits). `on_token` may end generation early
/// by returning [`ControlFlow::Break`] (a stop string matched, the client went away): the
/// token it was given is kept in [`Generation::tokens`] and not fed back.
#[allow(clippy::too_many_arguments)]
pub fn generate_from<B: ComputeBackend>(
    model: &mut MoeModel<B>,
    prompt: &[u32],
    cached: usize,
    max_tokens: usize,
    stop: &[u32],
    sampler: &mut Sampler,
    experts: &mut dyn ExpertSource,
    obs: &mut dyn RoutingObserver,
    on_token: &mut dyn FnMut(u32) -> Result<ControlFlow<()>>,
) -> Result<Generation> {
    let mut g = Generation::default();
    let start = cached.min(prompt.len().saturating_sub(1));
    let t = Instant::now();
    let mut logits = model.prefill(&prompt[start..], start, experts, obs)?;
    g.prefill_secs = t.elapsed().as_secs_f64();
    // A profile covers decode steps only.
    if let Some(p) = model.backend().profile() {
        p.reset();
    }
    let t = Instant::now();
    for i in 0..max_tokens {
        let sampled = model.backend().profile().map(|_| Instant::now());
        let next = sampler.sample(&logits).ok_or(EngineError::OutOfRange {
            what: "vocab size",
            value: 0,
            limit: 1,
        })?;
        if let (Some(p), Some(t)) = (model.backend().profile(), sampled) {
            p.record(Phase::Sampling, t.elapsed());
        }
        g.tokens.push(next);
        let flow = on_token(next)?;
        if stop.contains(&next) {
            g.stopped = true;
            break;
        }
        if flow.is_break() {
            break;
        }
        if i + 1 < max_tokens {
            logits = model.forward(next, prompt.len() + i, experts, obs)?;
            g.decode_steps += 1;
        }
    }
    g.decode_secs = t.elapsed().as_secs_f64();
    Ok(g)
}
