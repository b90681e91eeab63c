//! A packed model ready to answer one request after another: its weights on a compute backend,
//! its experts streamed through io-sched under a budget with prediction, the prompt cache (the
//! last conversation's context is kept and a prompt that extends it prefills only the new
//! tokens), stop tokens, stop strings and cancellation.
//!
//! The CLI's `serve` worker and `chat` REPL and the C ABI's `fme_generate` all drive this one
//! state machine.
//!
//! ```no_run
//! use flashmoe_engine::{ExpertBudget, GenerationRequest, ModelSession, SessionOptions};
//! use std::ops::ControlFlow;
//! let opts = SessionOptions::new().budget(ExpertBudget::Share(0.25)).max_seq(1024);
//! let mut s = ModelSession::open("models/tiny-qwen3-moe-q4".as_ref(),
//!                                flashmoe_backends::CpuBackend::new(), opts)?;
//! let prompt = s.model().tokenizer.encode("The Rust programming language")?;
//! let out = s.generate(&GenerationRequest::greedy(prompt, 32), &mut |_id, text| {
//!     print!("{text}");
//!     ControlFlow::Continue(())
//! })?;
//! println!("\n{} tokens, {:?}", out.completion_tokens, out.finish);
//! # Ok::<(), flashmoe_engine::EngineError>(())
//! ```

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use flashmoe_backends::ComputeBackend;
use io_sched::Scheduler;
use io_sched::backend::fallback::Fallback;
use io_sched::backend::select::BackendConfig;

use crate::error::{EngineError, Result};
use crate::model::MoeModel;
use crate::packed_model::PackedModel;
use crate::prefetch_policy::PrefetchPolicy;
use crate::prompt_cache::PromptCache;
use crate::sampler::Sampler;
use crate::streamed_model::{Streamed, open_streamed};
use crate::streaming::{Prediction, Prefetcher, SchedExperts};
use crate::text_stream::TextStream;

/// How much memory the expert cache may use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExpertBudget {
    /// Bytes.
    Bytes(u64),
    /// A share in `(0, 1]` of all expert records' bytes.
    Share(f64),
}

impl ExpertBudget {
    /// The budget in bytes for a model whose expert records take `all_bytes` in all.
    pub fn bytes(self, all_bytes: u64) -> Result<u64> {
        match self {
            ExpertBudget::Bytes(0) => Err(EngineError::OutOfRange {
                what: "expert budget bytes",
                value: 0,
                limit: 1,
            }),
            ExpertBudget::Bytes(b) => Ok(b),
            ExpertBudget::Share(s) if s.is_finite() && s > 0.0 && s <= 1.0 => {
                Ok((all_bytes as f64 * s).ceil() as u64)
            }
            ExpertBudget::Share(s) => Err(EngineError::Request {
                reason: format!("expert budget share {s} is not in (0, 1]"),
            }),
        }
    }
}

/// How to open a [`ModelSession`].
#[non_exhaustive]
pub struct SessionOptions {
    /// Expert cache size (default: 25% of all expert bytes).
    pub budget: ExpertBudget,
    /// Positions of the KV cache (prompt + answer); capped at the model's
    /// `max_position_embeddings` (default 4096).
    pub max_seq: usize,
    /// Read backend of the expert cache (default: the best this OS has).
    pub io: BackendConfig,
    /// What is prefetched (default: the blend of pre-gate scores and routing history).
    pub prediction: Prediction,
    /// What is hinted and evicted (default: the best measured for the prediction).
    pub prefetch: PrefetchPolicy,
    /// Prompt tokens per prefill chunk (default: [`MoeModel::default_prefill_chunk`], from
    /// the activation memory a chunk needs; 1 is token by token).
    pub prefill_chunk: Option<usize>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            budget: ExpertBudget::Share(0.25),
            max_seq: 4096,
            io: BackendConfig::default(),
            prediction: Prediction::Blend,
            prefetch: PrefetchPolicy::default(),
            prefill_chunk: None,
        }
    }
}

