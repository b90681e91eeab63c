//! How large a synthetic checkpoint's random weights are, chosen so that routing depends on
//! the token and the residual stream stays bounded over many layers.
//!
//! Every linear layer is drawn with std `gain / sqrt(fan_in)`, so for a unit-RMS input its
//! outputs have RMS `gain` whatever the geometry: the statistics measured on one geometry
//! carry over to another. With every weight at std 0.02 instead (HF's `initializer_range`),
//! an embedding row has RMS 0.02 while a 2048-wide attention output has RMS ≈ 1, so after the
//! first layer the hidden state is mostly the context's average and every token routes to the
//! same few experts.

/// Scales of a synthetic checkpoint's weights (see the module doc). Build with
/// [`Scales::default`] and the setters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Scales {
    /// Std of each token's own part of its embedding row.
    pub embed_std: f32,
    /// Std of the offset every embedding row shares (a common direction: the source of
    /// popularity skew in routing and of temporal reuse).
    pub embed_shared_std: f32,
    /// Total RMS gain of all residual branches together: each of the `2 L` branches
    /// (`o_proj`, expert `down_proj`) gets `residual_gain / sqrt(2 L)`.
    pub residual_gain: f32,
    /// Gain of `q_proj` and `k_proj` (attention temperature where there is no q/k norm).
    pub qkv_gain: f32,
    /// Gain of the router: the std of its logits (sets how peaked routing weights are).
    pub router_gain: f32,
    /// Gain of `lm_head`: the std of the output logits.
    pub lm_head_gain: f32,
}

impl Default for Scales {
    fn default() -> Self {
        Self {
            embed_std: 1.0,
            embed_shared_std: 0.3,
            residual_gain: 1.0,
            qkv_gain: 1.0,
            router_gain: 2.0,
            lm_head_gain: 4.0,
        }
    }
}

impl Scales {
    /// Sets [`Scales::embed_std`].
    pub fn embed_std(mut self, v: f32) -> Self {
        self.embed_std = v;
        self
    }
    /// Sets [`Scales::embed_shared_std`].
    pub fn embed_shared_std(mut self, v: f32) -> Self {
        self.embed_shared_std = v;
        self
    }
    /// Sets [`Scales::residual_gain`].
    pub fn residual_gain(mut self, v: f32) -> Self {
        self.residual_gain = v;
        self
    }
    /// Sets [`Scales::qkv_gain`].
    pub fn qkv_gain(mut self, v: f32) -> Self {
        self.qkv_gain = v;
        self
    }
    /// Sets [`Scales::router_gain`].
    pub fn router_gain(mut self, v: f32) -> Self {
        self.router_gain = v;
        self
    }
    /// Sets [`Scales::lm_head_gain`].
    pub fn lm_head_gain(mut self, v: f32) -> Self {
        self.lm_head_gain = v;
        self
    }

    /// The first scale that is not finite and ≥ 0, by name.
    pub fn invalid(&self) -> Option<(&'static str, f32)> {
        [
            ("embed_std", self.embed_std),
            ("embed_shared_std", self.embed_shared_std),
            ("residual_gain", self.residual_gain),
            ("qkv_gain", self.qkv_gain),
            ("router_gain", self.router_gain),
            ("lm_head_gain", self.lm_head_gain),
        ]
        .into_iter()
        .find(|(_, v)| !v.is_finite() || *v < 0.0)
    }
}
