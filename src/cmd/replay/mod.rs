//! `flashmoe replay`: a routing trace replayed in real time on the real disk through the real
//! scheduler; `--compare` runs every fetch strategy side by side in one invocation.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use flashmoe_sim::predict::PredictorKind;
use flashmoe_sim::replay::prediction::{calibrate_on_model, predict_row};
use flashmoe_sim::replay::reference::{self, Burst};
use flashmoe_sim::replay::{ReplaySpec, RowKind, RowResult, run_row};
use io_sched::Manifest;

use super::CliResult;
use super::generate::parse_budget;

mod table;
mod traces;

use table::{Report, table};
use traces::{load_files, load_trace, recalls};

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A model directory written by `flashmoe synth` (or any packed model's directory).
    #[arg(long)]
    pub model: PathBuf,
    /// Routing trace: flashmoe trace files (comma-separated: played one after another, e.g.
    /// several `flashmoe generate --trace` runs), a fixture .safetensors trace, `fixture` (the
    /// tiny-qwen3-moe fixture's real routing, mapped onto the model: expert ids mod experts,
    /// layers mod layers) or `synthetic` (flashmoe_sim's generator at the model's geometry).
    #[arg(long, default_value = "fixture")]
    pub trace: String,
    /// Two-layers-ahead pre-gate traces of the same runs as --trace (`generate --trace-far`,
    /// same order): the scores predictor then also hints layer L+2 at layer L, and --compare
    /// adds horizon-2 rows (pre-gate and oracle).
    #[arg(long)]
    pub far_trace: Option<String>,
    /// With several trace files: keep only the first N tokens of each (so that a short replay
    /// still spans every prompt).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub tokens_per_trace: Option<u64>,
    /// Cache budget: `N%` of the model's expert bytes, or bytes.
    #[arg(long, default_value = "25%")]
    pub budget: String,
    /// Compute per layer, microseconds (a calibrated busy-wait).
    #[arg(long, default_value_t = 2000.0, value_parser = super::values::micros)]
    pub compute_us: f64,
    /// Share of a layer's compute before its routing is known (attention, router).
    #[arg(long, default_value_t = 0.5, value_parser = super::values::share)]
    pub pre_share: f64,
    /// Tokens measured (the trace wraps).
    #[arg(long, default_value_t = 64)]
    pub tokens: u64,
    /// Tokens run before measuring (cache warmup).
    #[arg(long, default_value_t = 16)]
    pub warmup: u64,
    /// Predictor of a single run (none, temporal, frequency, transition, scores, blend, oracle).
    #[arg(long, default_value = "scores")]
    pub predictor: String,
    /// Run (a) mmap, (b) sync pread, (c) io-sched, (d) every predictor, (e) oracle.
    #[arg(long)]
    pub compare: bool,
    /// Rounds: every round runs every row once (interleaved, so disk drift hits all rows
    /// alike); the table shows each row's median round.
    #[arg(long, default_value_t = 1, value_parser = super::values::positive_usize)]
    pub repeat: usize,
    /// Recall of synthesized pre-gate scores when the trace has none.
    #[arg(long, default_value_t = 0.9, value_parser = super::values::share)]
    pub pregate_recall: f64,
    /// With --compare: run only the rows whose label starts with one of these (comma-separated,
    /// e.g. `c,d scores,e`).
    #[arg(long)]
    pub only: Option<String>,
    /// With --compare: the tie rule of the idle-bounded over-fetch row, percent (a candidate
    /// past k is hinted while its score is at least this share of the k-th's).
    #[arg(long, default_value_t = 50)]
    pub tie_pct: u8,
    /// Layers ahead to predict.
    #[arg(long, default_value_t = 1)]
    pub horizon: u32,
    /// Experts routed per token for `--trace synthetic` (default: the manifest's, else 4).
    #[arg(long, value_parser = super::values::positive_u32)]
    pub k: Option<u32>,
    /// Prefetch MiB in flight at most (io-sched's default: 8).
    #[arg(long)]
    pub prefetch_mib: Option<u64>,
    /// Prefetch reads in flight at most (io-sched's default: 8).
    #[arg(long)]
    pub prefetch_ops: Option<usize>,
    /// io_uring queue depth.
    #[arg(long, default_value_t = 32, value_parser = super::values::positive_u32)]
    pub queue_depth: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also print what `flashmoe sim` predicts for each row (device: --device).
    #[arg(long)]
    pub predict: bool,
    /// Device profile of --predict: `this-machine` (calibrated now, on --calibrate-dir), a
    /// preset name or a profile .json.
    #[arg(long, default_value = "this-machine")]
    pub device: String,
    /// Where `this-machine` writes its scratch file (default: the model's directory, so the
    /// same disk is measured).
    #[arg(long)]
    pub calibrate_dir: Option<PathBuf>,
    /// With --predict: re-measure the disk's bandwidth on the model's own files with the
    /// replay's read pattern (k experts per layer in 1 MiB requests) instead of the scratch file.
    #[arg(long)]
    pub calibrate_on_model: bool,
    /// With --predict and --compare: set the sim's direct-read bandwidth to what row (c)
    /// achieved while stalled (its demand bytes / its stall time), then predict every row
    /// (the buffered path of row (a) keeps its own calibration).
    #[arg(long)]
    pub calibrate_on_row_c: bool,
    /// MiB of each reference burst (the device's best for the rows' request size, measured
    /// before every round and after the last: see flashmoe_sim::replay::reference); 0 skips
    /// them.
    #[arg(long, default_value_t = 256)]
    pub reference_mib: u64,
    /// Size of that scratch file, MiB.
    #[arg(long, default_value_t = 512, value_parser = super::values::mib)]
    pub calibrate_mb: u64,
    /// Skip the real runs: print only what the simulator predicts for each row (on --device,
    /// its direct path at --sim-gbps when given). Deterministic: for comparing policies on a
    /// noisy disk.
    #[arg(long)]
    pub sim_only: bool,
    /// With --sim-only: the device's direct-read GB/s (peak and per request).
    #[arg(long, value_parser = super::values::gbps)]
    pub sim_gbps: Option<f64>,
}

