//! CPU matrix-vector products for every [`WeightFormat`], split over rows on the decode pool.
//!
//! Quantized formats quantize `x` to int8 once per call and use the integer row kernels of
//! [`super::int8`] (as ggml does); float formats dot f32 activations with the row (AVX2/FMA for
//! bf16 when the CPU has it).

use super::int8::{Isa, QRow, QuantizedX, q4_row, q8_row};
use super::matmul::{for_row_blocks, quant_rows};
use crate::quant::{MatrixLayout, WeightFormat, bf16_at, f16_at};
use std::cell::RefCell;

/// Below this many weights a matvec runs on the calling thread: even the decode pool's
/// fork/join (about a microsecond, [`super::pool`]) costs more than this much work on one core.
pub(crate) const PAR_THRESHOLD: usize = 1 << 15;
/// Weights per parallel work item: at least (the work of a task should outweigh claiming it)...
pub(crate) const CHUNK_WEIGHTS: usize = 1 << 14;
/// ... and at most (~20 us of 4-bit rows on one core).
pub(crate) const MAX_CHUNK_WEIGHTS: usize = 1 << 20;

thread_local! {
    /// The calling thread's quantized activations, reused across calls (no allocation per token).
    static QX: RefCell<QuantizedX> = RefCell::new(QuantizedX::default());
}

/// The activations a row kernel reads: `x`, and for quantized formats its int8 form (without
/// it, quantized rows are dotted with f32 `x` exactly, a slower reference path).
#[derive(Clone, Copy)]
pub(crate) struct Act<'a> {
    /// f32 values.
    pub x: &'a [f32],
    /// `x` quantized for the weight's group and code order ([`prepare`]).
    pub qx: Option<&'a QuantizedX>,
}

/// Quantizes `x` for a matrix in `format` into `qx`; returns whether `format` is quantized.
pub(crate) fn prepare(format: WeightFormat, x: &[f32], qx: &mut QuantizedX) -> bool {
    match format.group() {
        Some(g) => {
            qx.quantize(x, g, matches!(format, WeightFormat::Q4 { .. }));
            true
        }
        None => false,
    }
}

