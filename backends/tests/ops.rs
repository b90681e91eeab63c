//! One test body per backend: the ops checked against naive f64 references.

use flashmoe_backends::{AttnShape, ComputeBackend, CpuBackend, KvShape};

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
}

macro_rules! backend_tests {
    ($($name:ident),*) => {
        mod cpu {
            $(#[test] fn $name() { super::$name(&flashmoe_backends::CpuBackend::new()); })*
        }
    };
}
backend_tests!(
    attention_matches_reference,
    norms_rope_swiglu_match_reference
);

#[test]
fn cpu_backend_is_named() {
    assert_eq!(CpuBackend::new().name(), "cpu");
}
