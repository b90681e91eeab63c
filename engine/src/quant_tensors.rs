//! Quantized matrices stored as safetensors tensors, MLX's way: a matrix `X` is three tensors
//! `X.weight` (`U32` codes, `[.., rows, cols * bits / 32]`, 32 / bits codes per word, the first in
//! the lowest bits), `X.scales` and `X.biases` (`[.., rows, cols / group]`), with
//! `w = code * scale + bias` per row and group of `group` columns.
//!
//! The bits and group of a matrix follow from its shapes and its `cols`; the codes are byte for
//! byte those of [`flashmoe_backends::quant`]'s `Q4` / `Q8` data section (so re-laying them never
//! re-quantizes). Scales and biases are `f16` there: an MLX checkpoint's bf16 values convert
//! exactly wherever |v| >= 2^-17 (bf16's 8 significant bits fit f16's, down into its
//! subnormals). A value below that (a group of near-zero weights, such as the embedding row of
//! a token never trained) is rounded to the nearest f16, an absolute change of at most 2^-25
//! (half of f16's smallest subnormal), so each weight of its group moves by at most
//! 2^bits * 2^-25; [`to_f16`] counts those in a [`RoundLog`] that the packer reports. Values
//! f16 cannot hold at all (|v| > 65504, NaN, infinite) are refused.
//!
//! A packed model's `dense.safetensors` holds its quantized non-expert weights this way (scales
//! and biases in `F16`), and [`matrix`] reads either kind of dense weight for the model loader.

use crate::error::{BackendContext, EngineError, Result};
use crate::weights::{Checkpoint, TensorMeta};
use flashmoe_backends::quant::{MatrixLayout, WeightFormat};
use half::f16;
use safetensors::Dtype;

/// The codes, scales and biases of one quantized matrix (or a stack of them): their header
/// entries; [`QuantParts::write`] reads the bytes it needs.
#[derive(Clone, Copy, Debug)]
pub struct QuantParts<'a> {
    /// `X.weight`.
    pub codes: TensorMeta<'a>,
    /// `X.scales`.
    pub scales: TensorMeta<'a>,
    /// `X.biases`.
    pub biases: TensorMeta<'a>,
}

/// `X` of a tensor name `X.weight`.
pub fn module_of(name: &str) -> &str {
    name.strip_suffix(".weight").unwrap_or(name)
}

/// Whether `X.weight` has scales beside it (is stored quantized; no I/O).
pub fn is_quantized(ckpt: &Checkpoint, weight_name: &str) -> bool {
    ckpt.contains(&format!("{}.scales", module_of(weight_name)))
}

/// The three tensors of the quantized module `module` (`X`, without `.weight`; no I/O).
pub fn parts<'a>(ckpt: &'a Checkpoint, module: &str) -> Result<QuantParts<'a>> {
    let codes = ckpt.meta(&format!("{module}.weight"))?;
    if codes.dtype != Dtype::U32 {
        return Err(bad(
            &codes,
            &format!("{module}.weight"),
            format!(
                "quantized codes must be U32 (MLX packing), found {:?}",
                codes.dtype
            ),
        ));
    }
    Ok(QuantParts {
        codes,
        scales: ckpt.meta(&format!("{module}.scales"))?,
        biases: ckpt.meta(&format!("{module}.biases"))?,
    })
}

fn bad(t: &TensorMeta<'_>, name: &str, reason: String) -> EngineError {
    EngineError::QuantTensor {
        file: t.file.to_path_buf(),
        name: name.into(),
        reason,
    }
}

