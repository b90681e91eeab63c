//! One test body per backend: the ops checked against naive f64 references.

use flashmoe_backends::quant::{WeightFormat, dequantize, quantize};
use flashmoe_backends::{
    AttnShape, ComputeBackend, CpuBackend, DeltaShape, ExpertId, ExpertScratch, KvShape,
    RoutedExpert, WeightView,
};

mod support;
use support::{FORMATS, close, vals, weights};

fn attention_matches_reference<B: ComputeBackend>(be: &B) {
    let shape = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let kv_dim = 16;
    let mut cache = be
        .kv_cache(KvShape {
            layers: 2,
            max_seq: 5,
            kv_dim,
        })
        .unwrap();
    let ks: Vec<Vec<f32>> = (0..3).map(|t| vals(kv_dim, 10 + t)).collect();
    let vs: Vec<Vec<f32>> = (0..3).map(|t| vals(kv_dim, 50 + t)).collect();
    for t in 0..3 {
        let (k, v) = (be.upload(&ks[t]).unwrap(), be.upload(&vs[t]).unwrap());
        be.kv_write(&mut cache, 1, t, &k, &v).unwrap();
    }
    let q = vals(32, 3);
    let mut out = be.zeros(32).unwrap();
    be.attention(&be.upload(&q).unwrap(), &cache, 1, 3, shape, &mut out)
        .unwrap();
    let mut want = vec![0f64; 32];
    for h in 0..4 {
        let kvh = h / 2;
        let s: Vec<f64> = (0..3)
            .map(|t| {
                (0..8)
                    .map(|d| q[h * 8 + d] as f64 * ks[t][kvh * 8 + d] as f64)
                    .sum::<f64>()
                    / 8f64.sqrt()
            })
            .collect();
        let m = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for d in 0..8 {
            want[h * 8 + d] = (0..3).map(|t| e[t] / z * vs[t][kvh * 8 + d] as f64).sum();
        }
    }
    close(&be.read(&out).unwrap(), &want, 1e-5);
    // Out-of-range layer and position are errors, not panics.
    assert!(
        be.attention(&be.upload(&q).unwrap(), &cache, 2, 3, shape, &mut out)
            .is_err()
    );
    let k = be.upload(&ks[0]).unwrap();
    assert!(be.kv_write(&mut cache, 0, 5, &k, &k).is_err());
}

fn norms_rope_swiglu_match_reference<B: ComputeBackend>(be: &B) {
    let x = vals(16, 1);
    let w = vals(16, 2);
    let mut out = be.zeros(16).unwrap();
    be.rms_norm(
        &be.upload(&x).unwrap(),
        &be.upload(&w).unwrap(),
        1e-6,
        &mut out,
    )
    .unwrap();
    let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 16.0;
    let want: Vec<f64> = x
        .iter()
        .zip(&w)
        .map(|(a, b)| *a as f64 / (ms + 1e-6).sqrt() * *b as f64)
        .collect();
    close(&be.read(&out).unwrap(), &want, 1e-5);

    // Per-head norm: each 8-wide head normalised alone.
    let mut t = be.upload(&x).unwrap();
    be.rms_norm_heads(&mut t, &be.upload(&w[..8]).unwrap(), 8, 1e-6)
        .unwrap();
    let got = be.read(&t).unwrap();
    for h in 0..2 {
        let xs = &x[h * 8..h * 8 + 8];
        let ms = xs.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 8.0;
        let want: Vec<f64> = xs
            .iter()
            .zip(&w[..8])
            .map(|(a, b)| *a as f64 / (ms + 1e-6).sqrt() * *b as f64)
            .collect();
        close(&got[h * 8..h * 8 + 8], &want, 1e-5);
    }

    // RoPE, rotate-half, theta 10000, position 7.
    let mut t = be.upload(&x).unwrap();
    be.rope(&mut t, 2, 8, 7, 10000.0).unwrap();
    let mut want = vec![0f64; 16];
    for h in 0..2 {
        for i in 0..4 {
            let a = 7.0 * 10000f64.powf(-((2 * i) as f64) / 8.0);
            let (x1, x2) = (x[h * 8 + i] as f64, x[h * 8 + i + 4] as f64);
            want[h * 8 + i] = x1 * a.cos() - x2 * a.sin();
            want[h * 8 + i + 4] = x2 * a.cos() + x1 * a.sin();
        }
    }
    close(&be.read(&t).unwrap(), &want, 1e-5);

    let mut g = be.upload(&x).unwrap();
    be.swiglu(&mut g, &be.upload(&w).unwrap()).unwrap();
    let want: Vec<f64> = x
        .iter()
        .zip(&w)
        .map(|(a, b)| *a as f64 / (1.0 + (-*a as f64).exp()) * *b as f64)
        .collect();
    close(&be.read(&g).unwrap(), &want, 1e-5);

    let mut y = be.upload(&x).unwrap();
    be.axpy(&mut y, 0.5, &be.upload(&w).unwrap()).unwrap();
    let want: Vec<f64> = x
        .iter()
        .zip(&w)
        .map(|(a, b)| *a as f64 + 0.5 * *b as f64)
        .collect();
    close(&be.read(&y).unwrap(), &want, 1e-6);
    assert!(be.axpy(&mut y, 1.0, &be.zeros(3).unwrap()).is_err());

    // Several tensors back at once, empty ones included, each as a single read gives it.
    let (a, b, e) = (
        be.upload(&x).unwrap(),
        be.upload(&w[..5]).unwrap(),
        be.zeros(0).unwrap(),
    );
    let many = be.read_many(&[&a, &e, &b]).unwrap();
    assert_eq!(
        many,
        vec![be.read(&a).unwrap(), Vec::new(), w[..5].to_vec()]
    );
}

