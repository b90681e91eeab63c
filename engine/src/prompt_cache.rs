//! Prompt reuse: the model's context (KV cache) is kept after a generation, with the tokens
//! it holds; a next prompt that shares a prefix with them prefills only the rest.
//!
//! A chat turn re-sends the whole conversation, so its prompt extends the previous prompt and
//! answer: with reuse, a turn costs its new tokens, not the conversation. Attention state can
//! be rewound to any shared prefix (positions past it are simply overwritten); a family with
//! recurrent per-sequence state (Qwen3.5's Gated DeltaNet layers) cannot, and says so through
//! [`ContextState`]: it is then reused only when the prompt extends the whole cached context.
//!
//! ```no_run
//! # use flashmoe_engine::*;
//! # fn f(model: &mut MoeModel<flashmoe_backends::CpuBackend>, experts: &mut dyn ExpertSource,
//! #      turn1: &[u32], turn2: &[u32]) -> Result<()> {
//! let mut cache = PromptCache::new();
//! let mut sampler = Sampler::greedy();
//! let (g1, reused) = cache.generate(model, turn1, 32, &[0], &mut sampler, experts,
//!                                   &mut NoObserver, &mut |_| Ok(std::ops::ControlFlow::Continue(())))?;
//! assert_eq!(reused, 0);
//! // turn2 = turn1 + g1.tokens + the next user message: only the new part is prefilled.
//! let (g2, reused) = cache.generate(model, turn2, 32, &[0], &mut sampler, experts,
//!                                   &mut NoObserver, &mut |_| Ok(std::ops::ControlFlow::Continue(())))?;
//! # Ok(()) }
//! ```

use crate::error::Result;
use crate::experts::ExpertSource;
use crate::generate::{Generation, generate_from};
use crate::hooks::RoutingObserver;
use crate::model::MoeModel;
use crate::sampler::Sampler;
use flashmoe_backends::ComputeBackend;
use std::ops::ControlFlow;

/// What a model's per-sequence state allows a [`PromptCache`] to reuse.
pub trait ContextState {
    /// Whether the state can be rewound to any earlier position (attention's KV cache can: the
    /// keys and values of positions `0..p` do not depend on later tokens). A model with
    /// recurrent state (DeltaNet) returns `false` unless it keeps snapshots; its context is
    /// then reused only when a prompt extends all of it.
    fn can_rewind(&self) -> bool {
        true
    }

    /// Forgets the context (called when the cache cannot be reused at all).
    fn clear_context(&mut self);
}

impl<B: ComputeBackend> ContextState for MoeModel<B> {
    /// Attention-only families rewind; a hybrid family's DeltaNet state does not.
    fn can_rewind(&self) -> bool {
        self.config().hybrid.is_none()
    }

    fn clear_context(&mut self) {
        self.reset();
    }
}

/// The tokens whose state the model holds (positions `0..len`), and how much of a prompt
/// they cover.
#[derive(Clone, Debug, Default)]
pub struct PromptCache {
    tokens: Vec<u32>,
}

impl PromptCache {
    /// An empty cache (the model's context is treated as empty).
    pub fn new() -> Self {
        Self::default()
    }

    /// The tokens the model's context holds.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets the cached tokens (the next generation prefills its whole prompt).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// How many leading tokens of `prompt` can be reused from the model's context.
    pub fn reusable(&self, prompt: &[u32], state: &dyn ContextState) -> usize {
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // Recurrent state holds every cached token: it is reusable only when the prompt goes on
        // past all of them (re-running the last one, as a full match would, applies it twice).
        if state.can_rewind() || (common == self.tokens.len() && prompt.len() > common) {
            common
        } else {
            0
        }
    }

    /// Generates from `prompt` like [`crate::generate`], prefilling only what the cache does
    /// not already hold. Returns the generation and how many prompt tokens were reused (the
    /// last prompt token is always run again for its logits, so at most `prompt.len() - 1`).
    /// On an error the cache is cleared: the model's state is then unknown.
    #[allow(clippy::too_many_arguments)]
    pub fn generate<B: ComputeBackend>(
        &mut self,
        model: &mut MoeModel<B>,
        prompt: &[u32],
        max_tokens: usize,
        stop: &[u32],
        sampler: &mut Sampler,
        experts: &mut dyn ExpertSource,
        obs: &mut dyn RoutingObserver,
        on_token: &mut dyn FnMut(u32) -> Result<ControlFlow<()>>,
    ) -> Result<(Generation, usize)> {
        let common = self.reusable(prompt, model);
        let reused = common.min(prompt.len().saturating_sub(1));
        if reused == 0 {
            model.clear_context();
        }
        // Until the generation completes the context is in flux.
        self.tokens.clear();
        let g = generate_from(
            model, prompt, reused, max_tokens, stop, sampler, experts, obs, on_token,
        )?;
        // Positions 0..prompt.len() + decode_steps were run: the prompt and every generated
        // token that was fed back (the last chosen one is not, unless more followed).
        self.tokens.extend_from_slice(prompt);
        self.tokens
            .extend_from_slice(&g.tokens[..g.decode_steps.min(g.tokens.len())]);
        Ok((g, reused))
    }
}