impl QuantParts<'_> {
    /// The format of each `[rows x cols]` matrix of a stack of `lead` matrices (`lead` empty for
    /// one matrix), from the shapes; `module` names the tensors in errors.
    pub fn format(
        &self,
        module: &str,
        lead: &[usize],
        rows: usize,
        cols: usize,
    ) -> Result<WeightFormat> {
        let cshape = self.codes.shape;
        let n = lead.len();
        let wname = format!("{module}.weight");
        if cshape.len() != n + 2 || cshape[..n] != *lead || cshape[n] != rows {
            return Err(bad(
                &self.codes,
                &wname,
                format!(
                    "shape {cshape:?}, expected {:?} followed by `cols * bits / 32` code words \
                     ({cols} columns)",
                    [lead, &[rows]].concat()
                ),
            ));
        }
        let words = cshape[n + 1];
        let bits = match words * 32 {
            b if b == cols * 4 => 4,
            b if b == cols * 8 => 8,
            _ => {
                return Err(bad(
                    &self.codes,
                    &wname,
                    format!(
                        "{words} code words per row for {cols} columns is not 4- or 8-bit \
                         (only those are supported)"
                    ),
                ));
            }
        };
        let sname = format!("{module}.scales");
        let groups = match self.scales.shape {
            [l @ .., r, g] if l == lead && *r == rows && *g > 0 && cols.is_multiple_of(*g) => *g,
            got => {
                return Err(bad(
                    &self.scales,
                    &sname,
                    format!(
                        "shape {got:?} does not give whole groups of a [{rows} x {cols}] matrix \
                         (expected {:?} with `cols / groups` an integer)",
                        [lead, &[rows]].concat()
                    ),
                ));
            }
        };
        if self.biases.shape != self.scales.shape {
            return Err(EngineError::TensorShape {
                file: self.biases.file.to_path_buf(),
                name: format!("{module}.biases"),
                expected: self.scales.shape.to_vec(),
                got: self.biases.shape.to_vec(),
            });
        }
        let group = (cols / groups) as u32;
        let format = if bits == 4 {
            WeightFormat::Q4 { group }
        } else {
            WeightFormat::Q8 { group }
        };
        format
            .layout(rows, cols)
            .ctx(|| format!("{}: `{module}`", self.codes.file.display()))?;
        Ok(format)
    }

    /// Writes matrix `index` of the stack (0 for a single matrix) in `layout` into `out`
    /// (`layout.total` bytes), reading its slices from `ckpt`: codes copied, scales and biases
    /// converted exactly to f16.
    pub fn write(
        &self,
        ckpt: &Checkpoint,
        module: &str,
        index: usize,
        layout: &MatrixLayout,
        out: &mut [u8],
        log: &mut RoundLog,
    ) -> Result<()> {
        let mut buf = Vec::new();
        let data = layout.data_len;
        // The codes (nearly all the bytes) straight into place; scales and biases convert.
        self.read_part_into(ckpt, module, Part::Codes, index, layout, &mut out[..data])?;
        for (part, off) in [
            (Part::Scales, layout.scales_offset),
            (Part::Biases, layout.biases_offset),
        ] {
            let n = 2 * groups_of(layout);
            self.read_part(ckpt, module, part, index, layout, &mut buf)?;
            self.part_f16(module, part, &buf, &mut out[off..off + n], log)?;
        }
        Ok(())
    }

    /// Reads the stored bytes of `part` of matrix `index` of the stack into `buf`.
    pub fn read_part(
        &self,
        ckpt: &Checkpoint,
        module: &str,
        part: Part,
        index: usize,
        layout: &MatrixLayout,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        buf.clear();
        buf.resize(self.part_len(part, layout), 0);
        self.read_part_into(ckpt, module, part, index, layout, buf)
    }

    /// The stored bytes of one matrix's `part`.
    fn part_len(&self, part: Part, layout: &MatrixLayout) -> usize {
        match part {
            Part::Codes => layout.data_len,
            _ => groups_of(layout) * dtype_size(self.of(part).dtype),
        }
    }

    /// [`Self::read_part`] into `dst`, which must be [`Self::part_len`] long.
    fn read_part_into(
        &self,
        ckpt: &Checkpoint,
        module: &str,
        part: Part,
        index: usize,
        layout: &MatrixLayout,
        dst: &mut [u8],
    ) -> Result<()> {
        let t = self.of(part);
        let per = self.part_len(part, layout);
        debug_assert_eq!(dst.len(), per);
        let name = format!("{module}.{}", part.suffix());
        let start = index * per;
        if start + per > t.len {
            return Err(bad(
                t,
                &name,
                format!("matrix {index} lies past the end of the data"),
            ));
        }
        ckpt.read_range_into(&name, start, dst)
    }

    /// Converts the stored scales or biases `bytes` of `part` to f16 into `out`.
    pub fn part_f16(
        &self,
        module: &str,
        part: Part,
        bytes: &[u8],
        out: &mut [u8],
        log: &mut RoundLog,
    ) -> Result<()> {
        let name = format!("{module}.{}", part.suffix());
        to_f16(bytes, self.of(part), &name, out, log)
    }

    fn of(&self, part: Part) -> &TensorMeta<'_> {
        match part {
            Part::Codes => &self.codes,
            Part::Scales => &self.scales,
            Part::Biases => &self.biases,
        }
    }
}

