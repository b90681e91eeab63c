//! `flashmoe trace-stats`: routing statistics of traces side by side
//! ([`flashmoe_sim::routing_stats`]): next-token reuse, top-10% share, pre-gate recall; with
//! `--predictors`, each predictor's recall and precision ([`flashmoe_sim::prediction_quality`]).

use std::path::PathBuf;

use clap::Args;
use flashmoe_sim::prediction_quality;
use flashmoe_sim::routing_stats::{RoutingStats, table};
use io_sched::predictor::PredictorKind;

use super::CliResult;

#[derive(Args, Debug)]
pub struct TraceStatsArgs {
    /// Traces (`generate --trace`, or a fixture's routing_trace.safetensors), one column each.
    #[arg(required = true)]
    pub traces: Vec<PathBuf>,
    /// Far traces (`generate --trace-far`) of the same runs, in the same order (pre-gate recall
    /// two layers ahead); fewer than the traces leaves the last ones without.
    #[arg(long)]
    pub far: Vec<PathBuf>,
    /// Also score these predictors on each trace (comma-separated, e.g. `scores,blend`):
    /// recall, precision and mean confidence of their top k and top 2k, one and two layers
    /// ahead (`flashmoe_sim::prediction_quality`).
    #[arg(long)]
    pub predictors: Option<String>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &TraceStatsArgs) -> CliResult<()> {
    if a.far.len() > a.traces.len() {
        return Err(format!(
            "{} --far traces for {} traces: at most one each",
            a.far.len(),
            a.traces.len()
        )
        .into());
    }
    let kinds: Vec<PredictorKind> = match &a.predictors {
        Some(list) => list
            .split(',')
            .map(|p| p.parse().map_err(|e| format!("--predictors: {e}")))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let mut stats = Vec::new();
    let mut names = Vec::new();
    let mut quality = Vec::new();
    for (i, path) in a.traces.iter().enumerate() {
        let load = |p: &PathBuf| {
            flashmoe_sim::fixture::load_trace(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let t = load(path)?;
        let far = a.far.get(i).map(load).transpose()?;
        if let Some(f) = &far
            && (f.header.layers, f.header.experts) != (t.header.layers, t.header.experts)
        {
            return Err(format!(
                "{}: {} layers x {} experts, but its trace {} has {} x {}",
                a.far[i].display(),
                f.header.layers,
                f.header.experts,
                path.display(),
                t.header.layers,
                t.header.experts
            )
            .into());
        }
        stats.push(RoutingStats::of(&t, far.as_ref()));
        let t = std::sync::Arc::new(t);
        let k = t.header.k as usize;
        let mut qs = Vec::new();
        for &kind in &kinds {
            qs.extend(prediction_quality::evaluate(
                kind,
                &t,
                far.as_ref(),
                &[k, 2 * k],
            )?);
        }
        quality.push(qs);
        let dir = path.parent().and_then(|p| p.file_name());
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default();
        names.push(match dir {
            Some(d) if file == "routing_trace.safetensors" => d.to_string_lossy().into_owned(),
            _ => file.into_owned(),
        });
    }
    if a.json {
        let v: Vec<_> = names
            .iter()
            .zip(&stats)
            .zip(&quality)
            .map(|((n, s), q)| serde_json::json!({ "trace": n, "stats": s, "prediction": q }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", table(&names, &stats));
        if !kinds.is_empty() {
            let rows: Vec<_> = names
                .iter()
                .zip(&quality)
                .flat_map(|(n, qs)| qs.iter().map(move |q| (n.clone(), q.clone())))
                .collect();
            print!("\n{}", prediction_quality::table(&rows));
        }
    }
    Ok(())
}
