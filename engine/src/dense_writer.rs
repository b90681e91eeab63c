//! Writing `dense.safetensors` tensor by tensor, with memory for one tensor at a time.
//!
//! The packer first *plans* the file: a [`Planned`] entry per output tensor (name, dtype,
//! shape, byte length, and how to [`Produce`] its bytes), from the checkpoint's headers alone.
//! [`write_planned`] then hands safetensors' `serialize_to_file` a lazy
//! [`safetensors::View`] per entry, whose `data()` reads (and, for `--dense-bits`, quantizes)
//! that tensor only when the serializer reaches it, so the bytes of the file are exactly those
//! `safetensors::serialize` would give (same header, same order) without the file ever being in
//! memory. A quantized matrix is quantized once, in bands of rows; of its three tensors the
//! ones not yet written wait in a small stash (scales and biases are 1/16 of a 4-bit matrix's
//! bytes). Bytes written are counted for the progress bar and for [`WriteBack`].
//!
//! `View::data` cannot fail, so the first error (a read, a quantization) is kept aside, the
//! remaining tensors are written empty, and [`write_planned`] returns that error: the caller
//! then discards the whole temporary directory, as for any other error.

use crate::error::{BackendContext, EngineError, Result};
use crate::quant_tensors::{Part, RoundLog, parts, split};
use crate::weights::Checkpoint;
use crate::write_back::WriteBack;
use flashmoe_backends::quant::{MatrixLayout, WeightFormat, dequantize, quantize};
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

/// Input bytes quantized at a time (a band of rows of a dense matrix).
const BAND_BYTES: usize = 16 << 20;

/// How the bytes of one output tensor are made.
#[derive(Clone, Debug)]
pub(crate) enum Produce {
    /// Tensor `0` of the checkpoint, as stored.
    Stored(String),
    /// `part` of the float matrix `name` (`rows x cols`, stored as `from`) quantized to
    /// `layout.format`.
    Quantize {
        name: String,
        module: String,
        from: WeightFormat,
        layout: MatrixLayout,
        part: Part,
    },
    /// The float vector `0` of the checkpoint as f32 `w - 1`: an RMSNorm weight that mlx-lm
    /// stores as `1 + w`, back in the offset form the engine reads for hybrid families (exact:
    /// `1 + w` is a bf16 / f16 / f32 value near 1, and f32 holds its difference from 1).
    MinusOne(String),
    /// `part` of an MLX quantized `module` as stored: codes as they are, scales and biases
    /// converted to f16.
    Mlx {
        module: String,
        layout: MatrixLayout,
        part: Part,
    },
}

/// One tensor of the output file.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub len: usize,
    pub how: Produce,
}

impl Planned {
    /// The three tensors of `module` quantized in `layout` (its shapes as MLX stores them).
    pub fn quantized(
        module: &str,
        layout: &MatrixLayout,
        how: impl Fn(Part) -> Produce,
    ) -> [Self; 3] {
        let group = layout.format.group().unwrap_or(1);
        let bits = layout.format.bits() as usize;
        let (rows, cols) = (layout.rows, layout.cols);
        let groups = [rows, cols / group];
        let t = |part: Part, dtype, shape: [usize; 2], len| Planned {
            name: format!("{module}.{}", part.suffix()),
            dtype,
            shape: shape.to_vec(),
            len,
            how: how(part),
        };
        [
            t(
                Part::Codes,
                Dtype::U32,
                [rows, cols * bits / 32],
                layout.data_len,
            ),
            t(Part::Scales, Dtype::F16, groups, 2 * rows * (cols / group)),
            t(Part::Biases, Dtype::F16, groups, 2 * rows * (cols / group)),
        ]
    }
}

/// The state the lazy views share while the file is written.
struct Producer<'c, 'p> {
    ckpt: &'c Checkpoint,
    error: RefCell<Option<EngineError>>,
    /// Parts of quantized matrices made but not yet written: (module, part) -> bytes.
    stash: RefCell<HashMap<(String, Part), Vec<u8>>>,
    log: RefCell<&'p mut RoundLog>,
    progress: RefCell<&'p mut dyn FnMut(u64)>,
    write_back: RefCell<WriteBack>,
}

impl Producer<'_, '_> {
    fn produce(&self, t: &Planned) -> Vec<u8> {
        if self.error.borrow().is_some() {
            return Vec::new();
        }
        let made = self.make(t).and_then(|bytes| {
            if bytes.len() == t.len {
                Ok(bytes)
            } else {
                Err(EngineError::Pack {
                    path: self.ckpt_source(t),
                    reason: format!(
                        "tensor `{}`: made {} bytes, planned {}",
                        t.name,
                        bytes.len(),
                        t.len
                    ),
                })
            }
        });
        let bytes = made.and_then(|bytes| {
            (self.progress.borrow_mut())(bytes.len() as u64);
            self.write_back.borrow_mut().wrote(bytes.len() as u64)?;
            Ok(bytes)
        });
        match bytes {
            Ok(b) => b,
            Err(e) => {
                *self.error.borrow_mut() = Some(e);
                Vec::new()
            }
        }
    }

    fn ckpt_source(&self, t: &Planned) -> std::path::PathBuf {
        match &t.how {
            Produce::Stored(n) | Produce::MinusOne(n) | Produce::Quantize { name: n, .. } => {
                self.ckpt.meta(n)
            }
            Produce::Mlx { module, .. } => self.ckpt.meta(&format!("{module}.weight")),
        }
        .map(|m| m.file.to_path_buf())
        .unwrap_or_default()
    }

