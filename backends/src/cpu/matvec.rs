//! CPU matrix-vector kernels for every [`WeightFormat`], split over rows with rayon.
//!
//! Quantized rows use `w.x = sum_g scale_g * (sum_j q_j x_j) + bias_g * (sum_j x_j)`: the group
//! sums of `x` are computed once per call, so the inner loop is a plain code-times-x dot.
//! For 4-bit codes `x` is split once into even and odd columns so that low and high nibbles
//! each meet a contiguous slice.

use crate::quant::{MatrixLayout, WeightFormat, bf16_at, f16_at};
use rayon::prelude::*;

/// Below this many weights a matvec runs on the calling thread (thread hand-off costs more).
const PAR_THRESHOLD: usize = 1 << 15;
/// Weights per parallel work item.
const CHUNK_WEIGHTS: usize = 1 << 14;

/// Per-call precomputation on `x`.
struct Prep {
    /// Sum of `x` over each group (quantized formats).
    group_sums: Vec<f32>,
    /// Even columns of `x` (Q4).
    even: Vec<f32>,
    /// Odd columns of `x` (Q4).
    odd: Vec<f32>,
}

impl Prep {
    fn new(l: &MatrixLayout, x: &[f32]) -> Self {
        let group_sums = match l.format.group() {
            Some(g) => x.chunks_exact(g).map(|c| c.iter().sum()).collect(),
            None => Vec::new(),
        };
        let (even, odd) = if matches!(l.format, WeightFormat::Q4 { .. }) {
            (
                x.iter().step_by(2).copied().collect(),
                x.iter().skip(1).step_by(2).copied().collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        Self {
            group_sums,
            even,
            odd,
        }
    }
}

/// `out = W x`. The caller has checked `bytes.len() == l.total`, `x.len() == l.cols` and
/// `out.len() == l.rows`.
pub(crate) fn matvec(bytes: &[u8], l: &MatrixLayout, x: &[f32], out: &mut [f32]) {
    matvec_with(bytes, l, x, out, simd_available());
}

#[cfg(target_arch = "x86_64")]
fn simd_available() -> bool {
    super::simd::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn simd_available() -> bool {
    false
}

/// [`matvec`] with the choice of kernels made by the caller (tests compare both).
pub(crate) fn matvec_with(bytes: &[u8], l: &MatrixLayout, x: &[f32], out: &mut [f32], simd: bool) {
    let simd = simd && simd_available();
    let prep = Prep::new(l, x);
    let row = |r: usize| {
        if simd {
            row_dot_simd(bytes, l, &prep, x, r)
        } else {
            row_dot(bytes, l, &prep, x, r)
        }
    };
    if l.rows * l.cols < PAR_THRESHOLD {
        out.iter_mut().enumerate().for_each(|(r, o)| *o = row(r));
    } else {
        let rows_per_chunk = (CHUNK_WEIGHTS / l.cols.max(1)).max(1);
        out.par_chunks_mut(rows_per_chunk)
            .enumerate()
            .for_each(|(c, chunk)| {
                let base = c * rows_per_chunk;
                chunk
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, o)| *o = row(base + i));
            });
    }
}

fn row_dot(bytes: &[u8], l: &MatrixLayout, p: &Prep, x: &[f32], r: usize) -> f32 {
    let cols = l.cols;
    match l.format {
        WeightFormat::F32 => dot_f32_bytes(&bytes[4 * r * cols..4 * (r + 1) * cols], x),
        WeightFormat::Bf16 => dot_bf16(&bytes[2 * r * cols..2 * (r + 1) * cols], x),
        WeightFormat::F16 => {
            let row = &bytes[2 * r * cols..2 * (r + 1) * cols];
            (0..cols).map(|j| f16_at(row, j) * x[j]).sum()
        }
        WeightFormat::Q8 { group } => {
            let g = group as usize;
            let gpr = cols / g;
            let row = &bytes[r * cols..(r + 1) * cols];
            let (scales, biases) = scale_bias(bytes, l);
            let mut acc = 0f32;
            for (k, (codes, xs)) in row.chunks_exact(g).zip(x.chunks_exact(g)).enumerate() {
                let gi = r * gpr + k;
                acc +=
                    f16_at(scales, gi) * dot_u8(codes, xs) + f16_at(biases, gi) * p.group_sums[k];
            }
            acc
        }
        WeightFormat::Q4 { group } => {
            let g = group as usize;
            let half = g / 2;
            let gpr = cols / g;
            let row = &bytes[r * cols / 2..(r + 1) * cols / 2];
            let (scales, biases) = scale_bias(bytes, l);
            let mut acc = 0f32;
            for (k, codes) in row.chunks_exact(half).enumerate() {
                let gi = r * gpr + k;
                let xs = k * half..(k + 1) * half;
                let d = dot_u4(codes, &p.even[xs.clone()], &p.odd[xs]);
                acc += f16_at(scales, gi) * d + f16_at(biases, gi) * p.group_sums[k];
            }
            acc
        }
    }
}

/// Row dot product with the AVX2 kernels; formats without one use the portable kernel.
#[cfg(target_arch = "x86_64")]
fn row_dot_simd(bytes: &[u8], l: &MatrixLayout, p: &Prep, x: &[f32], r: usize) -> f32 {
    use super::simd;
    let cols = l.cols;
    let (scales, biases) = scale_bias(bytes, l);
    let group = l.format.group().unwrap_or(1);
    let gpr = cols / group;
    let sb = 2 * r * gpr..2 * (r + 1) * gpr;
    match l.format {
        // SAFETY: `matvec_with` calls this only when `simd::available()` said the CPU has AVX2,
        // FMA and F16C (it ANDs the caller's wish with that check).
        WeightFormat::Bf16 => unsafe {
            simd::bf16_row(&bytes[2 * r * cols..2 * (r + 1) * cols], x)
        },
        // SAFETY: as above, the CPU features were checked by `matvec_with`.
        WeightFormat::Q8 { .. } => unsafe {
            simd::q8_row(
                &bytes[r * cols..(r + 1) * cols],
                &scales[sb.clone()],
                &biases[sb],
                x,
                &p.group_sums,
                group,
            )
        },
        // SAFETY: as above, the CPU features were checked by `matvec_with`.
        WeightFormat::Q4 { .. } => unsafe {
            let codes = &bytes[r * cols / 2..(r + 1) * cols / 2];
            simd::q4_row(
                codes,
                &scales[sb.clone()],
                &biases[sb],
                &p.even,
                &p.odd,
                &p.group_sums,
                group,
            )
        },
        _ => row_dot(bytes, l, p, x, r),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn row_dot_simd(bytes: &[u8], l: &MatrixLayout, p: &Prep, x: &[f32], r: usize) -> f32 {
    row_dot(bytes, l, p, x, r)
}

fn scale_bias<'a>(bytes: &'a [u8], l: &MatrixLayout) -> (&'a [u8], &'a [u8]) {
    (
        &bytes[l.scales_offset..l.biases_offset],
        &bytes[l.biases_offset..l.total],
    )
}

/// Dot product with 8 independent accumulators (lets the compiler vectorize).
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn dot_f32_bytes(row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(4)
        .zip(x)
        .map(|(b, v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
        .sum()
}

fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (rc, xc) = (row.chunks_exact(16), x.chunks_exact(8));
    let tail_start = x.len() - xc.remainder().len();
    for (b, v) in rc.zip(xc) {
        for i in 0..8 {
            let w = f32::from_bits(u32::from(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])) << 16);
            acc[i] += w * v[i];
        }
    }
    let tail: f32 = (tail_start..x.len()).map(|j| bf16_at(row, j) * x[j]).sum();
    acc.iter().sum::<f32>() + tail
}

fn dot_u8(codes: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (c, v) in codes.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += f32::from(c[i]) * v[i];
        }
    }
    acc.iter().sum()
}

