//! `sim --calibrate-trace`: the synthetic routing models fitted at one `k` and checked at the
//! others, on flash-moe's published hit rates and on real traces recorded at several `k`.
//!
//! The check that matters for the pruning points is whether a model fitted at `k` = 4 says
//! the right thing at a larger `k` with the same cache. On flash-moe's own statistics there is
//! only `k` = 4, so the check runs on real traces: `generate --trace` from a packed fixture
//! whose `config.json` routes `num_experts_per_tok` = 8 or 12 (README: "Routing at several k").

use std::fmt::Write as _;

use io_sched::trace::Trace;

use crate::error::{Result, SimError};
use crate::latent::{self, FLASH_MOE_WINDOW, LatentParams, Window};
use crate::synth::{self, FLASH_MOE_LRU, SynthParams, per_layer_lru_hit_rate};

/// Mean per-layer LRU hit rate of `slots` over traces (each from an empty cache, after
/// `warmup` tokens).
fn lru(traces: &[Trace], slots: usize, warmup: u64) -> f64 {
    let n = traces.len().max(1) as f64;
    traces
        .iter()
        .map(|t| per_layer_lru_hit_rate(t, slots, warmup))
        .sum::<f64>()
        / n
}

fn overlap(traces: &[Trace]) -> f64 {
    let n = traces.len().max(1) as f64;
    traces.iter().map(latent::consecutive_overlap).sum::<f64>() / n
}

/// The flash-moe part: the latent fit on its 200-token window, and what both models say at
/// k = 4, 6, 10 for the M3 Max's page cache (35 GB: 82 slots a layer at 4 bits, 148 at 2).
pub fn flash_moe_text(seed: u64) -> Result<String> {
    let (p, worst) = latent::calibrate(
        512,
        4,
        &FLASH_MOE_LRU,
        FLASH_MOE_WINDOW,
        LatentParams::default(),
        seed,
    )?;
    let w = FLASH_MOE_WINDOW;
    let cold = latent::generate(w.layers, 512, 4, w.tokens, &p, seed)?;
    let mut s = format!(
        "latent router fitted to flash-moe's LRU hit rates (200 tokens from an empty cache, 60 \
         layers; worst error {worst:.3}):\n  popularity {:.3}, temporal {:.3}, rho {:.3} \
         (preset: {:?})\n",
        p.popularity,
        p.temporal,
        p.rho,
        LatentParams::default()
    );
    for (slots, target) in FLASH_MOE_LRU {
        let _ = writeln!(
            s,
            "  per-layer LRU {slots:>3}/512: {:.1}% (flash-moe measured {:.0}%)",
            100.0 * per_layer_lru_hit_rate(&cold, slots as usize, 0),
            100.0 * target
        );
    }
    let _ = writeln!(
        s,
        "  consecutive-token overlap {:.1}% (flash-moe: 8-34% per layer; not fitted)\n",
        100.0 * latent::consecutive_overlap(&cold)
    );
    let _ = writeln!(
        s,
        "steady state (300 tokens warm-up, 2700 counted, 4 layers), per-layer LRU hit rate, latent / mixture:"
    );
    let slots = [16usize, 32, 64, 82, 128, 148];
    let _ = writeln!(
        s,
        "  {:<4} {}",
        "k",
        slots.iter().map(|c| format!("{c:>13}")).collect::<String>()
    );
    let mix = SynthParams::default();
    for k in [4u32, 6, 10] {
        let t = latent::generate(4, 512, k, 3000, &p, seed)?;
        let m = synth::generate(4, 512, k, 3000, &mix, seed)?;
        let row: String = slots
            .iter()
            .map(|&c| {
                format!(
                    "{:>6.1}/{:<6.1}",
                    100.0 * per_layer_lru_hit_rate(&t, c, 300),
                    100.0 * per_layer_lru_hit_rate(&m, c, 300)
                )
            })
            .collect();
        let _ = writeln!(s, "  {k:<4} {row}");
    }
    s += "  (82 / 148 slots: the M3 Max's 35 GB page cache at 4 / 2 bits. A larger k references \
          more experts per token, so a cache of C slots holds fewer tokens of history, but it \
          takes experts down to a lower score threshold, and the set above a lower threshold \
          persists more from token to token: at 16-32 slots the first wins and the hit rate \
          falls with k; at 64-148 slots the second does, slightly. The misses per token, \
          k x (1 - hit), grow with k at every size.)\n";
    Ok(s)
}