/// `W x` in f64 over the dequantized weights: what every matvec must give up to f32 rounding.
fn reference_matvec(
    bytes: &[u8],
    rows: usize,
    cols: usize,
    f: WeightFormat,
    x: &[f32],
) -> Vec<f64> {
    let w = dequantize(bytes, rows, cols, f).unwrap();
    (0..rows)
        .map(|r| {
            (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[c] as f64)
                .sum()
        })
        .collect()
}

fn matvec_every_format_matches_dequantized<B: ComputeBackend>(be: &B) {
    // A partial workgroup of rows, and many workgroups with several chunks per lane.
    for (rows, cols) in [(37, 256), (130, 2048)] {
        matvec_shape_matches_dequantized(be, rows, cols);
    }
}

fn matvec_shape_matches_dequantized<B: ComputeBackend>(be: &B, rows: usize, cols: usize) {
    let x = vals(cols, 4);
    let xt = be.upload(&x).unwrap();
    for f in FORMATS {
        let bytes = quantize(&weights(rows, cols, 9), rows, cols, f).unwrap();
        let want = reference_matvec(&bytes, rows, cols, f, &x);
        let mut out = be.zeros(rows).unwrap();
        let w = be.load_weight(&bytes, rows, cols, f).unwrap();
        be.matvec(&w, &xt, &mut out).unwrap();
        close(&be.read(&out).unwrap(), &want, 2e-4);
        let mut out2 = be.zeros(rows).unwrap();
        be.matvec_bytes(
            WeightView::new(&bytes, rows, cols, f).unwrap(),
            &xt,
            &mut out2,
        )
        .unwrap();
        close(&be.read(&out2).unwrap(), &want, 2e-4);
        // Embedding rows decode to the dequantized values.
        let mut row = be.zeros(cols).unwrap();
        be.embedding(&w, 5, &mut row).unwrap();
        let deq = dequantize(&bytes, rows, cols, f).unwrap();
        let want_row: Vec<f64> = deq[5 * cols..6 * cols].iter().map(|&v| v as f64).collect();
        close(&be.read(&row).unwrap(), &want_row, 0.0);
        assert!(be.embedding(&w, rows as u32, &mut row).is_err());
    }
    let bytes = quantize(&weights(rows, cols, 1), rows, cols, WeightFormat::F32).unwrap();
    let w = be
        .load_weight(&bytes, rows, cols, WeightFormat::F32)
        .unwrap();
    assert!(
        be.matvec(
            &w,
            &be.zeros(cols + 1).unwrap(),
            &mut be.zeros(rows).unwrap()
        )
        .is_err()
    );
    assert!(
        be.load_weight(&bytes[1..], rows, cols, WeightFormat::F32)
            .is_err()
    );
}

