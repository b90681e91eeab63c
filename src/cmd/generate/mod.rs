//! `flashmoe generate`: text from a packed model, every expert streamed through io-sched under
//! a memory budget, with pre-gate (or another predictor's) prefetching.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use flashmoe_backends::wgpu::{WgpuBackend, WgpuConfig};
use flashmoe_backends::{Activations, ComputeBackend, CpuBackend, Profiled};
use flashmoe_engine::sampler::Sampler;
use flashmoe_engine::{
    EngineError, NoObserver, PackedModel, Prefetcher, RoutingObserver, SchedExperts, Streamed, Tee,
    TraceSink, generate, open_streamed,
};
use io_sched::Scheduler;
use io_sched::metrics::LayerMetrics;
use serde::Serialize;

use super::CliResult;

mod flags;
use super::prefill_report::PrefillReport;
pub use super::values::parse_budget;
use flags::{backend_config, prediction, prefetch_policy};

/// The model `generate` uses without `--model`: committed to the repository (see models/).
pub const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-qwen3-moe-q4");

/// `--activations`: how the CPU backend takes the activations of quantized matvecs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuActivations {
    /// Quantized to int8 per weight group (fast).
    Int8,
    /// f32 (exact).
    F32,
}

impl CpuActivations {
    fn backend(self) -> CpuBackend {
        CpuBackend::new().with_activations(match self {
            CpuActivations::Int8 => Activations::Int8,
            CpuActivations::F32 => Activations::F32,
        })
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Packed model directory (from `flashmoe pack`); default: the tiny Qwen3-MoE in models/.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The prompt.
    #[arg(long, default_value = "The Rust programming language")]
    pub prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, value_parser = super::values::temperature)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0, value_parser = super::values::top_p)]
    pub top_p: f32,
    /// Seed of the sampler (same seed, same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep going after an end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Expert cache size: bytes (`512M`, `2G`, `1048576`) or a share of what holding every
    /// expert takes (`25%`; `100%` caches them all).
    #[arg(long, default_value = "25%")]
    pub budget: String,
    /// Read backend: auto, io_uring, pread or mmap.
    #[arg(long, default_value = "auto")]
    pub io_backend: String,
    /// Compute backend: cpu, or wgpu (Vulkan / Metal; the adapter chosen is reported).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// wgpu: use the first adapter whose name contains this (default: the one wgpu prefers).
    #[arg(long)]
    pub adapter: Option<String>,
    /// wgpu: GPU memory for resident expert records (`256M`, `4G`; default 256M; more than
    /// one storage binding of the adapter is several buffers).
    #[arg(long)]
    pub gpu_ring: Option<String>,
    /// Prefetch prediction: blend (pre-gate scores and routing history in one online
    /// calibrated model: cost-aware hints, next-use eviction), pregate, none, temporal,
    /// transition or frequency.
    #[arg(long, default_value = "blend")]
    pub predictor: String,
    /// Experts hinted per predicted layer (default: top_k + 2).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Layers ahead to hint (default: 2 with blend, else 1; pre-gate: 2 also applies layer
    /// L+2's router to layer L's hidden state).
    #[arg(long)]
    pub horizon: Option<u32>,
    /// Which cached expert to evict: lru, lfru (decayed access counts) or next-use (the one the
    /// predictor expects to be routed last; blend only). Default: next-use with blend, else lru.
    #[arg(long)]
    pub eviction: Option<String>,
    /// Cost-aware hinting, `true` or `false` (default: on with blend, whose probabilities are
    /// calibrated): likeliest first over the predicted layers, a read hinted while it fits the
    /// device's idle time before its layer (at probability >= 0.1) or when likelier than not.
    #[arg(long)]
    pub cost_aware: Option<bool>,
    /// Candidates past `--prefetch` per predicted layer that may be hinted within the device's
    /// idle time (default: 4 with cost-aware hints, else 0).
    #[arg(long)]
    pub over_fetch: Option<usize>,
    /// Read experts into the cache before the prompt: true fills every free cache slot,
    /// false reads each on first use (default: when the budget holds every expert, as a model
    /// that fits in memory is loaded whole, so decode runs at its steady speed from the first
    /// token).
    #[arg(long)]
    pub preload: Option<bool>,
    /// Compute time of one layer in microseconds: the window a layer's reads overlap, which
    /// bounds over-fetched and cost-aware hints (default: measured as the run goes, the mean
    /// time from one layer's experts arriving to the next layer's demand).
    #[arg(long)]
    pub layer_compute_us: Option<f64>,
    /// Prompt tokens per prefill chunk: each expert a chunk routes to is read once and run on
    /// all its tokens (default: as many as 256 MiB of activations hold, at most 2048; 1 is token
    /// by token).
    #[arg(long, value_parser = super::values::prefill_chunk)]
    pub prefill_chunk: Option<usize>,
    /// Print tok/s, hit rate, prefetch precision/recall, bytes read per token and stall time
    /// to stderr.
    #[arg(long)]
    pub stats: bool,
    /// CPU: activations of 4- and 8-bit matvecs: int8 (quantized per weight group, integer dot
    /// products, as ggml; the default) or f32 (exact, slower; what the GPU computes).
    #[arg(long, value_enum, default_value_t = CpuActivations::Int8)]
    pub activations: CpuActivations,
    /// Print a table of where a decode step's time goes (ms/token and % per phase: norms,
    /// projections, attention, router, experts, expert wait, lm_head, sampling, the rest) to
    /// stderr. Times every op; off by default, at no cost.
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object (text and statistics) instead of streaming the text.
    #[arg(long)]
    pub json: bool,
    /// Record the routing and pre-gate scores of every token to this file, in io-sched's
    /// routing-trace format (what `sim` replays).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Also record a trace whose pre-gate scores are layer L+2's router applied to layer L's
    /// hidden state (two layers ahead; `replay --far-trace`).
    #[arg(long)]
    pub trace_far: Option<PathBuf>,
}

