//! One test body per backend: every row op of a prompt chunk gives, row by row, what its
//! vector op gives (the backend's own vector op is the reference; `ops.rs` checks those).

use flashmoe_backends::quant::{WeightFormat, quantize};
use flashmoe_backends::{AttnShape, ComputeBackend, KvShape};

mod support;
use support::vals;

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol, "{what}: element {i}: {a} vs {b}");
    }
}

/// Row `i` of `rows` (each `width` wide).
fn row(rows: &[f32], i: usize, width: usize) -> &[f32] {
    &rows[i * width..(i + 1) * width]
}

fn embedding_and_norm_rows_match_vector_ops<B: ComputeBackend>(be: &B) {
    let (vocab, dim) = (11, 64);
    let table = quantize(&vals(vocab * dim, 3), vocab, dim, WeightFormat::Bf16).unwrap();
    let table = be
        .load_weight(&table, vocab, dim, WeightFormat::Bf16)
        .unwrap();
    let tokens = [4u32, 0, 10, 4];
    // One spare row: the ops must leave it alone.
    let mut emb = be.upload(&vec![9.0; (tokens.len() + 1) * dim]).unwrap();
    be.embedding_rows(&table, &tokens, &mut emb).unwrap();
    let got = be.read(&emb).unwrap();
    let mut one = be.zeros(dim).unwrap();
    for (i, &t) in tokens.iter().enumerate() {
        be.embedding(&table, t, &mut one).unwrap();
        close(
            row(&got, i, dim),
            &be.read(&one).unwrap(),
            0.0,
            "embedding_rows",
        );
    }
    assert!(got[tokens.len() * dim..].iter().all(|&v| v == 9.0));
    assert!(be.embedding_rows(&table, &[11], &mut one).is_err());
    assert!(be.embedding_rows(&table, &[1, 2], &mut one).is_err());

    let w = be.upload(&vals(dim, 5)).unwrap();
    let n = tokens.len();
    let mut normed = be.upload(&vec![9.0; (n + 1) * dim]).unwrap();
    be.rms_norm_rows(&emb, &w, 1e-6, n, &mut normed).unwrap();
    let got = be.read(&normed).unwrap();
    let (mut xi, mut yi) = (be.zeros(dim).unwrap(), be.zeros(dim).unwrap());
    for i in 0..n {
        be.copy_range(&emb, i * dim, &mut xi, 0, dim).unwrap();
        be.rms_norm(&xi, &w, 1e-6, &mut yi).unwrap();
        close(
            row(&got, i, dim),
            &be.read(&yi).unwrap(),
            1e-5,
            "rms_norm_rows",
        );
    }
    assert!(got[n * dim..].iter().all(|&v| v == 9.0));
    assert!(
        be.rms_norm_rows(&emb, &w, 1e-6, n + 2, &mut normed)
            .is_err()
    );
}

fn rope_rows_match_vector_ops<B: ComputeBackend>(be: &B) {
    let (heads, hd, n, start) = (3, 16, 4, 5);
    let width = heads * hd;
    let x0 = vals((n + 1) * width, 7);
    for rot in [hd, 8] {
        let mut x = be.upload(&x0).unwrap();
        if rot == hd {
            be.rope_rows(&mut x, n, (heads, hd), start, 10000.0)
                .unwrap();
        } else {
            be.rope_partial_rows(&mut x, n, (heads, hd, rot), start, 10000.0)
                .unwrap();
        }
        let got = be.read(&x).unwrap();
        for i in 0..n {
            let mut xi = be.upload(row(&x0, i, width)).unwrap();
            if rot == hd {
                be.rope(&mut xi, heads, hd, start + i, 10000.0).unwrap();
            } else {
                be.rope_partial(&mut xi, heads, hd, rot, start + i, 10000.0)
                    .unwrap();
            }
            close(
                row(&got, i, width),
                &be.read(&xi).unwrap(),
                1e-5,
                "rope rows",
            );
        }
        assert_eq!(
            &got[n * width..],
            row(&x0, n, width),
            "spare row (rot {rot})"
        );
    }
    let mut x = be.upload(&x0).unwrap();
    assert!(be.rope_rows(&mut x, n + 2, (heads, hd), 0, 1e4).is_err());
    assert!(
        be.rope_partial_rows(&mut x, n, (heads, hd, 7), 0, 1e4)
            .is_err()
    );
}