/// Runs `f` with `x` prepared for `format`, in the calling thread's reused buffers.
/// Without `int8`, quantized formats get f32 activations (the exact path).
pub(crate) fn with_act<R>(
    format: WeightFormat,
    x: &[f32],
    int8: bool,
    f: impl FnOnce(Act<'_>) -> R,
) -> R {
    if format.group().is_none() || !int8 {
        return f(Act { x, qx: None });
    }
    QX.with(|cell| match cell.try_borrow_mut() {
        Ok(mut qx) => {
            prepare(format, x, &mut qx);
            f(Act { x, qx: Some(&qx) })
        }
        // Re-entered on this thread (a nested parallel job): use a fresh buffer.
        Err(_) => {
            let mut qx = QuantizedX::default();
            prepare(format, x, &mut qx);
            f(Act { x, qx: Some(&qx) })
        }
    })
}

/// `out = W x`. The caller has checked `bytes.len() == l.total`, `x.len() == l.cols` and
/// `out.len() == l.rows`.
/// `int8`: quantize `x` for quantized formats.
pub(crate) fn matvec(bytes: &[u8], l: &MatrixLayout, x: &[f32], out: &mut [f32], int8: bool) {
    matvec_isa(Isa::detect(), bytes, l, x, out, int8);
}

/// [`matvec`] with the kernels of `isa`. Q4/Q8 rows with int8 activations go through the
/// multi-row kernels ([`super::block`], [`super::block::ROWS`] rows per inner loop: one load of each
/// activation chunk and one horizontal integer sum per 8 groups for several rows), bit-exact
/// with the single-row kernels; other rows one at a time.
pub(crate) fn matvec_isa(
    isa: Isa,
    bytes: &[u8],
    l: &MatrixLayout,
    x: &[f32],
    out: &mut [f32],
    int8: bool,
) {
    with_act(l.format, x, int8, |act| match act.qx {
        Some(qx) => for_row_blocks(l.rows * l.cols, l.cols, 1, out, |r0, o| {
            quant_rows(isa, bytes, l, std::slice::from_ref(qx), r0, o)
        }),
        None => {
            let row = |r: usize| row_dot(isa, bytes, l, act, r);
            for_rows(l.rows * l.cols, l.cols, out, row);
        }
    });
}

/// `out = [W_0; W_1; ...] x`: matrices of one quantized format and width, each a whole number
/// of [`super::block::ROWS`] rows, stacked into one pass (one parallel region, `x` quantized
/// once); every row has the bits [`matvec`] gives it with int8 activations. The caller has
/// checked the shapes and that `out` holds every matrix's rows.
pub(crate) fn matvec_stacked(
    isa: Isa,
    mats: &[(&[u8], &MatrixLayout)],
    x: &[f32],
    out: &mut [f32],
) {
    let (format, cols) = (mats[0].1.format, mats[0].1.cols);
    let starts: Vec<usize> = mats
        .iter()
        .scan(0, |r, (_, l)| {
            let start = *r;
            *r += l.rows;
            Some(start)
        })
        .collect();
    with_act(format, x, true, |act| {
        let qx = act.qx.expect("the caller checked a quantized format");
        for_row_blocks(out.len() * cols, cols, 1, out, |r0, o| {
            // Blocks never straddle two matrices: each is a whole number of blocks.
            let m = starts.partition_point(|&s| s <= r0) - 1;
            let (bytes, l) = mats[m];
            quant_rows(isa, bytes, l, std::slice::from_ref(qx), r0 - starts[m], o)
        })
    });
}

/// [`matvec`] with int8 activations and the kernels of `isa` (tests compare them).
#[cfg(test)]
pub(crate) fn matvec_with(bytes: &[u8], l: &MatrixLayout, x: &[f32], out: &mut [f32], isa: Isa) {
    matvec_isa(isa, bytes, l, x, out, true);
}

/// `out = W x` one row at a time with the single-row kernels of `isa` (the reference the
/// blocked kernels are compared with).
#[cfg(test)]
pub(crate) fn rows_with(
    isa: Isa,
    bytes: &[u8],
    l: &MatrixLayout,
    x: &[f32],
    out: &mut [f32],
    int8: bool,
) {
    with_act(l.format, x, int8, |act| {
        let row = |r: usize| row_dot(isa, bytes, l, act, r);
        for_rows(l.rows * l.cols, l.cols, out, row);
    });
}

/// Fills `out[r] = row(r)`, on the decode pool when `weights` is large enough.
pub(crate) fn for_rows(
    weights: usize,
    cols: usize,
    out: &mut [f32],
    row: impl Fn(usize) -> f32 + Sync,
) {
    if weights < PAR_THRESHOLD {
        out.iter_mut().enumerate().for_each(|(r, o)| *o = row(r));
    } else {
        let (min_rows, max_rows) = chunk_rows(cols);
        let rows_per_chunk = super::pool::chunk_for(out.len(), min_rows, max_rows, 1);
        super::pool::for_chunks(out, rows_per_chunk, |c, chunk| {
            let base = c * rows_per_chunk;
            chunk
                .iter_mut()
                .enumerate()
                .for_each(|(i, o)| *o = row(base + i));
        });
    }
}

/// The rows a parallel task takes at least and at most, for rows of `cols` weights.
pub(crate) fn chunk_rows(cols: usize) -> (usize, usize) {
    let cols = cols.max(1);
    (
        (CHUNK_WEIGHTS / cols).max(1),
        (MAX_CHUNK_WEIGHTS / cols).max(1),
    )
}

/// Row `r` of the matrix `bytes` (layout `l`) dotted with `act` (prepared for `l.format`).
pub(crate) fn row_dot(isa: Isa, bytes: &[u8], l: &MatrixLayout, act: Act<'_>, r: usize) -> f32 {
    let Some(group) = l.format.group() else {
        return float_row(isa, bytes, l, act.x, r);
    };
    let q4 = matches!(l.format, WeightFormat::Q4 { .. });
    let row = qrow(bytes, l, r);
    match (act.qx, q4) {
        (Some(qx), true) => q4_row(isa, row, qx),
        (Some(qx), false) => q8_row(isa, row, qx),
        (None, _) => exact_row(row, act.x, group, q4),
    }
}

/// Row `r` of the Q4/Q8 matrix `bytes` (layout `l`): its codes, scales and biases.
pub(crate) fn qrow<'a>(bytes: &'a [u8], l: &MatrixLayout, r: usize) -> QRow<'a> {
    let cols = l.cols;
    let gpr = cols / l.format.group().unwrap_or(cols).max(1);
    let (scales, biases) = scale_bias(bytes, l);
    let sb = 2 * r * gpr..2 * (r + 1) * gpr;
    let codes = if matches!(l.format, WeightFormat::Q4 { .. }) {
        &bytes[r * cols / 2..(r + 1) * cols / 2]
    } else {
        &bytes[r * cols..(r + 1) * cols]
    };
    QRow {
        codes,
        scales: &scales[sb.clone()],
        biases: &biases[sb],
    }
}