impl SessionOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the expert cache size.
    pub fn budget(mut self, budget: ExpertBudget) -> Self {
        self.budget = budget;
        self
    }
    /// Sets the KV cache positions.
    pub fn max_seq(mut self, positions: usize) -> Self {
        self.max_seq = positions;
        self
    }
    /// Sets the read backend.
    pub fn io(mut self, io: BackendConfig) -> Self {
        self.io = io;
        self
    }
    /// Sets what is prefetched.
    pub fn prediction(mut self, prediction: Prediction) -> Self {
        self.prediction = prediction;
        self
    }
    /// Sets what is hinted and evicted.
    pub fn prefetch(mut self, policy: PrefetchPolicy) -> Self {
        self.prefetch = policy;
        self
    }
    /// Sets the prompt tokens per prefill chunk (1: token by token).
    pub fn prefill_chunk(mut self, n: usize) -> Self {
        self.prefill_chunk = Some(n);
        self
    }
}

/// One generation request, already tokenized.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GenerationRequest {
    /// Prompt token ids (the whole conversation: the prompt cache reuses what it still holds).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (fewer if the context fills up first).
    pub max_tokens: usize,
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Sampler seed.
    pub seed: u64,
    /// Stop strings (the text ends before the first one).
    pub stop: Vec<String>,
    /// Extra stop tokens (besides the model's end-of-sequence ids; both off with
    /// `ignore_eos`).
    pub stop_tokens: Vec<u32>,
    /// Keep going after end-of-sequence tokens.
    pub ignore_eos: bool,
}

impl GenerationRequest {
    /// Greedy decoding of up to `max_tokens` tokens after `prompt`, stopping at end-of-sequence.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            stop_tokens: Vec::new(),
            ignore_eos: false,
        }
    }
    /// Sets sampling: temperature, nucleus mass and seed.
    pub fn sampling(mut self, temperature: f32, top_p: f32, seed: u64) -> Self {
        (self.temperature, self.top_p, self.seed) = (temperature, top_p, seed);
        self
    }
    /// Sets the stop strings.
    pub fn stop(mut self, stop: Vec<String>) -> Self {
        self.stop = stop;
        self
    }
    /// Sets extra stop tokens.
    pub fn stop_tokens(mut self, ids: Vec<u32>) -> Self {
        self.stop_tokens = ids;
        self
    }
    /// Whether to go on after end-of-sequence tokens.
    pub fn ignore_eos(mut self, ignore: bool) -> Self {
        self.ignore_eos = ignore;
        self
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
    /// The caller cancelled it.
    Cancelled,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length | Finish::Cancelled => "length",
        }
    }
}

/// What a generation produced.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// The text (without a stop token or stop string).
    pub text: String,
    /// Every token chosen, a stop token included.
    pub tokens: Vec<u32>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, reused from the previous request's context (not prefilled again).
    pub cached_tokens: usize,
    /// Tokens generated (a stop token included).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
    /// Seconds spent on the prompt.
    pub prefill_secs: f64,
    /// Seconds spent on the generated tokens.
    pub decode_secs: f64,
}

/// The model, its experts, prefetcher and prompt cache.
pub struct ModelSession<B: ComputeBackend> {
    packed: PackedModel,
    model: MoeModel<B>,
    experts: SchedExperts,
    prefetch: Prefetcher,
    cache: PromptCache,
    sched: Arc<Scheduler>,
    fallbacks: Vec<Fallback>,
    preloaded: Option<io_sched::Preloaded>,
}

impl<B: ComputeBackend> ModelSession<B> {
    /// Opens the packed model in `dir` on `be`.
    pub fn open(dir: &Path, be: B, opts: SessionOptions) -> Result<Self> {
        let packed = PackedModel::open(dir)?;
        let all_slots = packed.experts.max_read_len()
            * (packed.experts.num_layers() as u64 * packed.experts.num_experts() as u64);
        let budget = opts.budget.bytes(all_slots)?;
        let streamed = open_streamed(&packed, budget, &opts.io, opts.prediction, &opts.prefetch)?;
        let max_seq = opts
            .max_seq
            .min(packed.config.max_position_embeddings)
            .max(2);
        let mut model = packed.load_model(be, max_seq)?;
        if let Some(n) = opts.prefill_chunk {
            model.set_prefill_chunk(n);
        }
        let Streamed {
            scheduler: sched,
            experts,
            prefetch,
            fallbacks,
            preloaded,
            ..
        } = streamed;
        Ok(Self {
            packed,
            model,
            experts,
            prefetch,
            cache: PromptCache::new(),
            sched,
            fallbacks,
            preloaded,
        })
    }

