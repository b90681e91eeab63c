//! Belady's MIN: the best hit rate any cache of `slots` experts could reach on a trace, knowing
//! the future (evict the expert whose next use is farthest away).

use std::collections::BTreeSet;

use io_sched::trace::Trace;

/// Hit rate of an optimal cache of `slots` experts (shared by all layers, as the scheduler's
/// cache is) over `trace`, counting accesses from token `warmup` on.
///
/// ```
/// use flashmoe_sim::belady::belady_hit_rate;
/// let t = io_sched::trace::Trace::from_ids(1, 4, 1, vec![0, 1, 0, 1]).unwrap();
/// assert_eq!(belady_hit_rate(&t, 2, 0), 0.5);
/// ```
pub fn belady_hit_rate(trace: &Trace, slots: usize, warmup: u64) -> f64 {
    let h = trace.header;
    let e = h.experts as usize;
    let key = |i: usize| -> usize {
        let per_token = h.layers as usize * h.k as usize;
        let layer = (i % per_token) / h.k as usize;
        layer * e + trace.ids[i] as usize
    };
    let n = trace.ids.len();
    let per_token = h.layers as usize * h.k as usize;
    // next[i]: index of the next access to the same key (n = never).
    let mut next = vec![n; n];
    let mut seen = vec![n; h.layers as usize * e];
    for i in (0..n).rev() {
        let k = key(i);
        next[i] = seen[k];
        seen[k] = i;
    }
    let mut in_cache = vec![false; h.layers as usize * e];
    // (next use, key) of cached keys.
    let mut by_next: BTreeSet<(usize, usize)> = BTreeSet::new();
    let (mut hits, mut total) = (0u64, 0u64);
    #[allow(clippy::needless_range_loop)] // `i` is also the access's position in time
    for i in 0..n {
        let k = key(i);
        let counted = (i / per_token) as u64 >= warmup;
        if in_cache[k] {
            if counted {
                hits += 1;
            }
            by_next.remove(&(i, k));
        } else if slots > 0 {
            // Keep the new expert only if it is needed again sooner than the farthest one
            // cached (otherwise it is used once and dropped: the same as evicting it).
            if by_next.len() == slots {
                let far = *by_next.iter().next_back().expect("full cache is non-empty");
                if next[i] < far.0 {
                    by_next.remove(&far);
                    in_cache[far.1] = false;
                    in_cache[k] = true;
                }
            } else {
                in_cache[k] = true;
            }
        }
        if counted {
            total += 1;
        }
        if in_cache[k] {
            by_next.insert((next[i], k));
        }
    }
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}