fn rows(a: &ReplayArgs) -> CliResult<Vec<RowKind>> {
    if a.compare {
        let mut v = flashmoe_sim::replay::rows::compare_rows(a.tie_pct, a.far_trace.is_some());
        if let Some(only) = &a.only {
            v.retain(|k| only.split(',').any(|p| k.label().starts_with(p.trim())));
            if v.is_empty() {
                return Err(
                    format!("--only {only:?}: no row's label starts with any of them").into(),
                );
            }
        }
        return Ok(v);
    }
    let p = match a.predictor.as_str() {
        "mmap" => return Ok(vec![RowKind::Mmap]),
        "sync-pread" => return Ok(vec![RowKind::SyncPread]),
        "none" => PredictorKind::None,
        "temporal" => PredictorKind::Temporal,
        "frequency" => PredictorKind::Frequency,
        "transition" => PredictorKind::Transition,
        "scores" => PredictorKind::Scores,
        "oracle" => PredictorKind::Oracle,
        "blend" => PredictorKind::Blend,
        other => {
            return Err(format!(
                "--predictor {other:?}: expected none, temporal, frequency, transition, scores, \
                 blend, oracle, mmap or sync-pread"
            )
            .into());
        }
    };
    Ok(vec![RowKind::Sched(p)])
}

