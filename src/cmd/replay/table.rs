//! What a replay reports: the JSON object, and the side-by-side table.

use flashmoe_sim::replay::RowResult;
use flashmoe_sim::replay::reference::Burst;

/// The measured rows and the run's setup, as `--json` prints them.
#[derive(serde::Serialize)]
pub(super) struct Report {
    pub(super) model: String,
    pub(super) layers: u32,
    pub(super) experts: u32,
    pub(super) k: u32,
    pub(super) record_bytes: u64,
    pub(super) budget_bytes: u64,
    pub(super) budget_share: f64,
    pub(super) compute_us_per_layer: f64,
    pub(super) trace: String,
    pub(super) trace_has_scores: bool,
    pub(super) trace_tokens: u64,
    /// Over the whole trace, with recorded scores: (n, share of the next layer's experts in
    /// the scores' top n) for n = k, k + 2, k + 4.
    pub(super) trace_pregate_recall: Vec<(usize, f64)>,
    /// The same for the far trace's scores against layer L+2.
    pub(super) far_pregate_recall: Vec<(usize, f64)>,
    pub(super) pregate_recall: f64,
    /// --predict's device: (name, direct peak GB/s, direct GB/s at one request in flight).
    pub(super) device: Option<(String, f64, f64)>,
    /// Reference bursts at the io-sched rows' request size, before every round and after the
    /// last.
    pub(super) reference: Vec<(String, Burst)>,
    /// The best of them, GB/s.
    pub(super) reference_best_gbps: f64,
    /// Their median, GB/s (the bursts drift with the host's cache).
    pub(super) reference_median_gbps: f64,
    pub(super) rows: Vec<RowResult>,
}

/// (max - min) / median of a row's rounds (0 for a single round).
pub(super) fn spread(rounds: &[f64], median: f64) -> f64 {
    let max = rounds.iter().copied().fold(f64::MIN, f64::max);
    let min = rounds.iter().copied().fold(f64::MAX, f64::min);
    if rounds.len() < 2 {
        0.0
    } else {
        (max - min) / median.max(1e-12)
    }
}

pub(super) fn table(r: &Report) -> String {
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
