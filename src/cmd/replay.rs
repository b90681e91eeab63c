//! `flashmoe replay`: a routing trace replayed in real time on the real disk through the real
//! scheduler; `--compare` runs every fetch strategy side by side in one invocation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use flashmoe_sim::predict::PredictorKind;
use flashmoe_sim::replay::prediction::{calibrate_on_model, predict_row};
use flashmoe_sim::replay::reference::{self, Burst};
use flashmoe_sim::replay::{OverFetchRow, ReplaySpec, RowKind, RowResult, run_row};
use io_sched::trace::Trace;
use io_sched::{ExpertLayout, Manifest};

use super::CliResult;

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
    #[arg(long)]
    pub tokens_per_trace: Option<u64>,
    /// Cache budget: `N%` of the model's expert bytes, or bytes.
    #[arg(long, default_value = "25%")]
    pub budget: String,
    /// Compute per layer, microseconds (a calibrated busy-wait).
    #[arg(long, default_value_t = 2000.0)]
    pub compute_us: f64,
    /// Share of a layer's compute before its routing is known (attention, router).
    #[arg(long, default_value_t = 0.5)]
    pub pre_share: f64,
    /// Tokens measured (the trace wraps).
    #[arg(long, default_value_t = 64)]
    pub tokens: u64,
    /// Tokens run before measuring (cache warmup).
    #[arg(long, default_value_t = 16)]
    pub warmup: u64,
    /// Predictor of a single run (none, temporal, frequency, transition, scores, oracle).
    #[arg(long, default_value = "scores")]
    pub predictor: String,
    /// Run (a) mmap, (b) sync pread, (c) io-sched, (d) every predictor, (e) oracle.
    #[arg(long)]
    pub compare: bool,
    /// Rounds: every round runs every row once (interleaved, so disk drift hits all rows
    /// alike); the table shows each row's median round.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Recall of synthesized pre-gate scores when the trace has none.
    #[arg(long, default_value_t = 0.9)]
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
    #[arg(long)]
    pub k: Option<u32>,
    /// Prefetch MiB in flight at most (io-sched's default: 8).
    #[arg(long)]
    pub prefetch_mib: Option<u64>,
    /// Prefetch reads in flight at most (io-sched's default: 8).
    #[arg(long)]
    pub prefetch_ops: Option<usize>,
    /// io_uring queue depth.
    #[arg(long, default_value_t = 32)]
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
    #[arg(long, default_value_t = 512)]
    pub calibrate_mb: u64,
}

fn parse_budget(s: &str, total: u64) -> CliResult<u64> {
    let bad = || format!("--budget {s:?}: expected N% or a byte count");
    if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(format!("--budget {s:?}: the share must be in (0, 100]").into());
        }
        Ok((total as f64 * p / 100.0) as u64)
    } else {
        Ok(s.trim().parse().map_err(|_| bad())?)
    }
}

fn fixture_path() -> Option<PathBuf> {
    let rel = "fixtures/tiny-qwen3-moe/routing_trace.safetensors";
    [
        std::env::var_os("FLASHMOE_SHARED").map(PathBuf::from),
        Some(PathBuf::from("../shared")),
        Some(PathBuf::from("/work/shared")),
    ]
    .into_iter()
    .flatten()
    .map(|d| d.join(rel))
    .find(|p| p.exists())
}

/// Maps `t` onto `layers × experts` (ids mod experts, layers mod layers; an id that collides
/// after the mod takes the next free one). Scores survive only an identity mapping.
fn map_trace(t: Trace, layers: u32, experts: u32) -> CliResult<Trace> {
    let h = t.header;
    if h.layers == layers && h.experts == experts {
        return Ok(t);
    }
    if h.k > experts {
        return Err(format!(
            "the trace routes k = {} of a model with {experts} experts",
            h.k
        )
        .into());
    }
    let mut ids = Vec::with_capacity((t.tokens() * layers as u64 * h.k as u64) as usize);
    for tok in 0..t.tokens() {
        for l in 0..layers {
            let start = ids.len();
            for &e in t.experts_at(tok, l % h.layers) {
                let mut x = e % experts;
                while ids[start..].contains(&x) {
                    x = (x + 1) % experts;
                }
                ids.push(x);
            }
        }
    }
    Ok(Trace::from_ids(layers, experts, h.k, ids)?)
}

