//! CPU element-wise ops, norms, RoPE and attention on f32 slices.

/// `out = x / sqrt(mean(x^2) + eps) * w` (sizes checked by the caller).
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

/// [`rms_norm`] of `x` in place.
pub(crate) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (v, g) in x.iter_mut().zip(w) {
        *v = *v * inv * g;
    }
}

/// Cosines and sines of the `head_dim / 2` rotary frequencies at `pos`.
///
/// Computed in f32 like HF transformers (`1 / theta^(2i/d)`, angle `pos * f`); the GPU backend
/// uploads this same table, so both rotate by identical angles.
pub(crate) fn rope_table(head_dim: usize, pos: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    (0..head_dim / 2)
        .map(|i| {
            let inv_freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
            let angle = pos as f32 * inv_freq;
            (angle.cos(), angle.sin())
        })
        .unzip()
}

/// Rotate-half RoPE in place on `n_heads` heads of `head_dim`.
pub(crate) fn rope(x: &mut [f32], n_heads: usize, head_dim: usize, pos: usize, theta: f32) {
    let half = head_dim / 2;
    let (cos, sin) = rope_table(head_dim, pos, theta);
    for head in x.chunks_exact_mut(head_dim).take(n_heads) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// `gate = silu(gate) * up`.
pub(crate) fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