/// One `k` of a [`check`]: per-layer LRU hit rates at `slots`, real and predicted by each
/// model, and the consecutive-token overlap (real, latent, mixture).
#[derive(Debug, Clone, PartialEq)]
pub struct KRow {
    pub k: u32,
    pub slots: Vec<usize>,
    pub real: Vec<f64>,
    pub latent: Vec<f64>,
    pub mixture: Vec<f64>,
    pub overlap: [f64; 3],
}

/// What [`check`] fitted and found.
#[derive(Debug, Clone)]
pub struct Check {
    pub fit_slots: Vec<u32>,
    pub latent: (LatentParams, f64),
    pub mixture: (SynthParams, f64),
    pub warmup: u64,
    pub rows: Vec<KRow>,
}

/// Fits both models on the traces of the smallest `k` and compares their LRU curves with the
/// real traces at every `k` (the same cache sizes, in slots).
pub fn check(traces: Vec<Trace>, seed: u64) -> Result<Check> {
    let mut by_k: Vec<(u32, Vec<Trace>)> = Vec::new();
    for t in traces {
        let k = t.header.k;
        match by_k.iter_mut().find(|(x, _)| *x == k) {
            Some((_, v)) => v.push(t),
            None => by_k.push((k, vec![t])),
        }
    }
    by_k.sort_by_key(|(k, _)| *k);
    let Some((k0, base)) = by_k.first() else {
        return Err(SimError::Setup("--check-traces: no trace given".into()));
    };
    let h = base[0].header;
    if by_k
        .iter()
        .flat_map(|(_, v)| v)
        .any(|t| t.header.layers != h.layers || t.header.experts != h.experts)
    {
        return Err(SimError::Setup(
            "--check-traces: the traces must share layers and experts".into(),
        ));
    }
    let tokens = base.iter().map(Trace::tokens).min().unwrap_or(0);
    let warmup = (tokens / 8).max(1);
    if tokens <= warmup + 1 {
        return Err(SimError::Setup(format!(
            "--check-traces: {tokens} tokens is too short"
        )));
    }
    let e = h.experts;
    let fit_slots: Vec<u32> = [1u32, 2, 3, 4].iter().map(|m| (m * k0).min(e)).collect();
    let targets: Vec<(u32, f64)> = fit_slots
        .iter()
        .map(|&c| (c, lru(base, c as usize, warmup)))
        .collect();
    let window = Window {
        layers: h.layers,
        tokens: tokens - warmup,
        warmup,
    };
    let (lp, lw) = latent::calibrate(e, *k0, &targets, window, LatentParams::default(), seed)?;
    let (mp, mw) = synth::calibrate(e, *k0, &targets, SynthParams::default(), seed)?;
    let slots: Vec<usize> = (1..=6)
        .map(|m| (m * e as usize / 8).max(1))
        .filter(|&c| c <= e as usize)
        .collect();
    let mut rows = Vec::new();
    for (k, real) in &by_k {
        // As many synthetic sequences as real ones, each as long, each from an empty cache.
        let n = real.len() as u64;
        let lt = (0..n)
            .map(|i| latent::generate(h.layers, e, *k, tokens, &lp, seed + i))
            .collect::<Result<Vec<_>>>()?;
        let mt = (0..n)
            .map(|i| synth::generate(h.layers, e, *k, tokens, &mp, seed + i))
            .collect::<Result<Vec<_>>>()?;
        let curve =
            |ts: &[Trace]| -> Vec<f64> { slots.iter().map(|&c| lru(ts, c, warmup)).collect() };
        rows.push(KRow {
            k: *k,
            slots: slots.clone(),
            real: curve(real),
            latent: curve(&lt),
            mixture: curve(&mt),
            overlap: [overlap(real), overlap(&lt), overlap(&mt)],
        });
    }
    Ok(Check {
        fit_slots,
        latent: (lp, lw),
        mixture: (mp, mw),
        warmup,
        rows,
    })
}