/// Statistics of one run.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_tok_per_s: f64,
    pub decode_tok_per_s: f64,
    pub hit_rate: f64,
    pub prefetch_precision: f64,
    pub prefetch_recall: f64,
    pub prefetch_used: u64,
    pub prefetch_wasted: u64,
    pub bytes_read: u64,
    pub bytes_read_per_token: f64,
    pub stall_ms: f64,
    pub budget_bytes: u64,
    pub cache_slots: usize,
    pub expert_bytes: u64,
    pub expert_records: u64,
    pub backend: String,
    pub predictor: String,
    /// Experts hinted per predicted layer (the flag, capped to what the cache holds).
    pub hinted_per_layer: usize,
    /// Horizon, cost-aware hinting, eviction.
    pub policy: String,
    /// Where the decode step ran.
    pub compute: ComputeReport,
    /// The prompt: chunking, TTFT, expert bytes read against the chunks' unions.
    pub prefill: PrefillReport,
    /// Expert records read into the cache at load (`--preload`), not counted above.
    pub preloaded_records: usize,
    pub preload_bytes: u64,
    pub preload_secs: f64,
}

/// The compute backend of a run and, for a GPU, its expert-upload counters.
#[derive(Debug, Default, Serialize)]
pub struct ComputeReport {
    /// `cpu` or `wgpu`.
    pub backend: String,
    /// The GPU adapter (wgpu).
    pub adapter: Option<String>,
    /// Expert records uploaded when their layer computed (not resident on the GPU).
    pub gpu_demand_uploads: u64,
    /// Expert records uploaded ahead (pre-gate predicted, ready in io-sched's cache).
    pub gpu_staged_uploads: u64,
    /// Routed experts found resident in the GPU's expert ring.
    pub gpu_resident_hits: u64,
    /// Of those, staged ahead and used for the first time.
    pub gpu_staged_hits: u64,
    /// Bytes of expert records uploaded.
    pub gpu_upload_bytes: u64,
    /// Host time copying expert records into wgpu's staging memory.
    pub gpu_upload_ms: f64,
    /// Host time waiting for the GPU (router, pre-gate and logit read-backs).
    pub gpu_wait_ms: f64,
    /// Command buffers submitted / compute dispatches recorded.
    pub gpu_submits: u64,
    pub gpu_dispatches: u64,
}

impl ComputeReport {
    fn cpu(_: &CpuBackend) -> Self {
        Self {
            backend: "cpu".into(),
            ..Self::default()
        }
    }

    fn wgpu(be: &WgpuBackend) -> Self {
        let s = be.stats();
        Self {
            backend: "wgpu".into(),
            adapter: Some(be.info().to_string()),
            gpu_demand_uploads: s.ring.demand_uploads,
            gpu_staged_uploads: s.ring.staged_uploads,
            gpu_resident_hits: s.ring.resident_hits,
            gpu_staged_hits: s.ring.staged_hits,
            gpu_upload_bytes: s.ring.upload_bytes,
            gpu_upload_ms: s.ring.upload_ns as f64 / 1e6,
            gpu_wait_ms: s.wait_ns as f64 / 1e6,
            gpu_submits: s.submits,
            gpu_dispatches: s.dispatches,
        }
    }
}

