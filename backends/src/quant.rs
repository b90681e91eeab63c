//! Weight formats: float formats and MLX-style affine group-wise quantization.
//!
//! # Byte layout of one `[rows x cols]` matrix
//!
//! Float formats (`F32`, `Bf16`, `F16`) are plain row-major little-endian arrays.
//!
//! Quantized formats (`Q8 { group }`, `Q4 { group }`) store three sections, each starting at a
//! 64-byte aligned offset from the start of the matrix (see [`MatrixLayout`]):
//!
//! 1. **data**: row-major codes. `Q8`: one `u8` per weight. `Q4`: two weights per byte, the
//!    even column in the low nibble (this equals MLX's packing of 8 codes per little-endian
//!    `u32`, first code in the lowest bits).
//! 2. **scales**: `f16` little-endian, `[rows][cols / group]`.
//! 3. **biases**: `f16` little-endian, `[rows][cols / group]`.
//!
//! A weight is `w = q * scale + bias` (`q` unsigned: 0..=255 or 0..=15), with `scale` and `bias`
//! of the weight's row and group. `cols` must be a multiple of `group`; `group` a multiple of 16.
//!
//! ```
//! use flashmoe_backends::quant::{WeightFormat, quantize, dequantize};
//! let w: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
//! let q4 = WeightFormat::Q4 { group: 64 };
//! let bytes = quantize(&w, 2, 64, q4).unwrap();
//! assert_eq!(bytes.len(), q4.byte_size(2, 64).unwrap());
//! let back = dequantize(&bytes, 2, 64, q4).unwrap();
//! assert!(w.iter().zip(&back).all(|(a, b)| (a - b).abs() < 0.08));
//! ```

use crate::error::{BackendError, Result};
use half::{bf16, f16};

/// How a weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// 8-bit affine codes, per-group f16 scale and bias.
    Q8 {
        /// Weights per group along a row.
        group: u32,
    },
    /// 4-bit affine codes, per-group f16 scale and bias.
    Q4 {
        /// Weights per group along a row.
        group: u32,
    },
}

/// Alignment of every section of a quantized matrix (and of tensors inside expert records).
pub const SECTION_ALIGN: usize = 64;

/// Rounds `n` up to a multiple of [`SECTION_ALIGN`].
pub const fn align_up(n: usize) -> usize {
    n.div_ceil(SECTION_ALIGN) * SECTION_ALIGN
}

/// Where each section of one matrix lies, in bytes from the matrix start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatrixLayout {
    /// The format.
    pub format: WeightFormat,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// Bytes of the data section (codes, or the floats for float formats).
    pub data_len: usize,
    /// Offset of the f16 scales (quantized formats; equals `data_len` rounded up otherwise).
    pub scales_offset: usize,
    /// Offset of the f16 biases (quantized formats).
    pub biases_offset: usize,
    /// Total bytes of the matrix.
    pub total: usize,
}

impl WeightFormat {
    /// MLX's default 4-bit format (group 64).
    pub const Q4_64: WeightFormat = WeightFormat::Q4 { group: 64 };
    /// 8-bit with group 64.
    pub const Q8_64: WeightFormat = WeightFormat::Q8 { group: 64 };

    /// Bits per stored weight code (not counting scales and biases).
    pub fn bits(self) -> u32 {
        match self {
            WeightFormat::F32 => 32,
            WeightFormat::Bf16 | WeightFormat::F16 => 16,
            WeightFormat::Q8 { .. } => 8,
            WeightFormat::Q4 { .. } => 4,
        }
    }

    /// The group size of a quantized format, `None` for floats.
    pub fn group(self) -> Option<usize> {
        match self {
            WeightFormat::Q8 { group } | WeightFormat::Q4 { group } => Some(group as usize),
            _ => None,
        }
    }

    /// Computes the byte layout of a `[rows x cols]` matrix, checking the dims fit the format.
    pub fn layout(self, rows: usize, cols: usize) -> Result<MatrixLayout> {
        let bad = |reason| BackendError::BadDims {
            format: self,
            rows,
            cols,
            reason,
        };
        let elems = rows.checked_mul(cols).ok_or(bad("rows * cols overflows"))?;
        let data_len = elems
            .checked_mul(self.bits() as usize)
            .ok_or(bad("byte size overflows"))?
            / 8;
        match self.group() {
            None => Ok(MatrixLayout {
                format: self,
                rows,
                cols,
                data_len,
                scales_offset: data_len,
                biases_offset: data_len,
                total: data_len,
            }),
            Some(group) => {
                if group == 0 || group % 16 != 0 {
                    return Err(bad("group size must be a positive multiple of 16"));
                }
                if !cols.is_multiple_of(group) {
                    return Err(bad("columns must be a multiple of the group size"));
                }
                let scales_len = rows * (cols / group) * 2;
                let scales_offset = align_up(data_len);
                let biases_offset = scales_offset + align_up(scales_len);
                Ok(MatrixLayout {
                    format: self,
                    rows,
                    cols,
                    data_len,
                    scales_offset,
                    biases_offset,
                    total: biases_offset + scales_len,
                })
            }
        }
    }