/// Trace files `paths` (comma-separated) played one after another, each cut to `per_file`
/// tokens if given.
fn load_files(flag: &str, paths: &str, per_file: Option<u64>) -> CliResult<Trace> {
    let mut all: Option<Trace> = None;
    for path in paths.split(',') {
        if !Path::new(path).exists() {
            return Err(format!("{flag} {path}: no such file").into());
        }
        let mut t = flashmoe_sim::fixture::load_trace(Path::new(path))
            .map_err(|e| format!("{flag} {path}: {e}"))?;
        if let Some(n) = per_file {
            t.truncate(n);
        }
        match all.as_mut() {
            None => all = Some(t),
            Some(a) => a.append(&t).map_err(|e| format!("{flag} {path}: {e}"))?,
        }
    }
    Ok(all.ok_or(format!("{flag}: no file named"))?)
}

fn load_trace(a: &ReplayArgs, layout: &ExpertLayout, meta_k: Option<u32>) -> CliResult<Trace> {
    let (layers, experts) = (layout.num_layers(), layout.num_experts());
    let t = match a.trace.as_str() {
        "synthetic" => {
            let k = a.k.or(meta_k).unwrap_or(4);
            let p = flashmoe_sim::synth::SynthParams {
                pregate_recall: a.pregate_recall,
                ..Default::default()
            };
            flashmoe_sim::synth::generate(layers, experts, k, a.warmup + a.tokens, &p, a.seed)?
        }
        "fixture" => {
            let p = fixture_path().ok_or(
                "--trace fixture: fixtures/tiny-qwen3-moe/routing_trace.safetensors not found \
                 under $FLASHMOE_SHARED, ../shared or /work/shared",
            )?;
            flashmoe_sim::fixture::load_trace(&p)?
        }
        paths => load_files("--trace", paths, a.tokens_per_trace)?,
    };
    map_trace(t, layers, experts)
}

fn rows(a: &ReplayArgs) -> CliResult<Vec<RowKind>> {
    if a.compare {
        let mut v = vec![RowKind::Mmap, RowKind::SyncPread];
        for p in [
            PredictorKind::None,
            PredictorKind::Temporal,
            PredictorKind::Transition,
            PredictorKind::Scores,
        ] {
            v.push(RowKind::Sched(p));
        }
        // Over-fetching the pre-gate: a fixed k + 2, and near-ties of the k-th score (up to
        // k + 4) within the device's idle time.
        for o in [
            OverFetchRow {
                max_extra: 2,
                tie_pct: 0,
                idle_bound: false,
                horizon: 0,
            },
            OverFetchRow {
                max_extra: 4,
                tie_pct: a.tie_pct,
                idle_bound: true,
                horizon: 0,
            },
        ] {
            v.push(RowKind::SchedOver(PredictorKind::Scores, o));
        }
        v.push(RowKind::Sched(PredictorKind::Oracle));
        if a.far_trace.is_some() {
            // Two layers ahead: the far pre-gate, plain and over-fetched, and the oracle's
            // bound at the same horizon.
            let h2 = |max_extra, tie_pct, idle_bound| OverFetchRow {
                max_extra,
                tie_pct,
                idle_bound,
                horizon: 2,
            };
            v.push(RowKind::SchedOver(PredictorKind::Scores, h2(0, 0, false)));
            v.push(RowKind::SchedOver(
                PredictorKind::Scores,
                h2(4, a.tie_pct, true),
            ));
            v.push(RowKind::SchedOver(PredictorKind::Oracle, h2(0, 0, false)));
        }
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
        other => {
            return Err(format!(
                "--predictor {other:?}: expected none, temporal, frequency, transition, scores, \
                 oracle, mmap or sync-pread"
            )
            .into());
        }
    };
    Ok(vec![RowKind::Sched(p)])
}