/// [`check`] on the traces at `paths`, as text.
pub fn traces_text(paths: &[std::path::PathBuf], seed: u64) -> Result<String> {
    let traces = paths
        .iter()
        .map(|p| crate::fixture::load_trace(p))
        .collect::<Result<Vec<_>>>()?;
    let h = traces.first().map(|t| t.header);
    let c = check(traces, seed)?;
    let (lp, lw) = c.latent;
    let (mp, mw) = c.mixture;
    let (layers, e) = h.map_or((0, 0), |h| (h.layers, h.experts));
    let k0 = c.rows.first().map_or(0, |r| r.k);
    let mut s = format!(
        "real traces: {layers} layers x {e} experts; fitted at k = {k0} to LRU {:?} slots (latent \
         worst {lw:.3}: popularity {:.3} temporal {:.3} rho {:.3}; mixture worst {mw:.3}: reuse \
         {:.3} recent {:.3} skew {:.3}); {} tokens warm-up per trace\n",
        c.fit_slots, lp.popularity, lp.temporal, lp.rho, mp.reuse, mp.recent, mp.skew, c.warmup
    );
    let _ = writeln!(
        s,
        "per-layer LRU hit rate %, real / latent / mixture, by cache slots:"
    );
    for r in &c.rows {
        let _ = write!(s, "  k {:<3}", r.k);
        for (i, slots) in r.slots.iter().enumerate() {
            let _ = write!(
                s,
                " {slots:>3}: {:>4.1}/{:>4.1}/{:<4.1}",
                100.0 * r.real[i],
                100.0 * r.latent[i],
                100.0 * r.mixture[i]
            );
        }
        let [a, b, m] = r.overlap;
        let _ = writeln!(
            s,
            "  overlap {:.1}/{:.1}/{:.1}",
            100.0 * a,
            100.0 * b,
            100.0 * m
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitted_at_k4_on_latent_traces_the_latent_model_predicts_their_k8_curve() {
        // "Real" traces from a known latent router: fitted at k = 4 only, the model must
        // give back their k = 8 curve (a check that the fit and the comparison line up).
        let truth = LatentParams::new(0.1, 0.4, 0.85).unwrap();
        let mut traces = Vec::new();
        for k in [4, 8] {
            for i in 0..2 {
                traces.push(latent::generate(4, 32, k, 160, &truth, 100 + i).unwrap());
            }
        }
        let c = check(traces, 7).unwrap();
        assert_eq!(c.rows.iter().map(|r| r.k).collect::<Vec<_>>(), vec![4, 8]);
        let k8 = &c.rows[1];
        for (i, s) in k8.slots.iter().enumerate() {
            let d = (k8.latent[i] - k8.real[i]).abs();
            assert!(
                d < 0.06,
                "{s} slots: latent {} real {}",
                k8.latent[i],
                k8.real[i]
            );
        }
        // A larger k at a fixed small cache hits less, in the data as in the model.
        assert!(k8.real[0] < c.rows[0].real[0]);
    }

    #[test]
    fn no_traces_or_mixed_geometry_is_an_error() {
        assert!(check(Vec::new(), 1).is_err());
        let p = LatentParams::default();
        let a = latent::generate(4, 32, 4, 64, &p, 1).unwrap();
        let b = latent::generate(4, 64, 8, 64, &p, 1).unwrap();
        assert!(check(vec![a, b], 1).is_err());
    }
}
