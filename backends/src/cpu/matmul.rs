//! CPU matrix products over several activation vectors (a prompt chunk's tokens), and the
//! row-block driver the matvec and the routed experts share.
//!
//! A `[rows x cols]` weight times `n` vectors (`x` is `[n][cols]`, `out` is `[n][rows]`):
//! - **Q4/Q8 with int8 activations**: each vector is quantized once, then blocks of
//!   [`ROWS`] weight rows are dotted with every vector while they are in L1 by the multi-row
//!   kernels of [`super::block`] (scales converted and 4-bit codes unpacked once per block), so
//!   each weight byte is read from memory once per chunk, not once per token. Every (row, token) value has the bits the matvec gives
//!   that token.
//! - **Float formats and f32 activations**: each weight row is dotted with every vector while
//!   it is in L1 (the matvec's row kernel, so again the matvec's bits), one read of the
//!   weights from memory per chunk.
//!
//! Work is split over the decode pool by blocks of rows (as the matvec), and results are gathered
//! `[row][token]` per block, then laid out `[token][row]`.

use super::block::{ROWS, rows_block};
use super::int8::{Isa, QRow, QuantizedX};
use super::lanes;
use super::matvec::{Act, PAR_THRESHOLD, chunk_rows, prepare, row_dot};
use crate::quant::{MatrixLayout, WeightFormat};
use std::cell::RefCell;

thread_local! {
    /// The calling thread's scratch, reused across calls.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A matmul's buffers: the quantized token rows, the same interleaved for the lanes kernel,
/// and the `[row][token]` results.
#[derive(Default)]
struct Scratch {
    qxs: Vec<QuantizedX>,
    blocks: Vec<lanes::TokenBlock>,
    tmp: Vec<f32>,
}

/// `out[t] = W x[t]` for `t < n`. The caller has checked `bytes.len() == l.total`,
/// `x.len() >= n * l.cols` and `out.len() >= n * l.rows`. `int8`: quantize the activations of
/// quantized formats (as [`super::matvec::matvec`]).
pub(crate) fn matmul(
    bytes: &[u8],
    l: &MatrixLayout,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    int8: bool,
) {
    matmul_with(Isa::detect(), bytes, l, x, n, out, int8);
}

/// [`matmul`] with the kernels of `isa` (tests compare them).
pub(crate) fn matmul_with(
    isa: Isa,
    bytes: &[u8],
    l: &MatrixLayout,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    int8: bool,
) {
    let (rows, cols) = (l.rows, l.cols);
    if n == 0 || rows == 0 {
        return;
    }
    if n == 1 {
        super::matvec::matvec_isa(isa, bytes, l, &x[..cols], &mut out[..rows], int8);
        return;
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => run(isa, bytes, l, x, n, out, int8, &mut s),
        // Re-entered on this thread (a nested parallel job): fresh buffers.
        Err(_) => run(isa, bytes, l, x, n, out, int8, &mut Scratch::default()),
    });
}