/// The measured rows and the run's setup, as `--json` prints them.
#[derive(serde::Serialize)]
struct Report {
    model: String,
    layers: u32,
    experts: u32,
    k: u32,
    record_bytes: u64,
    budget_bytes: u64,
    budget_share: f64,
    compute_us_per_layer: f64,
    trace: String,
    trace_has_scores: bool,
    trace_tokens: u64,
    /// Over the whole trace, with recorded scores: (n, share of the next layer's experts in
    /// the scores' top n) for n = k, k + 2, k + 4.
    trace_pregate_recall: Vec<(usize, f64)>,
    /// The same for the far trace's scores against layer L+2.
    far_pregate_recall: Vec<(usize, f64)>,
    pregate_recall: f64,
    /// --predict's device: (name, direct peak GB/s, direct GB/s at one request in flight).
    device: Option<(String, f64, f64)>,
    /// Reference bursts at the io-sched rows' request size, before every round and after the
    /// last.
    reference: Vec<(String, Burst)>,
    /// The best of them, GB/s.
    reference_best_gbps: f64,
    /// Their median, GB/s (the bursts drift with the host's cache).
    reference_median_gbps: f64,
    rows: Vec<RowResult>,
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
    if !(0.0..=1.0).contains(&a.pre_share) || !a.compute_us.is_finite() || a.compute_us < 0.0 {
        return Err("--pre-share must be in [0, 1] and --compute-us >= 0".into());
    }
    let trace = Arc::new(load_trace(a, &layout, meta_k)?);
    let far_trace = match &a.far_trace {
        Some(paths) => {
            let f = load_files("--far-trace", paths, a.tokens_per_trace)?;
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
    };
    let mut device = if a.predict {
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
    let request = io_sched::core::CoreConfig::default().demand_chunk;
    let k = trace.header.k as usize;
    let mut reference = Vec::new();
    let burst = |when: &str, out: &mut Vec<(String, Burst)>| -> CliResult<()> {
        if a.reference_mib > 0 {
            if !a.json {
                eprintln!("reference bursts ({when}) ...");
            }
            for b in reference::measure(&layout, k, request, &[16, 32], a.reference_mib)? {
                out.push((when.to_string(), b));
            }
            let b = reference::sync_record_burst(&layout, k, a.reference_mib)?;
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

/// (n, recorded pre-gate recall of the top n, `ahead` layers ahead) for n = k, k + 2, k + 4.
fn recalls(scored: &Trace, trace: &Trace, ahead: u32) -> Vec<(usize, f64)> {
    [0, 2, 4]
        .iter()
        .filter_map(|m| {
            let n = trace.header.k as usize + m;
            flashmoe_sim::predict::recorded_pregate_recall(scored, trace, n, ahead).map(|r| (n, r))
        })
        .collect()
}

/// (max - min) / median of a row's rounds (0 for a single round).
fn spread(rounds: &[f64], median: f64) -> f64 {
    let max = rounds.iter().copied().fold(f64::MIN, f64::max);
    let min = rounds.iter().copied().fold(f64::MAX, f64::min);
    if rounds.len() < 2 {
        0.0
    } else {
        (max - min) / median.max(1e-12)
    }
}

fn table(r: &Report) -> String {
    let best = r.rows.iter().map(|x| x.tok_per_s).fold(0.0, f64::max);
    let mut s = format!(
        "model {} ({} layers x {} experts, k {}, {} B records), budget {:.1}% = {:.2} GB, \
         compute {} us/layer, trace {}{}\n",
        r.model,
        r.layers,
        r.experts,
        r.k,
        r.record_bytes,
        100.0 * r.budget_share,
        r.budget_bytes as f64 / 1e9,
        r.compute_us_per_layer,
        r.trace,
        if r.trace_has_scores {
            " (recorded pre-gate scores)".to_string()
        } else {
            format!(
                " (pre-gate scores synthesized at recall {})",
                r.pregate_recall
            )
        }
    );
    if !r.trace_pregate_recall.is_empty() {
        s += &format!(
            "trace: {} tokens; recorded pre-gate recall (top n):",
            r.trace_tokens
        );
        for (n, rec) in &r.trace_pregate_recall {
            s += &format!(" n={n} {:.1}%", 100.0 * rec);
        }
        if !r.far_pregate_recall.is_empty() {
            s += "; two layers ahead:";
            for (n, rec) in &r.far_pregate_recall {
                s += &format!(" n={n} {:.1}%", 100.0 * rec);
            }
        }
        s += "\n";
    }
    if let Some((name, peak, single)) = &r.device {
        s += &format!(
            "sim device {name}: direct reads {peak:.2} GB/s peak, {single:.2} GB/s at one in flight\n"
        );
    }
    let mut last_when = None;
    for (when, b) in &r.reference {
        if last_when != Some(when) {
            if last_when.is_some() {
                s += "\n";
            }
            s += &format!("reference ({when}), GB/s:");
            last_when = Some(when);
        }
        s += &format!(
            " {} {}K qd{} {:.2}",
            b.pattern,
            b.request_bytes >> 10,
            b.queue_depth,
            b.gbps
        );
    }
    if let Some((_, b)) = r.reference.first() {
        s += &format!(
            "\nreference backends: {}; row (b)'s: pread 1 thread\n",
            b.backend
        );
    }
    let reference = r.reference_best_gbps;
    if reference > 0.0 {
        s += &format!(
            "reference best {reference:.2} GB/s (median {:.2}) at the io-sched rows' request \
             size; dev GB/s = bytes read / time with a read in \
             flight (mmap: copy time), busy% = that time / run time\n",
            r.reference_median_gbps
        );
    }
    let predicted = r.rows.iter().any(|x| x.predicted.is_some());
    s += &format!(
        "{:<22} {:>8} {:>6} {:>6} {:>6} {:>8} {:>9} {:>9} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>7}",
        "row",
        "tok/s",
        "ratio",
        "hit%",
        "miss%",
        "MB/tok",
        "disk MB/t",
        "stall ms",
        "run GB/s",
        "dev GB/s",
        "vs ref",
        "busy%",
        "prec%",
        "hint/L",
        "spread%"
    );
    if predicted {
        s += &format!(" {:>9} {:>6} {:>8}", "sim tok/s", "err%", "sim hit%");
    }
    s += "  backend\n";
    for x in &r.rows {
        let disk = x.disk_bytes.map_or("-".to_string(), |b| {
            format!("{:.1}", b as f64 / 1e6 / x.tokens as f64)
        });
        let vs_ref = if reference > 0.0 {
            format!("{:.2}", x.device_gbps() / reference)
        } else {
            "-".into()
        };
        s += &format!(
            "{:<22} {:>8.2} {:>6.2} {:>6.1} {:>6.1} {:>8.1} {:>9} {:>9.2} {:>8.2} {:>8.2} {:>6} {:>6.1} {:>6.1} {:>6.2} {:>7.1}",
            x.label,
            x.tok_per_s,
            x.tok_per_s / best.max(1e-12),
            100.0 * x.hit_rate,
            100.0 * x.misses as f64 / x.demanded.max(1) as f64,
            x.bytes_per_token() / 1e6,
            disk,
            x.stall_ms_per_token(),
            x.run_gbps(),
            x.device_gbps(),
            vs_ref,
            100.0 * x.busy_share(),
            100.0 * x.prefetch_precision,
            x.hinted_per_layer,
            100.0 * spread(&x.rounds_tok_per_s, x.tok_per_s),
        );
        if let Some(p) = &x.predicted {
            s += &format!(
                " {:>9.2} {:>+6.1} {:>8.1}",
                p.tok_per_s,
                100.0 * (p.tok_per_s / x.tok_per_s.max(1e-12) - 1.0),
                100.0 * p.hit_rate
            );
        } else if predicted {
            s += &format!(" {:>9} {:>6} {:>8}", "-", "-", "-");
        }
        s += &format!("  {}\n", x.backend);
    }
    s
}
