//! `matvec_many` (a layer's q, k and v in one pass) gives each output the bits of its own
//! `matvec`, on the stacked path and on the fallbacks, and refuses mismatched outputs.

use flashmoe_backends::quant::{WeightFormat, quantize};
use flashmoe_backends::{ComputeBackend, CpuBackend};

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0) * 0.5)
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn each_output_has_its_matvec_bits() {
    let cols = 512;
    let be = CpuBackend::new();
    // Stacked (whole 8-row blocks, one quantized format); rows not a multiple of 8 and mixed
    // formats take one matvec each; f32 activations too. Large enough to go parallel.
    let cases: [(&[usize], [WeightFormat; 3]); 4] = [
        (&[1024, 256, 256], [WeightFormat::Q4_64; 3]),
        (&[1024, 256, 256], [WeightFormat::Q8_64; 3]),
        (&[1024, 260, 256], [WeightFormat::Q4_64; 3]),
        (
            &[1024, 256, 256],
            [WeightFormat::Q4_64, WeightFormat::Q8_64, WeightFormat::Bf16],
        ),
    ];
    for (case, (rows, fmts)) in cases.iter().enumerate() {
        for be in [
            be.clone(),
            be.clone()
                .with_activations(flashmoe_backends::Activations::F32),
        ] {
            let ws: Vec<_> = rows
                .iter()
                .zip(fmts)
                .enumerate()
                .map(|(i, (&r, &f))| {
                    let bytes = quantize(&values(r * cols, i), r, cols, f).unwrap();
                    be.load_weight(&bytes, r, cols, f).unwrap()
                })
                .collect();
            let x = be.upload(&values(cols, 77)).unwrap();
            let mut outs: Vec<_> = rows.iter().map(|&r| be.zeros(r).unwrap()).collect();
            let w_refs: Vec<_> = ws.iter().collect();
            let mut out_refs: Vec<_> = outs.iter_mut().collect();
            be.matvec_many(&w_refs, &x, &mut out_refs).unwrap();
            for (i, (w, out)) in ws.iter().zip(&outs).enumerate() {
                let mut want = be.zeros(rows[i]).unwrap();
                be.matvec(w, &x, &mut want).unwrap();
                let got = be.read(out).unwrap();
                assert_eq!(
                    bits(&got),
                    bits(&be.read(&want).unwrap()),
                    "case {case}, matrix {i}"
                );
                assert!(got.iter().any(|v| *v != 0.0), "case {case}, matrix {i}");
            }
        }
    }
}

#[test]
fn mismatched_outputs_are_errors() {
    let be = CpuBackend::new();
    let (rows, cols) = (16, 64);
    let bytes = quantize(&values(rows * cols, 1), rows, cols, WeightFormat::Q4_64).unwrap();
    let w = be
        .load_weight(&bytes, rows, cols, WeightFormat::Q4_64)
        .unwrap();
    let x = be.upload(&values(cols, 2)).unwrap();
    let mut a = be.zeros(rows).unwrap();
    let mut short = be.zeros(rows - 1).unwrap();
    let err = be.matvec_many(&[&w, &w], &x, &mut [&mut a]).unwrap_err();
    assert!(err.to_string().contains("matvec_many"), "{err}");
    let err = be
        .matvec_many(&[&w, &w], &x, &mut [&mut a, &mut short])
        .unwrap_err();
    assert!(err.to_string().contains("out"), "{err}");
}
