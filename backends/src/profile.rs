//! Per-phase wall-clock accounting of decode steps (`flashmoe generate --profile`).
//!
//! A [`Profile`] holds one nanosecond counter per [`Phase`]. [`crate::Profiled`] fills it from
//! the backend side (every op it forwards is timed and charged to a phase); the engine charges
//! the phases it owns (waiting for expert records, sampling) through
//! [`crate::ComputeBackend::profile`], which is `None` for every other backend, so nothing is
//! timed when profiling is off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where a decode step's time goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// The token's embedding row.
    Embedding,
    /// RMSNorms (layer norms, q/k norms, gated norms).
    Norms,
    /// `q_proj` (with its output-gate half where the family has one).
    QProj,
    /// `k_proj`.
    KProj,
    /// `v_proj`.
    VProj,
    /// `q_proj`, `k_proj` and `v_proj` (and an output gate) in one pass over the same input
    /// ([`crate::ComputeBackend::matvec_many`]).
    QkvProj,
    /// `o_proj`.
    OProj,
    /// RoPE, KV-cache writes, softmax attention, output gate.
    AttnCore,
    /// Gated DeltaNet layers (projections, conv, recurrent step).
    DeltaNet,
    /// Router matvecs (and pre-gate), top-k, logits read back.
    Router,
    /// The routed experts' gate/up/down matvecs, SwiGLU and combine.
    Experts,
    /// Waiting for expert records (cache lookup, I/O).
    ExpertWait,
    /// A shared expert or dense FFN.
    SharedFfn,
    /// The output projection.
    LmHead,
    /// Choosing the next token from the logits.
    Sampling,
    /// Residual adds, copies and other small ops.
    OtherOps,
}

impl Phase {
    /// Every phase, in table order.
    pub const ALL: [Phase; 16] = [
        Phase::Embedding,
        Phase::Norms,
        Phase::QProj,
        Phase::KProj,
        Phase::VProj,
        Phase::QkvProj,
        Phase::OProj,
        Phase::AttnCore,
        Phase::DeltaNet,
        Phase::Router,
        Phase::Experts,
        Phase::ExpertWait,
        Phase::SharedFfn,
        Phase::LmHead,
        Phase::Sampling,
        Phase::OtherOps,
    ];

    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Embedding => "embedding",
            Phase::Norms => "norms",
            Phase::QProj => "q_proj",
            Phase::KProj => "k_proj",
            Phase::VProj => "v_proj",
            Phase::QkvProj => "q+k+v (one pass)",
            Phase::OProj => "o_proj",
            Phase::AttnCore => "attention core (rope, kv, softmax)",
            Phase::DeltaNet => "gated deltanet",
            Phase::Router => "router (+ pre-gate, top-k)",
            Phase::Experts => "routed experts (gate/up/down)",
            Phase::ExpertWait => "expert wait (cache, I/O)",
            Phase::SharedFfn => "shared expert / dense FFN",
            Phase::LmHead => "lm_head",
            Phase::Sampling => "sampling",
            Phase::OtherOps => "other ops (residual, copies)",
        }
    }

    fn index(self) -> usize {
        Phase::ALL.iter().position(|&p| p == self).unwrap_or(0)
    }

    /// The phase a resident matrix's matvec is charged to, from its HF tensor name.
    ///
    /// ```
    /// use flashmoe_backends::profile::Phase;
    /// assert_eq!(Phase::of_weight("model.layers.3.self_attn.k_proj.weight"), Phase::KProj);
    /// assert_eq!(Phase::of_weight("model.layers.3.mlp.gate.weight"), Phase::Router);
    /// assert_eq!(Phase::of_weight("model.embed_tokens.weight"), Phase::LmHead);
    /// ```
    pub fn of_weight(name: &str) -> Phase {
        let has = |s: &str| name.contains(s);
        if has("lm_head") || has("embed_tokens") {
            // A matvec with the embedding table is a tied lm_head.
            Phase::LmHead
        } else if has("linear_attn") {
            Phase::DeltaNet
        } else if has("shared_expert")
            || has("mlp.gate_proj")
            || has("mlp.up_proj")
            || has("mlp.down_proj")
        {
            Phase::SharedFfn
        } else if has("q_proj") {
            Phase::QProj
        } else if has("k_proj") {
            Phase::KProj
        } else if has("v_proj") {
            Phase::VProj
        } else if has("o_proj") {
            Phase::OProj
        } else if has(".gate.") || has("router") {
            Phase::Router
        } else {
            Phase::OtherOps
        }
    }
}

