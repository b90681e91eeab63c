//! `--ttft` and `--costs`: the time to first token of a prompt and what running the model
//! costs the user, on the presets, from the same simulated decode runs.
//!
//! TTFT is shown three ways per device: token by token through the simulated decode path
//! (what flash-moe does: `prompt × ms/token` of the "trust the OS" run, and of flashmoe's),
//! then the [`crate::prefill`] model at chunk 1 and at `--chunk`, term by term, so the gain
//! of chunking reads as overhead, weight reads, FLOPs and expert I/O.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::{Plan2, SimArgs, plan_for, run_plan, to_json};
use crate::costs::CostReport;
use crate::device::device_names;
use crate::error::{Result, SimError};
use crate::geometry::model_preset;
use crate::predict::PredictorKind;
use crate::prefill::{Prefill, PrefillSpec, prefill};
use crate::vtime::Mode;

/// The presets `--ttft` compares.
pub const TTFT_DEVICES: [&str; 3] = ["macbook-m3-max", "iphone-17-pro", "iphone-17"];

/// The TTFT published for the iPhone 17 Pro run (tweaktown.com/news/110610: "a TTFT (Time To
/// First Token) of almost 50 seconds"); its prompt length is not published.
pub const PUBLISHED_TTFT_S: f64 = 50.0;

/// One device's TTFT.
#[derive(Debug, Clone, Serialize)]
pub struct TtftRow {
    pub device: String,
    pub model: String,
    pub bits: u32,
    pub k: u32,
    pub prompt_tokens: u64,
    /// Decode-path ms/token: flash-moe ("trust the OS") and flashmoe (scores predictor).
    pub trust_os_ms_per_token: f64,
    pub flashmoe_ms_per_token: f64,
    /// prompt × decode ms/token.
    pub token_by_token_trust_os_s: f64,
    pub token_by_token_flashmoe_s: f64,
    /// The prefill model at chunk 1 and at the chosen chunk.
    pub model_chunk_1: Prefill,
    pub model_chunked: Prefill,
    /// Prompt tokens at which flash-moe's token-by-token prefill takes [`PUBLISHED_TTFT_S`].
    pub prompt_for_published_ttft: f64,
}

fn k_of(args: &SimArgs) -> Option<u32> {
    // flash-moe runs the 397B at K=4; other models at their own K.
    args.k.or((args.model == "qwen3.5-397b-a17b").then_some(4))
}

fn prefill_spec(p: &Plan2, model: &str, hit_rate: f64) -> Result<PrefillSpec> {
    let d = p.device();
    let g = p.geometry();
    let m = model_preset(model)?;
    let pre = d.prefill.as_ref().ok_or_else(|| SimError::Profile {
        name: d.name.clone(),
        reason: "no prefill figures (gpu_tflops, flop_efficiency) for --ttft".into(),
    })?;
    let expert_params = m.expert_params() as f64;
    let all_experts = g.layers as f64 * g.experts as f64 * expert_params;
    Ok(PrefillSpec {
        layers: g.layers,
        k: p.k(),
        expert_bytes: g.expert_bytes as f64,
        expert_params,
        dense_layer_bytes: g.non_expert_bytes as f64 / g.layers as f64,
        dense_layer_params: (m.total_params.value - all_experts).max(0.0) / g.layers as f64,
        overhead_s: d.layer_overhead_ns() / 1e9,
        weight_bps: d.effective_compute_bps()?,
        flops: pre.gpu_tflops.value * 1e12 * pre.flop_efficiency.value,
        read_bps: d.ssd_direct.peak_gbps.value * 1e9,
        hit_rate,
        dense_stream_bytes_per_layer: d.flashmoe_memory(g, p.k()).1,
    })
}

