//! The rows of `replay --compare`: one list, which `replay` measures on the real disk and the
//! simulator's policy search ([`crate::policy`]) runs in virtual time on every published point.

use io_sched::cache::EvictionKind;

use super::{OverFetchRow, RowKind};
use crate::predict::PredictorKind;

/// Every row of `replay --compare`, in its order: (a) mmap, (b) sync pread, (c) io-sched,
/// (d) each predictor, the pre-gate over-fetched (a fixed k + 2; near-ties of the k-th score at
/// `tie_pct`% up to k + 4 within the device's idle time), (e) the oracle, the blend's
/// next-use eviction alone; with two-ahead scores (`far`), the horizon-2 rows too.
pub fn compare_rows(tie_pct: u8, far: bool) -> Vec<RowKind> {
    let mut v = vec![RowKind::Mmap, RowKind::SyncPread];
    for p in [
        PredictorKind::None,
        PredictorKind::Temporal,
        PredictorKind::Transition,
        PredictorKind::Scores,
        PredictorKind::Blend,
    ] {
        v.push(RowKind::Sched(p));
    }
    for o in [
        OverFetchRow {
            max_extra: 2,
            ..Default::default()
        },
        OverFetchRow {
            max_extra: 4,
            tie_pct,
            idle_bound: true,
            ..Default::default()
        },
    ] {
        v.push(RowKind::SchedOver(PredictorKind::Scores, o));
    }
    v.push(RowKind::Sched(PredictorKind::Oracle));
    // Eviction alone (no hints), against LRU's row (c) and Belady's bound.
    v.push(RowKind::SchedOver(
        PredictorKind::Blend,
        OverFetchRow {
            no_hints: true,
            eviction: EvictionKind::NextUse,
            ..Default::default()
        },
    ));
    // LFRU without prediction, beside row (c)'s LRU.
    v.push(RowKind::SchedOver(
        PredictorKind::None,
        OverFetchRow {
            eviction: EvictionKind::Lfru,
            ..Default::default()
        },
    ));
    // The same eviction fed a perfect one-demand lookahead: the bound of that policy.
    v.push(RowKind::SchedOver(
        PredictorKind::Oracle,
        OverFetchRow {
            no_hints: true,
            eviction: EvictionKind::NextUse,
            ..Default::default()
        },
    ));
    if far {
        // Two layers ahead: the far pre-gate, plain and over-fetched, and the oracle's bound
        // at the same horizon.
        let h2 = |max_extra, tie_pct, idle_bound| OverFetchRow {
            max_extra,
            tie_pct,
            idle_bound,
            horizon: 2,
            ..Default::default()
        };
        v.push(RowKind::SchedOver(PredictorKind::Scores, h2(0, 0, false)));
        v.push(RowKind::SchedOver(
            PredictorKind::Scores,
            h2(4, tie_pct, true),
        ));
        v.push(RowKind::SchedOver(PredictorKind::Blend, h2(0, 0, false)));
        // The blend's probabilities for eviction, then for cost-aware hinting too.
        let next_use = OverFetchRow {
            eviction: EvictionKind::NextUse,
            ..h2(0, 0, false)
        };
        v.push(RowKind::SchedOver(PredictorKind::Blend, next_use));
        let cost = OverFetchRow {
            cost_aware: true,
            ..h2(4, 0, true)
        };
        v.push(RowKind::SchedOver(PredictorKind::Blend, cost));
        v.push(RowKind::SchedOver(
            PredictorKind::Blend,
            OverFetchRow {
                eviction: EvictionKind::NextUse,
                ..cost
            },
        ));
        v.push(RowKind::SchedOver(PredictorKind::Oracle, h2(0, 0, false)));
    }
    v
}

/// Whether a row is an io-sched policy a real run could use (not the baselines (a)/(b), not
/// an oracle's bound).
pub fn is_realisable_policy(kind: RowKind) -> bool {
    matches!(kind, RowKind::Sched(_) | RowKind::SchedOver(..))
        && kind.predictor() != PredictorKind::Oracle
}
