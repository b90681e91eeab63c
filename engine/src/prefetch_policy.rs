//! [`PrefetchPolicy`]: what a streamed model hints and how its cache evicts, resolved against
//! the predictor it runs with. Every field left unset takes the default measured best for
//! that predictor, so `generate`, `serve`, `chat` and the C ABI run one policy.

use crate::error::{EngineError, Result};
use crate::streaming::Prediction;
use io_sched::cache::EvictionKind;
use io_sched::{Preloaded, Scheduler, SessionConfig};

/// Candidates a cost-aware session may choose from past `per_layer`, when not set.
pub const DEFAULT_OVER_FETCH: usize = 4;
/// Layers ahead hinted with a calibrated predictor, when not set (1 with the others).
pub const DEFAULT_HORIZON: u32 = 2;

/// Hints and eviction of a streamed model. Unset fields resolve by the predictor:
/// with a calibrated one that estimates next uses ([`Prediction::Blend`], the default) the
/// hints are cost-aware over two layers ahead (the top `top_k + 2` and up to
/// [`DEFAULT_OVER_FETCH`] more, within the device's idle time, measured as the compute
/// between layers) and the cache evicts the expert expected to be routed last (next-use);
/// with the others, the top `top_k + 2` of the next layer and LRU.
///
/// ```
/// use flashmoe_engine::{Prediction, PrefetchPolicy};
/// use io_sched::cache::EvictionKind;
/// let p = PrefetchPolicy::new();
/// assert_eq!(p.eviction_for(&Prediction::Blend).unwrap(), EvictionKind::NextUse);
/// assert_eq!(p.eviction_for(&Prediction::Pregate).unwrap(), EvictionKind::Lru);
/// let cfg = p.session_config(8, &Prediction::Blend).unwrap();
/// assert!(cfg.is_cost_aware() && cfg.measures_idle_window());
/// // Asking for what the predictor cannot feed is an error, not a silent fallback.
/// let next_use = PrefetchPolicy::new().eviction(EvictionKind::NextUse);
/// assert!(next_use.eviction_for(&Prediction::Pregate).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct PrefetchPolicy {
    /// Experts always hinted per predicted layer (default `top_k + 2`).
    pub per_layer: Option<usize>,
    /// Layers ahead to hint (default [`DEFAULT_HORIZON`] with a calibrated predictor, else 1).
    pub horizon: Option<u32>,
    /// Candidates past `per_layer` that may be hinted within the device's idle time (default
    /// [`DEFAULT_OVER_FETCH`] with cost-aware hints, else 0).
    pub over_fetch: Option<usize>,
    /// Cost-aware hinting (default: on with a calibrated predictor).
    pub cost_aware: Option<bool>,
    /// Eviction (default: next-use with a predictor that estimates next uses, else LRU).
    pub eviction: Option<EvictionKind>,
    /// One layer's compute, in ns, the window a layer's reads overlap (default: measured).
    pub layer_compute_ns: Option<f64>,
    /// Read experts into the cache at load, before the first token ([`Self::preload_into`]):
    /// `true` fills every free slot (layer by layer), `false` never. Default: when the cache
    /// holds every expert, as a model that fits in memory is loaded whole.
    pub preload: Option<bool>,
}

impl PrefetchPolicy {
    /// Every field at its default.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`per_layer`](Self::per_layer).
    pub fn per_layer(mut self, n: usize) -> Self {
        self.per_layer = Some(n);
        self
    }
    /// Sets [`horizon`](Self::horizon).
    pub fn horizon(mut self, layers: u32) -> Self {
        self.horizon = Some(layers);
        self
    }
    /// Sets [`over_fetch`](Self::over_fetch).
    pub fn over_fetch(mut self, n: usize) -> Self {
        self.over_fetch = Some(n);
        self
    }
    /// Sets [`cost_aware`](Self::cost_aware).
    pub fn cost_aware(mut self, on: bool) -> Self {
        self.cost_aware = Some(on);
        self
    }
    /// Sets [`eviction`](Self::eviction).
    pub fn eviction(mut self, kind: EvictionKind) -> Self {
        self.eviction = Some(kind);
        self
    }
    /// Sets [`layer_compute_ns`](Self::layer_compute_ns).
    pub fn layer_compute_ns(mut self, ns: f64) -> Self {
        self.layer_compute_ns = Some(ns);
        self
    }

