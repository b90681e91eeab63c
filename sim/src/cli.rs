//! `flashmoe sim`: arguments and the library entry point the CLI mounts.
//!
//! ```no_run
//! use clap::Parser;
//! #[derive(Parser)]
//! struct Cli { #[command(flatten)] sim: flashmoe_sim::cli::SimArgs }
//! let cli = Cli::parse();
//! print!("{}", flashmoe_sim::cli::run(&cli.sim).unwrap());
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use io_sched::cache::EvictionKind;
use io_sched::trace::Trace;

use crate::belady::belady_hit_rate;
use crate::device::{DeviceProfile, device_profile};
use crate::error::{Result, SimError};
use crate::geometry::{Geometry, model_preset};
use crate::predict::PredictorKind;
use crate::report::{RunLabel, Summary, table};
use crate::synth::{self, SynthParams};
use crate::vtime::{self, Mode, RunSpec};

/// Options of `flashmoe sim`.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Device preset (macbook-m3-max, iphone-17-pro, iphone-17-pro-256gb, linux-nvme-gen4,
    /// this-machine) or a profile .json.
    #[arg(long, default_value = "macbook-m3-max")]
    pub device: String,
    /// Model preset (qwen3.5-397b-a17b, qwen3.5-35b-a3b, qwen3-30b-a3b, mixtral-8x7b, deepseek-v3).
    #[arg(long, default_value = "qwen3.5-397b-a17b")]
    pub model: String,
    /// Bits per expert weight (group-64 affine quantization).
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Experts used per token and layer (default: the model's own).
    #[arg(long)]
    pub k: Option<u32>,
    /// trust-os: flash-moe's buffered preads through the page cache; flashmoe: io-sched.
    /// Default: both, trust-os first (the published baseline), then flashmoe.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Predictor feeding prefetch hints (flashmoe mode).
    #[arg(long, default_value = "scores")]
    pub predictor: PredictorKind,
    /// Cache eviction policy: lru, lfru or next-use (the predictor's probabilities).
    #[arg(long, default_value = "lru")]
    pub eviction: String,
    /// Expert cache in GB (default: RAM - reserved - non-expert weights; page cache in trust-os).
    #[arg(long)]
    pub budget_gb: Option<f64>,
    /// Reads in flight (default 32; trust-os: the device's reader threads).
    #[arg(long)]
    pub queue_depth: Option<usize>,
    /// Override the SSD path's peak GB/s (sensitivity runs).
    #[arg(long)]
    pub ssd_peak_gbps: Option<f64>,
    /// Override the SSD path's GB/s per request.
    #[arg(long)]
    pub ssd_single_gbps: Option<f64>,
    /// Override the compute slowdown at full SSD utilisation (0 = no contention).
    #[arg(long)]
    pub contention: Option<f64>,
    /// Layers ahead to predict.
    #[arg(long, default_value_t = 1)]
    pub horizon: u32,
    /// Candidates per predicted layer (default k).
    #[arg(long)]
    pub max_per_layer: Option<usize>,
    /// Tokens measured, after the warmup tokens.
    #[arg(long, default_value_t = 300)]
    pub tokens: u64,
    #[arg(long, default_value_t = 300)]
    pub warmup: u64,
    /// Routing trace: a flashmoe binary trace or a fixture routing_trace.safetensors
    /// (default: synthetic, calibrated to flash-moe's LRU hit rates).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Synthetic routing without --trace: latent (top-k of latent router scores, k a parameter
    /// of the mechanism: flashmoe_sim::latent) or mixture (per-slot reuse/popularity draws
    /// fitted at k = 4: flashmoe_sim::synth, the older model).
    #[arg(long, value_enum, default_value_t = Routing::Latent)]
    pub routing: Routing,
    /// Synthetic trace knobs of `--routing mixture` (see flashmoe_sim::synth).
    #[arg(long)]
    pub reuse: Option<f64>,
    #[arg(long)]
    pub recent: Option<f64>,
    #[arg(long)]
    pub skew: Option<f64>,
    #[arg(long)]
    pub cross_layer: Option<f64>,
    /// Share of the next layer's experts the pre-gate scores recover.
    #[arg(long)]
    pub pregate_recall: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Run trust-os and every predictor side by side (at each --sweep-budgets-gb).
    #[arg(long)]
    pub sweep: bool,
    #[arg(long, value_delimiter = ',')]
    pub sweep_budgets_gb: Vec<f64>,
    /// Write an SVG timeline of the first measured tokens.
    #[arg(long)]
    pub timeline: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub timeline_tokens: u64,
    /// Reproduce flash-moe's published figures (M3 Max 4/2-bit, iPhone 17 Pro) and show the
    /// best flashmoe policy on each.
    #[arg(long)]
    pub reproduce: bool,
    /// Fit the synthetic routing models to flash-moe's LRU hit rates, print them and what they
    /// say at k = 4, 6, 10 (with --check-traces: fitted on real traces of the smallest k and
    /// checked against the others).
    #[arg(long)]
    pub calibrate_trace: bool,
    /// Real routing traces recorded at several k, for --calibrate-trace.
    #[arg(long, value_delimiter = ',')]
    pub check_traces: Vec<PathBuf>,
    /// Print every preset figure with its source as a Markdown table and exit.
    #[arg(long)]
    pub figures: bool,
    /// Print the resolved device profile (JSON, every figure with its source) and exit; with
    /// `--device this-machine`, save it to reuse as `--device file.json`.
    #[arg(long)]
    pub show_device: bool,
    /// Write the (synthetic or loaded) trace in flashmoe's binary format.
    #[arg(long)]
    pub write_trace: Option<PathBuf>,
    /// Size of the scratch file `--device this-machine` measures, MiB (larger than the host's
    /// caches gives truer figures).
    #[arg(long, default_value_t = 512)]
    pub calibrate_mb: u64,
    /// Scratch directory for `--device this-machine`.
    #[arg(long, default_value = ".")]
    pub calibrate_dir: PathBuf,
    /// Show how every `--reproduce` point moves over each unidentified parameter's range.
    #[arg(long)]
    pub sensitivity: bool,
    /// Time to first token on the M3 Max and iPhone presets: token by token vs chunked.
    #[arg(long)]
    pub ttft: bool,
    /// Prompt tokens for `--ttft`.
    #[arg(long, default_value_t = 2000)]
    pub prompt_tokens: u64,
    /// Prompt tokens per prefill chunk for `--ttft` (1 = token by token).
    #[arg(long, default_value_t = 64)]
    pub chunk: u64,
    /// Energy, battery, heat and wear of the model on every preset (trust-os and flashmoe).
    #[arg(long)]
    pub costs: bool,
}