#[allow(clippy::too_many_arguments)]
fn run(
    isa: Isa,
    bytes: &[u8],
    l: &MatrixLayout,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    int8: bool,
    scratch: &mut Scratch,
) {
    let Scratch { qxs, blocks, tmp } = scratch;
    let (rows, cols) = (l.rows, l.cols);
    let weights = rows * cols;
    tmp.resize(rows * n, 0.0);
    let quantized = int8 && l.format.group().is_some();
    if quantized {
        qxs.resize_with(n, QuantizedX::default);
        // Each token once, on the pool when there are enough of them.
        let par = n * cols >= PAR_THRESHOLD / 8;
        let quantize = |(xi, qx): (&[f32], &mut QuantizedX)| {
            prepare(l.format, xi, qx);
        };
        if par {
            super::pool::for_chunks(&mut qxs[..n], 1, |i, qx| {
                quantize((&x[i * cols..(i + 1) * cols], &mut qx[0]))
            });
        } else {
            x.chunks_exact(cols).zip(qxs.iter_mut()).for_each(quantize);
        }
        let qxs = &qxs[..n];
        let q4 = matches!(l.format, WeightFormat::Q4 { .. });
        let group = qxs[0].group;
        #[cfg(target_arch = "x86_64")]
        if let Some(width) = lanes::width(isa, q4, group, n) {
            blocks.resize_with(n.div_ceil(width), Default::default);
            let fill =
                |(b, chunk): (&mut lanes::TokenBlock, &[QuantizedX])| b.fill(chunk, q4, width);
            if par {
                super::pool::for_chunks(&mut blocks[..n.div_ceil(width)], 1, |i, b| {
                    fill((&mut b[0], &qxs[i * width..((i + 1) * width).min(n)]))
                });
            } else {
                blocks.iter_mut().zip(qxs.chunks(width)).for_each(fill);
            }
            let (blocks, groups) = (&blocks[..n.div_ceil(width)], cols / group);
            for_row_blocks(weights * n, cols, n, tmp, |r0, o| {
                let valid = o.len() / n;
                let rows = block_rows(bytes, l, r0, valid);
                super::block::rows_block_lanes(q4, &rows, blocks, (n, groups, group), valid, o)
            });
            transpose(tmp, rows, n, &mut out[..n * rows]);
            return;
        }
        for_row_blocks(weights * n, cols, n, tmp, |r0, o| {
            quant_rows(isa, bytes, l, qxs, r0, o)
        });
    } else {
        for_row_blocks(weights * n, cols, n, tmp, |r0, o| {
            for (i, ro) in o.chunks_exact_mut(n).enumerate() {
                float_row_tokens(isa, bytes, l, x, r0 + i, ro);
            }
        });
    }
    transpose(tmp, rows, n, &mut out[..n * rows]);
}

/// Tokens per task of [`transpose`]: its write streams stay in L1.
const TRANSPOSE_TOKENS: usize = 16;

/// `out[t * rows + r] = tmp[r * n + t]`, on the decode pool by blocks of tokens (each reads
/// tiles of 8 rows x [`TRANSPOSE_TOKENS`] tokens: short runs of `tmp`, 8 values side by
/// side in `out`).
fn transpose(tmp: &[f32], rows: usize, n: usize, out: &mut [f32]) {
    let block = |(b, o): (usize, &mut [f32])| {
        let t0 = b * TRANSPOSE_TOKENS;
        let tn = o.len() / rows;
        // Tiles of 8 rows: each token's 8 values are stored side by side.
        for r0 in (0..rows).step_by(8) {
            let r1 = (r0 + 8).min(rows);
            for t in 0..tn {
                let dst = &mut o[t * rows + r0..t * rows + r1];
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = tmp[(r0 + i) * n + t0 + t];
                }
            }
        }
    };
    if rows * n < PAR_THRESHOLD / 8 {
        out.chunks_mut(TRANSPOSE_TOKENS * rows)
            .enumerate()
            .for_each(block);
    } else {
        super::pool::for_chunks(out, TRANSPOSE_TOKENS * rows, |b, o| block((b, o)));
    }
}

/// Row `r` of a float matrix (or a quantized one with f32 activations) dotted with each of
/// the `ro.len()` vectors of `x`, each with the matvec's row kernel bits: bf16 on AVX2
/// converts the row once for 4 vectors at a time; otherwise the row kernel per vector, the row
/// staying in L1.
fn float_row_tokens(isa: Isa, bytes: &[u8], l: &MatrixLayout, x: &[f32], r: usize, ro: &mut [f32]) {
    let cols = l.cols;
    let xt = |t: usize| &x[t * cols..(t + 1) * cols];
    #[cfg(target_arch = "x86_64")]
    if l.format == WeightFormat::Bf16 && isa != Isa::Portable && super::simd::available() {
        let row = &bytes[2 * r * cols..2 * (r + 1) * cols];
        let mut t0 = 0;
        while t0 < ro.len() {
            let tn = (ro.len() - t0).min(4);
            let o = &mut ro[t0..t0 + tn];
            // SAFETY: `isa` is not portable and `simd::available()` checked AVX2, FMA and F16C.
            unsafe {
                match tn {
                    4 => o.copy_from_slice(&super::simd::bf16_row_multi(
                        row,
                        [xt(t0), xt(t0 + 1), xt(t0 + 2), xt(t0 + 3)],
                    )),
                    3 => o.copy_from_slice(&super::simd::bf16_row_multi(
                        row,
                        [xt(t0), xt(t0 + 1), xt(t0 + 2)],
                    )),
                    2 => o.copy_from_slice(&super::simd::bf16_row_multi(row, [xt(t0), xt(t0 + 1)])),
                    _ => o.copy_from_slice(&super::simd::bf16_row_multi(row, [xt(t0)])),
                }
            }
            t0 += tn;
        }
        return;
    }
    for (t, v) in ro.iter_mut().enumerate() {
        let act = Act { x: xt(t), qx: None };
        *v = row_dot(isa, bytes, l, act, r);
    }
}