pub fn run(a: &ReplayArgs) -> CliResult<()> {
    let manifest = a.model.join("manifest.json");
    if !manifest.exists() {
        return Err(format!("--model {}: no manifest.json in it", a.model.display()).into());
    }
    let (layout, meta) = Manifest::load(&manifest)?;
    let meta_k = meta
        .as_ref()
        .and_then(|m| m.pointer("/synth/k"))
        .and_then(|v| v.as_u64())
        .map(|k| k as u32);
    let total = layout.total_expert_bytes();
    let budget = parse_budget(&a.budget, total)?;
    let max = flashmoe_sim::validate::MAX_TOKENS;
    if a.tokens == 0 || a.warmup.checked_add(a.tokens).is_none_or(|n| n > max) {
        return Err(format!(
            "--warmup {} + --tokens {}: need 1 to {max} tokens in all",
            a.warmup, a.tokens
        )
        .into());
    }
    let trace = Arc::new(load_trace(a, &layout, meta_k)?);
    let far_trace = match &a.far_trace {
        Some(paths) => {
            let f = load_files("--far-trace", paths, a.tokens_per_trace)?;
            let (fl, fe) = (f.header.layers, f.header.experts);
            if (fl, fe) != (layout.num_layers(), layout.num_experts()) {
                return Err(format!(
                    "--far-trace {paths}: recorded on {fl} layers x {fe} experts, the model has \
                     {} x {}; pre-gate scores do not survive mapping expert ids onto another \
                     geometry (use a model of the traces' geometry, e.g. `synth --layers {fl} \
                     --experts {fe}`)",
                    layout.num_layers(),
                    layout.num_experts()
                )
                .into());
            }
            if f.ids != trace.ids || f.scores.is_none() {
                return Err(format!(
                    "--far-trace {paths}: not the same runs as --trace (routing differs) or no \
                     scores"
                )
                .into());
            }
            Some(Arc::new(f))
        }
        None => None,
    };
    let rec = layout.max_read_len().max(1);
    if budget / rec < trace.header.k as u64 {
        return Err(format!(
            "--budget {}: {budget} bytes hold {} records of {rec} bytes, fewer than k = {}",
            a.budget,
            budget / rec,
            trace.header.k
        )
        .into());
    }
    let spec = ReplaySpec {
        budget_bytes: budget,
        compute_ns: (a.compute_us * 1e3) as u64,
        pre_share: a.pre_share,
        warmup: a.warmup,
        tokens: a.tokens,
        horizon: a.horizon,
        max_per_layer: trace.header.k as usize,
        pregate_recall: a.pregate_recall,
        seed: a.seed,
        queue_depth: a.queue_depth,
        max_prefetch_bytes: a.prefetch_mib.map(|m| m << 20),
        max_prefetch_ops: a.prefetch_ops,
        sync_read_gbps: None,
        far_trace: far_trace.clone(),
        record_calls: false,
    };
    let mut device = if a.predict || a.sim_only {
        if !a.json {
            eprintln!("calibrating device {} ...", a.device);
        }
        Some(if a.device == "this-machine" {
            let dir = a.calibrate_dir.as_deref().unwrap_or(&a.model);
            flashmoe_sim::calibrate::this_machine(dir, a.calibrate_mb)?
        } else {
            flashmoe_sim::device::device_profile(&a.device)?
        })
    } else {
        None
    };
    if let (Some(d), true) = (device.as_mut(), a.calibrate_on_model) {
        calibrate_on_model(&layout, trace.header.k as usize, d)?;
    }
    let kinds = rows(a)?;
    if a.sim_only {
        let mut d = device.ok_or("--sim-only needs a device")?;
        if let Some(g) = a.sim_gbps {
            let how = "replay --sim-gbps";
            d.ssd_direct.peak_gbps = flashmoe_sim::figure::Fig::new(g, how);
            d.ssd_direct.single_request_gbps = flashmoe_sim::figure::Fig::new(g, how);
        }
        let slots = (budget / rec) as usize;
        let belady = flashmoe_sim::belady::belady_hit_rate(&trace, slots, a.warmup);
        println!(
            "simulated on {} at {:.2} GB/s; Belady (no prefetch, {slots} slots): {:.1}% hits",
            d.name,
            d.ssd_direct.peak_gbps.value,
            100.0 * belady
        );
        println!(
            "{:<36} {:>7} {:>6} {:>7} {:>8} {:>9} {:>6}",
            "row (simulated)", "tok/s", "hit%", "cache%", "MB/tok", "stall ms", "waste%"
        );
        for &kind in &kinds {
            let p = predict_row(kind, &layout, &trace, &spec, &d)?;
            println!(
                "{:<36} {:>7.2} {:>6.1} {:>7.1} {:>8.1} {:>9.2} {:>6.1}",
                kind.label(),
                p.tok_per_s,
                100.0 * p.hit_rate,
                100.0 * p.cache_hit_rate,
                p.bytes_per_token / 1e6,
                p.stall_ms_per_token,
                100.0 * p.wasted_share
            );
        }
        return Ok(());
    }
    let request = io_sched::core::CoreConfig::default().demand_chunk;
    let k = trace.header.k as usize;
    let mut reference = Vec::new();
    let burst = |when: &str, out: &mut Vec<(String, Burst)>| -> CliResult<()> {
        if a.reference_mib > 0 {
            if !a.json {
                eprintln!("reference bursts ({when}) ...");
            }
            let hint = |e: flashmoe_sim::error::SimError| {
                format!(
                    "{e} (reference bursts of --reference-mib {} MiB on the model's files; \
                     pass --reference-mib 0 to skip them)",
                    a.reference_mib
                )
            };
            for b in
                reference::measure(&layout, k, request, &[16, 32], a.reference_mib).map_err(hint)?
            {
                out.push((when.to_string(), b));
            }
            let b = reference::sync_record_burst(&layout, k, a.reference_mib).map_err(hint)?;
            out.push((when.to_string(), b));
        }
        Ok(())
    };
    let mut rounds: Vec<Vec<RowResult>> = vec![Vec::new(); kinds.len()];
    for round in 0..a.repeat.max(1) {
        burst(&format!("before round {}", round + 1), &mut reference)?;
        for (i, &kind) in kinds.iter().enumerate() {
            if !a.json {
                eprintln!("round {}: replaying {} ...", round + 1, kind.label());
            }
            rounds[i].push(run_row(kind, &layout, &trace, &spec)?);
        }
    }
    burst("after the last round", &mut reference)?;
    let reference_best_gbps = reference
        .iter()
        .filter(|(_, b)| b.request_bytes == request as u64)
        .map(|(_, b)| b.gbps)
        .fold(0.0, f64::max);
    let mut same: Vec<f64> = reference
        .iter()
        .filter(|(_, b)| b.request_bytes == request as u64)
        .map(|(_, b)| b.gbps)
        .collect();
    same.sort_by(f64::total_cmp);
    let reference_median_gbps = same.get(same.len() / 2).copied().unwrap_or(0.0);
    // Row (b)'s request measured alone (median of its bursts): the simulator's row (b) path.
    let mut sync: Vec<f64> = reference
        .iter()
        .filter(|(_, b)| b.request_bytes != request as u64)
        .map(|(_, b)| b.gbps)
        .collect();
    sync.sort_by(f64::total_cmp);
    let sync_read_gbps = sync.get(sync.len() / 2).copied();
    let spec = ReplaySpec {
        sync_read_gbps,
        ..spec
    };
    let mut results = Vec::new();
    for (kind, mut rs) in kinds.into_iter().zip(rounds) {
        let all: Vec<f64> = rs.iter().map(|r| r.tok_per_s).collect();
        rs.sort_by(|x, y| x.tok_per_s.total_cmp(&y.tok_per_s));
        let mut r = rs.swap_remove(rs.len() / 2);
        r.rounds_tok_per_s = all;
        results.push((kind, r));
    }
    if let (Some(d), true) = (device.as_mut(), a.calibrate_on_row_c) {
        let c = results
            .iter()
            .find(|(k, _)| *k == RowKind::Sched(PredictorKind::None))
            .map(|(_, r)| r)
            .ok_or("--calibrate-on-row-c needs row (c): pass --compare or --predictor none")?;
        let gbps = c.bytes_read as f64 / c.stall_s.max(1e-9) / 1e9;
        let how = "replay row (c): demand bytes / stall time";
        d.ssd_direct.peak_gbps = flashmoe_sim::figure::Fig::new(gbps, how);
    }
    let mut results: Vec<RowResult> = results.into_iter().map(|(_, r)| r).collect();
    if let Some(d) = &device {
        for r in &mut results {
            r.predicted = Some(predict_row(r.kind, &layout, &trace, &spec, d)?);
        }
    }
    let report = Report {
        model: a.model.display().to_string(),
        layers: layout.num_layers(),
        experts: layout.num_experts(),
        k: trace.header.k,
        record_bytes: layout.max_read_len(),
        budget_bytes: budget,
        budget_share: budget as f64 / total.max(1) as f64,
        compute_us_per_layer: a.compute_us,
        trace: a.trace.clone(),
        trace_has_scores: trace.scores.is_some(),
        trace_tokens: trace.tokens(),
        trace_pregate_recall: recalls(&trace, &trace, 1),
        far_pregate_recall: far_trace
            .as_ref()
            .map(|f| recalls(f, &trace, 2))
            .unwrap_or_default(),
        pregate_recall: a.pregate_recall,
        device: device.as_ref().map(|d| {
            (
                d.name.clone(),
                d.ssd_direct.peak_gbps.value,
                d.ssd_direct.single_request_gbps.value,
            )
        }),
        reference,
        reference_best_gbps,
        reference_median_gbps,
        rows: results,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}