/// Which synthetic routing model a run without `--trace` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[non_exhaustive]
pub enum Routing {
    /// [`crate::latent`]: the top k of latent router scores.
    Latent,
    /// [`crate::synth`]: per-slot reuse / recent / popularity draws.
    Mixture,
}

/// One resolved run.
struct Plan {
    device: DeviceProfile,
    geometry: Geometry,
    k: u32,
}

fn plan(args: &SimArgs, device: &str, bits: u32) -> Result<Plan> {
    let device = if device == "this-machine" {
        crate::calibrate::this_machine(&args.calibrate_dir, args.calibrate_mb)?
    } else {
        device_profile(device)?
    };
    plan_device(args, device, bits)
}

fn plan_device(args: &SimArgs, device: DeviceProfile, bits: u32) -> Result<Plan> {
    let m = model_preset(&args.model)?;
    let geometry = m.at_bits(bits)?;
    let k = args.k.unwrap_or(m.k_native.value as u32);
    if k == 0 || k > geometry.experts {
        return Err(SimError::Setup(format!(
            "k = {k} must be in 1..={}",
            geometry.experts
        )));
    }
    Ok(Plan {
        device,
        geometry,
        k,
    })
}

fn synth_params(args: &SimArgs) -> SynthParams {
    let d = SynthParams::default();
    SynthParams {
        reuse: args.reuse.unwrap_or(d.reuse),
        recent: args.recent.unwrap_or(d.recent),
        skew: args.skew.unwrap_or(d.skew),
        cross_layer: args.cross_layer.unwrap_or(d.cross_layer),
        pregate_recall: args.pregate_recall.unwrap_or(d.pregate_recall),
        ..d
    }
}

