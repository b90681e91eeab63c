//! Defaults of the row ops ([`ComputeBackend::embedding_rows`], [`ComputeBackend::rms_norm_rows`],
//! ...): each runs the vector op once per row of a chunk tensor, moving the row in and out with
//! [`ComputeBackend::copy_range`], so every backend is correct before it has a batched kernel.

use crate::backend::{AttnShape, ComputeBackend};
use crate::checks::{check_range, check_rows};
use crate::error::{BackendError, Result};

/// Runs `op(i, row)` on each of the first `n` rows of `x` (`width` wide) in place, through one
/// scratch vector.
pub(crate) fn in_place<B: ComputeBackend + ?Sized>(
    be: &B,
    x: &mut B::Tensor,
    width: usize,
    n: usize,
    mut op: impl FnMut(usize, &mut B::Tensor) -> Result<()>,
) -> Result<()> {
    let mut row = be.zeros(width)?;
    for i in 0..n {
        be.copy_range(x, i * width, &mut row, 0, width)?;
        op(i, &mut row)?;
        be.copy_range(&row, 0, x, i * width, width)?;
    }
    Ok(())
}

/// Default of [`ComputeBackend::embedding_rows`].
pub(crate) fn embedding_rows<B: ComputeBackend + ?Sized>(
    be: &B,
    table: &B::Weight,
    tokens: &[u32],
    out: &mut B::Tensor,
) -> Result<()> {
    let (_, width) = be.weight_dims(table);
    check_rows("embedding_rows", "out", tokens.len(), width, be.len(out))?;
    let mut row = be.zeros(width)?;
    for (i, &t) in tokens.iter().enumerate() {
        be.embedding(table, t, &mut row)?;
        be.copy_range(&row, 0, out, i * width, width)?;
    }
    Ok(())
}

/// Default of [`ComputeBackend::rms_norm_rows`].
pub(crate) fn rms_norm_rows<B: ComputeBackend + ?Sized>(
    be: &B,
    x: &B::Tensor,
    weight: &B::Tensor,
    eps: f32,
    n: usize,
    out: &mut B::Tensor,
) -> Result<()> {
    let width = be.len(weight);
    check_rows("rms_norm_rows", "x", n, width, be.len(x))?;
    check_rows("rms_norm_rows", "out", n, width, be.len(out))?;
    crate::backend::rows_by_vector(be, (x, width), (out, width), n, |xi, yi| {
        be.rms_norm(xi, weight, eps, yi)
    })
}

/// Default of [`ComputeBackend::kv_write_rows`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn kv_write_rows<B: ComputeBackend + ?Sized>(
    be: &B,
    cache: &mut B::KvCache,
    layer: usize,
    start: usize,
    n: usize,
    kv_dim: usize,
    k: &B::Tensor,
    v: &B::Tensor,
) -> Result<()> {
    check_rows("kv_write_rows", "k", n, kv_dim, be.len(k))?;
    check_rows("kv_write_rows", "v", n, kv_dim, be.len(v))?;
    let (mut ki, mut vi) = (be.zeros(kv_dim)?, be.zeros(kv_dim)?);
    for i in 0..n {
        be.copy_range(k, i * kv_dim, &mut ki, 0, kv_dim)?;
        be.copy_range(v, i * kv_dim, &mut vi, 0, kv_dim)?;
        be.kv_write(cache, layer, start + i, &ki, &vi)?;
    }
    Ok(())
}

/// Default of [`ComputeBackend::attention_rows`]: row `i` attends to positions `0..=start + i`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_rows<B: ComputeBackend + ?Sized>(
    be: &B,
    q: &B::Tensor,
    cache: &B::KvCache,
    layer: usize,
    start: usize,
    n: usize,
    shape: AttnShape,
    out: &mut B::Tensor,
) -> Result<()> {
    let width = shape.n_heads * shape.head_dim;
    check_rows("attention_rows", "q", n, width, be.len(q))?;
    check_rows("attention_rows", "out", n, width, be.len(out))?;
    let (mut qi, mut oi) = (be.zeros(width)?, be.zeros(width)?);
    for i in 0..n {
        be.copy_range(q, i * width, &mut qi, 0, width)?;
        be.attention(&qi, cache, layer, start + i + 1, shape, &mut oi)?;
        be.copy_range(&oi, 0, out, i * width, width)?;
    }
    Ok(())
}

/// Default of [`ComputeBackend::swiglu_rows`].
pub(crate) fn swiglu_rows<B: ComputeBackend + ?Sized>(
    be: &B,
    gate: &mut B::Tensor,
    up: &B::Tensor,
    n: usize,
    width: usize,
) -> Result<()> {
    check_rows("swiglu_rows", "gate", n, width, be.len(gate))?;
    check_rows("swiglu_rows", "up", n, width, be.len(up))?;
    if be.len(gate) == n * width && be.len(up) == n * width {
        return be.swiglu(gate, up);
    }
    let mut ui = be.zeros(width)?;
    in_place(be, gate, width, n, |i, gi| {
        be.copy_range(up, i * width, &mut ui, 0, width)?;
        be.swiglu(gi, &ui)
    })
}

/// Default of [`ComputeBackend::gather_rows`].
pub(crate) fn gather_rows<B: ComputeBackend + ?Sized>(
    be: &B,
    x: &B::Tensor,
    width: usize,
    rows: &[usize],
    out: &mut B::Tensor,
) -> Result<()> {
    check_rows("gather_rows", "out", rows.len(), width, be.len(out))?;
    let n = be.len(x) / width.max(1);
    for (j, &r) in rows.iter().enumerate() {
        check_range("gather_rows", "row", r, 1, n)?;
        be.copy_range(x, r * width, out, j * width, width)?;
    }
    Ok(())
}

/// Default of [`ComputeBackend::scatter_add_rows`].
pub(crate) fn scatter_add_rows<B: ComputeBackend + ?Sized>(
    be: &B,
    y: &mut B::Tensor,
    width: usize,
    rows: &[usize],
    weights: &[f32],
    x: &B::Tensor,
) -> Result<()> {
    check_weights("scatter_add_rows", rows.len(), weights.len())?;
    check_rows("scatter_add_rows", "x", rows.len(), width, be.len(x))?;
    let n = be.len(y) / width.max(1);
    let (mut yi, mut xi) = (be.zeros(width)?, be.zeros(width)?);
    for (j, (&r, &w)) in rows.iter().zip(weights).enumerate() {
        check_range("scatter_add_rows", "row", r, 1, n)?;
        be.copy_range(y, r * width, &mut yi, 0, width)?;
        be.copy_range(x, j * width, &mut xi, 0, width)?;
        be.axpy(&mut yi, w, &xi)?;
        be.copy_range(&yi, 0, y, r * width, width)?;
    }
    Ok(())
}

/// One combine weight per row.
pub(crate) fn check_weights(op: &'static str, rows: usize, weights: usize) -> Result<()> {
    if rows == weights {
        Ok(())
    } else {
        Err(BackendError::Shape {
            op,
            what: "weights (one per row)",
            expected: rows,
            got: weights,
        })
    }
}
