//! Routing statistics of a trace: what makes a workload real for an expert cache.
//!
//! - **Next-token reuse** per layer: the share of a token's routed experts that the previous
//!   token also used (`|E_t ∩ E_{t−1}| / k`, averaged over tokens 1..T). Independent uniform
//!   routing gives `k / E`.
//! - **Top-10% share** per layer: the share of routed slots taken by the layer's
//!   `ceil(E / 10)` most used experts. Uniform routing gives about `ceil(E/10) / E`.
//! - **Pre-gate recall**: the share of layer `L + 1`'s routed experts that the recorded
//!   pre-gate scores (`L + 1`'s router on `L`'s hidden state) rank in their top `k`
//!   ([`crate::predict::recorded_pregate_recall`]); from a far trace, layer `L + 2`'s.
//!
//! A trace holds one token stream: a fixture trace of several sequences is read as one, so
//! its few sequence boundaries count as ordinary token pairs.

use io_sched::trace::Trace;

use crate::predict::recorded_pregate_recall;

/// The statistics of one trace (see the module doc).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoutingStats {
    /// Tokens in the trace.
    pub tokens: u64,
    /// Layers, experts per layer, experts per token.
    pub layers: u32,
    /// Experts per layer.
    pub experts: u32,
    /// Experts routed per token and layer.
    pub k: u32,
    /// Next-token reuse per layer (`None` with fewer than two tokens).
    pub reuse: Vec<Option<f64>>,
    /// Top-10% share per layer (`None` without tokens).
    pub top10: Vec<Option<f64>>,
    /// Pre-gate recall one layer ahead, if the trace records scores.
    pub pregate_recall: Option<f64>,
    /// Pre-gate recall two layers ahead, from a far trace of the same run.
    pub pregate_recall_far: Option<f64>,
}

impl RoutingStats {
    /// The statistics of `trace`, and of `far` (its two-layers-ahead twin), if given.
    pub fn of(trace: &Trace, far: Option<&Trace>) -> Self {
        let h = trace.header;
        let (k, e) = (h.k as usize, h.experts as usize);
        let mut reuse = Vec::with_capacity(h.layers as usize);
        let mut top10 = Vec::with_capacity(h.layers as usize);
        let top_n = e.div_ceil(10);
        for layer in 0..h.layers {
            let mut shared = 0u64;
            for t in 1..trace.tokens() {
                let prev = trace.experts_at(t - 1, layer);
                shared += trace
                    .experts_at(t, layer)
                    .iter()
                    .filter(|x| prev.contains(x))
                    .count() as u64;
            }
            let pairs = trace.tokens().saturating_sub(1);
            reuse.push((pairs > 0).then(|| shared as f64 / (pairs * k as u64) as f64));
            let mut counts = vec![0u64; e];
            for t in 0..trace.tokens() {
                for &x in trace.experts_at(t, layer) {
                    if let Some(c) = counts.get_mut(x as usize) {
                        *c += 1;
                    }
                }
            }
            let all: u64 = counts.iter().sum();
            counts.sort_unstable_by(|a, b| b.cmp(a));
            let top: u64 = counts[..top_n.min(e)].iter().sum();
            top10.push((all > 0).then(|| top as f64 / all as f64));
        }
        Self {
            tokens: trace.tokens(),
            layers: h.layers,
            experts: h.experts,
            k: h.k,
            reuse,
            top10,
            pregate_recall: recorded_pregate_recall(trace, trace, k, 1),
            pregate_recall_far: far.and_then(|f| recorded_pregate_recall(f, trace, k, 2)),
        }
    }

    /// Mean of the per-layer values that exist.
    pub fn mean(v: &[Option<f64>]) -> Option<f64> {
        let xs: Vec<f64> = v.iter().flatten().copied().collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    }

    /// Next-token reuse of independent uniform routing, `k / E`.
    pub fn reuse_baseline(&self) -> f64 {
        self.k as f64 / self.experts.max(1) as f64
    }

    /// Top-10% share of perfectly balanced routing, `ceil(E / 10) / E`.
    pub fn top10_baseline(&self) -> f64 {
        self.experts.div_ceil(10) as f64 / self.experts.max(1) as f64
    }
}

