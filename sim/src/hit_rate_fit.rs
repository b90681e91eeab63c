//! The coordinate search both routing models ([`crate::synth`], [`crate::latent`]) are fitted
//! with: three knobs, each nudged down and up by its step in turn, a move kept only when it
//! lowers the squared error to per-layer LRU hit-rate targets; the steps shrink by 0.6 a round.

use io_sched::trace::Trace;

use crate::error::Result;
use crate::synth::per_layer_lru_hit_rate;

/// `(sum of squared errors, worst absolute error)` of `trace`'s per-layer LRU hit rates
/// (after `warmup` tokens) against the targets `(slots, rate)`.
pub(crate) fn lru_error(trace: &Trace, targets: &[(u32, f64)], warmup: u64) -> (f64, f64) {
    let (mut sq, mut worst) = (0.0f64, 0.0f64);
    for &(slots, target) in targets {
        let d = per_layer_lru_hit_rate(trace, slots as usize, warmup) - target;
        sq += d * d;
        worst = worst.max(d.abs());
    }
    (sq, worst)
}

/// Coordinate search from `start` for `rounds` rounds with initial `step`s. `nudge(p, knob,
/// delta)` moves knob `knob` (0..3) of `p` by `delta` (clamping it to its range); candidates
/// that fail `valid` are skipped; `eval` gives `(squared error, worst error)`. Returns the best
/// parameters and their worst error.
pub(crate) fn coordinate_search<P: Copy>(
    start: P,
    mut step: [f64; 3],
    rounds: usize,
    nudge: impl Fn(&mut P, usize, f64),
    valid: impl Fn(&P) -> bool,
    eval: impl Fn(&P) -> Result<(f64, f64)>,
) -> Result<(P, f64)> {
    let mut best = start;
    let (mut best_sq, mut best_worst) = eval(&best)?;
    for _ in 0..rounds {
        for (knob, &size) in step.iter().enumerate() {
            for dir in [-1.0, 1.0] {
                let mut p = best;
                nudge(&mut p, knob, dir * size);
                if !valid(&p) {
                    continue;
                }
                let (sq, worst) = eval(&p)?;
                if sq < best_sq {
                    (best, best_sq, best_worst) = (p, sq, worst);
                }
            }
        }
        for s in &mut step {
            *s *= 0.6;
        }
    }
    Ok((best, best_worst))
}
