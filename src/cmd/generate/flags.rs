//! What `generate`'s flags name, as the engine's objects: the read backend, the predictor and
//! the prefetch policy (its unset fields resolved later, against the predictor).

use flashmoe_engine::{Prediction, PrefetchPolicy};
use io_sched::backend::BackendKind;
use io_sched::backend::select::BackendConfig;
use io_sched::predictor::{self, PredictorKind};

use super::GenerateArgs;
use crate::cmd::CliResult;

pub(super) fn backend_config(name: &str) -> CliResult<BackendConfig> {
    let kind = match name {
        "auto" => None,
        other => Some(other.parse::<BackendKind>().map_err(|e| {
            format!("--io-backend {other:?}: {e} (expected auto, io_uring, pread or mmap)")
        })?),
    };
    Ok(BackendConfig::default().kind(kind))
}

pub(super) fn prediction(args: &GenerateArgs, layers: u32, experts: u32) -> CliResult<Prediction> {
    match args.predictor.as_str() {
        "pregate" => return Ok(Prediction::Pregate),
        "blend" => return Ok(Prediction::Blend),
        _ => {}
    }
    const CHOICES: &str = "pregate, blend, none, temporal, transition or frequency";
    let kind: PredictorKind = args
        .predictor
        .parse()
        .map_err(|_| format!("--predictor {:?}: expected {CHOICES}", args.predictor))?;
    if matches!(kind, PredictorKind::Oracle | PredictorKind::Scores) {
        return Err(format!("--predictor {kind}: not available here (use {CHOICES})").into());
    }
    if kind == PredictorKind::None {
        return Ok(Prediction::None);
    }
    let predictor = predictor::build(kind, layers, experts)
        .ok_or_else(|| format!("--predictor {kind}: cannot be built"))?;
    Ok(if kind.takes_scores() {
        Prediction::PregateWith(predictor)
    } else {
        Prediction::Predictor(predictor)
    })
}

/// What the prefetch flags ask for; unset ones resolve by the predictor.
pub(super) fn prefetch_policy(args: &GenerateArgs) -> CliResult<PrefetchPolicy> {
    let mut p = PrefetchPolicy::new();
    if let Some(n) = args.prefetch {
        p = p.per_layer(n);
    }
    if let Some(h) = args.horizon {
        p = p.horizon(h);
    }
    if let Some(e) = &args.eviction {
        p = p.eviction(e.parse().map_err(|e| format!("--eviction: {e}"))?);
    }
    if let Some(on) = args.cost_aware {
        p = p.cost_aware(on);
    }
    if let Some(n) = args.over_fetch {
        p = p.over_fetch(n);
    }
    if let Some(on) = args.preload {
        p = p.preload(on);
    }
    if let Some(us) = args.layer_compute_us {
        if !(us.is_finite() && us > 0.0) {
            return Err(format!("--layer-compute-us {us}: expected a positive number").into());
        }
        p = p.layer_compute_ns(us * 1e3);
    }
    Ok(p)
}
