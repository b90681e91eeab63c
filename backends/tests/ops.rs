//! One test body per backend: the ops checked against naive f64 references.

use flashmoe_backends::quant::{WeightFormat, dequantize, quantize};
use flashmoe_backends::{
    AttnShape, ComputeBackend, CpuBackend, ExpertId, ExpertScratch, KvShape, RoutedExpert,
    WeightView,
};

fn close(a: &[f32], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((*x as f64 - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

fn vals(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 7919 % 211) as f32 - 105.0) / 50.0)
        .collect()
}

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

/// Deterministic weights with a spread that exercises every quantization code.
fn weights(rows: usize, cols: usize, seed: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| ((((i + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0) * 0.3)
        .collect()
}

/// The formats every backend must multiply.
const FORMATS: [WeightFormat; 6] = [
    WeightFormat::F32,
    WeightFormat::Bf16,
    WeightFormat::F16,
    WeightFormat::Q8_64,
    WeightFormat::Q4_64,
    WeightFormat::Q4 { group: 128 },
];

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

macro_rules! backend_tests {
    ($($name:ident),*) => {
        mod cpu {
            $(#[test] fn $name() { super::$name(&flashmoe_backends::CpuBackend::new()); })*
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
    moe_experts_match_reference
);

#[test]
fn cpu_backend_is_named() {
    assert_eq!(CpuBackend::new().name(), "cpu");
}
