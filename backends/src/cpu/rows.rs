//! The CPU's row ops over a prompt chunk: causal attention of every row in parallel (rows are
//! independent once the chunk's keys and values are in the cache), and the norms, RoPE,
//! gathers and scatters on slices without the per-row copies of the defaults.

use super::{CpuKvCache, CpuTensor, attention, linear_attn, ops};
use crate::backend::AttnShape;
use crate::checks::{check_attention, check_range, check_rope, check_rope_partial, check_rows};
use crate::error::{BackendError, Result};
use rayon::prelude::*;

/// Row `i` of `q` attends to positions `0..=start + i` of `layer`.
pub(crate) fn attention_rows(
    q: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    (start, n): (usize, usize),
    shape: AttnShape,
    out: &mut CpuTensor,
) -> Result<()> {
    let width = shape.n_heads * shape.head_dim;
    check_rows("attention_rows", "q", n, width, q.0.len())?;
    check_rows("attention_rows", "out", n, width, out.0.len())?;
    if n == 0 {
        return Ok(());
    }
    // The longest row's span decides: every shorter one lies inside it.
    check_attention(cache.shape, layer, start + n, shape, width, width)?;
    let r = cache.layer_range(layer);
    let (k, v) = (&cache.k[r.clone()], &cache.v[r]);
    out.0[..n * width]
        .par_chunks_mut(width)
        .zip(q.0[..n * width].par_chunks(width))
        .enumerate()
        .for_each(|(i, (o, qi))| attention::attention(qi, k, v, start + i + 1, shape, o));
    Ok(())
}

/// RMSNorm of each of the first `n` rows of `x` (as wide as `w`).
pub(crate) fn rms_norm_rows(
    x: &CpuTensor,
    w: &CpuTensor,
    eps: f32,
    n: usize,
    out: &mut CpuTensor,
) -> Result<()> {
    let width = w.0.len();
    check_rows("rms_norm_rows", "x", n, width, x.0.len())?;
    check_rows("rms_norm_rows", "out", n, width, out.0.len())?;
    if width == 0 {
        return Ok(());
    }
    for (xi, oi) in x.0[..n * width]
        .chunks_exact(width)
        .zip(out.0.chunks_exact_mut(width))
    {
        ops::rms_norm(xi, &w.0, eps, oi);
    }
    Ok(())
}

/// Full or partial RoPE of the first `n` rows of `x`, row `i` at position `start + i`
/// (`rot_dim == head_dim` is full RoPE).
pub(crate) fn rope_rows(
    x: &mut CpuTensor,
    n: usize,
    (n_heads, head_dim, rot_dim): (usize, usize, usize),
    start: usize,
    theta: f32,
) -> Result<()> {
    let width = n_heads * head_dim;
    check_rows("rope_rows", "x", n, width, x.0.len())?;
    if rot_dim == head_dim {
        check_rope(width, n_heads, head_dim)?;
    } else {
        check_rope_partial(width, n_heads, head_dim, rot_dim)?;
    }
    if width == 0 {
        return Ok(());
    }
    for (i, row) in x.0[..n * width].chunks_exact_mut(width).enumerate() {
        if rot_dim == head_dim {
            ops::rope(row, n_heads, head_dim, start + i, theta);
        } else {
            linear_attn::rope_partial(row, n_heads, head_dim, rot_dim, start + i, theta);
        }
    }
    Ok(())
}

/// SwiGLU on the first `n` rows (`width` wide) of `gate` and `up`.
pub(crate) fn swiglu_rows(
    gate: &mut CpuTensor,
    up: &CpuTensor,
    n: usize,
    width: usize,
) -> Result<()> {
    check_rows("swiglu_rows", "gate", n, width, gate.0.len())?;
    check_rows("swiglu_rows", "up", n, width, up.0.len())?;
    ops::swiglu(&mut gate.0[..n * width], &up.0[..n * width]);
    Ok(())
}

/// `out[j] = x[rows[j]]`.
pub(crate) fn gather_rows(
    x: &CpuTensor,
    width: usize,
    rows: &[usize],
    out: &mut CpuTensor,
) -> Result<()> {
    check_rows("gather_rows", "out", rows.len(), width, out.0.len())?;
    let n = x.0.len() / width.max(1);
    for (j, &r) in rows.iter().enumerate() {
        check_range("gather_rows", "row", r, 1, n)?;
        out.0[j * width..(j + 1) * width].copy_from_slice(&x.0[r * width..(r + 1) * width]);
    }
    Ok(())
}

/// `y[rows[j]] += weights[j] * x[j]`.
pub(crate) fn scatter_add_rows(
    y: &mut CpuTensor,
    width: usize,
    rows: &[usize],
    weights: &[f32],
    x: &CpuTensor,
) -> Result<()> {
    if rows.len() != weights.len() {
        return Err(BackendError::Shape {
            op: "scatter_add_rows",
            what: "weights (one per row)",
            expected: rows.len(),
            got: weights.len(),
        });
    }
    check_rows("scatter_add_rows", "x", rows.len(), width, x.0.len())?;
    let n = y.0.len() / width.max(1);
    for (j, (&r, &w)) in rows.iter().zip(weights).enumerate() {
        check_range("scatter_add_rows", "row", r, 1, n)?;
        let xi = &x.0[j * width..(j + 1) * width];
        for (a, b) in y.0[r * width..(r + 1) * width].iter_mut().zip(xi) {
            *a += w * b;
        }
    }
    Ok(())
}