/// A side-by-side table of `stats`, one column per trace named by `names`.
pub fn table(names: &[String], stats: &[RoutingStats]) -> String {
    use std::fmt::Write;
    let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    let w = names.iter().map(|n| n.len()).max().unwrap_or(0).max(14);
    let mut s = String::new();
    let mut row = |label: &str, cells: Vec<String>| {
        let _ = write!(s, "{label:<34}");
        for c in cells {
            let _ = write!(s, " {c:>w$}");
        }
        s.push('\n');
    };
    row("", names.to_vec());
    row(
        "tokens",
        stats.iter().map(|x| x.tokens.to_string()).collect(),
    );
    row(
        "layers x experts (k)",
        stats
            .iter()
            .map(|x| format!("{}x{} ({})", x.layers, x.experts, x.k))
            .collect(),
    );
    row(
        "next-token reuse, mean",
        stats
            .iter()
            .map(|x| f(RoutingStats::mean(&x.reuse)))
            .collect(),
    );
    row(
        "  uniform baseline k/E",
        stats.iter().map(|x| f(Some(x.reuse_baseline()))).collect(),
    );
    row(
        "top-10% share, mean",
        stats
            .iter()
            .map(|x| f(RoutingStats::mean(&x.top10)))
            .collect(),
    );
    row(
        "  balanced baseline",
        stats.iter().map(|x| f(Some(x.top10_baseline()))).collect(),
    );
    row(
        "pre-gate recall (L+1 from L)",
        stats.iter().map(|x| f(x.pregate_recall)).collect(),
    );
    row(
        "pre-gate recall (L+2 from L, far)",
        stats.iter().map(|x| f(x.pregate_recall_far)).collect(),
    );
    let list = |v: &[Option<f64>]| {
        v.iter()
            .map(|x| x.map_or("-".to_string(), |v| format!("{v:.2}")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (n, x) in names.iter().zip(stats) {
        let _ = writeln!(s, "{n}: reuse per layer   {}", list(&x.reuse));
        let _ = writeln!(s, "{n}: top-10% per layer {}", list(&x.top10));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_trace_gives_hand_computed_values() {
        // 3 tokens, 2 layers, 10 experts, k = 2.
        // layer 0: {0,1} {1,2} {1,2}   reuse: (1 + 2) / (2 pairs * 2) = 0.75
        //          counts 0:1 1:3 2:2; top ceil(10/10) = 1 expert holds 3 of 6 slots = 0.5
        // layer 1: {3,4} {5,6} {3,5}   reuse: (0 + 1) / 4 = 0.25
        //          counts 3:2 4:1 5:2 6:1; top 1 holds 2 of 6 = 1/3
        let ids = vec![0, 1, 3, 4, 1, 2, 5, 6, 1, 2, 3, 5];
        let mut t = Trace::from_ids(2, 10, 2, ids).unwrap();
        let s = RoutingStats::of(&t, None);
        assert_eq!(s.tokens, 3);
        assert_eq!(s.reuse, vec![Some(0.75), Some(0.25)]);
        assert_eq!(s.top10[0], Some(0.5));
        assert!((s.top10[1].unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.pregate_recall, None, "no scores recorded");
        assert_eq!(RoutingStats::mean(&s.reuse), Some(0.5));
        assert_eq!(s.reuse_baseline(), 0.2);
        assert_eq!(s.top10_baseline(), 0.1);
        // Scores at layer 0 (for layer 1): token 0 ranks 3,4 top (both hit), token 1 ranks
        // 5,0 top (one of {5,6}), token 2 ranks 9,8 (none of {3,5}): 3 of 6.
        let mut sc = vec![0.0f32; 3 * 2 * 10];
        sc[3] = 1.0;
        sc[4] = 0.9;
        sc[20 + 5] = 1.0;
        sc[20] = 0.9;
        sc[40 + 9] = 1.0;
        sc[40 + 8] = 0.9;
        t.scores = Some(sc);
        t.header.scores = Some(io_sched::trace::Real::F32);
        let s = RoutingStats::of(&t, None);
        assert_eq!(s.pregate_recall, Some(0.5));
        let text = table(&["a".into()], &[s]);
        assert!(text.contains("0.500"), "{text}");
        assert!(text.contains("a: reuse per layer   0.75 0.25"), "{text}");
    }

    #[test]
    fn one_token_has_no_reuse() {
        let t = Trace::from_ids(1, 4, 1, vec![2]).unwrap();
        let s = RoutingStats::of(&t, None);
        assert_eq!(s.reuse, vec![None]);
        assert_eq!(s.top10, vec![Some(1.0)]);
    }
}