fn trace_for(args: &SimArgs, p: &Plan) -> Result<Arc<Trace>> {
    let t = match &args.trace {
        Some(path) => crate::fixture::load_trace(path)?,
        None if args.routing == Routing::Latent => crate::latent::generate(
            p.geometry.layers,
            p.geometry.experts,
            p.k,
            args.warmup + args.tokens,
            &crate::latent::LatentParams::default(),
            args.seed,
        )?,
        None => synth::generate(
            p.geometry.layers,
            p.geometry.experts,
            p.k,
            args.warmup + args.tokens,
            &synth_params(args),
            args.seed,
        )?,
    };
    if t.header.k != p.k {
        return Err(SimError::Setup(format!(
            "the trace routes k = {}, the run asks k = {} (pass --k {})",
            t.header.k, p.k, t.header.k
        )));
    }
    Ok(Arc::new(t))
}

fn spec(
    args: &SimArgs,
    p: &Plan,
    mode: Mode,
    predictor: PredictorKind,
    budget: Option<f64>,
) -> Result<RunSpec> {
    let d = &p.device;
    let g = &p.geometry;
    let (pre, post) = d.layer_compute_ns(g, p.k)?;
    let budget_bytes = match (budget, mode) {
        (Some(gb), _) => (gb * 1e9) as u64,
        (None, Mode::TrustOs) => d.trust_os_cache(g, p.k).expert_cache_bytes as u64,
        (None, Mode::Flashmoe) => d.flashmoe_memory(g, p.k).0,
    };
    let eviction: EvictionKind = args.eviction.parse().map_err(SimError::Setup)?;
    let split = d.io_split();
    let (mut ssd, qd) = match mode {
        Mode::TrustOs => (
            d.ssd_buffered.params(),
            args.queue_depth
                .unwrap_or(d.buffered_threads.value as usize)
                * split,
        ),
        Mode::Flashmoe => (d.ssd_direct.params(), args.queue_depth.unwrap_or(32)),
    };
    if let Some(g) = args.ssd_peak_gbps {
        ssd.peak_bps = g * 1e9;
    }
    if let Some(g) = args.ssd_single_gbps {
        ssd.single_bps = g * 1e9;
    }
    Ok(RunSpec {
        mode,
        layers: g.layers,
        experts: g.experts,
        expert_bytes: g.expert_bytes,
        budget_bytes,
        ssd,
        queue_depth: qd,
        compute_pre_ns: pre,
        compute_post_ns: post,
        contention: args.contention.unwrap_or(d.contention.value),
        copy_bps_per_thread: d.page_cache_copy_gbps_per_thread.value * 1e9,
        trust_os_split: split,
        dense_reread_bytes_per_layer: match mode {
            Mode::TrustOs => d.trust_os_cache(g, p.k).dense_reread_bytes_per_layer,
            Mode::Flashmoe => d.flashmoe_memory(g, p.k).1,
        },
        eviction,
        predictor,
        horizon: args.horizon,
        max_per_layer: args.max_per_layer.unwrap_or(p.k as usize),
        pregate_recall: synth_params(args).pregate_recall,
        far_recall: None,
        demand_chunk: 1 << 20,
        prefetch_chunk: 1 << 20,
        max_prefetch_bytes_in_flight: 8 << 20,
        min_confidence: 0.0,
        warmup_tokens: args.warmup,
        tokens: args.tokens,
        timeline_tokens: if args.timeline.is_some() {
            args.timeline_tokens
        } else {
            0
        },
        seed: args.seed,
    })
}

fn summarise(label: &str, p: &Plan, s: &RunSpec, trace: &Trace, r: &vtime::RunResult) -> Summary {
    let mode = match s.mode {
        Mode::TrustOs => "trust-os",
        Mode::Flashmoe => "flashmoe",
    };
    let predictor = if s.mode == Mode::TrustOs {
        "none"
    } else {
        s.predictor.name()
    };
    let belady = belady_hit_rate(
        trace,
        r.cache_slots,
        s.warmup_tokens.min(trace.tokens().saturating_sub(1)),
    );
    Summary::new(
        RunLabel {
            label: label.to_string(),
            device: p.device.name.clone(),
            model: p.geometry.name.clone(),
            bits: p.geometry.bits,
            k: p.k,
            mode: mode.into(),
            predictor: predictor.into(),
            eviction: s.eviction.name().into(),
            cache_bytes: s.budget_bytes,
        },
        r,
        belady,
    )
}

