//! `--reproduce`: flash-moe's published runs, simulated from published figures only, next to
//! what the best flashmoe policy predicts on the same device.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::{SimArgs, plan_for, run_plan, to_json};
use crate::error::Result;
use crate::policy::{Gain, Search};
use crate::predict::PredictorKind;
use crate::report::Summary;
use crate::vtime::Mode;

/// A published measurement to reproduce.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub case: &'static str,
    pub device: &'static str,
    pub model: &'static str,
    pub bits: u32,
    pub k: u32,
    pub tok_per_s: f64,
    /// Per-layer time and its expert-I/O part, where published.
    pub layer_ms: Option<f64>,
    pub layer_io_ms: Option<f64>,
    /// Where the figure is published (and what it says).
    pub source: &'static str,
    /// The figure was found in a stored source (false: cited by the issue, not found; shown,
    /// never used to set a parameter).
    pub traced: bool,
    /// A profile parameter was chosen so that this point is placed (named here).
    pub fits: Option<&'static str>,
    /// Why a point off by more than 20% still stands as it is.
    pub reason: Option<&'static str>,
    /// A point of the same published table from the same build: this point is then placed by
    /// its ratio to that one (the build differs from the one the profile is pinned to).
    pub reference: Option<Reference>,
}

/// The same-build point a [`Published`] point is compared to.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reference {
    pub k: u32,
    pub tok_per_s: f64,
}