/// A quantized row dotted with f32 `x` in f32: `sum_g scale_g (sum q x) + bias_g (sum x)`.
fn exact_row(row: QRow<'_>, x: &[f32], group: usize, q4: bool) -> f32 {
    let code = |j: usize| {
        if q4 {
            let b = row.codes[j / 2];
            if j.is_multiple_of(2) { b & 15 } else { b >> 4 }
        } else {
            row.codes[j]
        }
    };
    let mut acc = 0f32;
    for (k, xs) in x.chunks_exact(group).enumerate() {
        let base = k * group;
        let qx: f32 = xs
            .iter()
            .enumerate()
            .map(|(j, v)| f32::from(code(base + j)) * v)
            .sum();
        let sum: f32 = xs.iter().sum();
        acc += f16_at(row.scales, k) * qx + f16_at(row.biases, k) * sum;
    }
    acc
}

fn float_row(isa: Isa, bytes: &[u8], l: &MatrixLayout, x: &[f32], r: usize) -> f32 {
    let cols = l.cols;
    match l.format {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is not portable only when `Isa::detect` found AVX2 and F16C; FMA is
        // checked here.
        WeightFormat::Bf16 if isa != Isa::Portable && super::simd::available() => unsafe {
            super::simd::bf16_row(&bytes[2 * r * cols..2 * (r + 1) * cols], x)
        },
        WeightFormat::Bf16 => dot_bf16(&bytes[2 * r * cols..2 * (r + 1) * cols], x),
        WeightFormat::F16 => {
            let row = &bytes[2 * r * cols..2 * (r + 1) * cols];
            (0..cols).map(|j| f16_at(row, j) * x[j]).sum()
        }
        _ => dot_f32_bytes(&bytes[4 * r * cols..4 * (r + 1) * cols], x),
    }
}

