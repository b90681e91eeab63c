//! The batched row ops (`matmul`, `matmul_bytes`) on prompt chunks, one test body per backend,
//! against a naive f64 reference; and the CPU's bit-exactness with token-by-token matvecs.

use flashmoe_backends::quant::{dequantize, quantize};
use flashmoe_backends::{ComputeBackend, CpuBackend, WeightView};

mod support;
use support::{FORMATS, close, vals, weights};

/// The batched kernels on chunks of 1, 3, 17 and 64 tokens, every format, row counts that
/// leave partial row blocks (CPU: 8 rows; GPU: 4 per slice, 32 per workgroup) and columns that
/// leave partial 8-group blocks: each token's row of `matmul` and of `matmul_bytes` is `W x`
/// within f32 rounding, and the spare output row past the `n` rows stays untouched.
fn matmul_chunks_match_reference<B: ComputeBackend>(be: &B) {
    for (rows, cols) in [(37usize, 640usize), (9, 384)] {
        for f in FORMATS {
            let bytes = quantize(&weights(rows, cols, 5), rows, cols, f).unwrap();
            let w = be.load_weight(&bytes, rows, cols, f).unwrap();
            let view = WeightView::new(&bytes, rows, cols, f).unwrap();
            let deq = dequantize(&bytes, rows, cols, f).unwrap();
            for n in [1usize, 3, 17, 64] {
                let xs: Vec<f32> = (0..n).flat_map(|t| vals(cols, 3 + 7 * t)).collect();
                let x = be.upload(&xs).unwrap();
                let spare = vec![-3.0f32; rows];
                let mut out = be
                    .upload(&[vec![0.0; n * rows], spare.clone()].concat())
                    .unwrap();
                be.matmul(&w, &x, n, &mut out).unwrap();
                let mut out_b = be
                    .upload(&[vec![0.0; n * rows], spare.clone()].concat())
                    .unwrap();
                be.matmul_bytes(view, &x, n, &mut out_b).unwrap();
                let want: Vec<f64> = (0..n)
                    .flat_map(|t| {
                        let xt = &xs[t * cols..(t + 1) * cols];
                        let deq = &deq;
                        (0..rows).map(move |r| {
                            (0..cols)
                                .map(|c| deq[r * cols + c] as f64 * xt[c] as f64)
                                .sum::<f64>()
                        })
                    })
                    .collect();
                for got in [be.read(&out).unwrap(), be.read(&out_b).unwrap()] {
                    close(&got[..n * rows], &want, 2e-4);
                    assert_eq!(
                        &got[n * rows..],
                        &spare[..],
                        "{f:?} n={n}: wrote past n rows"
                    );
                }
            }
        }
    }
}

/// With the default int8 activations, the CPU's batched matmul of a chunk gives each token
/// exactly the bits of that token's matvec (so a chunked prefill gives the token-by-token
/// logits), for every format.
#[test]
fn cpu_matmul_is_bit_exact_with_token_by_token_matvec() {
    let be = CpuBackend::new();
    let (rows, cols, n) = (70usize, 640usize, 19usize);
    for f in FORMATS {
        let bytes = quantize(&weights(rows, cols, 8), rows, cols, f).unwrap();
        let w = be.load_weight(&bytes, rows, cols, f).unwrap();
        let xs: Vec<Vec<f32>> = (0..n).map(|t| vals(cols, 20 + t)).collect();
        let x = be.upload(&xs.concat()).unwrap();
        let mut out = be.zeros(n * rows).unwrap();
        be.matmul(&w, &x, n, &mut out).unwrap();
        let got = be.read(&out).unwrap();
        for (t, xt) in xs.iter().enumerate() {
            let mut y = be.zeros(rows).unwrap();
            be.matvec(&w, &be.upload(xt).unwrap(), &mut y).unwrap();
            let want: Vec<u32> = be.read(&y).unwrap().iter().map(|v| v.to_bits()).collect();
            let row: Vec<u32> = got[t * rows..(t + 1) * rows]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(row, want, "{f:?} token {t}");
        }
    }
}

#[test]
fn cpu_matmul_chunks_match_reference() {
    // f32 activations: the exact maths, as the other backends (int8 activations are held to
    // bit-exactness with the matvec below and to their rounding bound in the unit tests).
    matmul_chunks_match_reference(
        &CpuBackend::new().with_activations(flashmoe_backends::Activations::F32),
    );
}

#[cfg(feature = "wgpu")]
mod gpu;

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matmul_chunks_match_reference() {
    if let Some(be) = gpu::backend() {
        matmul_chunks_match_reference(&be);
    }
}