/// Every published point the simulator places with one profile per device.
pub const PUBLISHED: [Published; 7] = [
    Published {
        case: "M3 Max 397B 4-bit K4",
        device: "macbook-m3-max",
        model: "qwen3.5-397b-a17b",
        bits: 4,
        k: 4,
        tok_per_s: 4.36,
        layer_ms: Some(4.28),
        layer_io_ms: Some(2.41),
        source: "flash-moe README (danveloper/flash-moe, mirrored at gokawiil.com/article/268484): '4-bit experts, FMA kernel 4.36 tok/s'; per-layer 4.28 ms incl. 2.41 ms I/O (3.90 tok/s pre-FMA build)",
        traced: true,
        fits: Some("compute.calibration (the per-layer GPU time)"),
        reason: None,
        reference: None,
    },
    Published {
        case: "M3 Max 397B 2-bit K4",
        device: "macbook-m3-max",
        model: "qwen3.5-397b-a17b",
        bits: 2,
        k: 4,
        tok_per_s: 5.74,
        layer_ms: Some(2.9),
        layer_io_ms: Some(1.37),
        source: "flash-moe README (as above): '2-bit experts, trust OS 5.74 tok/s' (7.05 warm-cache peak sets page_cache_copy_gbps_per_thread); per-layer 2.9 ms incl. 1.37 ms expert I/O: flash-moe paper, 'Per-Layer Breakdown' of the same configuration (its bottleneck section gives 1.49 ms I/O for the F_NOCACHE run)",
        traced: true,
        fits: None,
        reason: None,
        reference: None,
    },
    Published {
        case: "M3 Max 397B K10 / K4 (pruning)",
        device: "macbook-m3-max",
        model: "qwen3.5-397b-a17b",
        bits: 4,
        k: 10,
        tok_per_s: 1.20,
        layer_ms: None,
        layer_io_ms: None,
        source: "flash-moe paper (paper/flash_moe.tex, stored in the forks AnYuan/flash-moe, shipstuff/flash-moe, chrisqianz/flash-moe), table 'Effect of expert pruning (K)': K=10 1.20 tok/s 2,359 MB/tok; K=6 1.91, 1,415; K=4 3.15, 943. The same paper's optimization-trajectory figure has these as experiments (52, 1.20) (53, 1.91) (54, 3.15), in its phase 'Experiments 40-55 (Two-pass experiments)', before 'Experiments 55-72 (Metal engine): Complete rewrite in Objective-C/Metal' and the 2-bit requantization (72-84); its K=4 is the configurations table's 'MLX + packed layers + K=4', 4-bit, 3.14 tok/s, 4.6 ms a layer. So: 4-bit experts (simulated so; the MB/tok column is K x 60 x the 2-bit 3.93 MB, computed after the fact), the MLX-era build",
        traced: true,
        fits: None,
        reason: Some(
            "CANNOT BE PLACED with the profile of the C/Metal engine: another build (MLX era, see the source), placed by its ratio to its own K=4 only to show the gap. That build's token time is proportional to K: its own K=6 -> K=10 step costs 1.29 ms per added expert and layer ((1/1.20 - 1/1.91) / (4 x 60)), K=4 -> K=10 1.43 ms ('ms/expert' below), where the C engine's whole expert I/O is 0.34 ms an expert (2-bit: 1.37 ms a layer for 4, paper 'Per-Layer Breakdown') and 0.60 ms (4-bit: 2.41 ms, README). Routing does not close it: the latent router fitted at K=4 (sim --calibrate-trace) keeps the 35 GB page cache's hit rate at K=10 (column 'cache hit'), and on real traces recorded at k = 4/8/12 (README: 'Routing at several k') the hit rate falls less with k than that model says, not more. What moves it most is the page-cache copy rate (--sensitivity: at half the preset's per-thread rate the ratio is within 20%); a slower copy path fits an MLX-era build (the paper's failed experiments: a C-extension pread under MLX fell from 18.8 to 2.6 GB/s from GIL contention), but nothing publishes that build's rate, so it is not set to place the point",
        ),
        reference: Some(Reference {
            k: 4,
            tok_per_s: 3.15,
        }),
    },
    Published {
        case: "M3 Max 397B K6 / K4 (pruning)",
        device: "macbook-m3-max",
        model: "qwen3.5-397b-a17b",
        bits: 4,
        k: 6,
        tok_per_s: 1.91,
        layer_ms: None,
        layer_io_ms: None,
        source: "flash-moe paper, 'Effect of expert pruning (K)' (as above): K=6 1.91 tok/s; experiment 53 of the trajectory figure, the MLX-era build",
        traced: true,
        fits: None,
        reason: Some(
            "as the K10 row: another build (MLX era), placed by its ratio to the same table's K=4. The ratio lands within 20% at that build's 4 bits (at 2 bits it does not: the ratio under the table), but the build's cost per added expert is not reproduced (its K=4 -> K=6 step: 1.72 ms per added expert and layer, 'ms/expert' under the table), so the agreement is the ratio's, not the mechanism's",
        ),
        reference: Some(Reference {
            k: 4,
            tok_per_s: 3.15,
        }),
    },
    Published {
        case: "iPhone 17 Pro 397B 2-bit K4",
        device: "iphone-17-pro",
        model: "qwen3.5-397b-a17b",
        bits: 2,
        k: 4,
        tok_per_s: 0.6,
        layer_ms: None,
        layer_io_ms: None,
        source: "Anemll on X, 2026-03: 'Running 400B model on iPhone! 0.6 t/s' (ai-primer.com, aiproductivity.ai); 2-bit and TTFT 'almost 50 seconds': tweaktown.com/news/110610; K=4 is the app's default (Anemll/flash-moe ModelListView.swift)",
        traced: true,
        fits: Some("os_reserved_bytes (file cache left to the app under the iOS memory limit)"),
        reason: None,
        reference: None,
    },
    Published {
        case: "iPhone 17 35B 4-bit K8",
        device: "iphone-17",
        model: "qwen3.5-35b-a3b",
        bits: 4,
        k: 8,
        tok_per_s: 5.5,
        layer_ms: None,
        layer_io_ms: None,
        source: "Alexintosh/flash-moe FlashMoE-iOS/IOS_PORT.md and docs/ios-port.md: 'iPhone 17 (12GB, A19) | Qwen3.5-35B-A3B | 8 | 5.5 | Full quality, full GPU path' (the phone is labelled 12 GB; pre-launch reports give the iPhone 17 8 GB: --sensitivity)",
        traced: true,
        fits: Some("compute.layer_overhead_us (shared by every preset)"),
        reason: None,
        reference: None,
    },
    Published {
        case: "M3 Max 35B 4-bit K8 (check)",
        device: "macbook-m3-max",
        model: "qwen3.5-35b-a3b",
        bits: 4,
        k: 8,
        tok_per_s: 9.7,
        layer_ms: None,
        layer_io_ms: None,
        source: "Alexintosh/flash-moe FlashMoE-iOS/IOS_PORT.md: 'MacBook Pro M3 Max (48GB) | Qwen3.5-35B-A3B | 8 | 9.7 | After autoresearch optimizations' (the fork's build, not danveloper's FMA build)",
        traced: true,
        fits: None,
        reason: Some(
            "a different build of the engine (the fork's kernels, +34.7% over its own 7.2 tok/s): a cross-check of the per-layer overhead, not a target",
        ),
        reference: None,
    },
];