/// A chunk written with `kv_write_rows` after two positions written one by one, then
/// `attention_rows` (row `i` sees `0..=start + i`), against a cache filled token by token and
/// `attention` per position.
fn kv_and_attention_rows_match_vector_ops<B: ComputeBackend>(be: &B) {
    let shape = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let (kv_dim, q_dim, start, n) = (16, 32, 2, 3);
    let kv = KvShape {
        layers: 2,
        max_seq: 8,
        kv_dim,
    };
    let (mut rows_cache, mut one_cache) = (be.kv_cache(kv).unwrap(), be.kv_cache(kv).unwrap());
    let ks = vals((start + n) * kv_dim, 11);
    let vs = vals((start + n) * kv_dim, 23);
    for t in 0..start + n {
        let k = be.upload(row(&ks, t, kv_dim)).unwrap();
        let v = be.upload(row(&vs, t, kv_dim)).unwrap();
        be.kv_write(&mut one_cache, 1, t, &k, &v).unwrap();
        if t < start {
            be.kv_write(&mut rows_cache, 1, t, &k, &v).unwrap();
        }
    }
    let kc = be.upload(&ks[start * kv_dim..]).unwrap();
    let vc = be.upload(&vs[start * kv_dim..]).unwrap();
    be.kv_write_rows(&mut rows_cache, 1, start, n, kv_dim, &kc, &vc)
        .unwrap();
    let q = vals((n + 1) * q_dim, 5);
    let qt = be.upload(&q).unwrap();
    let mut out = be.upload(&vec![9.0; (n + 1) * q_dim]).unwrap();
    be.attention_rows(&qt, &rows_cache, 1, start, n, shape, &mut out)
        .unwrap();
    let got = be.read(&out).unwrap();
    let mut oi = be.zeros(q_dim).unwrap();
    for i in 0..n {
        let qi = be.upload(row(&q, i, q_dim)).unwrap();
        be.attention(&qi, &one_cache, 1, start + i + 1, shape, &mut oi)
            .unwrap();
        close(
            row(&got, i, q_dim),
            &be.read(&oi).unwrap(),
            1e-5,
            "attention_rows",
        );
    }
    assert!(got[n * q_dim..].iter().all(|&v| v == 9.0));
    // Past the cache's end, and past the rows given.
    assert!(
        be.kv_write_rows(&mut rows_cache, 1, 6, n, kv_dim, &kc, &vc)
            .is_err()
    );
    assert!(
        be.attention_rows(&qt, &rows_cache, 1, 6, n, shape, &mut out)
            .is_err()
    );
    assert!(
        be.attention_rows(&qt, &rows_cache, 1, 0, n + 2, shape, &mut out)
            .is_err()
    );
}

/// The tokens routed to one expert gathered, and its outputs scattered back weighted: each
/// row of `y` is what `axpy` per token gives.
fn gather_and_scatter_rows_match_vector_ops<B: ComputeBackend>(be: &B) {
    let (width, n) = (24, 5);
    let x0 = vals(n * width, 13);
    let x = be.upload(&x0).unwrap();
    let picked = [3usize, 0, 4];
    let mut g = be.upload(&vec![9.0; (picked.len() + 1) * width]).unwrap();
    be.gather_rows(&x, width, &picked, &mut g).unwrap();
    let got = be.read(&g).unwrap();
    for (j, &r) in picked.iter().enumerate() {
        assert_eq!(row(&got, j, width), row(&x0, r, width), "gathered row {j}");
    }
    assert!(got[picked.len() * width..].iter().all(|&v| v == 9.0));
    assert!(be.gather_rows(&x, width, &[5], &mut g).is_err());

    let y0 = vals(n * width, 29);
    let mut y = be.upload(&y0).unwrap();
    let weights = [0.5f32, -0.25, 2.0];
    be.scatter_add_rows(&mut y, width, &picked, &weights, &g)
        .unwrap();
    let got = be.read(&y).unwrap();
    for r in 0..n {
        let mut want = be.upload(row(&y0, r, width)).unwrap();
        if let Some(j) = picked.iter().position(|&p| p == r) {
            let gj = be.upload(row(&be.read(&g).unwrap(), j, width)).unwrap();
            be.axpy(&mut want, weights[j], &gj).unwrap();
        }
        close(
            row(&got, r, width),
            &be.read(&want).unwrap(),
            1e-6,
            "scatter_add_rows",
        );
    }
    assert!(
        be.scatter_add_rows(&mut y, width, &picked, &weights[..2], &g)
            .is_err()
    );

    // SwiGLU of the first 3 rows of buffers holding 5: the last two stay as they were.
    let (g0, u0) = (vals(n * width, 31), vals(n * width, 37));
    let (mut gate, up) = (be.upload(&g0).unwrap(), be.upload(&u0).unwrap());
    be.swiglu_rows(&mut gate, &up, 3, width).unwrap();
    let mut whole = be.upload(&g0).unwrap();
    be.swiglu(&mut whole, &up).unwrap();
    let (got, want) = (be.read(&gate).unwrap(), be.read(&whole).unwrap());
    close(&got[..3 * width], &want[..3 * width], 1e-6, "swiglu_rows");
    assert_eq!(&got[3 * width..], &g0[3 * width..], "rows past n");
    assert!(be.swiglu_rows(&mut gate, &up, n + 1, width).is_err());
    assert!(
        be.scatter_add_rows(&mut y, width, &[n], &[1.0], &g)
            .is_err()
    );
}

macro_rules! backend_tests {
    ($($name:ident),*) => {
        mod cpu {
            $(#[test] fn $name() {
                super::$name(&flashmoe_backends::CpuBackend::new());
            })*
            mod profiled {
                // The wrapper forwards every row op (with the wrapped backend's override).
                $(#[test] fn $name() {
                    super::super::$name(&flashmoe_backends::Profiled::new(
                        flashmoe_backends::CpuBackend::new()));
                })*
            }
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(#[test] fn $name() {
                if let Some(be) = super::gpu::backend() {
                    super::$name(&be);
                }
            })*
        }
    };
}
#[cfg(feature = "wgpu")]
mod gpu;

backend_tests!(
    embedding_and_norm_rows_match_vector_ops,
    rope_rows_match_vector_ops,
    kv_and_attention_rows_match_vector_ops,
    gather_and_scatter_rows_match_vector_ops
);