/// TTFT of `--prompt-tokens` on each of [`TTFT_DEVICES`].
pub fn ttft_rows(args: &SimArgs) -> Result<Vec<TtftRow>> {
    let mut args = args.clone();
    args.k = k_of(&args);
    let n = args.prompt_tokens.max(1);
    let mut rows = Vec::new();
    for dev in TTFT_DEVICES {
        let (plan, trace) = plan_for(&args, dev, args.bits)?;
        let os = run_plan(
            &args,
            &plan,
            &trace,
            Mode::TrustOs,
            PredictorKind::None,
            dev,
        )?;
        let fm = run_plan(
            &args,
            &plan,
            &trace,
            Mode::Flashmoe,
            PredictorKind::Scores,
            dev,
        )?;
        let spec = prefill_spec(&plan, &args.model, fm.cache_hit_rate)?;
        let one = prefill(&spec, &trace, n, 1);
        let chunked = prefill(&spec, &trace, n, args.chunk.max(1));
        rows.push(TtftRow {
            device: dev.into(),
            model: args.model.clone(),
            bits: args.bits,
            k: plan.k(),
            prompt_tokens: n,
            trust_os_ms_per_token: os.ms_per_token,
            flashmoe_ms_per_token: fm.ms_per_token,
            token_by_token_trust_os_s: n as f64 * os.ms_per_token / 1e3,
            token_by_token_flashmoe_s: n as f64 * fm.ms_per_token / 1e3,
            model_chunk_1: one,
            model_chunked: chunked,
            prompt_for_published_ttft: PUBLISHED_TTFT_S / (os.ms_per_token / 1e3),
        });
    }
    Ok(rows)
}

fn terms(p: &Prefill) -> String {
    format!(
        "{:>8.1} s = overhead {:.1} + weight reads {:.1} + FLOPs {:.1} + expert I/O {:.1} + weights streamed {:.1}  (experts read {:.1} GB, union {:.1}/layer/chunk)",
        p.ttft_s,
        p.overhead_s,
        p.weight_s,
        p.flop_s,
        p.io_s,
        p.dense_io_s,
        p.expert_read_bytes / 1e9,
        p.mean_union
    )
}

/// `--ttft`: text or JSON.
pub fn ttft(args: &SimArgs) -> Result<String> {
    let rows = ttft_rows(args)?;
    if args.json {
        return to_json(&rows);
    }
    let mut s = String::new();
    for r in &rows {
        let (a, b) = (&r.model_chunk_1, &r.model_chunked);
        let _ = writeln!(
            s,
            "{}: {} {}-bit K={}, {}-token prompt",
            r.device, r.model, r.bits, r.k, r.prompt_tokens
        );
        let _ = writeln!(
            s,
            "  token by token, flash-moe decode path  {:>8.1} s  ({} x {:.0} ms/token, simulated trust-os)",
            r.token_by_token_trust_os_s, r.prompt_tokens, r.trust_os_ms_per_token
        );
        let _ = writeln!(
            s,
            "  token by token, flashmoe decode path   {:>8.1} s  ({} x {:.0} ms/token, simulated flashmoe/scores)",
            r.token_by_token_flashmoe_s, r.prompt_tokens, r.flashmoe_ms_per_token
        );
        let _ = writeln!(s, "  prefill model, chunk 1   {}", terms(a));
        let _ = writeln!(s, "  prefill model, chunk {:<3} {}", b.chunk, terms(b));
        let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::INFINITY };
        let _ = writeln!(
            s,
            "  gain x{:.1}, term by term: overhead {:.1} -> {:.1} s (one pass per layer and chunk, not per token); compute {:.1} -> {:.1} s (weights read once per chunk{}); expert I/O {:.1} -> {:.1} s (x{:.1} fewer bytes: a chunk's union is {:.1} experts of the {} it routes); weights that do not fit streamed {:.1} -> {:.1} s",
            ratio(a.ttft_s, b.ttft_s),
            a.overhead_s,
            b.overhead_s,
            a.weight_s + a.flop_s,
            b.weight_s + b.flop_s,
            if b.flop_s > 0.0 {
                "; now FLOP-bound"
            } else {
                ""
            },
            a.io_s,
            b.io_s,
            ratio(a.expert_read_bytes, b.expert_read_bytes),
            b.mean_union,
            b.chunk.min(r.prompt_tokens) * r.k as u64,
            a.dense_io_s,
            b.dense_io_s
        );
        if r.device == "iphone-17-pro" {
            let _ = writeln!(
                s,
                "  the published TTFT of ~{PUBLISHED_TTFT_S:.0} s (tweaktown.com; prompt length untraced) is {:.0} prompt tokens at this token-by-token rate",
                r.prompt_for_published_ttft
            );
        }
        s.push('\n');
    }
    s += "Assumptions: no overlap of a chunk's expert reads with its compute; cache hits as in the flashmoe decode run; attention FLOPs and the LM head left out; union sizes counted on the routing trace (synthetic unless --trace).\n";
    Ok(s)
}

