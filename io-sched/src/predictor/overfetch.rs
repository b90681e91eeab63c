//! [`OverFetch`]: how many of a predicted layer's candidates to hint (DESIGN rule 3: confidence
//! decides how much to over-fetch, bounded by the SSD's idle time in the layer's window).
//!
//! A pre-gate router's top k misses an expert when the true router breaks a near-tie around
//! rank k the other way (on the tiny-qwen3-moe model, top 4 holds 76% of the next layer's
//! experts, top 6 holds 89%, top 8 94%). So past the top `base` candidates, a candidate is
//! hinted when its confidence is at least `tie_ratio` × the `base`-th one's: a flat score
//! distribution around rank k (low top-k mass) hints more, a sharp one hints none.
//!
//! Extra reads are free only while the device would otherwise idle: a layer's window (its
//! compute, which the reads overlap) moves `window × bandwidth` bytes, of which the base
//! candidates not yet cached take their share first; [`idle_records`] is what is left, in
//! records. Extras are hinted with their (lower) confidence, so the scheduler issues them after
//! every base candidate, and cancels those not yet issued when the real routing arrives.

use super::Candidate;

/// The over-fetch policy for one predicted layer.
///
/// ```
/// use io_sched::predictor::{Candidate, OverFetch};
/// let c = |e, p| Candidate { expert: e, confidence: p };
/// let policy = OverFetch { base: 2, max_extra: 2, tie_ratio: 0.5 };
/// // Rank 3 (0.3) is a near-tie of rank 2 (0.4); rank 4 (0.1) is not.
/// let cands = [c(0, 0.5), c(1, 0.4), c(2, 0.3), c(3, 0.1)];
/// assert_eq!(policy.count(&cands, usize::MAX), 3);
/// assert_eq!(policy.count(&cands, 0), 2); // no idle device time: the base only
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OverFetch {
    /// Candidates always hinted (normally the routed count k).
    pub base: usize,
    /// More candidates at most.
    pub max_extra: usize,
    /// A candidate past `base` is hinted while its confidence is at least this share of the
    /// `base`-th candidate's; 0 hints all `max_extra` (bounded by idle time only).
    pub tie_ratio: f32,
}

impl OverFetch {
    /// How many of `candidates` (most confident first) to hint when the device has room for
    /// `idle_records` more records in the layer's window.
    pub fn count(&self, candidates: &[Candidate], idle_records: usize) -> usize {
        let base = self.base.min(candidates.len());
        let Some(kth) = base.checked_sub(1).map(|i| candidates[i].confidence) else {
            return 0;
        };
        let bar = self.tie_ratio.max(0.0) * kth;
        let extra = candidates[base..]
            .iter()
            .take(self.max_extra)
            .take_while(|c| c.confidence.is_finite() && c.confidence >= bar)
            .count();
        base + extra.min(idle_records)
    }
}

/// Records the device can read in a `window_ns` window at `bytes_per_ns` beyond the
/// `pending_records` it must read anyway (the base candidates not yet cached).
///
/// ```
/// // 10 ms at 2 GB/s moves 20 MB: 2 records of 7 MB, one of them already taken.
/// assert_eq!(io_sched::predictor::overfetch::idle_records(10e6, 2.0, 7_000_000, 1), 1);
/// ```
pub fn idle_records(
    window_ns: f64,
    bytes_per_ns: f64,
    record_bytes: u64,
    pending_records: usize,
) -> usize {
    if !(window_ns > 0.0 && bytes_per_ns > 0.0) || record_bytes == 0 {
        return 0;
    }
    let fit = (window_ns * bytes_per_ns / record_bytes as f64).floor();
    (fit as usize).saturating_sub(pending_records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(ps: &[f32]) -> Vec<Candidate> {
        ps.iter()
            .enumerate()
            .map(|(e, &p)| Candidate {
                expert: e as u32,
                confidence: p,
            })
            .collect()
    }

    #[test]
    fn flat_scores_around_rank_k_over_fetch_more_than_sharp_ones() {
        let p = OverFetch {
            base: 4,
            max_extra: 4,
            tie_ratio: 0.5,
        };
        let sharp = cands(&[0.3, 0.25, 0.2, 0.15, 0.02, 0.02, 0.01, 0.01]);
        let flat = cands(&[0.12, 0.11, 0.1, 0.1, 0.09, 0.09, 0.08, 0.06]);
        assert_eq!(p.count(&sharp, usize::MAX), 4);
        assert_eq!(p.count(&flat, usize::MAX), 8);
    }

    #[test]
    fn idle_time_bounds_the_extras_never_the_base() {
        let p = OverFetch {
            base: 2,
            max_extra: 3,
            tie_ratio: 0.0,
        };
        let c = cands(&[0.4, 0.3, 0.2, 0.1, 0.05]);
        assert_eq!(p.count(&c, 0), 2);
        assert_eq!(p.count(&c, 2), 4);
        assert_eq!(p.count(&c, 9), 5);
        assert_eq!(p.count(&c[..1], 9), 1, "fewer candidates than the base");
        assert_eq!(p.count(&[], 9), 0);
    }

    #[test]
    fn idle_records_subtract_what_must_be_read_and_reject_nonsense() {
        assert_eq!(idle_records(10e6, 2.0, 5_000_000, 0), 4);
        assert_eq!(idle_records(10e6, 2.0, 5_000_000, 3), 1);
        assert_eq!(idle_records(10e6, 2.0, 5_000_000, 7), 0);
        assert_eq!(idle_records(f64::NAN, 2.0, 5_000_000, 0), 0);
        assert_eq!(idle_records(10e6, 0.0, 5_000_000, 0), 0);
        assert_eq!(idle_records(10e6, 2.0, 0, 0), 0);
    }
}
