//! The best flashmoe policy on a point: `replay`'s policy space ([`compare_rows`]: predictor
//! rows, over-fetch count, tie rule, idle bound, next-use eviction) run in virtual time through
//! the real `io_sched::Session`, and the gain over "trust the OS" explained term by term.
//!
//! The terms, ms per token, positive where the policy saves time, add up to the difference
//! of the two runs' token times (`other` is what the per-layer sums leave out: nothing but
//! rounding). With `D` experts demanded per token of `E` bytes, a run's expert-stall bytes are
//! `B = (1 - ready) D E` (what was not ready when demanded), and trust-the-OS's stall per
//! byte is `c = stall / B`:
//!
//! ```text
//! compute     = compute(os) - compute(best)                 (contention, copy work)
//! dense       = fault(os) - fault(best)                     (non-expert weights re-read)
//! cache hits  = (cache%(best) - cache%(os)) D E c           (fewer misses to read)
//! prefetch    = (prefetched-ready%(best) - ..(os)) D E c    (misses read ahead, in time)
//! read path   = [stall(os) - B(os) c] + [B(best) c - stall(best)]
//!                                                           (the same bytes read faster:
//!                                                            direct reads, queue depth)
//! ```

use std::sync::Arc;

use io_sched::trace::Trace;
use serde::Serialize;

use crate::cli::{Plan2, SimArgs, run_policy};
use crate::error::{Result, SimError};
use crate::replay::RowKind;
use crate::replay::rows::{compare_rows, is_realisable_policy};
use crate::report::Summary;

/// The tie rule of the idle-bounded over-fetch row, percent (`replay --tie-pct`'s default).
pub const TIE_PCT: u8 = 50;

/// One searched policy on one point.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRun {
    /// `replay`'s row label (`d scores+4 tie50 idle`, ...).
    pub policy: String,
    pub tok_per_s: f64,
    pub ready_rate: f64,
    pub device_mb_per_token: f64,
}

/// What the search found on one point.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    /// Every realisable row searched, in `replay --compare`'s order.
    pub rows: Vec<PolicyRun>,
    /// The fastest of them.
    pub best_policy: String,
    pub best: Summary,
    /// The one-ahead oracle (row e): the bound on prediction, not a policy.
    pub oracle: Summary,
}

/// Runs every realisable policy of `replay --compare` on `plan` (the horizon-2 rows on
/// synthetic two-ahead scores at [`crate::pregate::FAR_RECALL`]), and the oracle's bound.
pub(crate) fn search(
    args: &SimArgs,
    plan: &Plan2,
    trace: &Arc<Trace>,
    case: &str,
) -> Result<Search> {
    let kinds: Vec<RowKind> = compare_rows(TIE_PCT, true)
        .into_iter()
        .filter(|&k| is_oracle_bound(k) || is_realisable_policy(k))
        .collect();
    let runs = run_rows(&kinds, |kind| {
        run_policy(args, plan, trace, kind, &format!("{case} {}", kind.label()))
    })?;
    let mut rows = Vec::new();
    let mut best: Option<(String, Summary)> = None;
    let mut oracle = None;
    for (kind, s) in kinds.into_iter().zip(runs) {
        if is_oracle_bound(kind) {
            oracle = Some(s);
            continue;
        }
        let label = kind.label();
        rows.push(PolicyRun {
            policy: label.clone(),
            tok_per_s: s.tok_per_s,
            ready_rate: s.ready_rate,
            device_mb_per_token: s.device_mb_per_token,
        });
        if best.as_ref().is_none_or(|(_, b)| s.tok_per_s > b.tok_per_s) {
            best = Some((label, s));
        }
    }
    let (best_policy, best) =
        best.ok_or_else(|| SimError::Setup("the policy space has no io-sched row".into()))?;
    let oracle = oracle.ok_or_else(|| SimError::Setup("the policy space has no oracle".into()))?;
    Ok(Search {
        rows,
        best_policy,
        best,
        oracle,
    })
}

/// Row e, the one-ahead oracle: the bound the search reports beside the best policy.
fn is_oracle_bound(kind: RowKind) -> bool {
    kind == RowKind::Sched(crate::predict::PredictorKind::Oracle)
}

