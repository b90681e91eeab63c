//! Test data and checks shared by the backend test files (`ops.rs`, `matmul.rs`, `row_ops.rs`).
#![allow(dead_code)]

use flashmoe_backends::quant::WeightFormat;

/// Each element of `a` within `tol` of the f64 reference `b`.
pub fn close(a: &[f32], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((*x as f64 - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

/// Deterministic activations in about [-2.1, 2.1].
pub fn vals(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 7919 % 211) as f32 - 105.0) / 50.0)
        .collect()
}

/// Deterministic weights with a spread that exercises every quantization code.
pub fn weights(rows: usize, cols: usize, seed: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| ((((i + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0) * 0.3)
        .collect()
}

/// The formats every backend must multiply.
pub const FORMATS: [WeightFormat; 6] = [
    WeightFormat::F32,
    WeightFormat::Bf16,
    WeightFormat::F16,
    WeightFormat::Q8_64,
    WeightFormat::Q4_64,
    WeightFormat::Q4 { group: 128 },
];
