//! A loaded model ready to answer one request after another: the packed model on its compute
//! backend, experts streamed through io-sched with pre-gate prefetching, the prompt cache
//! (the last conversation's context is kept and reused), and stop handling. `serve`'s worker
//! and `chat`'s REPL both drive this one state machine.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use flashmoe_backends::ComputeBackend;
use flashmoe_engine::{
    MoeModel, PackedModel, Prediction, Prefetcher, PromptCache, Sampler, SchedExperts, TextStream,
    Tokenizer, open_scheduler, streamed,
};
use io_sched::backend::select::BackendConfig;
use io_sched::{Scheduler, SchedulerConfig, SessionConfig};

use super::CliResult;
use super::generate::parse_budget;

/// How to open a model for serving or chatting.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Expert cache: bytes or a share of all experts (`25%`).
    pub budget: String,
    /// Positions of the KV cache (prompt + answer), at most the model's.
    pub ctx: usize,
}

/// One generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct Job {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
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
pub struct Outcome {
    /// The text (without a stop token or stop string).
    pub text: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, reused from the previous request's context (not prefilled again).
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
}

/// The model, its experts, prefetcher and prompt cache.
pub struct Session<B: ComputeBackend> {
    /// The packed model (tokenizer, config, end-of-sequence ids).
    pub m: PackedModel,
    model: MoeModel<B>,
    experts: SchedExperts,
    prefetch: Prefetcher,
    cache: PromptCache,
    sched: Arc<Scheduler>,
}

impl<B: ComputeBackend> Session<B> {
    /// Opens the packed model in `dir` on `be`.
    pub fn open(dir: &Path, be: B, opts: &OpenOptions) -> CliResult<Self> {
        let m = PackedModel::open(dir)?;
        let all_slots = m.experts.max_read_len()
            * (m.experts.num_layers() as u64 * m.experts.num_experts() as u64);
        let budget = parse_budget(&opts.budget, all_slots)?;
        let (sched, fallbacks) = open_scheduler(
            &m,
            SchedulerConfig::with_budget(budget),
            &BackendConfig::default(),
        )?;
        for why in &fallbacks {
            eprintln!("note: read backend fallback: {why}");
        }
        let ctx = opts.ctx.min(m.config.max_position_embeddings).max(2);
        let model = m.load_model(be, ctx)?;
        // generate's default policy: the pre-gate top k + 2 per layer, one layer ahead.
        let k = m.config.top_k;
        let policy = SessionConfig::new(k).with_per_layer(k + 2);
        let (experts, prefetch) = streamed(sched.clone(), m.record, Prediction::Pregate, policy)?;
        Ok(Self {
            m,
            model,
            experts,
            prefetch,
            cache: PromptCache::new(),
            sched,
        })
    }

    /// Positions of the context (prompt + answer).
    pub fn ctx(&self) -> usize {
        self.model.max_seq()
    }

    /// The prompt tokens held from the last request.
    pub fn cached_tokens(&self) -> usize {
        self.cache.tokens().len()
    }

    /// Forgets the kept context.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.model.reset();
    }

    /// The scheduler (for statistics).
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.sched
    }

    /// Runs `job`, giving each piece of final text to `on_text`, which may cancel by
    /// returning [`ControlFlow::Break`] (checked at every token).
    pub fn generate(
        &mut self,
        job: &Job,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> CliResult<Outcome> {
        if job.prompt.is_empty() {
            return Err("the prompt encodes to no tokens".into());
        }
        let room = self.ctx().saturating_sub(job.prompt.len());
        if room == 0 {
            return Err(format!(
                "the prompt is {} tokens; the context holds {}",
                job.prompt.len(),
                self.ctx()
            )
            .into());
        }
        let max_tokens = job.max_tokens.min(room);
        let stop: Vec<u32> = if job.ignore_eos {
            Vec::new()
        } else {
            self.m.eos.iter().chain(&job.stop_tokens).copied().collect()
        };
        let mut sampler = Sampler::new(job.temperature, job.top_p, job.seed);
        let mut text = TextStream::new(job.stop.clone());
        let mut out = String::new();
        let mut cancelled = false;
        let tok = &self.m.tokenizer;
        let mut each = |id: u32| -> flashmoe_engine::Result<ControlFlow<()>> {
            if stop.contains(&id) {
                return Ok(ControlFlow::Break(()));
            }
            let delta = text.push(tok, id)?;
            if !delta.is_empty() {
                out.push_str(&delta);
            }
            if on_text(&delta).is_break() {
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
            &job.prompt,
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
                let _ = on_text(&rest);
            }
            Finish::Length
        };
        Ok(Outcome {
            text: out,
            prompt_tokens: job.prompt.len(),
            cached_tokens: reused,
            completion_tokens: g.tokens.len(),
            finish,
        })
    }
}

/// Token id of `text` if it is exactly one token (a template's end-of-turn marker).
pub fn single_token(tok: &Tokenizer, text: &str) -> Option<u32> {
    match tok.encode(text).ok()?.as_slice() {
        [id] => Some(*id),
        _ => None,
    }
}
