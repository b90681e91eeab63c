//! Opening a [`ModelSession`] from the CLI's arguments (`serve` and `chat` share it): the
//! budget as the user wrote it (`512M`, `25%`) and the context size.

use std::path::Path;

use flashmoe_backends::ComputeBackend;
use flashmoe_engine::{ExpertBudget, ModelSession, SessionOptions, Tokenizer};

use super::CliResult;
use super::generate::parse_budget;

/// How to open a model for serving or chatting.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Expert cache: bytes or a share of all experts (`25%`).
    pub budget: String,
    /// Positions of the KV cache (prompt + answer), at most the model's.
    pub ctx: usize,
    /// Prompt tokens per prefill chunk (`None`: the model's default from activation memory).
    pub prefill_chunk: Option<usize>,
}

/// `--budget` as an [`ExpertBudget`]: a percentage is a share of all expert bytes.
pub fn expert_budget(s: &str) -> CliResult<ExpertBudget> {
    if s.trim().ends_with('%') {
        // Checks the percentage's range; the share itself is exact.
        parse_budget(s, 1 << 40)?;
        let p: f64 = s.trim().trim_end_matches('%').trim().parse()?;
        return Ok(ExpertBudget::Share(p / 100.0));
    }
    Ok(ExpertBudget::Bytes(parse_budget(s, 0)?))
}

/// Opens the packed model in `dir` on `be` as `opts` says, with the prefetch policy
/// `generate` uses by default (the blend, cost-aware hints, next-use eviction; every expert
/// preloaded when the budget holds them all), and prints any read-backend fallback.
pub fn open<B: ComputeBackend>(
    dir: &Path,
    be: B,
    opts: &OpenOptions,
) -> CliResult<ModelSession<B>> {
    let mut options = SessionOptions::new()
        .budget(expert_budget(&opts.budget)?)
        .max_seq(opts.ctx);
    if let Some(n) = opts.prefill_chunk {
        options = options.prefill_chunk(n);
    }
    let s = ModelSession::open(dir, be, options)?;
    for why in s.fallbacks() {
        eprintln!("note: read backend fallback: {why}");
    }
    if let Some(p) = s.preloaded().filter(|p| p.read > 0) {
        eprintln!(
            "note: preloaded {} expert records ({:.1} MB) in {:.2} s: the budget holds every expert",
            p.read,
            p.bytes as f64 / 1e6,
            p.secs
        );
    }
    Ok(s)
}

/// Token id of `text` if it is exactly one token (a template's end-of-turn marker).
pub fn single_token(tok: &Tokenizer, text: &str) -> Option<u32> {
    match tok.encode(text).ok()?.as_slice() {
        [id] => Some(*id),
        _ => None,
    }
}
