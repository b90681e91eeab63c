//! The prompt's share of `generate --stats` / `--json`: time to first token, the chunking, and
//! the expert bytes read while prefilling beside the bytes of the chunks' unions (each expert
//! a chunk routes to, once per chunk and layer: what a prefill that reads each expert once per
//! chunk must read at least, cache hits aside).

use flashmoe_engine::PrefillStats;
use serde::Serialize;

/// Prefill figures of one run.
#[derive(Debug, Default, Serialize)]
pub struct PrefillReport {
    /// Prompt tokens per chunk (1: token by token).
    pub chunk: usize,
    /// Chunks run.
    pub chunks: u64,
    /// Time from the start of the prompt to the first generated token (prefill + sampling).
    pub ttft_ms: f64,
    /// Expert bytes read while the prompt ran (demand and prefetch).
    pub expert_bytes_read: u64,
    /// Bytes of the experts in every (chunk, layer) union, at the cache's record size.
    pub union_bytes: u64,
    /// `expert_bytes_read / union_bytes` (0 token by token: there are no unions).
    pub read_per_union_byte: f64,
    /// Mean experts per layer's union in a chunk.
    pub union_mean: f64,
    /// The largest such union.
    pub union_max: usize,
}

impl PrefillReport {
    /// The report from the model's counters; `slot` is the cache's record size.
    pub fn new(chunk: usize, ttft_secs: f64, bytes_read: u64, st: PrefillStats, slot: u64) -> Self {
        let union_bytes = st.union_experts * slot;
        Self {
            chunk,
            chunks: st.chunks,
            ttft_ms: ttft_secs * 1e3,
            expert_bytes_read: bytes_read,
            union_bytes,
            read_per_union_byte: if union_bytes > 0 {
                bytes_read as f64 / union_bytes as f64
            } else {
                0.0
            },
            union_mean: st.mean_union(),
            union_max: st.max_union,
        }
    }

    /// One line for `--stats`.
    pub fn print(&self, prompt_tokens: usize, tok_per_s: f64) {
        let read = self.expert_bytes_read as f64 / 1e6;
        if self.chunks == 0 {
            eprintln!(
                "prefill: {prompt_tokens} tokens token by token, {tok_per_s:.1} tok/s, TTFT {:.0} ms, experts read {read:.1} MB",
                self.ttft_ms
            );
            return;
        }
        eprintln!(
            "prefill: {prompt_tokens} tokens in {} chunks of {}, {tok_per_s:.1} tok/s, TTFT {:.0} ms; experts read {read:.1} MB = {:.2}x the chunks' unions ({:.1} MB; union per layer mean {:.1}, max {})",
            self.chunks,
            self.chunk,
            self.ttft_ms,
            self.read_per_union_byte,
            self.union_bytes as f64 / 1e6,
            self.union_mean,
            self.union_max
        );
    }
}