fn run_one(
    args: &SimArgs,
    p: &Plan,
    trace: &Arc<Trace>,
    mode: Mode,
    pred: PredictorKind,
    budget: Option<f64>,
    label: &str,
) -> Result<(Summary, vtime::RunResult)> {
    let s = spec(args, p, mode, pred, budget)?;
    let r = vtime::run(&s, trace)?;
    let mut sum = summarise(label, p, &s, trace, &r);
    sum.costs = costs_of(p, &sum, mode);
    Ok((sum, r))
}

/// The cost report of a run, when the device has cost figures.
fn costs_of(p: &Plan, s: &Summary, mode: Mode) -> Option<crate::costs::CostReport> {
    let c = p.device.costs.as_ref()?;
    let g = &p.geometry;
    let experts = g.layers as f64 * p.k as f64 * g.expert_bytes as f64;
    let w = crate::costs::TokenWork {
        seconds: s.ms_per_token / 1e3,
        compute_seconds: s.layer_compute_ms * g.layers as f64 / 1e3,
        flash_bytes: s.device_mb_per_token * 1e6,
        kernel_bytes: crate::device::layer_bytes(g, p.k) * g.layers as f64,
        copied_bytes: if mode == Mode::TrustOs { experts } else { 0.0 },
    };
    Some(c.report(w, g))
}

fn sweep(args: &SimArgs, p: &Plan, trace: &Arc<Trace>) -> Result<Vec<Summary>> {
    let budgets: Vec<Option<f64>> = if args.sweep_budgets_gb.is_empty() {
        vec![args.budget_gb]
    } else {
        args.sweep_budgets_gb.iter().map(|&b| Some(b)).collect()
    };
    let mut rows = Vec::new();
    for b in budgets {
        let tag = b.map_or(String::new(), |g| format!(" @{g}GB"));
        rows.push(
            run_one(
                args,
                p,
                trace,
                Mode::TrustOs,
                PredictorKind::None,
                b,
                &format!("trust-os{tag}"),
            )?
            .0,
        );
        for pred in PredictorKind::ALL {
            rows.push(
                run_one(
                    args,
                    p,
                    trace,
                    Mode::Flashmoe,
                    pred,
                    b,
                    &format!("flashmoe/{}{tag}", pred.name()),
                )?
                .0,
            );
        }
    }
    Ok(rows)
}