/// The row ops: `matmul`/`matmul_bytes` on the first `n` rows of a chunk tensor (which holds
/// one row more) give every row's `W x`, leave the spare output row alone, and refuse tensors
/// too short for `n` rows; `copy_range` moves exactly the range it names.
fn row_ops_match_vector_ops<B: ComputeBackend>(be: &B) {
    let (rows, cols, n) = (37, 256, 3);
    let xs: Vec<Vec<f32>> = (0..=n).map(|i| vals(cols, 10 + i)).collect();
    let x = be.upload(&xs.concat()).unwrap();
    for f in FORMATS {
        let bytes = quantize(&weights(rows, cols, 9), rows, cols, f).unwrap();
        let w = be.load_weight(&bytes, rows, cols, f).unwrap();
        assert_eq!(be.weight_dims(&w), (rows, cols));
        let view = WeightView::new(&bytes, rows, cols, f).unwrap();
        let mut out = be.upload(&vec![7.0; (n + 1) * rows]).unwrap();
        be.matmul(&w, &x, n, &mut out).unwrap();
        let mut out_bytes = be.upload(&vec![7.0; (n + 1) * rows]).unwrap();
        be.matmul_bytes(view, &x, n, &mut out_bytes).unwrap();
        for got in [be.read(&out).unwrap(), be.read(&out_bytes).unwrap()] {
            for (i, xi) in xs.iter().take(n).enumerate() {
                let want = reference_matvec(&bytes, rows, cols, f, xi);
                close(&got[i * rows..(i + 1) * rows], &want, 2e-4);
            }
            assert!(
                got[n * rows..].iter().all(|&v| v == 7.0),
                "{f:?}: row {n} was written"
            );
        }
        assert!(be.matmul(&w, &x, n + 2, &mut out).is_err());
        assert!(
            be.matmul_bytes(view, &x, n + 1, &mut be.zeros(n * rows).unwrap())
                .is_err()
        );
    }
    let src = be.upload(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let mut dst = be.zeros(4).unwrap();
    be.copy_range(&src, 1, &mut dst, 2, 2).unwrap();
    assert_eq!(be.read(&dst).unwrap(), vec![0.0, 0.0, 2.0, 3.0]);
    assert!(be.copy_range(&src, 4, &mut dst, 0, 2).is_err());
    assert!(be.copy_range(&src, 0, &mut dst, 3, 2).is_err());
    assert_eq!(be.read(&dst).unwrap(), vec![0.0, 0.0, 2.0, 3.0]);
}

/// `sum_i c_i down_i(silu(gate_i x) * up_i x)` in f64 over dequantized records.
fn reference_moe(
    recs: &[(Vec<u8>, Vec<u8>, Vec<u8>)],
    comb: &[f32],
    h: usize,
    i: usize,
    f: WeightFormat,
    x: &[f32],
) -> Vec<f64> {
    let mut out = vec![0f64; h];
    for ((g, u, d), &c) in recs.iter().zip(comb) {
        let gx = reference_matvec(g, i, h, f, x);
        let ux = reference_matvec(u, i, h, f, x);
        let a: Vec<f32> = gx
            .iter()
            .zip(&ux)
            .map(|(g, u)| (g / (1.0 + (-g).exp()) * u) as f32)
            .collect();
        for (o, v) in out.iter_mut().zip(reference_matvec(d, h, i, f, &a)) {
            *o += c as f64 * v;
        }
    }
    out
}

fn moe_experts_match_reference<B: ComputeBackend>(be: &B) {
    let (h, i) = (128, 64);
    let x = vals(h, 7);
    for f in [WeightFormat::Q4_64, WeightFormat::Q8_64, WeightFormat::Bf16] {
        let recs: Vec<_> = (0..4)
            .map(|e| {
                let q = |r: usize, c: usize, s: usize| {
                    quantize(&weights(r, c, s + 31 * e), r, c, f).unwrap()
                };
                (q(i, h, 1), q(i, h, 2), q(h, i, 3))
            })
            .collect();
        let comb = [0.4, 0.3, 0.2, 0.1];
        let routed: Vec<RoutedExpert<'_>> = recs
            .iter()
            .enumerate()
            .map(|(e, (g, u, d))| RoutedExpert {
                id: ExpertId {
                    layer: 0,
                    expert: e as u32,
                },
                weights: [
                    WeightView::new(g, i, h, f).unwrap(),
                    WeightView::new(u, i, h, f).unwrap(),
                    WeightView::new(d, h, i, f).unwrap(),
                ],
                combine: comb[e],
            })
            .collect();
        let want = reference_moe(&recs, &comb, h, i, f, &x);
        let mut scratch = ExpertScratch {
            h1: be.zeros(i).unwrap(),
            h2: be.zeros(i).unwrap(),
            out: be.zeros(h).unwrap(),
        };
        let xt = be.upload(&x).unwrap();
        let mut out = be.zeros(h).unwrap();
        // Twice: the second call finds every record resident on a GPU backend.
        for _ in 0..2 {
            be.moe_experts(&routed, &xt, &mut scratch, &mut out)
                .unwrap();
            close(&be.read(&out).unwrap(), &want, 1e-4);
        }
        // A subset in another order (slots reused, combine weights moved).
        let sub = [routed[3], routed[1]];
        let want = reference_moe(
            &[recs[3].clone(), recs[1].clone()],
            &[comb[3], comb[1]],
            h,
            i,
            f,
            &x,
        );
        be.moe_experts(&sub, &xt, &mut scratch, &mut out).unwrap();
        close(&be.read(&out).unwrap(), &want, 1e-4);
    }
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Partial RoPE, sigmoid gates and the gated norm of the hybrid (Qwen3.5) layers.
fn hybrid_elementwise_ops_match_reference<B: ComputeBackend>(be: &B) {
    // Partial rotary: 3 heads of 16, the first 6 dims rotated (pairs (i, i + 3)).
    let (heads, hd, rot, pos, theta) = (3, 16, 6, 7, 10000.0f32);
    let x = vals(heads * hd, 5);
    let mut t = be.upload(&x).unwrap();
    be.rope_partial(&mut t, heads, hd, rot, pos, theta).unwrap();
    let mut want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for h in 0..heads {
        for i in 0..rot / 2 {
            let f = 1.0 / (theta as f64).powf(2.0 * i as f64 / rot as f64);
            let (c, s) = ((pos as f64 * f).cos(), (pos as f64 * f).sin());
            let (a, b) = (x[h * hd + i] as f64, x[h * hd + i + rot / 2] as f64);
            want[h * hd + i] = a * c - b * s;
            want[h * hd + i + rot / 2] = b * c + a * s;
        }
    }
    close(&be.read(&t).unwrap(), &want, 1e-5);
    assert!(
        be.rope_partial(&mut t, heads, hd, 5, pos, theta).is_err(),
        "odd rot_dim"
    );
    assert!(
        be.rope_partial(&mut t, heads, hd, 18, pos, theta).is_err(),
        "rot_dim > head_dim"
    );

    // Sigmoid gates: per element, and one scalar broadcast.
    let (x, g) = (vals(40, 1), vals(40, 2));
    let mut t = be.upload(&x).unwrap();
    be.sigmoid_mul(&mut t, &be.upload(&g).unwrap()).unwrap();
    let want: Vec<f64> = x
        .iter()
        .zip(&g)
        .map(|(&a, &b)| a as f64 * sig(b as f64))
        .collect();
    close(&be.read(&t).unwrap(), &want, 1e-6);
    let mut t = be.upload(&x).unwrap();
    be.sigmoid_mul(&mut t, &be.upload(&[0.7]).unwrap()).unwrap();
    let want: Vec<f64> = x.iter().map(|&a| a as f64 * sig(0.7)).collect();
    close(&be.read(&t).unwrap(), &want, 1e-6);
    assert!(
        be.sigmoid_mul(&mut t, &be.upload(&[1.0; 3]).unwrap())
            .is_err()
    );

    // Gated RMSNorm: 4 heads of 24, one weight.
    let (x, z, w) = (vals(96, 3), vals(96, 4), vals(24, 6));
    let mut t = be.upload(&x).unwrap();
    be.gated_rms_norm_heads(
        &mut t,
        &be.upload(&z).unwrap(),
        &be.upload(&w).unwrap(),
        24,
        1e-6,
    )
    .unwrap();
    let mut want = vec![0f64; 96];
    for h in 0..4 {
        let xs = &x[h * 24..(h + 1) * 24];
        let ms = xs.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 24.0;
        for i in 0..24 {
            let zz = z[h * 24 + i] as f64;
            want[h * 24 + i] = xs[i] as f64 / (ms + 1e-6).sqrt() * w[i] as f64 * zz * sig(zz);
        }
    }
    close(&be.read(&t).unwrap(), &want, 1e-5);
}

/// Three steps of the causal conv1d (width 4) and of the gated delta rule against f64
/// recomputations over the whole history.
fn conv1d_and_delta_rule_match_reference<B: ComputeBackend>(be: &B) {
    let (ch, kernel, steps) = (40, 4, 3);
    let w = vals(ch * kernel, 9);
    let inputs: Vec<Vec<f32>> = (0..steps).map(|t| vals(ch, 20 + t)).collect();
    let wt = be.upload(&w).unwrap();
    let mut state = be.zeros((kernel - 1) * ch).unwrap();
    for t in 0..steps {
        let mut x = be.upload(&inputs[t]).unwrap();
        be.conv1d_silu_step(&mut x, &mut state, &wt, kernel)
            .unwrap();
        let want: Vec<f64> = (0..ch)
            .map(|c| {
                let mut y = 0f64;
                for j in 0..kernel {
                    // weight j sees the input at time t - (kernel - 1) + j (zeros before 0)
                    if let Some(src) = (t + j).checked_sub(kernel - 1) {
                        y += w[c * kernel + j] as f64 * inputs[src][c] as f64;
                    }
                }
                y * sig(y)
            })
            .collect();
        close(&be.read(&x).unwrap(), &want, 1e-5);
    }
    let mut bad = be.zeros(ch).unwrap();
    assert!(be.conv1d_silu_step(&mut bad, &mut state, &wt, 3).is_err());

    // Delta rule: 2 key heads, 4 value heads (value head j uses key head j / 2), dk 8, dv 12.
    let s = DeltaShape {
        key_heads: 2,
        value_heads: 4,
        key_dim: 8,
        value_dim: 12,
    };
    let (nk, nv, dk, dv) = (2, 4, 8, 12);
    let decay: Vec<f32> = (0..nv)
        .map(|j| -(0.1 + j as f32))
        .chain((0..nv).map(|j| 0.3 * j as f32 - 0.5))
        .collect();
    let decay_t = be.upload(&decay).unwrap();
    let mut state_t = be.zeros(s.state_len()).unwrap();
    let mut st = vec![0f64; nv * dk * dv];
    let l2 = |v: &[f32]| {
        let n = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() + 1e-6).sqrt();
        v.iter().map(|&x| x as f64 / n).collect::<Vec<f64>>()
    };
    for t in 0..steps {
        let qkv = vals(s.qkv_len(), 40 + t);
        let ba = vals(2 * nv, 50 + t);
        let mut out = be.zeros(s.out_len()).unwrap();
        be.gated_delta_step(
            &be.upload(&qkv).unwrap(),
            &be.upload(&ba).unwrap(),
            &decay_t,
            &mut state_t,
            s,
            &mut out,
        )
        .unwrap();
        let mut want = vec![0f64; nv * dv];
        for j in 0..nv {
            let kh = j / (nv / nk);
            let q: Vec<f64> = l2(&qkv[kh * dk..(kh + 1) * dk])
                .iter()
                .map(|x| x / (dk as f64).sqrt())
                .collect();
            let k = l2(&qkv[nk * dk + kh * dk..nk * dk + (kh + 1) * dk]);
            let v = &qkv[2 * nk * dk + j * dv..2 * nk * dk + (j + 1) * dv];
            let x = ba[nv + j] as f64 + decay[nv + j] as f64;
            let g = decay[j] as f64 * (1.0 + x.exp()).ln();
            let beta = sig(ba[j] as f64);
            let sj = &mut st[j * dk * dv..(j + 1) * dk * dv];
            sj.iter_mut().for_each(|e| *e *= g.exp());
            for b in 0..dv {
                let kv: f64 = (0..dk).map(|a| sj[a * dv + b] * k[a]).sum();
                let delta = beta * (v[b] as f64 - kv);
                for a in 0..dk {
                    sj[a * dv + b] += k[a] * delta;
                }
                want[j * dv + b] = (0..dk).map(|a| sj[a * dv + b] * q[a]).sum();
            }
        }
        close(&be.read(&out).unwrap(), &want, 1e-5);
    }
    close(&be.read(&state_t).unwrap(), &st, 1e-5);
    let bad_shape = DeltaShape {
        value_heads: 3,
        ..s
    };
    let mut out = be.zeros(s.out_len()).unwrap();
    assert!(
        be.gated_delta_step(
            &decay_t,
            &decay_t,
            &decay_t,
            &mut state_t,
            bad_shape,
            &mut out
        )
        .is_err()
    );
}

macro_rules! backend_tests {
    ($($name:ident),*) => {
        mod cpu {
            // f32 activations: the bodies hold every backend to f32 rounding of the exact
            // maths. The default int8 activations of quantized matvecs are tested against the
            // bound their rounding allows, and bit-exact across kernels, in `cpu::matvec` and
            // `cpu::moe`'s unit tests.
            $(#[test] fn $name() {
                super::$name(&flashmoe_backends::CpuBackend::new()
                    .with_activations(flashmoe_backends::Activations::F32));
            })*
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
    attention_matches_reference,
    norms_rope_swiglu_match_reference,
    matvec_every_format_matches_dequantized,
    moe_experts_match_reference,
    hybrid_elementwise_ops_match_reference,
    conv1d_and_delta_rule_match_reference,
    row_ops_match_vector_ops
);

#[test]
fn profiled_row_ops_reach_the_wrapped_backend() {
    use flashmoe_backends::{Profiled, profile::Phase};
    let be = Profiled::new(CpuBackend::new());
    let (rows, cols) = (4, 64);
    let bytes = quantize(&weights(rows, cols, 3), rows, cols, WeightFormat::Q8_64).unwrap();
    let w = be
        .load_weight_named("lm_head.weight", &bytes, rows, cols, WeightFormat::Q8_64)
        .unwrap();
    assert_eq!(be.weight_dims(&w), (rows, cols));
    let x = be.upload(&[vals(cols, 1), vals(cols, 2)].concat()).unwrap();
    let mut out = be.zeros(2 * rows).unwrap();
    be.matmul(&w, &x, 2, &mut out).unwrap();
    let mut want = CpuBackend::new().zeros(2 * rows).unwrap();
    let cpu = CpuBackend::new();
    let cw = cpu
        .load_weight(&bytes, rows, cols, WeightFormat::Q8_64)
        .unwrap();
    cpu.matmul(
        &cw,
        &cpu.upload(&be.read(&x).unwrap()).unwrap(),
        2,
        &mut want,
    )
    .unwrap();
    assert_eq!(be.read(&out).unwrap(), cpu.read(&want).unwrap());
    // One matmul is one charge to the weight's phase, not one per row.
    let snap = be.profile().unwrap().snapshot();
    assert_eq!(snap.iter().find(|r| r.0 == Phase::LmHead).unwrap().2, 1);
}

#[test]
fn cpu_backend_is_named() {
    assert_eq!(CpuBackend::new().name(), "cpu");
}