/// One preset's costs, both modes.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    pub device: String,
    pub mode: String,
    pub costs: CostReport,
}

/// `--costs`: energy, battery, heat and wear of the model on every preset with cost figures.
pub fn costs_table(args: &SimArgs) -> Result<String> {
    let mut args = args.clone();
    args.k = k_of(&args);
    let mut rows = Vec::new();
    for dev in device_names() {
        let (plan, trace) = plan_for(&args, dev, args.bits)?;
        if plan.device().costs.is_none() {
            continue;
        }
        for (mode, pred, name) in [
            (Mode::TrustOs, PredictorKind::None, "trust-os"),
            (Mode::Flashmoe, PredictorKind::Scores, "flashmoe"),
        ] {
            let s = run_plan(&args, &plan, &trace, mode, pred, dev)?;
            if let Some(c) = s.costs {
                rows.push(CostRow {
                    device: dev.into(),
                    mode: name.into(),
                    costs: c,
                });
            }
        }
    }
    if args.json {
        return to_json(&rows);
    }
    let mut s = format!(
        "{} {}-bit K={}: costs per preset (figures and sources: --figures)\n\n{:<20} {:<9} {:>7} {:>8} {:>7} {:>8} {:>9} {:>10} {:>12} {:>9} {:>10} {:>11}\n",
        args.model,
        args.bits,
        args.k.map_or("native".into(), |k| k.to_string()),
        "device",
        "mode",
        "tok/s",
        "J/token",
        "W",
        "thermal",
        "throttle",
        "tok/s@30m",
        "tok/charge",
        "h/charge",
        "GB read/h",
        "write %TBW"
    );
    for r in &rows {
        let c = &r.costs;
        let opt = |x: Option<f64>, p: usize| x.map_or("mains".to_string(), |v| format!("{v:.p$}"));
        let _ = writeln!(
            s,
            "{:<20} {:<9} {:>7.2} {:>8.2} {:>7.1} {:>7.0}% {:>9} {:>10.2} {:>12} {:>9} {:>10.0} {:>10.3}%",
            r.device,
            r.mode,
            c.tok_per_s,
            c.j_per_token,
            c.power_w,
            100.0 * c.thermal_ratio,
            c.throttle
                .time_to_throttle_s
                .map_or("never".to_string(), |t| format!("{:.1} min", t / 60.0)),
            c.throttle.after.last().map_or(c.tok_per_s, |a| a.tok_per_s),
            opt(c.tokens_per_charge, 0),
            opt(c.hours_per_charge, 1),
            c.flash_read_bytes_per_hour / 1e9,
            100.0 * c.model_write_share_of_tbw
        );
    }
    s += "\nthermal: average power over the sustained envelope (>100%: throttling sets in); throttle: when, in continuous generation (thermal time constant and DVFS exponent: labelled assumptions, flashmoe_sim::throttle); tok/s@30m: the rate after 30 minutes. Reads wear no NAND (P/E cycles come from writes; read disturb is the controller's); the packer's one write of the model is the only wear.\n";
    Ok(s)
}
