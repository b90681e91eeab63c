//! Operand checks every backend makes before an op, written once so that the CPU and GPU
//! backends refuse exactly the same inputs with the same errors.

use crate::backend::{AttnShape, KvShape};
use crate::error::{BackendError, Result, check_len};

/// `index < limit`, or an [`BackendError::OutOfRange`] naming `what`.
pub(crate) fn check_index(
    op: &'static str,
    what: &'static str,
    index: usize,
    limit: usize,
) -> Result<()> {
    if index < limit {
        Ok(())
    } else {
        Err(BackendError::OutOfRange {
            op,
            what,
            index,
            limit,
        })
    }
}

/// Per-head RMSNorm: `x_len` whole heads of `head_dim`, one weight of `head_dim`.
pub(crate) fn check_norm_heads(x_len: usize, weight_len: usize, head_dim: usize) -> Result<()> {
    check_len("rms_norm_heads", "weight", head_dim, weight_len)?;
    if head_dim == 0 || !x_len.is_multiple_of(head_dim) {
        return Err(BackendError::Shape {
            op: "rms_norm_heads",
            what: "x",
            expected: head_dim,
            got: x_len,
        });
    }
    Ok(())
}

/// RoPE: `n_heads` heads of an even `head_dim`.
pub(crate) fn check_rope(x_len: usize, n_heads: usize, head_dim: usize) -> Result<()> {
    check_len("rope", "x", n_heads * head_dim, x_len)?;
    if !head_dim.is_multiple_of(2) {
        return Err(BackendError::Shape {
            op: "rope",
            what: "head_dim (must be even)",
            expected: head_dim + 1,
            got: head_dim,
        });
    }
    Ok(())
}

/// A KV write of `k_len`/`v_len` values at `layer`, `pos`.
pub(crate) fn check_kv_write(
    s: KvShape,
    layer: usize,
    pos: usize,
    k_len: usize,
    v_len: usize,
) -> Result<()> {
    check_index("kv_write", "layer", layer, s.layers)?;
    check_index("kv_write", "position", pos, s.max_seq)?;
    check_len("kv_write", "k", s.kv_dim, k_len)?;
    check_len("kv_write", "v", s.kv_dim, v_len)
}

/// Attention of a `q_len` query over `seq_len` positions of `layer`, into `out_len` values.
pub(crate) fn check_attention(
    s: KvShape,
    layer: usize,
    seq_len: usize,
    shape: AttnShape,
    q_len: usize,
    out_len: usize,
) -> Result<()> {
    check_index("attention", "layer", layer, s.layers)?;
    check_index("attention", "seq_len", seq_len, s.max_seq + 1)?;
    check_len(
        "attention",
        "kv_dim",
        s.kv_dim,
        shape.n_kv_heads * shape.head_dim,
    )?;
    check_len("attention", "q", shape.n_heads * shape.head_dim, q_len)?;
    check_len("attention", "out", shape.n_heads * shape.head_dim, out_len)?;
    if shape.n_kv_heads == 0 || !shape.n_heads.is_multiple_of(shape.n_kv_heads) || seq_len == 0 {
        return Err(BackendError::Shape {
            op: "attention",
            what: "n_heads / n_kv_heads / seq_len",
            expected: shape.n_kv_heads,
            got: shape.n_heads,
        });
    }
    Ok(())
}