/// Nanoseconds and calls per [`Phase`], shared between the backend and the engine.
#[derive(Debug, Default)]
pub struct Profile {
    ns: [AtomicU64; Phase::ALL.len()],
    calls: [AtomicU64; Phase::ALL.len()],
}

impl Profile {
    /// An empty profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// Charges `d` to `phase`.
    pub fn record(&self, phase: Phase, d: Duration) {
        let i = phase.index();
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.ns[i].fetch_add(ns, Ordering::Relaxed);
        self.calls[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets everything recorded (e.g. the prefill, so that the table covers decode steps).
    pub fn reset(&self) {
        for c in self.ns.iter().chain(&self.calls) {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Seconds and calls recorded per phase, in [`Phase::ALL`] order.
    pub fn snapshot(&self) -> Vec<(Phase, f64, u64)> {
        Phase::ALL
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let ns = self.ns[i].load(Ordering::Relaxed);
                (p, ns as f64 * 1e-9, self.calls[i].load(Ordering::Relaxed))
            })
            .collect()
    }

    /// The table printed by `--profile`: ms per token and share of token time per phase, over
    /// `steps` decode steps that took `total_secs` in all; what no phase accounts for is the
    /// last row ("rest").
    pub fn table(&self, total_secs: f64, steps: usize) -> String {
        use std::fmt::Write;
        let steps = steps.max(1) as f64;
        let token_ms = total_secs * 1e3 / steps;
        let pct = |ms: f64| {
            if token_ms > 0.0 {
                100.0 * ms / token_ms
            } else {
                0.0
            }
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<36} {:>10} {:>7} {:>10}",
            "phase", "ms/token", "%", "calls/tok"
        );
        let mut accounted = 0.0;
        for (p, secs, calls) in self.snapshot() {
            if calls == 0 {
                continue;
            }
            let ms = secs * 1e3 / steps;
            accounted += ms;
            let _ = writeln!(
                s,
                "{:<36} {:>10.3} {:>6.1}% {:>10.1}",
                p.label(),
                ms,
                pct(ms),
                calls as f64 / steps
            );
        }
        let rest = token_ms - accounted;
        let _ = writeln!(
            s,
            "{:<36} {:>10.3} {:>6.1}%",
            "rest (engine overhead)",
            rest,
            pct(rest)
        );
        let _ = writeln!(
            s,
            "{:<36} {:>10.3} {:>6.1}%   ({:.1} tok/s)",
            "token",
            token_ms,
            100.0,
            if token_ms > 0.0 { 1e3 / token_ms } else { 0.0 }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_resets_and_tabulates() {
        let p = Profile::new();
        p.record(Phase::LmHead, Duration::from_millis(6));
        p.record(Phase::LmHead, Duration::from_millis(2));
        p.record(Phase::Sampling, Duration::from_millis(1));
        let snap = p.snapshot();
        let lm = snap.iter().find(|r| r.0 == Phase::LmHead).unwrap();
        assert!((lm.1 - 0.008).abs() < 1e-9 && lm.2 == 2);
        // 2 steps of 10 ms: lm_head 4 ms = 40%, sampling 0.5 ms, rest 5.5 ms.
        let t = p.table(0.020, 2);
        assert!(t.contains("lm_head") && t.contains("40.0%"), "{t}");
        assert!(t.contains("5.500") && t.contains("100.0 tok/s"), "{t}");
        assert!(
            !t.contains("embedding"),
            "phases never charged are left out: {t}"
        );
        p.reset();
        assert!(p.snapshot().iter().all(|r| r.1 == 0.0 && r.2 == 0));
    }

    #[test]
    fn weights_map_to_their_phase() {
        let cases = [
            ("model.layers.0.self_attn.q_proj.weight", Phase::QProj),
            ("model.layers.0.self_attn.o_proj.weight", Phase::OProj),
            ("model.layers.0.self_attn.v_proj.weight", Phase::VProj),
            ("model.layers.0.block_sparse_moe.gate.weight", Phase::Router),
            (
                "model.layers.0.mlp.shared_expert.gate_proj.weight",
                Phase::SharedFfn,
            ),
            (
                "model.layers.0.mlp.shared_expert_gate.weight",
                Phase::SharedFfn,
            ),
            (
                "model.layers.0.linear_attn.in_proj_qkv.weight",
                Phase::DeltaNet,
            ),
            ("lm_head.weight", Phase::LmHead),
            ("something.else", Phase::OtherOps),
        ];
        for (name, want) in cases {
            assert_eq!(Phase::of_weight(name), want, "{name}");
        }
    }
}