fn dot_u4(codes: &[u8], even: &[f32], odd: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for ((c, e), o) in codes
        .chunks_exact(8)
        .zip(even.chunks_exact(8))
        .zip(odd.chunks_exact(8))
    {
        for i in 0..8 {
            acc[i] += f32::from(c[i] & 15) * e[i] + f32::from(c[i] >> 4) * o[i];
        }
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, quantize};

    #[test]
    fn every_format_matches_dequantized_reference() {
        // Big enough to take the parallel path too.
        for (rows, cols) in [(3usize, 64usize), (512, 256)] {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 97.0)
                .collect();
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
                .collect();
            for f in [
                WeightFormat::F32,
                WeightFormat::Bf16,
                WeightFormat::F16,
                WeightFormat::Q8_64,
                WeightFormat::Q4_64,
            ] {
                let bytes = quantize(&w, rows, cols, f).unwrap();
                let deq = dequantize(&bytes, rows, cols, f).unwrap();
                let l = f.layout(rows, cols).unwrap();
                for simd in [false, simd_available()] {
                    let mut out = vec![0f32; rows];
                    matvec_with(&bytes, &l, &x, &mut out, simd);
                    for r in 0..rows {
                        let want: f64 = (0..cols)
                            .map(|j| deq[r * cols + j] as f64 * x[j] as f64)
                            .sum();
                        assert!(
                            (out[r] as f64 - want).abs() < 1e-3,
                            "{f:?} simd {simd} row {r}: {} vs {want}",
                            out[r]
                        );
                    }
                }
            }
        }
    }
}