/// One case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub published: Published,
    /// flash-moe's trust-the-OS pipeline, simulated.
    pub simulated: Summary,
    /// Simulated vs published: of the tok/s, or for a point with a [`Reference`], of its
    /// ratio to the reference (`simulated_ratio` vs `published_ratio`).
    pub error_pct: f64,
    pub published_ratio: Option<f64>,
    pub simulated_ratio: Option<f64>,
    /// For a point with a [`Reference`]: ms per token added per added expert and layer,
    /// published and simulated (`(1/tok_s − 1/ref_tok_s) / (Δk × layers)`).
    pub published_ms_per_expert: Option<f64>,
    pub simulated_ms_per_expert: Option<f64>,
    /// The simulated ratio at the other expert width (2 bits for 4, 4 for 2): how much the
    /// choice of bits moves it.
    pub other_bits_ratio: Option<f64>,
    /// The best flashmoe policy of `replay`'s policy space ([`crate::policy`]) and its rows.
    pub search: Search,
    /// Best flashmoe tok/s over the published figure.
    pub best_over_published: f64,
    /// Best flashmoe tok/s over the simulated trust-the-OS run.
    pub best_over_trust_os: f64,
    /// The gain over the simulated trust-the-OS run, term by term.
    pub gain: Gain,
}

/// Runs the published cases; text table or JSON.
pub fn reproduce(args: &SimArgs) -> Result<String> {
    let mut out = Vec::new();
    for case in PUBLISHED {
        let mut args = args.clone();
        args.k = Some(case.k);
        args.model = case.model.into();
        let (plan, trace) = plan_for(&args, case.device, case.bits)?;
        let sim = run_plan(
            &args,
            &plan,
            &trace,
            Mode::TrustOs,
            PredictorKind::None,
            case.case,
        )?;
        let mut per_expert = (None, None, None);
        let (published_ratio, simulated_ratio, error_pct) = match case.reference {
            Some(r) => {
                let ratio_at = |bits: u32| -> Result<(f64, f64)> {
                    let mut ra = args.clone();
                    let at = |k: u32, ra: &mut SimArgs| -> Result<f64> {
                        ra.k = Some(k);
                        let (p, t) = plan_for(ra, case.device, bits)?;
                        Ok(
                            run_plan(ra, &p, &t, Mode::TrustOs, PredictorKind::None, "ref")?
                                .tok_per_s,
                        )
                    };
                    let base = at(r.k, &mut ra)?;
                    let this = if bits == case.bits {
                        sim.tok_per_s
                    } else {
                        at(case.k, &mut ra)?
                    };
                    Ok((this / base, base))
                };
                let (q, base) = ratio_at(case.bits)?;
                let other = ratio_at(if case.bits == 4 { 2 } else { 4 })?.0;
                let layers = plan.geometry().layers as f64;
                let step = |tok: f64, ref_tok: f64| {
                    1e3 * (1.0 / tok - 1.0 / ref_tok) / ((case.k - r.k) as f64 * layers)
                };
                per_expert = (
                    Some(step(case.tok_per_s, r.tok_per_s)),
                    Some(step(sim.tok_per_s, base)),
                    Some(other),
                );
                let p = case.tok_per_s / r.tok_per_s;
                (Some(p), Some(q), 100.0 * (q / p - 1.0))
            }
            None => (None, None, 100.0 * (sim.tok_per_s / case.tok_per_s - 1.0)),
        };
        let search = crate::policy::search(&args, &plan, &trace, case.case)?;
        let gain = Gain::between(&sim, &search.best, plan.geometry().expert_bytes as f64);
        out.push(CaseResult {
            best_over_published: search.best.tok_per_s / case.tok_per_s,
            published: case,
            best_over_trust_os: search.best.tok_per_s / sim.tok_per_s,
            simulated: sim,
            error_pct,
            published_ratio,
            simulated_ratio,
            published_ms_per_expert: per_expert.0,
            simulated_ms_per_expert: per_expert.1,
            other_bits_ratio: per_expert.2,
            search,
            gain,
        });
    }
    if args.json {
        return to_json(&out);
    }
    Ok(text(&out))
}

