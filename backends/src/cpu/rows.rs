//! The CPU's row ops over a prompt chunk: causal attention of every row in parallel (rows are
//! independent once the chunk's keys and values are in the cache), and the norms, RoPE,
//! gathers and scatters on slices without the per-row copies of the defaults.

use super::{CpuKvCache, CpuTensor, attention, linear_attn, ops};
use crate::backend::AttnShape;
use crate::checks::{check_attention, check_range, check_rope, check_rope_partial, check_rows};
use crate::error::{BackendError, Result};

/// Whether a row op over `values` floats is worth the pool (below it, a thread's own loop is
/// faster than the dispatch).
fn parallel(values: usize) -> bool {
    values >= 1 << 16
}

/// Runs `row(i, out_i)` for each of the `out.len() / width` rows of `out`, on the pool in
/// chunks of whole rows when there are `parallel` many values.
fn each_row(out: &mut [f32], width: usize, row: impl Fn(usize, &mut [f32]) + Sync) {
    let width = width.max(1);
    let n = out.len() / width;
    let chunk_loop = |first: usize, chunk: &mut [f32]| {
        for (j, o) in chunk.chunks_exact_mut(width).enumerate() {
            row(first + j, o);
        }
    };
    if !parallel(n * width) {
        return chunk_loop(0, &mut out[..n * width]);
    }
    let rows = super::pool::chunk_for(n, 1, n, 1);
    super::pool::for_chunks(&mut out[..n * width], rows * width, |c, chunk| {
        chunk_loop(c * rows, chunk)
    });
}

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
    // Attention rows are heavy (a row reads the whole span): one per task.
    super::pool::for_chunks(&mut out.0[..n * width], width, |i, o| {
        let qi = &q.0[i * width..(i + 1) * width];
        attention::attention(qi, k, v, start + i + 1, shape, o)
    });
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
    each_row(&mut out.0[..n * width], width, |i, oi| {
        ops::rms_norm(&x.0[i * width..(i + 1) * width], &w.0, eps, oi)
    });
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
    each_row(&mut x.0[..n * width], width, |i, row| {
        if rot_dim == head_dim {
            ops::rope(row, n_heads, head_dim, start + i, theta);
        } else {
            linear_attn::rope_partial(row, n_heads, head_dim, rot_dim, start + i, theta);
        }
    });
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
    let (g, u) = (&mut gate.0[..n * width], &up.0[..n * width]);
    if parallel(n * width) {
        let block = width.max(1) * 16;
        super::pool::for_chunks(g, block, |i, g| ops::swiglu(g, &u[i * block..]));
    } else {
        ops::swiglu(g, u);
    }
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
    for &r in rows {
        check_range("gather_rows", "row", r, 1, n)?;
    }
    if width == 0 {
        return Ok(());
    }
    each_row(&mut out.0[..rows.len() * width], width, |j, o| {
        let r = rows[j];
        o.copy_from_slice(&x.0[r * width..(r + 1) * width])
    });
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
    for &r in rows {
        check_range("scatter_add_rows", "row", r, 1, n)?;
    }
    if width == 0 {
        return Ok(());
    }
    let add = |yr: &mut [f32], j: usize| {
        let (xi, w) = (&x.0[j * width..(j + 1) * width], weights[j]);
        for (a, b) in yr.iter_mut().zip(xi) {
            *a += w * b;
        }
    };
    // Rows in increasing order name each destination once: the destinations can be updated
    // in parallel (each still gets its one addition, so the same bits).
    if parallel(rows.len() * width) && rows.windows(2).all(|p| p[0] < p[1]) {
        let mut source = vec![usize::MAX; n];
        for (j, &r) in rows.iter().enumerate() {
            source[r] = j;
        }
        each_row(&mut y.0[..n * width], width, |r, yr| {
            if source[r] != usize::MAX {
                add(yr, source[r]);
            }
        });
    } else {
        for (j, &r) in rows.iter().enumerate() {
            add(&mut y.0[r * width..(r + 1) * width], j);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values::values;

    /// Above the parallel threshold, every row op gives exactly what the per-row loop gives:
    /// gathers, scatters (increasing rows on the pool, repeated rows in order), SwiGLU, RMSNorm
    /// and RoPE.
    #[test]
    fn parallel_row_ops_equal_the_row_loop() {
        let (n, width) = (300usize, 256usize);
        assert!(parallel(n * width));
        let x = CpuTensor(values(n * width, 1));
        let idx: Vec<usize> = (0..n).map(|j| (j * 7) % n).collect();
        let mut out = CpuTensor(vec![0.0; n * width]);
        gather_rows(&x, width, &idx, &mut out).unwrap();
        for (j, &r) in idx.iter().enumerate() {
            assert_eq!(out.0[j * width..][..width], x.0[r * width..][..width]);
        }

        let w = values(n, 2);
        for rows in [(0..n).collect::<Vec<_>>(), idx.clone(), vec![3; n]] {
            let mut y = CpuTensor(values(n * width, 3));
            let mut want = y.0.clone();
            for (j, &r) in rows.iter().enumerate() {
                for c in 0..width {
                    want[r * width + c] += w[j] * x.0[j * width + c];
                }
            }
            scatter_add_rows(&mut y, width, &rows, &w, &x).unwrap();
            assert_eq!(y.0, want);
        }

        let (mut g, up) = (
            CpuTensor(values(n * width, 4)),
            CpuTensor(values(n * width, 5)),
        );
        let mut want = g.0.clone();
        ops::swiglu(&mut want, &up.0);
        swiglu_rows(&mut g, &up, n, width).unwrap();
        assert_eq!(g.0, want);

        let norm_w = CpuTensor(values(width, 6));
        let mut normed = CpuTensor(vec![0.0; n * width]);
        rms_norm_rows(&x, &norm_w, 1e-6, n, &mut normed).unwrap();
        let mut rotated = CpuTensor(x.0.clone());
        rope_rows(&mut rotated, n, (4, 64, 64), 9, 1e4).unwrap();
        for i in 0..n {
            let mut row = vec![0.0; width];
            ops::rms_norm(&x.0[i * width..][..width], &norm_w.0, 1e-6, &mut row);
            assert_eq!(normed.0[i * width..][..width], row[..]);
            let mut row = x.0[i * width..][..width].to_vec();
            ops::rope(&mut row, 4, 64, 9 + i, 1e4);
            assert_eq!(rotated.0[i * width..][..width], row[..]);
        }
    }
}
