//! Prefill and time to first token: token by token (flash-moe: each prompt token runs the
//! decode path) against chunked (flashmoe: `C` prompt tokens go through a layer together, so
//! the layer's weights are read once per chunk and each routed expert of the chunk — the
//! *union* of its tokens' experts — is read once).
//!
//! Per chunk and layer:
//!
//! ```text
//! time    = overhead + max(weight bytes / effective bandwidth, FLOPs / effective FLOP rate)
//!         + missed union bytes / read bandwidth                      (no overlap assumed)
//!         + non-expert bytes that do not fit in memory / read bandwidth
//! weights = non-expert bytes of the layer + |union| × expert bytes
//! FLOPs   = C × 2 × (non-expert params of the layer + k × expert params)
//! ```
//!
//! The union sizes are counted on the routing trace itself (the synthetic one, calibrated to
//! flash-moe's measured hit rates, or a recorded one), chunk by chunk and layer by layer:
//! no independence assumption. At `C = 1` the union is the token's own `k` experts, so
//! chunked prefill reads exactly the token-by-token bytes, and never more for larger `C`.
//! Attention FLOPs (quadratic in the prompt) and the LM head are left out: for a 2,000-token
//! prompt they are a few percent of the weight FLOPs of these models.

use std::collections::HashSet;

use io_sched::trace::Trace;
use serde::{Deserialize, Serialize};

use crate::figure::Fig;

/// Arithmetic throughput of a device, for batched (compute-bound) prefill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrefillProfile {
    /// Peak GPU FP16 throughput, TFLOPS.
    pub gpu_tflops: Fig,
    /// Share of the peak quantized GEMM kernels reach.
    pub flop_efficiency: Fig,
}

/// Everything the prefill model needs, already resolved to numbers.
#[derive(Debug, Clone, Copy)]
pub struct PrefillSpec {
    pub layers: u32,
    pub k: u32,
    pub expert_bytes: f64,
    pub expert_params: f64,
    pub dense_layer_bytes: f64,
    pub dense_layer_params: f64,
    /// Fixed per-layer overhead, s.
    pub overhead_s: f64,
    /// Bytes/s the kernels read weights at.
    pub weight_bps: f64,
    /// FLOP/s the kernels reach.
    pub flops: f64,
    /// Bytes/s of the expert reads.
    pub read_bps: f64,
    /// Share of union experts already cached.
    pub hit_rate: f64,
    /// Non-expert bytes of a layer that do not fit in memory and are streamed from flash
    /// once per pass (per chunk), read at `read_bps`.
    pub dense_stream_bytes_per_layer: f64,
}

/// TTFT of one prompt at one chunk size, split into its terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prefill {
    pub prompt_tokens: u64,
    pub chunk: u64,
    /// Expert bytes read from flash (after cache hits).
    pub expert_read_bytes: f64,
    /// Mean union size per chunk and layer.
    pub mean_union: f64,
    pub overhead_s: f64,
    /// Weight-bandwidth time, where it bounds the chunk.
    pub weight_s: f64,
    /// FLOP time, where it bounds the chunk.
    pub flop_s: f64,
    pub io_s: f64,
    /// Streaming the non-expert weights that do not fit in memory, once per chunk.
    pub dense_io_s: f64,
    pub ttft_s: f64,
}

/// Distinct experts routed in each chunk of `chunk` tokens, per layer: `sizes[c][l]`.
/// Tokens `0..prompt` of `trace` (wrapping if it is shorter).
pub fn union_sizes(trace: &Trace, prompt: u64, chunk: u64) -> Vec<Vec<usize>> {
    let chunk = chunk.max(1);
    let layers = trace.header.layers;
    let n = trace.tokens().max(1);
    let mut out = Vec::new();
    let mut set = HashSet::new();
    let mut start = 0;
    while start < prompt {
        let end = (start + chunk).min(prompt);
        let mut per_layer = Vec::with_capacity(layers as usize);
        for l in 0..layers {
            set.clear();
            for t in start..end {
                set.extend(trace.experts_at(t % n, l).iter().copied());
            }
            per_layer.push(set.len());
        }
        out.push(per_layer);
        start = end;
    }
    out
}

/// TTFT of a `prompt`-token prompt prefilled in chunks of `chunk` tokens (1 = token by
/// token through the same model).
pub fn prefill(s: &PrefillSpec, trace: &Trace, prompt: u64, chunk: u64) -> Prefill {
    let chunk = chunk.max(1);
    let sizes = union_sizes(trace, prompt, chunk);
    let (mut over, mut wt, mut fl, mut io, mut bytes, mut unions) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let mut dense_io = 0.0;
    let mut start = 0u64;
    for per_layer in &sizes {
        let c = chunk.min(prompt - start) as f64;
        start += chunk;
        for &u in per_layer {
            let u = u as f64;
            unions += u;
            over += s.overhead_s;
            let w = (s.dense_layer_bytes + u * s.expert_bytes) / s.weight_bps;
            let f = c * 2.0 * (s.dense_layer_params + s.k as f64 * s.expert_params) / s.flops;
            if w >= f {
                wt += w;
            } else {
                fl += f;
            }
            dense_io += s.dense_stream_bytes_per_layer / s.read_bps;
            let missed = u * s.expert_bytes * (1.0 - s.hit_rate);
            bytes += missed;
            io += missed / s.read_bps;
        }
    }
    let cells = (sizes.len() * s.layers as usize).max(1) as f64;
    Prefill {
        prompt_tokens: prompt,
        chunk,
        expert_read_bytes: bytes,
        mean_union: unions / cells,
        overhead_s: over,
        weight_s: wt,
        flop_s: fl,
        io_s: io,
        dense_io_s: dense_io,
        ttft_s: over + wt + fl + io + dense_io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{SynthParams, generate};

    fn spec() -> PrefillSpec {
        PrefillSpec {
            layers: 4,
            k: 4,
            expert_bytes: 7e6,
            expert_params: 12e6,
            dense_layer_bytes: 90e6,
            dense_layer_params: 170e6,
            overhead_s: 1e-4,
            weight_bps: 80e9,
            flops: 4e12,
            read_bps: 5e9,
            hit_rate: 0.3,
            dense_stream_bytes_per_layer: 1e6,
        }
    }

    #[test]
    fn chunked_reads_never_more_than_token_by_token_and_equal_at_one() {
        let t = generate(4, 64, 4, 300, &SynthParams::default(), 7).unwrap();
        let one = prefill(&spec(), &t, 200, 1);
        assert!((one.mean_union - 4.0).abs() < 1e-12);
        let mut last = one.expert_read_bytes;
        for c in [2, 8, 16, 64, 200, 512] {
            let p = prefill(&spec(), &t, 200, c);
            assert!(
                p.expert_read_bytes <= one.expert_read_bytes + 1e-6,
                "chunk {c}"
            );
            assert!(p.expert_read_bytes <= last + 1e-6, "monotone at chunk {c}");
            assert!(p.mean_union <= (c.min(200) * 4) as f64 + 1e-9);
            last = p.expert_read_bytes;
        }
        // With 64 experts a layer, a 64-token chunk routes most of them, far below 64 x 4.
        let big = prefill(&spec(), &t, 200, 64);
        assert!(big.expert_read_bytes < 0.5 * one.expert_read_bytes);
        assert!(big.ttft_s < one.ttft_s);
    }
}