/// Fills `out` (`[row][token]`, `n` values per row) by blocks: `block(r0, o)` writes rows
/// `r0..r0 + o.len() / n` (at most [`ROWS`]) into `o`. On the decode pool when the work
/// (`work` weight-vector products) is large enough, in chunks of whole blocks.
pub(crate) fn for_row_blocks(
    work: usize,
    cols: usize,
    n: usize,
    out: &mut [f32],
    block: impl Fn(usize, &mut [f32]) + Sync,
) {
    let n = n.max(1);
    let run_chunk = |first_row: usize, chunk: &mut [f32]| {
        for (b, o) in chunk.chunks_mut(ROWS * n).enumerate() {
            block(first_row + b * ROWS, o);
        }
    };
    if work < PAR_THRESHOLD {
        run_chunk(0, out);
    } else {
        // A row's work is `cols * n` products.
        let (min_rows, max_rows) = chunk_rows(cols * n);
        let rows_per_chunk = super::pool::chunk_for(out.len() / n, min_rows, max_rows, ROWS);
        super::pool::for_chunks(out, rows_per_chunk * n, |c, chunk| {
            run_chunk(c * rows_per_chunk, chunk)
        });
    }
}

/// Rows `r0..r0 + o.len() / qxs.len()` (at most [`ROWS`]) of the Q4/Q8 matrix `bytes` dotted
/// with every vector of `qxs` (quantized for it), into `o` as `[row][token]`.
pub(crate) fn quant_rows(
    isa: Isa,
    bytes: &[u8],
    l: &MatrixLayout,
    qxs: &[QuantizedX],
    r0: usize,
    o: &mut [f32],
) {
    let valid = o.len() / qxs.len().max(1);
    if valid == 0 {
        return;
    }
    let q4 = matches!(l.format, WeightFormat::Q4 { .. });
    rows_block(isa, q4, &block_rows(bytes, l, r0, valid), qxs, valid, o);
}