#[derive(Debug, Serialize)]
struct JsonOut<'a> {
    model: String,
    prompt: &'a str,
    text: String,
    tokens: &'a [u32],
    stats: &'a Stats,
}

pub fn run(args: &GenerateArgs) -> CliResult<()> {
    let dir = args
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL));
    let m = PackedModel::open(&dir)?;
    // A percentage is of the cache it takes to hold every expert (records padded to 4096).
    let all_slots =
        m.experts.max_read_len() * (m.experts.num_layers() as u64 * m.experts.num_experts() as u64);
    let budget = parse_budget(&args.budget, all_slots)?;
    let (layers, experts) = (m.config.num_layers as u32, m.config.num_experts as u32);
    // The flags checked against the predictor before anything loads.
    let mode = prediction(args, layers, experts)?;
    let policy = prefetch_policy(args)?;
    let Streamed {
        scheduler: sched,
        experts: source,
        prefetch,
        fallbacks,
        preloaded,
        eviction,
        session,
        ..
    } = open_streamed(
        &m,
        budget,
        &backend_config(&args.io_backend)?,
        mode,
        &policy,
    )
    .map_err(|e| match e {
        // The policy did not fit the predictor: name the flags that set them.
        EngineError::Request { reason } => {
            format!("--eviction / --cost-aware / --predictor: {reason}").into()
        }
        e => Box::new(e) as Box<dyn std::error::Error + Send + Sync>,
    })?;
    let policy_text = format!(
        "horizon {}{}, {} eviction",
        session.horizon(),
        if session.is_cost_aware() {
            ", cost-aware"
        } else {
            ""
        },
        eviction.name()
    );
    for why in &fallbacks {
        eprintln!("note: read backend fallback: {why}");
    }
    let prompt = m.tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        return Err("--prompt encodes to no tokens".into());
    }
    let cfg = &m.config;
    let wanted = prompt.len().saturating_add(args.max_tokens);
    let max_seq = wanted.min(cfg.max_position_embeddings);
    if wanted > cfg.max_position_embeddings {
        return Err(format!(
            "prompt ({} tokens) + --max-tokens {} exceeds the model's {} positions",
            prompt.len(),
            args.max_tokens,
            cfg.max_position_embeddings
        )
        .into());
    }
    let run = Decode {
        args,
        m: &m,
        sched: &sched,
        prompt: &prompt,
        max_seq,
        source,
        prefetch,
    };
    let mut profile = None;
    let decoded = match (args.backend.as_str(), args.profile) {
        ("cpu", false) => run.on(args.activations.backend(), ComputeReport::cpu)?,
        ("cpu", true) => run.on(Profiled::new(args.activations.backend()), |b| {
            profile = Some(b.shared_profile());
            ComputeReport::cpu(b.inner())
        })?,
        ("wgpu", profiling) => {
            let ring = match &args.gpu_ring {
                Some(r) if r.trim_end().ends_with('%') => {
                    return Err(format!("--gpu-ring {r:?}: give bytes (256M, 1G)").into());
                }
                Some(r) => {
                    Some(parse_budget(r, 0).map_err(|e| e.replace("--budget", "--gpu-ring"))?)
                }
                None => None,
            };
            let be = WgpuBackend::new(&WgpuConfig {
                adapter_name: args.adapter.clone(),
                expert_ring_bytes: ring,
                ..WgpuConfig::default()
            })
            .map_err(|e| format!("--backend wgpu: {e}"))?;
            let t = std::time::Instant::now();
            let kernels = be.compile_all();
            eprintln!(
                "note: compute on wgpu: {} ({kernels} kernels compiled in {:.0} ms)",
                be.info(),
                t.elapsed().as_secs_f64() * 1e3
            );
            if profiling {
                eprintln!("note: --profile on wgpu times op submission; waits show at read-backs");
                run.on(Profiled::new(be), |b| {
                    profile = Some(b.shared_profile());
                    ComputeReport::wgpu(b.inner())
                })?
            } else {
                run.on(be, ComputeReport::wgpu)?
            }
        }
        (other, _) => return Err(format!("--backend {other:?}: expected cpu or wgpu").into()),
    };
    let Decoded {
        generation: g,
        hinted_per_layer,
        predictor_run,
        traced,
        compute,
        prefill,
    } = decoded;
    if let Some(p) = &profile {
        eprintln!(
            "profile: {} decode steps, {} compute\n{}",
            g.decode_steps,
            compute.backend,
            p.table(g.decode_secs, g.decode_steps)
        );
    }
    let mut stats = stats(
        args,
        &m,
        &sched,
        budget,
        prompt.len(),
        &g,
        hinted_per_layer,
        compute,
    );
    stats.policy = policy_text;
    if predictor_run == "none" && args.predictor != "none" {
        stats.predictor = format!(
            "none (the cache holds every expert; {} not needed)",
            args.predictor
        );
        stats.policy = "no hints".into();
    }
    stats.prefill = prefill;
    if let Some(p) = preloaded {
        stats.preloaded_records = p.read;
        stats.preload_bytes = p.bytes;
        stats.preload_secs = p.secs;
    }
    if args.json {
        let out = JsonOut {
            model: dir.display().to_string(),
            prompt: &args.prompt,
            text: m.tokenizer.decode(&g.tokens)?,
            tokens: &g.tokens,
            stats: &stats,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if args.stats {
        print_stats(&stats);
        stats
            .prefill
            .print(stats.prompt_tokens, stats.prefill_tok_per_s);
    }
    if let Some((tokens, path)) = traced
        && !args.json
    {
        eprintln!("trace: {tokens} tokens of routing and pre-gate scores written to {path}");
    }
    Ok(())
}

/// What one decode run needs, whatever the compute backend.
struct Decode<'a> {
    args: &'a GenerateArgs,
    m: &'a PackedModel,
    sched: &'a Arc<Scheduler>,
    prompt: &'a [u32],
    max_seq: usize,
    source: SchedExperts,
    prefetch: Prefetcher,
}

