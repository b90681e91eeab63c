//! The trace a replay plays: the fixture's routing mapped onto the model, trace files
//! concatenated and cut, or the sim's synthetic generator; and the recall of recorded scores.

use std::path::{Path, PathBuf};

use io_sched::ExpertLayout;
use io_sched::trace::Trace;

use super::ReplayArgs;
use crate::cmd::CliResult;

pub(super) fn fixture_path() -> Option<PathBuf> {
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
pub(super) fn map_trace(t: Trace, layers: u32, experts: u32) -> CliResult<Trace> {
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
pub(super) fn load_files(flag: &str, paths: &str, per_file: Option<u64>) -> CliResult<Trace> {
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

pub(super) fn load_trace(
    a: &ReplayArgs,
    layout: &ExpertLayout,
    meta_k: Option<u32>,
) -> CliResult<Trace> {
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

/// (n, recorded pre-gate recall of the top n, `ahead` layers ahead) for n = k, k + 2, k + 4.
pub(super) fn recalls(scored: &Trace, trace: &Trace, ahead: u32) -> Vec<(usize, f64)> {
    [0, 2, 4]
        .iter()
        .filter_map(|m| {
            let n = trace.header.k as usize + m;
            flashmoe_sim::predict::recorded_pregate_recall(scored, trace, n, ahead).map(|r| (n, r))
        })
        .collect()
}