/// Rows `r0..r0 + valid` (`valid >= 1`) of a Q4/Q8 matrix as one block of [`ROWS`]: a short
/// last block repeats its last row (those results are not stored).
fn block_rows<'a>(bytes: &'a [u8], l: &MatrixLayout, r0: usize, valid: usize) -> [QRow<'a>; ROWS] {
    // What `qrow` slices, its divisions and offsets worked out once for the block.
    let cols = l.cols;
    let sb_len = 2 * (cols / l.format.group().unwrap_or(cols).max(1));
    let code_len = if matches!(l.format, WeightFormat::Q4 { .. }) {
        cols / 2
    } else {
        cols
    };
    let codes = &bytes[..l.scales_offset];
    let scales = &bytes[l.scales_offset..l.biases_offset];
    let biases = &bytes[l.biases_offset..l.total];
    std::array::from_fn(|i| {
        let r = r0 + i.min(valid - 1);
        QRow {
            codes: &codes[r * code_len..(r + 1) * code_len],
            scales: &scales[r * sb_len..(r + 1) * sb_len],
            biases: &biases[r * sb_len..(r + 1) * sb_len],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values::values;
    use crate::quant::quantize;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Every (row, token) of the blocked matmul has the bits of the single-row matvec kernel
    /// on that token, for each SIMD variant the CPU has (and each against the portable one),
    /// at token counts that fill and leave partial token blocks and row counts that leave a
    /// partial row block, with groups crossing the 8-group combine blocks; int8 and f32
    /// activations; and large enough to take the parallel path.
    #[test]
    fn matmul_rows_are_bit_exact_with_the_matvec_kernel() {
        let formats = [
            WeightFormat::Q4_64,
            WeightFormat::Q8_64,
            WeightFormat::Q4 { group: 128 },
            WeightFormat::Q8 { group: 32 },
            WeightFormat::Bf16,
            WeightFormat::F16,
            WeightFormat::F32,
        ];
        for (rows, cols) in [(7usize, 768usize), (13, 1152), (5, 128), (301, 2048)] {
            for f in formats {
                if f.layout(rows, cols).is_err() {
                    continue;
                }
                let w = values(rows * cols, rows as u64);
                let bytes = quantize(&w, rows, cols, f).unwrap();
                let l = f.layout(rows, cols).unwrap();
                let ns: &[usize] = if rows > 100 {
                    &[1, 6, 9]
                } else {
                    &[1, 2, 3, 5, 17]
                };
                for &n in ns {
                    let mut x = values(n * cols, 77 + n as u64);
                    x.iter_mut().step_by(41).for_each(|v| *v *= 9.0);
                    for int8 in [true, false] {
                        let single = |isa: Isa| {
                            let mut v = vec![0f32; n * rows];
                            for t in 0..n {
                                super::super::matvec::rows_with(
                                    isa,
                                    &bytes,
                                    &l,
                                    &x[t * cols..(t + 1) * cols],
                                    &mut v[t * rows..(t + 1) * rows],
                                    int8,
                                );
                            }
                            v
                        };
                        let portable = single(Isa::Portable);
                        for isa in Isa::all_available() {
                            let ctx = format!("{f:?} {isa:?} [{rows}x{cols}] n={n} int8={int8}");
                            // The matvec's single-row kernel of this ISA, token by token.
                            let want = single(isa);
                            if int8 && f.group().is_some() {
                                // Integer kernels: every ISA has the portable bits.
                                assert_eq!(bits(&want), bits(&portable), "{ctx}: rows");
                            }
                            let mut got = vec![7f32; n * rows + 3];
                            matmul_with(isa, &bytes, &l, &x, n, &mut got, int8);
                            assert_eq!(bits(&got[..n * rows]), bits(&want), "{ctx}");
                            assert_eq!(&got[n * rows..], &[7.0; 3], "{ctx}: wrote past n rows");
                        }
                    }
                }
            }
        }
    }

    /// The block kernel, on one and on several vectors (the unpacked path), gives each pair's
    /// single-row value (a direct check of `rows_block`, independent of the driver).
    #[test]
    fn block_kernel_matches_single_rows() {
        let cols = 640usize; // 10 groups of 64: one full block of 8 lanes and 2 more
        for f in [
            WeightFormat::Q4_64,
            WeightFormat::Q8_64,
            WeightFormat::Q8 { group: 32 },
        ] {
            let bytes = quantize(&values(ROWS * cols, 3), ROWS, cols, f).unwrap();
            let l = f.layout(ROWS, cols).unwrap();
            let qxs: Vec<QuantizedX> = (0..4)
                .map(|t| {
                    let mut q = QuantizedX::default();
                    prepare(f, &values(cols, 10 + t), &mut q);
                    q
                })
                .collect();
            for isa in Isa::all_available() {
                for (nt, valid) in [(1usize, ROWS), (4, ROWS), (4, 5), (1, 3)] {
                    let mut o = vec![0f32; valid * nt];
                    quant_rows(isa, &bytes, &l, &qxs[..nt], 0, &mut o);
                    for r in 0..valid {
                        for (t, qx) in qxs[..nt].iter().enumerate() {
                            let act = Act {
                                x: &[],
                                qx: Some(qx),
                            };
                            let want = row_dot(Isa::Portable, &bytes, &l, act, r);
                            let got = o[r * nt + t];
                            assert_eq!(got.to_bits(), want.to_bits(), "{f:?} {isa:?} n={nt}");
                        }
                    }
                }
            }
        }
    }
}