    fn make(&self, t: &Planned) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        match &t.how {
            Produce::Stored(name) => {
                self.ckpt.read_raw(name, &mut buf)?;
                Ok(buf)
            }
            Produce::MinusOne(name) => {
                let v = self.ckpt.read_tensor(name, &t.shape, &mut buf)?.to_f32()?;
                Ok(v.iter().flat_map(|w| (w - 1.0).to_le_bytes()).collect())
            }
            Produce::Mlx {
                module,
                layout,
                part,
            } => {
                let p = parts(self.ckpt, module)?;
                p.read_part(self.ckpt, module, *part, 0, layout, &mut buf)?;
                if *part == Part::Codes {
                    return Ok(buf);
                }
                let mut out = vec![0u8; t.len];
                p.part_f16(module, *part, &buf, &mut out, &mut self.log.borrow_mut())?;
                Ok(out)
            }
            Produce::Quantize {
                name,
                module,
                from,
                layout,
                part,
            } => {
                let key = (module.clone(), *part);
                if let Some(b) = self.stash.borrow_mut().remove(&key) {
                    return Ok(b);
                }
                let [codes, scales, biases] = quantize_bands(self.ckpt, name, *from, layout)?;
                let mut stash = self.stash.borrow_mut();
                let mut mine = None;
                for (p, b) in [
                    (Part::Codes, codes),
                    (Part::Scales, scales),
                    (Part::Biases, biases),
                ] {
                    if p == *part {
                        mine = Some(b);
                    } else {
                        stash.insert((module.clone(), p), b);
                    }
                }
                Ok(mine.unwrap_or_default())
            }
        }
    }
}

/// The float matrix `name` quantized to `layout`, in bands of rows: its codes, f16 scales
/// and f16 biases (each band's quantization is that of the whole matrix: groups lie in rows).
fn quantize_bands(
    ckpt: &Checkpoint,
    name: &str,
    from: WeightFormat,
    layout: &MatrixLayout,
) -> Result<[Vec<u8>; 3]> {
    let (rows, cols) = (layout.rows, layout.cols);
    let row_bytes = cols * from.bits() as usize / 8;
    let band = (BAND_BYTES / row_bytes.max(1)).clamp(1, rows.max(1));
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    let mut buf = Vec::new();
    let file = || {
        ckpt.meta(name)
            .map(|m| m.file.display().to_string())
            .unwrap_or_default()
    };
    let ctx = || format!("{}: quantizing `{name}`", file());
    let mut r = 0;
    while r < rows {
        let n = band.min(rows - r);
        ckpt.read_range(name, r * row_bytes, n * row_bytes, &mut buf)?;
        let values = dequantize(&buf, n, cols, from).ctx(ctx)?;
        let q = quantize(&values, n, cols, layout.format).ctx(ctx)?;
        let l = layout.format.layout(n, cols).ctx(ctx)?;
        let p = split(&q, &l).ok_or_else(|| EngineError::Pack {
            path: ckpt
                .meta(name)
                .map(|m| m.file.to_path_buf())
                .unwrap_or_default(),
            reason: format!("`{name}`: {:?} is not a quantized format", layout.format),
        })?;
        out[0].extend_from_slice(p.codes);
        out[1].extend_from_slice(p.scales);
        out[2].extend_from_slice(p.biases);
        r += n;
    }
    Ok(out)
}

/// A lazy tensor: its bytes are made when the serializer asks for them.
struct Lazy<'a, 'c, 'p> {
    t: &'a Planned,
    producer: &'a Producer<'c, 'p>,
}

impl View for Lazy<'_, '_, '_> {
    fn dtype(&self) -> Dtype {
        self.t.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.t.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.producer.produce(self.t))
    }
    fn data_len(&self) -> usize {
        self.t.len
    }
}

/// Bytes of the data section of `planned`.
pub(crate) fn planned_bytes(planned: &[Planned]) -> u64 {
    planned.iter().map(|t| t.len as u64).sum()
}

/// Writes the tensors `planned` into the safetensors file `path` one at a time (see the
/// module doc); `progress(n)` is called with the bytes of each tensor written. Returns the
/// file's length.
pub(crate) fn write_planned(
    ckpt: &Checkpoint,
    planned: &[Planned],
    path: &Path,
    log: &mut RoundLog,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let producer = Producer {
        ckpt,
        error: RefCell::new(None),
        stash: RefCell::new(HashMap::new()),
        log: RefCell::new(log),
        progress: RefCell::new(progress),
        write_back: RefCell::new(WriteBack::new(dir)),
    };
    let views = planned.iter().map(|t| {
        (
            t.name.as_str(),
            Lazy {
                t,
                producer: &producer,
            },
        )
    });
    let written = safetensors::serialize_to_file(views, None, path);
    if let Some(e) = producer.error.into_inner() {
        return Err(e);
    }
    written.map_err(|e| EngineError::Safetensors {
        path: path.to_path_buf(),
        reason: format!("cannot serialize: {e}"),
    })?;
    producer.write_back.into_inner().flush()?;
    Ok(std::fs::metadata(path)
        .map_err(|source| EngineError::Io {
            op: "stat",
            path: path.to_path_buf(),
            source,
        })?
        .len())
}