/// What one decode run produced.
struct Decoded {
    generation: flashmoe_engine::Generation,
    /// Experts hinted per predicted layer.
    hinted_per_layer: usize,
    /// The predictor that ran (`none` when the cache holds every expert).
    predictor_run: &'static str,
    /// The trace written: tokens and path.
    traced: Option<(u64, String)>,
    compute: ComputeReport,
    prefill: PrefillReport,
}

impl Decode<'_> {
    /// Loads the model on `be`, generates (streaming the text unless `--json`), and reports.
    fn on<B: ComputeBackend>(
        self,
        be: B,
        report: impl FnOnce(&B) -> ComputeReport,
    ) -> CliResult<Decoded> {
        let (args, m, sched) = (self.args, self.m, self.sched);
        let cfg = &m.config;
        let mut model = m.load_model(be, self.max_seq)?;
        if let Some(n) = args.prefill_chunk {
            model.set_prefill_chunk(n);
        }
        let (mut experts, mut prefetch) = (self.source, self.prefetch);
        let mut sampler = Sampler::new(args.temperature, args.top_p, args.seed);
        let stop: &[u32] = if args.ignore_eos { &[] } else { &m.eos };
        let mut sink = match &args.trace {
            Some(path) => Some(TraceSink::create(
                path,
                cfg.num_layers as u32,
                cfg.num_experts as u32,
                cfg.top_k as u32,
                true,
            )?),
            None => None,
        };
        let mut far_sink = match &args.trace_far {
            Some(path) => Some(
                TraceSink::create(
                    path,
                    cfg.num_layers as u32,
                    cfg.num_experts as u32,
                    cfg.top_k as u32,
                    true,
                )?
                .far(),
            ),
            None => None,
        };
        let mut stream = flashmoe_engine::TextStream::new(Vec::new());
        if !args.json {
            print!("{}", args.prompt);
            std::io::stdout().flush()?;
        }
        let (mut none, mut none_far) = (NoObserver, NoObserver);
        let second: &mut dyn RoutingObserver = match sink.as_mut() {
            Some(s) => s,
            None => &mut none,
        };
        let third: &mut dyn RoutingObserver = match far_sink.as_mut() {
            Some(s) => s,
            None => &mut none_far,
        };
        let mut sinks = Tee(second, third);
        let mut obs = Tee(&mut prefetch, &mut sinks);
        let tok = &m.tokenizer;
        let read_so_far = || sched.metrics().total().bytes_read();
        let (before, started) = (read_so_far(), std::time::Instant::now());
        // (TTFT, expert bytes read by then): taken when the first token comes out.
        let mut first: Option<(f64, u64)> = None;
        let mut on_token = |id: u32| -> flashmoe_engine::Result<()> {
            if first.is_none() {
                first = Some((started.elapsed().as_secs_f64(), read_so_far() - before));
            }
            let piece = stream.push(tok, id)?;
            if !args.json && !piece.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
            Ok(())
        };
        let g = generate(
            &mut model,
            self.prompt,
            args.max_tokens,
            stop,
            &mut sampler,
            &mut experts,
            &mut obs,
            &mut on_token,
        )?;
        let (hinted_per_layer, predictor_run) = (prefetch.per_layer(), prefetch.predictor_name());
        if let (Some(sink), Some(path)) = (far_sink, &args.trace_far) {
            let tokens = sink.finish()?;
            if !args.json {
                eprintln!(
                    "trace: {tokens} tokens of routing and two-layers-ahead pre-gate scores written to {}",
                    path.display()
                );
            }
        }
        let traced = match (sink, &args.trace) {
            (Some(sink), Some(path)) => Some((sink.finish()?, path.display().to_string())),
            _ => None,
        };
        if !args.json {
            println!("{}", stream.finish(tok)?);
        }
        let (ttft, read) = first.unwrap_or((g.prefill_secs, read_so_far() - before));
        let prefill = PrefillReport::new(
            model.prefill_chunk(),
            ttft,
            read,
            model.prefill_stats(),
            sched.capacity().1 as u64,
        );
        Ok(Decoded {
            generation: g,
            hinted_per_layer,
            predictor_run,
            traced,
            compute: report(model.backend()),
            prefill,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn stats(
    args: &GenerateArgs,
    m: &PackedModel,
    sched: &Arc<Scheduler>,
    budget: u64,
    prompt_tokens: usize,
    g: &flashmoe_engine::Generation,
    hinted_per_layer: usize,
    compute: ComputeReport,
) -> Stats {
    let t: LayerMetrics = sched.metrics().total();
    let steps = (prompt_tokens + g.decode_steps).max(1);
    let per = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Stats {
        prompt_tokens,
        generated_tokens: g.tokens.len(),
        prefill_tok_per_s: per(prompt_tokens, g.prefill_secs),
        decode_tok_per_s: per(g.decode_steps, g.decode_secs),
        hit_rate: t.hit_rate(),
        prefetch_precision: t.prefetch_precision(),
        prefetch_recall: t.prefetch_recall(),
        prefetch_used: t.prefetch_used,
        prefetch_wasted: t.prefetch_wasted,
        bytes_read: t.bytes_read(),
        bytes_read_per_token: t.bytes_read() as f64 / steps as f64,
        stall_ms: t.stall_ns as f64 / 1e6,
        budget_bytes: budget,
        cache_slots: sched.capacity().0,
        expert_bytes: m.expert_bytes(),
        expert_records: m.experts.num_layers() as u64 * m.experts.num_experts() as u64,
        backend: sched.backend_description().to_string(),
        predictor: args.predictor.clone(),
        hinted_per_layer,
        policy: String::new(),
        compute,
        prefill: PrefillReport::default(),
        preloaded_records: 0,
        preload_bytes: 0,
        preload_secs: 0.0,
    }
}

fn print_stats(s: &Stats) {
    eprintln!(
        "{} prompt + {} generated tokens: prefill {:.1} tok/s, decode {:.1} tok/s",
        s.prompt_tokens, s.generated_tokens, s.prefill_tok_per_s, s.decode_tok_per_s
    );
    eprintln!(
        "experts: budget {:.1} MB = {} of {} expert records ({:.1} MB), {}, predictor {} ({})",
        s.budget_bytes as f64 / 1e6,
        s.cache_slots,
        s.expert_records,
        s.expert_bytes as f64 / 1e6,
        s.backend,
        s.predictor,
        if s.policy == "no hints" {
            s.policy.clone()
        } else {
            format!("{} per layer, {}", s.hinted_per_layer, s.policy)
        }
    );
    eprintln!(
        "hit rate {:.1}%, prefetch precision {:.1}% recall {:.1}% ({} used, {} wasted), {:.2} MB read per token, stalled {:.1} ms",
        100.0 * s.hit_rate,
        100.0 * s.prefetch_precision,
        100.0 * s.prefetch_recall,
        s.prefetch_used,
        s.prefetch_wasted,
        s.bytes_read_per_token / 1e6,
        s.stall_ms
    );
    if s.preloaded_records > 0 {
        eprintln!(
            "preloaded {} expert records ({:.1} MB) into the cache in {:.2} s, before the prompt",
            s.preloaded_records,
            s.preload_bytes as f64 / 1e6,
            s.preload_secs
        );
    }
    let c = &s.compute;
    if let Some(adapter) = &c.adapter {
        eprintln!(
            "gpu {adapter}: experts resident {} (staged ahead {}), uploaded {} at demand + {} ahead ({:.1} MB, {:.1} ms host copy), waited {:.1} ms, {} submits",
            c.gpu_resident_hits,
            c.gpu_staged_hits,
            c.gpu_demand_uploads,
            c.gpu_staged_uploads,
            c.gpu_upload_bytes as f64 / 1e6,
            c.gpu_upload_ms,
            c.gpu_wait_ms,
            c.gpu_submits
        );
    }
}
