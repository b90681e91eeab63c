//! Operand checks every backend makes before an op, written once so that the CPU and GPU
//! backends refuse exactly the same inputs with the same errors.

use crate::backend::{AttnShape, DeltaShape, KvShape};
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

/// Partial RoPE: `n_heads` heads of `head_dim`, an even `rot_dim` in `2..=head_dim`.
pub(crate) fn check_rope_partial(
    x_len: usize,
    n_heads: usize,
    head_dim: usize,
    rot_dim: usize,
) -> Result<()> {
    check_len("rope_partial", "x", n_heads * head_dim, x_len)?;
    if rot_dim == 0 || !rot_dim.is_multiple_of(2) || rot_dim > head_dim {
        return Err(BackendError::Shape {
            op: "rope_partial",
            what: "rot_dim (even, at most head_dim)",
            expected: head_dim,
            got: rot_dim,
        });
    }
    Ok(())
}

/// Sigmoid gate: `gate` non-empty and dividing `x` into equal groups.
pub(crate) fn check_sigmoid_mul(x_len: usize, gate_len: usize) -> Result<()> {
    if gate_len == 0 || !x_len.is_multiple_of(gate_len) {
        return Err(BackendError::Shape {
            op: "sigmoid_mul",
            what: "gate (must divide x)",
            expected: x_len,
            got: gate_len,
        });
    }
    Ok(())
}

/// Conv step: `state` of `(kernel - 1) * channels`, `weight` of `channels * kernel`.
pub(crate) fn check_conv1d(
    channels: usize,
    state_len: usize,
    weight_len: usize,
    kernel: usize,
) -> Result<()> {
    if kernel == 0 {
        return Err(BackendError::Shape {
            op: "conv1d_silu_step",
            what: "kernel",
            expected: 1,
            got: 0,
        });
    }
    check_len(
        "conv1d_silu_step",
        "state",
        (kernel - 1) * channels,
        state_len,
    )?;
    check_len("conv1d_silu_step", "weight", channels * kernel, weight_len)
}

/// Delta-rule step operands against `shape`.
pub(crate) fn check_delta(
    shape: DeltaShape,
    qkv: usize,
    ba: usize,
    decay: usize,
    state: usize,
    out: usize,
) -> Result<()> {
    let op = "gated_delta_step";
    if shape.key_heads == 0 || !shape.value_heads.is_multiple_of(shape.key_heads) {
        return Err(BackendError::Shape {
            op,
            what: "value_heads (a multiple of key_heads)",
            expected: shape.key_heads,
            got: shape.value_heads,
        });
    }
    check_len(op, "qkv", shape.qkv_len(), qkv)?;
    check_len(op, "ba", 2 * shape.value_heads, ba)?;
    check_len(op, "decay", 2 * shape.value_heads, decay)?;
    check_len(op, "state", shape.state_len(), state)?;
    check_len(op, "out", shape.out_len(), out)
}

/// Gated per-head RMSNorm: whole heads, `z` as long as `x`.
pub(crate) fn check_gated_norm(
    x_len: usize,
    z_len: usize,
    weight_len: usize,
    head_dim: usize,
) -> Result<()> {
    check_norm_heads(x_len, weight_len, head_dim)?;
    check_len("gated_rms_norm_heads", "z", x_len, z_len)
}

/// A chunk tensor of `len` elements holds at least `n` rows of `width` (it may hold more: a
/// chunk buffer is sized for the longest chunk).
pub(crate) fn check_rows(
    op: &'static str,
    what: &'static str,
    n: usize,
    width: usize,
    len: usize,
) -> Result<()> {
    match n.checked_mul(width) {
        Some(need) if need <= len => Ok(()),
        need => Err(BackendError::Shape {
            op,
            what,
            expected: need.unwrap_or(usize::MAX),
            got: len,
        }),
    }
}

/// `start..start + n` lies inside a tensor of `len` elements.
pub(crate) fn check_range(
    op: &'static str,
    what: &'static str,
    start: usize,
    n: usize,
    len: usize,
) -> Result<()> {
    match start.checked_add(n) {
        Some(end) if end <= len => Ok(()),
        end => Err(BackendError::OutOfRange {
            op,
            what,
            index: end.unwrap_or(usize::MAX),
            limit: len + 1,
        }),
    }
}