fn text(out: &[CaseResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "flash-moe's 'trust the OS' pipeline simulated from the presets (one profile per device), against every published point:\n"
    );
    let _ = writeln!(
        s,
        "{:<31} {:>10} {:>10} {:>7} {:>11} {:>11} {:>10} {:>9}  note",
        "case", "published", "simulated", "error", "layer ms", "I/O ms", "cache hit", "Belady"
    );
    for c in out {
        let p = &c.published;
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
        let (publ, simu) = match (c.published_ratio, c.simulated_ratio) {
            (Some(a), Some(b)) => (format!("x{a:.3}"), format!("x{b:.3}")),
            _ => (
                format!("{:.2}", p.tok_per_s),
                format!("{:.2}", c.simulated.tok_per_s),
            ),
        };
        let _ = writeln!(
            s,
            "{:<31} {:>10} {:>10} {:>6.1}% {:>5}/{:<5.2} {:>5}/{:<5.2} {:>9.1}% {:>8.1}%  {}",
            p.case,
            publ,
            simu,
            c.error_pct,
            opt(p.layer_ms),
            c.simulated.layer_ms,
            opt(p.layer_io_ms),
            c.simulated.layer_stall_ms,
            100.0 * c.simulated.cache_hit_rate,
            100.0 * c.simulated.belady_hit_rate,
            note(c)
        );
    }
    s += "(layer ms and I/O ms: published/simulated; xN: tok/s over the same table's K=4)\n";
    for c in out {
        if let (Some(p), Some(q), Some(o)) = (
            c.published_ms_per_expert,
            c.simulated_ms_per_expert,
            c.other_bits_ratio,
        ) {
            let _ = writeln!(
                s,
                "  {}: ms/expert (token time added per added expert and layer) published {p:.2}, \
                 simulated {q:.2}; simulated ratio at {} bits x{o:.3}",
                c.published.case,
                if c.published.bits == 4 { 2 } else { 4 }
            );
        }
    }
    s += "\n";
    s += &crate::policy_text::best_table(out);
    for c in out {
        let p = &c.published;
        let _ = writeln!(s, "source ({}): {}", p.case, p.source);
        if let Some(f) = p.fits {
            let _ = writeln!(s, "  fits: {f}");
        }
        if let Some(r) = p.reason {
            let _ = writeln!(s, "  reason: {r}");
        }
    }
    s
}

fn note(c: &CaseResult) -> &'static str {
    let p = &c.published;
    if !p.traced {
        "UNTRACED"
    } else if c.error_pct.abs() <= 20.0 {
        if p.fits.is_some() {
            "ok (fit)"
        } else if p.reference.is_some() {
            "ok (ratio, other build)"
        } else {
            "ok"
        }
    } else if p.reference.is_some() && p.reason.is_some() {
        "not placed: reason"
    } else if p.reason.is_some() {
        "off: see reason"
    } else {
        "OFF"
    }
}