    /// Sets [`preload`](Self::preload).
    pub fn preload(mut self, on: bool) -> Self {
        self.preload = Some(on);
        self
    }

    /// Preloads `sched`'s cache as [`preload`](Self::preload) says (every record, layer by
    /// layer, into the free slots); `None` when the policy preloads nothing there. A record that
    /// cannot be read is an error naming it.
    pub fn preload_into(&self, sched: &Scheduler) -> Result<Option<Preloaded>> {
        let layout = sched.layout();
        let (layers, experts) = (layout.num_layers(), layout.num_experts());
        let all = layers as u64 * experts as u64;
        let on = self.preload.unwrap_or(sched.capacity().0 as u64 >= all);
        if !on {
            return Ok(None);
        }
        sched
            .preload_all()
            .map(Some)
            .map_err(|source| EngineError::IoSched {
                context: format!("preloading {all} expert records"),
                source,
            })
    }

    /// The cache's eviction policy with `prediction` (for the scheduler's config).
    pub fn eviction_for(&self, prediction: &Prediction) -> Result<EvictionKind> {
        let estimates = prediction.estimates_next_use();
        match self.eviction {
            Some(EvictionKind::NextUse) if !estimates => Err(EngineError::Request {
                reason: format!(
                    "next-use eviction needs a predictor that estimates next uses (blend), not {}",
                    prediction.name()
                ),
            }),
            Some(kind) => Ok(kind),
            None if estimates => Ok(EvictionKind::NextUse),
            None => Ok(EvictionKind::Lru),
        }
    }

    /// The session's policy for a model routing `top_k` experts, with `prediction`.
    pub fn session_config(&self, top_k: usize, prediction: &Prediction) -> Result<SessionConfig> {
        let calibrated = prediction.calibrated();
        if self.cost_aware == Some(true) && !calibrated {
            return Err(EngineError::Request {
                reason: format!(
                    "cost-aware hints need a calibrated predictor (blend), not {}",
                    prediction.name()
                ),
            });
        }
        let cost_aware = self.cost_aware.unwrap_or(calibrated);
        let extra = self
            .over_fetch
            .unwrap_or(if cost_aware { DEFAULT_OVER_FETCH } else { 0 });
        let mut cfg = SessionConfig::new(top_k)
            .with_per_layer(self.per_layer.unwrap_or(top_k + 2))
            .with_horizon(
                self.horizon
                    .unwrap_or(if calibrated { DEFAULT_HORIZON } else { 1 }),
            )
            .over_fetch(extra, 0.0)
            .cost_aware(cost_aware);
        cfg = match self.layer_compute_ns {
            Some(ns) => cfg.idle_window_ns(ns),
            None => cfg.measure_idle_window(true),
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_follow_the_predictor_and_set_ones_win() {
        let p = PrefetchPolicy::new();
        let blend = p.session_config(8, &Prediction::Blend).unwrap();
        assert_eq!((blend.per_layer(), blend.horizon()), (10, 2));
        assert!(blend.is_cost_aware() && blend.measures_idle_window());
        assert_eq!(blend.over_fetch_rule().map(|o| o.max_extra), Some(4));
        let pregate = p.session_config(8, &Prediction::Pregate).unwrap();
        assert_eq!((pregate.horizon(), pregate.is_cost_aware()), (1, false));
        assert!(pregate.over_fetch_rule().is_none());
        assert_eq!(
            p.eviction_for(&Prediction::None).unwrap(),
            EvictionKind::Lru
        );

        let set = PrefetchPolicy::new()
            .per_layer(3)
            .horizon(1)
            .cost_aware(false)
            .eviction(EvictionKind::Lfru)
            .layer_compute_ns(2500.0);
        let cfg = set.session_config(8, &Prediction::Blend).unwrap();
        assert_eq!(
            (cfg.per_layer(), cfg.horizon(), cfg.is_cost_aware()),
            (3, 1, false)
        );
        assert_eq!(cfg.idle_window(), Some(2500.0));
        assert!(!cfg.measures_idle_window());
        assert_eq!(
            set.eviction_for(&Prediction::Blend).unwrap(),
            EvictionKind::Lfru
        );
        let e = PrefetchPolicy::new()
            .cost_aware(true)
            .session_config(8, &Prediction::Pregate)
            .unwrap_err()
            .to_string();
        assert!(e.contains("calibrated") && e.contains("pregate"), "{e}");
    }
}