    /// What was read into the expert cache at open ([`PrefetchPolicy::preload`]), if anything.
    pub fn preloaded(&self) -> Option<io_sched::Preloaded> {
        self.preloaded
    }

    /// The packed model (tokenizer, config, end-of-sequence ids).
    pub fn model(&self) -> &PackedModel {
        &self.packed
    }

    /// Positions of the context (prompt + answer).
    pub fn ctx(&self) -> usize {
        self.model.max_seq()
    }

    /// The tokens the context holds from the last request.
    pub fn cached_tokens(&self) -> usize {
        self.cache.tokens().len()
    }

    /// Forgets the kept context.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.model.reset();
    }

    /// Prompt tokens per prefill chunk.
    pub fn prefill_chunk(&self) -> usize {
        self.model.prefill_chunk()
    }

    /// What chunked prefills did so far (unions of experts per layer).
    pub fn prefill_stats(&self) -> crate::PrefillStats {
        self.model.prefill_stats()
    }

    /// The scheduler (for statistics).
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.sched
    }

    /// Why the read backend is not the one asked for (empty if it is).
    pub fn fallbacks(&self) -> &[Fallback] {
        &self.fallbacks
    }

    /// Runs `req`, giving each chosen token that is not a stop token, with the text it
    /// completes (empty while a character or a possible stop string is pending), to
    /// `on_token(Some(id), text)`, which may cancel by returning [`ControlFlow::Break`]
    /// (checked at every token). Text still held back when the length runs out comes last, as
    /// `on_token(None, text)`.
    pub fn generate(
        &mut self,
        req: &GenerationRequest,
        on_token: &mut dyn FnMut(Option<u32>, &str) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        if req.prompt.is_empty() {
            return Err(EngineError::Request {
                reason: "the prompt encodes to no tokens".into(),
            });
        }
        let room = self.ctx().saturating_sub(req.prompt.len());
        if room == 0 {
            return Err(EngineError::Request {
                reason: format!(
                    "the prompt is {} tokens; the context holds {}",
                    req.prompt.len(),
                    self.ctx()
                ),
            });
        }
        let max_tokens = req.max_tokens.min(room);
        let stop: Vec<u32> = if req.ignore_eos {
            Vec::new()
        } else {
            self.packed
                .eos
                .iter()
                .chain(&req.stop_tokens)
                .copied()
                .collect()
        };
        let mut sampler = Sampler::new(req.temperature, req.top_p, req.seed);
        let mut text = TextStream::new(req.stop.clone());
        let mut out = String::new();
        let mut cancelled = false;
        let tok = &self.packed.tokenizer;
        let mut each = |id: u32| -> Result<ControlFlow<()>> {
            if stop.contains(&id) {
                return Ok(ControlFlow::Break(()));
            }
            let delta = text.push(tok, id)?;
            out.push_str(&delta);
            if on_token(Some(id), &delta).is_break() {
                cancelled = true;
                return Ok(ControlFlow::Break(()));
            }
            Ok(if text.stopped() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        };
        let (g, reused) = self.cache.generate(
            &mut self.model,
            &req.prompt,
            max_tokens,
            &stop,
            &mut sampler,
            &mut self.experts,
            &mut self.prefetch,
            &mut each,
        )?;
        let finish = if cancelled {
            Finish::Cancelled
        } else if g.stopped || text.stopped() {
            Finish::Stop
        } else {
            let rest = text.finish(tok)?;
            if !rest.is_empty() {
                out.push_str(&rest);
                let _ = on_token(None, &rest);
            }
            Finish::Length
        };
        Ok(Outcome {
            text: out,
            prompt_tokens: req.prompt.len(),
            cached_tokens: reused,
            completion_tokens: g.tokens.len(),
            tokens: g.tokens,
            finish,
            prefill_secs: g.prefill_secs,
            decode_secs: g.decode_secs,
        })
    }
}