fn scale_bias<'a>(bytes: &'a [u8], l: &MatrixLayout) -> (&'a [u8], &'a [u8]) {
    (
        &bytes[l.scales_offset..l.biases_offset],
        &bytes[l.biases_offset..l.total],
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, quantize};

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(deq: &[f32], x: &[f32], r: usize) -> f64 {
        let cols = x.len();
        (0..cols)
            .map(|j| f64::from(deq[r * cols + j]) * f64::from(x[j]))
            .sum()
    }

    #[test]
    fn float_formats_match_dequantized_reference() {
        // Big enough to take the parallel path too.
        for (rows, cols) in [(3usize, 64usize), (512, 256), (5, 100)] {
            let w = values(rows * cols, 1);
            let x = values(cols, 2);
            for f in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::F16] {
                let bytes = quantize(&w, rows, cols, f).unwrap();
                let deq = dequantize(&bytes, rows, cols, f).unwrap();
                let l = f.layout(rows, cols).unwrap();
                for isa in Isa::all_available() {
                    let mut out = vec![0f32; rows];
                    matvec_with(&bytes, &l, &x, &mut out, isa);
                    for (r, o) in out.iter().enumerate() {
                        let want = reference(&deq, &x, r);
                        assert!((f64::from(*o) - want).abs() < 1e-4, "{f:?} {isa:?} row {r}");
                    }
                }
            }
        }
    }

    /// Above the parallel threshold, a matvec split over the pool's threads has the bits of the
    /// same matvec on one thread (every row is one task's, whichever thread runs it), in every
    /// format, with rows that leave a partial 8-row block and several tasks.
    #[test]
    fn split_matvecs_equal_one_thread() {
        let (rows, cols) = (1003usize, 512usize);
        assert!(rows * cols >= 4 * PAR_THRESHOLD);
        let (w, x) = (values(rows * cols, 7), values(cols, 8));
        let be = crate::CpuBackend::new();
        for f in [WeightFormat::Q4_64, WeightFormat::Q8_64, WeightFormat::Bf16] {
            let bytes = quantize(&w, rows, cols, f).unwrap();
            let weight = crate::ComputeBackend::load_weight(&be, &bytes, rows, cols, f).unwrap();
            let xt = crate::ComputeBackend::upload(&be, &x).unwrap();
            let run = |threads: usize| {
                let mut y = crate::ComputeBackend::zeros(&be, rows).unwrap();
                crate::with_cpu_threads(threads, || {
                    crate::ComputeBackend::matvec(&be, &weight, &xt, &mut y).unwrap()
                });
                y.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let one = run(1);
            assert!(one.iter().any(|&b| b != 0), "{f:?}");
            assert_eq!(run(usize::MAX), one, "{f:?}");
        }
    }

    /// Int8 activations: every row within the bound the activation rounding allows
    /// (`sum_g d_g / 2 * sum |scale_g q|`, see `int8`), plus f32 summation slack of 1e-5
    /// relative to `sum |w x|`; and the f32-activation reference path within 1e-4.
    #[test]
    fn quantized_formats_are_within_the_activation_rounding_bound() {
        for (rows, cols, group) in [
            (7usize, 64usize, 64u32),
            (300, 256, 64),
            (9, 384, 128),
            (4, 96, 32),
        ] {
            // x with an outlier per group, the case that makes int8 rounding coarse.
            let mut x = values(cols, 3);
            x.iter_mut().step_by(37).for_each(|v| *v *= 8.0);
            let w = values(rows * cols, 4);
            for f in [WeightFormat::Q4 { group }, WeightFormat::Q8 { group }] {
                let bytes = quantize(&w, rows, cols, f).unwrap();
                let deq = dequantize(&bytes, rows, cols, f).unwrap();
                let l = f.layout(rows, cols).unwrap();
                let mut qx = QuantizedX::default();
                prepare(f, &x, &mut qx);
                let (_, biases) = scale_bias(&bytes, &l);
                let g = group as usize;
                for isa in Isa::all_available() {
                    let mut out = vec![0f32; rows];
                    matvec_with(&bytes, &l, &x, &mut out, isa);
                    for (r, o) in out.iter().enumerate() {
                        // scale * q = w - bias, per element.
                        let scaled: Vec<f32> = (0..cols)
                            .map(|j| deq[r * cols + j] - f16_at(biases, r * (cols / g) + j / g))
                            .collect();
                        let abs: f64 = (0..cols)
                            .map(|j| f64::from((deq[r * cols + j] * x[j]).abs()))
                            .sum();
                        let bound =
                            super::super::int8::error_bound(&scaled, &qx) + 1e-5 * abs + 1e-6;
                        let err = (f64::from(*o) - reference(&deq, &x, r)).abs();
                        assert!(
                            err <= bound,
                            "{f:?} {isa:?} row {r}: error {err} > bound {bound}"
                        );
                    }
                }
                let mut exact = vec![0f32; rows];
                for_rows(0, cols, &mut exact, |r| {
                    row_dot(Isa::Portable, &bytes, &l, Act { x: &x, qx: None }, r)
                });
                for (r, o) in exact.iter().enumerate() {
                    assert!(
                        (f64::from(*o) - reference(&deq, &x, r)).abs() < 1e-4,
                        "{f:?} exact row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_kernels_are_bit_exact_with_portable() {
        for (rows, cols, group) in [
            (33usize, 192usize, 64u32),
            (3, 256, 128),
            (5, 64, 32),
            (2, 2048, 64),
            (3, 704, 64),
            (2, 1216, 32),
        ] {
            let w = values(rows * cols, 5);
            let x = values(cols, 6);
            for f in [WeightFormat::Q4 { group }, WeightFormat::Q8 { group }] {
                let bytes = quantize(&w, rows, cols, f).unwrap();
                let l = f.layout(rows, cols).unwrap();
                let mut want = vec![0f32; rows];
                matvec_with(&bytes, &l, &x, &mut want, Isa::Portable);
                for isa in Isa::all_available() {
                    let mut got = vec![0f32; rows];
                    matvec_with(&bytes, &l, &x, &mut got, isa);
                    let (g, w): (Vec<u32>, Vec<u32>) = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a.to_bits(), b.to_bits()))
                        .unzip();
                    assert_eq!(g, w, "{f:?} {isa:?} [{rows} x {cols}]");
                }
            }
        }
    }

    /// Extreme codes (all 255 / all 15) against activations at +-127: the products that would
    /// saturate a naive `maddubs` of Q8 codes. Scale 1, bias 0, x = +-1 in alternating groups.
    #[test]
    fn extreme_codes_do_not_saturate() {
        let (rows, cols) = (2usize, 256usize);
        let x: Vec<f32> = (0..cols)
            .map(|j| if (j / 64) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        for (f, code_byte, code) in [
            (WeightFormat::Q8_64, 255u8, 255.0f32),
            (WeightFormat::Q4_64, 0xff, 15.0),
        ] {
            let l = f.layout(rows, cols).unwrap();
            let mut bytes = vec![0u8; l.total];
            bytes[..l.data_len].fill(code_byte);
            let one = half::f16::from_f32(1.0).to_le_bytes();
            for s in bytes[l.scales_offset..l.biases_offset]
                .chunks_exact_mut(2)
                .take(rows * cols / 64)
            {
                s.copy_from_slice(&one);
            }
            // Groups alternate +1 and -1: each row sums to 0; make the last group +1 too.
            let mut x = x.clone();
            x[192..].iter_mut().for_each(|v| *v = 1.0);
            let want = code * 64.0 * 2.0;
            for isa in Isa::all_available() {
                let mut out = vec![0f32; rows];
                matvec_with(&bytes, &l, &x, &mut out, isa);
                assert_eq!(out, vec![want; rows], "{f:?} {isa:?}");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_the_group_are_refused() {
        assert!(WeightFormat::Q4_64.layout(4, 96).is_err());
        assert!(WeightFormat::Q8 { group: 24 }.layout(4, 48).is_err());
    }
}