/// Runs `f` on every row, on up to two threads (each run is deterministic and independent of
/// the others, so the results are the same as one after another), results in `kinds`' order.
fn run_rows(
    kinds: &[RowKind],
    f: impl Fn(RowKind) -> Result<Summary> + Sync,
) -> Result<Vec<Summary>> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<Result<Summary>>> = (0..kinds.len()).map(|_| None).collect();
    let done = std::sync::Mutex::new(&mut out);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&kind) = kinds.get(i) else { break };
                    let r = f(kind);
                    if let Ok(mut d) = done.lock() {
                        d[i] = Some(r);
                    }
                }
            });
        }
    });
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(SimError::Setup("a policy run did not finish".into()))))
        .collect()
}

/// The gain of a flashmoe run over a trust-the-OS run of the same point, term by term (ms per
/// token; see the module doc), with the figures that explain it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gain {
    pub os_ms_per_token: f64,
    pub best_ms_per_token: f64,
    pub compute_ms: f64,
    pub dense_ms: f64,
    pub cache_hits_ms: f64,
    pub prefetch_ms: f64,
    pub read_path_ms: f64,
    /// Token time outside the per-layer sums (rounding).
    pub other_ms: f64,
    /// Bytes the device moved per token, MB.
    pub os_mb_per_token: f64,
    pub best_mb_per_token: f64,
    /// Demanded experts ready when demanded.
    pub os_ready: f64,
    pub best_ready: f64,
    /// Device time hidden under compute, ms per token.
    pub os_overlap_ms: f64,
    pub best_overlap_ms: f64,
}

impl Gain {
    /// Decomposes `os` → `best` for experts of `expert_bytes`.
    pub fn between(os: &Summary, best: &Summary, expert_bytes: f64) -> Self {
        let layers = os.per_layer.len().max(1) as f64;
        let demanded_mb = os.k as f64 * layers * expert_bytes / 1e6;
        let per_token = |per_layer_ms: f64| per_layer_ms * layers;
        let stall = |s: &Summary| per_token(s.layer_stall_ms - s.layer_dense_fault_ms);
        let missed_mb = |s: &Summary| (1.0 - s.ready_rate) * demanded_mb;
        let (stall_os, stall_best) = (stall(os), stall(best));
        let (b_os, b_best) = (missed_mb(os), missed_mb(best));
        let c = if b_os > 0.0 { stall_os / b_os } else { 0.0 };
        let prefetched = |s: &Summary| s.ready_rate - s.cache_hit_rate;
        let compute_ms = per_token(os.layer_compute_ms - best.layer_compute_ms);
        let dense_ms = per_token(os.layer_dense_fault_ms - best.layer_dense_fault_ms);
        let cache_hits_ms = (best.cache_hit_rate - os.cache_hit_rate) * demanded_mb * c;
        let prefetch_ms = (prefetched(best) - prefetched(os)) * demanded_mb * c;
        let read_path_ms = (stall_os - b_os * c) + (b_best * c - stall_best);
        let total = os.ms_per_token - best.ms_per_token;
        Gain {
            os_ms_per_token: os.ms_per_token,
            best_ms_per_token: best.ms_per_token,
            compute_ms,
            dense_ms,
            cache_hits_ms,
            prefetch_ms,
            read_path_ms,
            other_ms: total - (compute_ms + dense_ms + cache_hits_ms + prefetch_ms + read_path_ms),
            os_mb_per_token: os.device_mb_per_token,
            best_mb_per_token: best.device_mb_per_token,
            os_ready: os.ready_rate,
            best_ready: best.ready_rate,
            os_overlap_ms: per_token(os.layer_overlapped_io_ms),
            best_overlap_ms: per_token(best.layer_overlapped_io_ms),
        }
    }

    /// The sum of the terms (equals the token-time difference).
    pub fn sum_ms(&self) -> f64 {
        self.compute_ms
            + self.dense_ms
            + self.cache_hits_ms
            + self.prefetch_ms
            + self.read_path_ms
            + self.other_ms
    }
}
