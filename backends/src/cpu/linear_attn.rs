//! CPU ops of the hybrid (Qwen3.5 / Qwen3-Next) layers: partial RoPE, sigmoid gates, the causal
//! conv1d step, the gated delta rule and the gated RMSNorm, on f32 slices (sizes checked by the
//! caller).

use super::ops::rope_table;
use crate::backend::DeltaShape;

/// `1 / (1 + exp(-x))`.
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `log(1 + exp(x))`, linear above 20 like `torch.nn.functional.softplus`.
pub(crate) fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// Rotate-half RoPE over the first `rot` dims of each head.
pub(crate) fn rope_partial(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    rot: usize,
    pos: usize,
    theta: f32,
) {
    let half = rot / 2;
    let (cos, sin) = rope_table(rot, pos, theta);
    for head in x.chunks_exact_mut(head_dim).take(n_heads) {
        let (a, b) = head[..rot].split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// `x[i] *= sigmoid(gate[i / group])`.
pub(crate) fn sigmoid_mul(x: &mut [f32], gate: &[f32]) {
    let group = x.len() / gate.len().max(1);
    for (chunk, &g) in x.chunks_mut(group.max(1)).zip(gate) {
        let s = sigmoid(g);
        chunk.iter_mut().for_each(|v| *v *= s);
    }
}

/// Causal depthwise conv1d step + SiLU in place; `state` = previous `kernel - 1` inputs.
pub(crate) fn conv1d_silu_step(x: &mut [f32], state: &mut [f32], weight: &[f32], kernel: usize) {
    let c = x.len();
    let hist = kernel - 1;
    for (ch, xv) in x.iter_mut().enumerate() {
        let w = &weight[ch * kernel..(ch + 1) * kernel];
        let input = *xv;
        let mut y = w[hist] * input;
        for j in 0..hist {
            y += w[j] * state[j * c + ch];
        }
        for j in 0..hist.saturating_sub(1) {
            state[j * c + ch] = state[(j + 1) * c + ch];
        }
        if hist > 0 {
            state[(hist - 1) * c + ch] = input;
        }
        *xv = y * sigmoid(y);
    }
}

/// `x / sqrt(sum(x^2) + 1e-6)` into `out`, times `scale`.
fn l2_normalised(x: &[f32], scale: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (ss + 1e-6).sqrt() * scale;
    for (o, v) in out.iter_mut().zip(x) {
        *o = v * inv;
    }
}

/// One token of the gated delta rule (see `ComputeBackend::gated_delta_step`).
pub(crate) fn gated_delta_step(
    qkv: &[f32],
    ba: &[f32],
    decay: &[f32],
    state: &mut [f32],
    s: DeltaShape,
    out: &mut [f32],
) {
    let (dk, dv, nv) = (s.key_dim, s.value_dim, s.value_heads);
    let ratio = nv / s.key_heads;
    let key_len = s.key_heads * dk;
    let (q_all, rest) = qkv.split_at(key_len);
    let (k_all, v_all) = rest.split_at(key_len);
    let mut q = vec![0f32; dk];
    let mut k = vec![0f32; dk];
    let scale = 1.0 / (dk as f32).sqrt();
    for j in 0..nv {
        let kh = j / ratio;
        l2_normalised(&q_all[kh * dk..(kh + 1) * dk], scale, &mut q);
        l2_normalised(&k_all[kh * dk..(kh + 1) * dk], 1.0, &mut k);
        let v = &v_all[j * dv..(j + 1) * dv];
        let beta = sigmoid(ba[j]);
        let g = decay[j] * softplus(ba[nv + j] + decay[nv + j]);
        let d = g.exp();
        let st = &mut state[j * dk * dv..(j + 1) * dk * dv];
        let o = &mut out[j * dv..(j + 1) * dv];
        st.iter_mut().for_each(|x| *x *= d);
        // kv[b] = sum_a S[a, b] k[a]
        let mut kv = vec![0f32; dv];
        for (a, &ka) in k.iter().enumerate() {
            for (acc, &sv) in kv.iter_mut().zip(&st[a * dv..(a + 1) * dv]) {
                *acc += sv * ka;
            }
        }
        let delta: Vec<f32> = v.iter().zip(&kv).map(|(vv, m)| beta * (vv - m)).collect();
        o.iter_mut().for_each(|x| *x = 0.0);
        for a in 0..dk {
            let row = &mut st[a * dv..(a + 1) * dv];
            for ((sv, dl), ob) in row.iter_mut().zip(&delta).zip(o.iter_mut()) {
                *sv += k[a] * dl;
                *ob += *sv * q[a];
            }
        }
    }
}

/// Gated RMSNorm per head in place: `x = x / rms(x) * w * silu(z)`.
pub(crate) fn gated_rms_norm_heads(x: &mut [f32], z: &[f32], w: &[f32], head_dim: usize, eps: f32) {
    for (head, zh) in x.chunks_exact_mut(head_dim).zip(z.chunks_exact(head_dim)) {
        let ms = head.iter().map(|v| v * v).sum::<f32>() / head_dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((v, &g), &zz) in head.iter_mut().zip(w).zip(zh) {
            *v = *v * inv * g * (zz * sigmoid(zz));
        }
    }
}