    /// Bytes needed by a `[rows x cols]` matrix in this format.
    pub fn byte_size(self, rows: usize, cols: usize) -> Result<usize> {
        Ok(self.layout(rows, cols)?.total)
    }
}

impl MatrixLayout {
    /// Checks that `bytes` has exactly the size of this matrix.
    pub fn check(&self, op: &'static str, bytes: &[u8]) -> Result<()> {
        if bytes.len() == self.total {
            Ok(())
        } else {
            Err(BackendError::WeightBytes {
                op,
                rows: self.rows,
                cols: self.cols,
                format: self.format,
                expected: self.total,
                got: bytes.len(),
            })
        }
    }
}

/// Reads the `i`-th little-endian f16 of `bytes` as f32.
#[inline]
pub(crate) fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

/// Reads the `i`-th little-endian bf16 of `bytes` as f32.
#[inline]
pub(crate) fn bf16_at(bytes: &[u8], i: usize) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])) << 16)
}

/// Encodes a row-major `[rows x cols]` f32 matrix into `format` (rounding to nearest).
pub fn quantize(w: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<Vec<u8>> {
    let layout = format.layout(rows, cols)?;
    crate::error::check_len("quantize", "weights", rows * cols, w.len())?;
    let mut out = vec![0u8; layout.total];
    match format {
        WeightFormat::F32 => {
            for (d, v) in out.chunks_exact_mut(4).zip(w) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        WeightFormat::Bf16 => {
            for (d, v) in out.chunks_exact_mut(2).zip(w) {
                d.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        WeightFormat::F16 => {
            for (d, v) in out.chunks_exact_mut(2).zip(w) {
                d.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        WeightFormat::Q8 { group } | WeightFormat::Q4 { group } => {
            let group = group as usize;
            let qmax = if format.bits() == 8 { 255.0 } else { 15.0 };
            let groups_per_row = cols / group;
            let (data, rest) = out.split_at_mut(layout.scales_offset);
            let (scales, biases) = rest.split_at_mut(layout.biases_offset - layout.scales_offset);
            for (g, chunk) in w.chunks_exact(group).enumerate() {
                let (lo, hi) = chunk
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                        (a.min(v), b.max(v))
                    });
                // Store the rounded scale and bias, then quantize against the rounded values.
                let scale = f16::from_f32((hi - lo) / qmax);
                let bias = f16::from_f32(lo);
                scales[2 * g..2 * g + 2].copy_from_slice(&scale.to_le_bytes());
                biases[2 * g..2 * g + 2].copy_from_slice(&bias.to_le_bytes());
                let (s, b) = (scale.to_f32(), bias.to_f32());
                let base = (g / groups_per_row) * cols + (g % groups_per_row) * group;
                for (j, &v) in chunk.iter().enumerate() {
                    let q = if s > 0.0 {
                        ((v - b) / s).round().clamp(0.0, qmax) as u8
                    } else {
                        0
                    };
                    let idx = base + j;
                    if format.bits() == 8 {
                        data[idx] = q;
                    } else {
                        data[idx / 2] |= q << (4 * (idx % 2));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Decodes one row of a matrix in `layout` into `out` (`out.len() == cols`).
pub fn dequantize_row(
    bytes: &[u8],
    layout: &MatrixLayout,
    row: usize,
    out: &mut [f32],
) -> Result<()> {
    layout.check("dequantize_row", bytes)?;
    crate::error::check_len("dequantize_row", "out", layout.cols, out.len())?;
    if row >= layout.rows {
        return Err(BackendError::OutOfRange {
            op: "dequantize_row",
            what: "row",
            index: row,
            limit: layout.rows,
        });
    }
    let cols = layout.cols;
    let start = row * cols;
    match layout.format {
        WeightFormat::F32 => {
            for (j, o) in out.iter_mut().enumerate() {
                let i = 4 * (start + j);
                *o = f32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
            }
        }
        WeightFormat::Bf16 => out
            .iter_mut()
            .enumerate()
            .for_each(|(j, o)| *o = bf16_at(bytes, start + j)),
        WeightFormat::F16 => out
            .iter_mut()
            .enumerate()
            .for_each(|(j, o)| *o = f16_at(bytes, start + j)),
        WeightFormat::Q8 { group } | WeightFormat::Q4 { group } => {
            let group = group as usize;
            let scales = &bytes[layout.scales_offset..layout.biases_offset];
            let biases = &bytes[layout.biases_offset..];
            let four = layout.format.bits() == 4;
            for (j, o) in out.iter_mut().enumerate() {
                let idx = start + j;
                let q = if four {
                    (bytes[idx / 2] >> (4 * (idx % 2))) & 15
                } else {
                    bytes[idx]
                };
                let g = idx / group;
                *o = f32::from(q) * f16_at(scales, g) + f16_at(biases, g);
            }
        }
    }
    Ok(())
}

/// Decodes a whole `[rows x cols]` matrix stored in `format` to row-major f32.
pub fn dequantize(
    bytes: &[u8],
    rows: usize,
    cols: usize,
    format: WeightFormat,
) -> Result<Vec<f32>> {
    let layout = format.layout(rows, cols)?;
    layout.check("dequantize", bytes)?;
    let mut out = vec![0f32; rows * cols];
    for (r, row) in out.chunks_exact_mut(cols.max(1)).enumerate().take(rows) {
        dequantize_row(bytes, &layout, r, row)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    #[test]
    fn sizes_follow_dims() {
        assert_eq!(WeightFormat::F32.byte_size(3, 5).unwrap(), 60);
        assert_eq!(WeightFormat::Bf16.byte_size(3, 5).unwrap(), 30);
        // Q4 128x256 group 64: data 16384, scales 128*4*2 = 1024 at 16384, biases at 17408.
        let l = WeightFormat::Q4_64.layout(128, 256).unwrap();
        assert_eq!(
            (l.data_len, l.scales_offset, l.biases_offset, l.total),
            (16384, 16384, 17408, 18432)
        );
        let l = WeightFormat::Q8_64.layout(3, 64).unwrap();
        assert_eq!(
            (l.data_len, l.scales_offset, l.biases_offset, l.total),
            (192, 192, 256, 262)
        );
        assert!(WeightFormat::Q4_64.layout(2, 100).is_err());
        assert!(WeightFormat::Q4 { group: 10 }.layout(2, 100).is_err());
    }

    #[test]
    fn round_trip_error_is_bounded_by_half_a_step() {
        let (rows, cols) = (4, 128);
        let w = sample(rows * cols);
        for (format, qmax) in [(WeightFormat::Q8_64, 255.0), (WeightFormat::Q4_64, 15.0)] {
            let back = dequantize(
                &quantize(&w, rows, cols, format).unwrap(),
                rows,
                cols,
                format,
            )
            .unwrap();
            for (g, (a, b)) in w.chunks(64).zip(back.chunks(64)).enumerate() {
                let range = a.iter().cloned().fold(f32::MIN, f32::max)
                    - a.iter().cloned().fold(f32::MAX, f32::min);
                let tol = 0.5 * range / qmax * 1.01 + 1e-3 * range;
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= tol,
                        "{format:?} group {g}: {x} vs {y}, tol {tol}"
                    );
                }
            }
        }
        let back = dequantize(
            &quantize(&w, rows, cols, WeightFormat::F32).unwrap(),
            rows,
            cols,
            WeightFormat::F32,
        );
        assert_eq!(back.unwrap(), w);
    }

    #[test]
    fn q4_packs_like_mlx() {
        // Row of 64 weights 0..15 repeating: codes equal the values when scale 1 bias 0.
        let w: Vec<f32> = (0..64).map(|i| (i % 16) as f32).collect();
        let bytes = quantize(&w, 1, 64, WeightFormat::Q4_64).unwrap();
        assert_eq!(bytes[0], 0x10); // column 0 low nibble = 0, column 1 high nibble = 1
        assert_eq!(bytes[1], 0x32);
        assert_eq!(f16_at(&bytes[64..], 0), 1.0);
        assert_eq!(f16_at(&bytes[128..], 0), 0.0);
    }

    #[test]
    fn wrong_byte_count_is_rejected() {
        let err = dequantize(&[0u8; 10], 2, 64, WeightFormat::Q8_64).unwrap_err();
        assert!(err.to_string().contains("needs"), "{err}");
    }
}