/// One of the three tensors of a quantized matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// `X.weight`: the codes.
    Codes,
    /// `X.scales`.
    Scales,
    /// `X.biases`.
    Biases,
}

impl Part {
    /// The tensor name's suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Part::Codes => "weight",
            Part::Scales => "scales",
            Part::Biases => "biases",
        }
    }
}

/// Scale groups of a quantized matrix (1 per element for a float layout).
fn groups_of(layout: &MatrixLayout) -> usize {
    layout.rows * layout.cols / layout.format.group().unwrap_or(1)
}

fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::F32 => 4,
        _ => 2,
    }
}

/// Scale and bias values that f16 could not hold exactly and that were rounded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundLog {
    /// Values converted in all.
    pub values: u64,
    /// Values rounded (all below f16's normal range).
    pub rounded: u64,
    /// The largest absolute change of a rounded value.
    pub max_change: f32,
    /// Per tensor: (name, values rounded).
    pub tensors: Vec<(String, u64)>,
}

/// The largest change [`to_f16`] accepts: half of f16's smallest subnormal.
pub const MAX_ROUNDING: f32 = 1.0 / (1u64 << 25) as f32;

/// Converts little-endian `F16`, `BF16` or `F32` values to f16 into `out`: exactly where f16
/// holds the value, rounded (by at most [`MAX_ROUNDING`], counted in `log`) where it is below
/// f16's normal range, refused where f16 cannot hold it (too large, NaN, infinite) or where
/// rounding would change it more (an f32 value between f16's steps).
pub fn to_f16(
    bytes: &[u8],
    t: &TensorMeta<'_>,
    name: &str,
    out: &mut [u8],
    log: &mut RoundLog,
) -> Result<()> {
    let size = dtype_size(t.dtype);
    let n = out.len() / 2;
    if bytes.len() != n * size {
        return Err(bad(
            t,
            name,
            format!("holds {} bytes, expected {}", bytes.len(), n * size),
        ));
    }
    let mut rounded = 0u64;
    for i in 0..n {
        let v = match t.dtype {
            Dtype::F16 => {
                out[2 * i..2 * i + 2].copy_from_slice(&bytes[2 * i..2 * i + 2]);
                continue;
            }
            Dtype::BF16 => f32::from_bits(
                u32::from(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])) << 16,
            ),
            Dtype::F32 => f32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]),
            other => {
                return Err(bad(
                    t,
                    name,
                    format!("scales and biases must be F16, BF16 or F32, found {other:?}"),
                ));
            }
        };
        let h = f16::from_f32(v);
        let change = (h.to_f32() - v).abs();
        if !v.is_finite() || !h.is_finite() || change > MAX_ROUNDING {
            return Err(bad(
                t,
                name,
                format!(
                    "value {v:e} at element {i} does not fit f16 (flashmoe keeps scales and \
                     biases in f16 and does not re-quantize); pack the unquantized Hugging Face \
                     checkpoint instead"
                ),
            ));
        }
        if change > 0.0 {
            rounded += 1;
            log.max_change = log.max_change.max(change);
        }
        out[2 * i..2 * i + 2].copy_from_slice(&h.to_le_bytes());
    }
    log.values += n as u64;
    if rounded > 0 {
        log.rounded += rounded;
        match log.tensors.iter_mut().find(|(t, _)| t == name) {
            Some((_, c)) => *c += rounded,
            None => log.tensors.push((name.to_string(), rounded)),
        }
    }
    Ok(())
}