/// Runs what `args` asks and returns the text (or JSON) to print.
pub fn run(args: &SimArgs) -> Result<String> {
    crate::validate::check_args(args)?;
    if args.calibrate_trace && !args.check_traces.is_empty() {
        return crate::routing_check::traces_text(&args.check_traces, args.seed);
    }
    if args.calibrate_trace {
        let mut out = crate::routing_check::flash_moe_text(7)?;
        let (p, worst) =
            synth::calibrate(512, 4, &synth::FLASH_MOE_LRU, synth_params(args), args.seed)?;
        let t = synth::generate(4, 512, 4, 3000, &p, args.seed)?;
        out += &format!(
            "\nmixture model (--routing mixture) fitted as a steady state (worst error {:.3}):\n{}\n",
            worst,
            serde_json::to_string_pretty(&p).unwrap_or_default()
        );
        for (slots, target) in synth::FLASH_MOE_LRU {
            out += &format!(
                "  per-layer LRU {slots:>3}/512: {:.1}% (flash-moe measured {:.0}%)\n",
                100.0 * synth::per_layer_lru_hit_rate(&t, slots as usize, 300),
                100.0 * target
            );
        }
        return Ok(out);
    }
    if args.figures {
        return crate::figures::figures_markdown();
    }
    if args.sensitivity {
        return crate::sensitivity::sensitivity(args);
    }
    if args.reproduce {
        return crate::reproduce::reproduce(args);
    }
    if args.ttft {
        return crate::ttft::ttft(args);
    }
    if args.costs {
        return crate::ttft::costs_table(args);
    }
    let p = plan(args, &args.device, args.bits)?;
    if args.show_device {
        return to_json(&p.device);
    }
    let trace = trace_for(args, &p)?;
    if let Some(path) = &args.write_trace {
        trace.write(path)?;
    }
    if args.sweep {
        let rows = sweep(args, &p, &trace)?;
        return Ok(if args.json {
            to_json(&rows)?
        } else {
            table(&rows)
        });
    }
    let modes = match args.mode {
        Some(m) => vec![m],
        None => vec![Mode::TrustOs, Mode::Flashmoe],
    };
    let mut summaries = Vec::new();
    for mode in modes {
        let label = match mode {
            Mode::TrustOs => "trust-os (flash-moe)",
            Mode::Flashmoe => "flashmoe",
        };
        let (s, r) = run_one(
            args,
            &p,
            &trace,
            mode,
            args.predictor,
            args.budget_gb,
            label,
        )?;
        if let Some(path) = &args.timeline {
            let path = match (args.mode, mode) {
                (None, Mode::TrustOs) => path.with_extension("trust-os.svg"),
                _ => path.clone(),
            };
            let title = format!(
                "{} {}-bit K={} on {}, {} / {}: {:.2} tok/s",
                s.model, s.bits, s.k, s.device, s.mode, s.predictor, s.tok_per_s
            );
            std::fs::write(&path, crate::timeline::svg(&r.spans, &title)).map_err(|source| {
                SimError::Io {
                    op: "write timeline",
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
        summaries.push(s);
    }
    if args.json {
        if summaries.len() == 1 {
            to_json(&summaries[0])
        } else {
            to_json(&summaries)
        }
    } else {
        Ok(summaries
            .iter()
            .map(Summary::text)
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| SimError::Setup(format!("JSON: {e}")))
}

pub(crate) fn plan_for(args: &SimArgs, device: &str, bits: u32) -> Result<(Plan2, Arc<Trace>)> {
    let p = plan(args, device, bits)?;
    let t = trace_for(args, &p)?;
    Ok((Plan2(p), t))
}

/// [`plan_for`] with a device profile given in full (sensitivity runs).
pub(crate) fn plan_for_device(
    args: &SimArgs,
    device: DeviceProfile,
    bits: u32,
) -> Result<(Plan2, Arc<Trace>)> {
    let p = plan_device(args, device, bits)?;
    let t = trace_for(args, &p)?;
    Ok((Plan2(p), t))
}

/// A resolved device × model (opaque to other modules).
pub(crate) struct Plan2(Plan);

impl Plan2 {
    pub(crate) fn device(&self) -> &DeviceProfile {
        &self.0.device
    }
    pub(crate) fn geometry(&self) -> &Geometry {
        &self.0.geometry
    }
    pub(crate) fn k(&self) -> u32 {
        self.0.k
    }
}

pub(crate) fn run_plan(
    args: &SimArgs,
    p: &Plan2,
    t: &Arc<Trace>,
    mode: Mode,
    pred: PredictorKind,
    label: &str,
) -> Result<Summary> {
    Ok(run_one(args, &p.0, t, mode, pred, args.budget_gb, label)?.0)
}

/// Runs `replay`'s io-sched row `kind` on `p`: its predictor, eviction and session policy
/// (over-fetch, tie rule, idle bound over one layer's compute), through `io_sched::Session`.
pub(crate) fn run_policy(
    args: &SimArgs,
    p: &Plan2,
    t: &Arc<Trace>,
    kind: crate::replay::RowKind,
    label: &str,
) -> Result<Summary> {
    let mut s = spec(args, &p.0, Mode::Flashmoe, kind.predictor(), args.budget_gb)?;
    s.eviction = kind.eviction();
    if kind.horizon() == 2 {
        s.far_recall = Some(crate::pregate::FAR_RECALL);
    }
    let compute_ns = s.compute_pre_ns + s.compute_post_ns;
    let policy = kind.policy(s.max_per_layer, s.horizon, compute_ns as u64);
    let r = vtime::run_session(&s, t, None, policy)?;
    let mut sum = summarise(label, &p.0, &s, t, &r);
    sum.eviction = kind.eviction().name().into();
    sum.costs = costs_of(&p.0, &sum, Mode::Flashmoe);
    Ok(sum)
}