/// A dense weight `name` of `[rows x cols]` for the model loader: the stored float tensor as it
/// is, or a quantized module (`name` with `.scales` / `.biases` beside it) assembled in
/// [`flashmoe_backends::quant`]'s layout.
pub fn matrix(
    ckpt: &Checkpoint,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<(Vec<u8>, WeightFormat)> {
    let format = matrix_format(ckpt, name, rows, cols)?;
    let layout = format.layout(rows, cols).ctx(|| format!("`{name}`"))?;
    let mut out = vec![0u8; layout.total];
    fill_matrix(ckpt, name, &layout, &mut out)?;
    Ok((out, format))
}

/// The format [`matrix`] gives weight `name` (checks its tensors' shapes; no data read).
pub fn matrix_format(
    ckpt: &Checkpoint,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<WeightFormat> {
    if !is_quantized(ckpt, name) {
        return ckpt.tensor_format(name, &[rows, cols]);
    }
    let module = module_of(name);
    parts(ckpt, module)?.format(module, &[], rows, cols)
}

/// Writes weight `name` in `layout` (from [`matrix_format`]) into `out`, `layout.total` bytes:
/// the memory that keeps it, so a large weight is never held twice while loading.
pub fn fill_matrix(
    ckpt: &Checkpoint,
    name: &str,
    layout: &MatrixLayout,
    out: &mut [u8],
) -> Result<()> {
    if !is_quantized(ckpt, name) {
        // Read (pread), not borrowed from the map: a file truncated under a running model is
        // then a read error here, never a SIGBUS while the backend copies the bytes.
        ckpt.read_tensor_into(name, &[layout.rows, layout.cols], out)?;
        return Ok(());
    }
    let module = module_of(name);
    parts(ckpt, module)?.write(ckpt, module, 0, layout, out, &mut RoundLog::default())
}

/// One quantized matrix as MLX's three tensors (see [`split`]).
#[derive(Clone, Copy, Debug)]
pub struct MlxParts<'a> {
    /// Shape of the codes as `U32`: `[rows, cols * bits / 32]`.
    pub codes_shape: [usize; 2],
    /// Shape of the scales and of the biases: `[rows, cols / group]`.
    pub groups_shape: [usize; 2],
    /// The codes' bytes.
    pub codes: &'a [u8],
    /// The f16 scales' bytes.
    pub scales: &'a [u8],
    /// The f16 biases' bytes.
    pub biases: &'a [u8],
}

/// Splits one matrix held in our quantized `layout` in `bytes` into MLX's three tensors;
/// `None` for a float layout.
pub fn split<'a>(bytes: &'a [u8], layout: &MatrixLayout) -> Option<MlxParts<'a>> {
    let group = layout.format.group()?;
    let bits = layout.format.bits() as usize;
    let groups = layout.rows * layout.cols / group;
    Some(MlxParts {
        codes_shape: [layout.rows, layout.cols * bits / 32],
        groups_shape: [layout.rows, layout.cols / group],
        codes: &bytes[..layout.data_len],
        scales: &bytes[layout.scales_offset..layout.scales_offset + 2 * groups],
        biases: &bytes[layout.biases_offset..layout.biases_offset + 2 * groups],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn raw(dtype: Dtype) -> TensorMeta<'static> {
        TensorMeta {
            shape: &[],
            dtype,
            file: Path::new("model.safetensors"),
            len: 0,
        }
    }

    #[test]
    fn bf16_scales_convert_exactly_round_below_f16_or_are_refused() {
        // 0.0078125 = 2^-7 and -1.5 are exact in f16; 2^-30 is below f16's smallest subnormal.
        let ok: Vec<u8> = [0x3c00u16, 0xbfc0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = [0u8; 4];
        let mut log = RoundLog::default();
        to_f16(&ok, &raw(Dtype::BF16), "x.scales", &mut out, &mut log).unwrap();
        assert_eq!((log.values, log.rounded), (2, 0));
        let got: Vec<f32> = out
            .chunks(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(got, [0.0078125, -1.5]);
        // 2^-30 and 2^-17 * (1 + 1/128): below f16's normal range, rounded and counted.
        let tiny: Vec<u8> = [0x3080u16, 0x3701]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        to_f16(&tiny, &raw(Dtype::BF16), "x.scales", &mut out, &mut log).unwrap();
        assert_eq!(
            (log.values, log.rounded),
            (4, 1),
            "2^-17 * 1.0078 is a multiple of 2^-24"
        );
        assert!(log.max_change > 0.0 && log.max_change <= MAX_ROUNDING);
        assert_eq!(log.tensors, [("x.scales".to_string(), 1)]);
        // Too large for f16, and NaN: refused, naming file, tensor and element.
        let big = 0x4789u16.to_le_bytes(); // 70144
        let err = to_f16(&big, &raw(Dtype::BF16), "x.biases", &mut out[..2], &mut log).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("model.safetensors")
                && msg.contains("`x.biases`")
                && msg.contains("element 0"),
            "{msg}"
        );
        let nan = 0x7fc0u16.to_le_bytes();
        assert!(to_f16(&nan, &raw(Dtype::BF16), "x.biases", &mut out[..2], &mut log).is_err());
        // An f32 value between f16 steps in the normal range would change by more: refused.
        let f = 0.1f32.to_le_bytes();
        assert!(to_f16(&f, &raw(Dtype::F32), "x.biases", &mut out[..2], &mut log).is_err());
    }
}
