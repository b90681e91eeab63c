//! HF safetensors checkpoints, sharded through `model.safetensors.index.json` or single-file,
//! memory-mapped, every tensor looked up with its expected shape and dtype.
//!
//! # Faults in mapped files
//!
//! Touching a mapped page that fails to read (EIO) or that a truncation removed raises
//! `SIGBUS`. At open, every tensor's range is checked against the file's length. Each time a
//! tensor is handed out ([`Checkpoint::tensor`], [`Checkpoint::raw`]) the file's length is
//! checked again and the tensor's bytes are read once through [`io_sched::mapped::copy_out`]
//! (in 1 MiB pieces into a scratch buffer), so a truncation or an I/O error is an
//! [`EngineError::Io`] naming the file and offset, and the pages the caller then reads are in
//! the page cache. What remains: a file truncated, or a cached page evicted and failing to
//! re-read, between that check and the caller's own read of the borrowed bytes. Callers copy
//! tensors out right away (the backends upload them at load; the packer re-encodes them), so
//! that window is short; a model's mapping is not touched after load.

use crate::error::{BackendContext, EngineError, Result};
use flashmoe_backends::quant::WeightFormat;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::TensorInfo};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// One memory-mapped shard and its parsed header.
struct Shard {
    path: PathBuf,
    /// The open file (its length is re-checked before a tensor is handed out).
    file: File,
    mmap: Mmap,
    /// Offset of the data section (8 + header length).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// A tensor borrowed from a mapped shard.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// The raw little-endian bytes.
    pub bytes: &'a [u8],
    /// Its storage format (float dtypes only).
    pub format: WeightFormat,
    /// The file it came from.
    pub file: &'a Path,
}

/// A tensor as stored, with its safetensors dtype and shape (for copying it unchanged).
#[derive(Clone, Copy, Debug)]
pub struct RawTensor<'a> {
    /// The raw little-endian bytes.
    pub bytes: &'a [u8],
    /// Its shape.
    pub shape: &'a [usize],
    /// Its dtype.
    pub dtype: Dtype,
    /// The file it came from.
    pub file: &'a Path,
}

/// All tensors of a checkpoint directory.
///
/// ```no_run
/// let w = flashmoe_engine::Checkpoint::open("model".as_ref(), None)?;
/// let t = w.tensor("model.norm.weight", &[256])?;
/// assert_eq!(t.bytes.len(), 512);
/// # Ok::<(), flashmoe_engine::EngineError>(())
/// ```
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// Tensor name -> shard index.
    index: HashMap<String, usize>,
    /// The file that named the shards (the index, or the single file).
    source: PathBuf,
    /// Dtype every tensor must have, if the config announced one.
    dtype: Option<WeightFormat>,
}

fn format_of(dtype: Dtype) -> Option<WeightFormat> {
    match dtype {
        Dtype::BF16 => Some(WeightFormat::Bf16),
        Dtype::F16 => Some(WeightFormat::F16),
        Dtype::F32 => Some(WeightFormat::F32),
        _ => None,
    }
}

fn open_shard(path: &Path, index: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(|source| EngineError::MissingShard {
        index: index.to_path_buf(),
        shard: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the file is opened read-only and the map is never written through. All offsets
    // are checked against the map's length below, and a tensor's pages are read through
    // `Shard::checked` (a fault there is an error) before its bytes are handed out; see the
    // module doc for the window that remains.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|source| EngineError::Io {
        op: "mmap",
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| EngineError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    // `read_metadata` validates the header: offsets contiguous, inside the buffer, sizes match shapes.
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
    let data_start = 8usize
        .checked_add(header_len)
        .filter(|&s| s <= mmap.len())
        .ok_or_else(|| bad("header longer than file".into()))?;
    let tensors: HashMap<String, TensorInfo> = metadata
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    for (name, info) in &tensors {
        if data_start + info.data_offsets.1 > mmap.len()
            || info.data_offsets.0 > info.data_offsets.1
        {
            return Err(bad(format!("tensor `{name}` lies outside the file")));
        }
    }
    Ok(Shard {
        path: path.to_path_buf(),
        file,
        mmap,
        data_start,
        tensors,
    })
}

/// Bytes read at a time when checking a mapped range.
const PROBE_CHUNK: usize = 1 << 20;

impl Shard {
    /// `mmap[start..end]`, after checking that the file still holds it and that every page of
    /// it can be read (see the module doc).
    fn checked(&self, start: usize, end: usize) -> Result<&[u8]> {
        let io = |source| EngineError::Io {
            op: "read mapped tensor",
            path: self.path.clone(),
            source,
        };
        let len = self.file.metadata().map_err(io)?.len();
        if len < end as u64 {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "truncated to {len} bytes while open (a tensor needs bytes {start}..{end})"
                ),
            )));
        }
        let mut scratch = vec![0u8; PROBE_CHUNK.min(end - start)];
        let mut at = start;
        while at < end {
            let n = PROBE_CHUNK.min(end - at);
            io_sched::mapped::copy_out(&self.mmap, at, &mut scratch[..n], &self.file).map_err(
                |e| {
                    io(std::io::Error::new(
                        e.kind(),
                        format!("at offset {at}: {e}"),
                    ))
                },
            )?;
            at += n;
        }
        Ok(&self.mmap[start..end])
    }
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json` and maps every shard it names (or
    /// `dir/model.safetensors` when there is no index). Every tensor the index names must be in
    /// its shard. If `dtype` is given, [`Checkpoint::tensor`] requires it of every tensor.
    ///
    /// The files must not be modified while the checkpoint is open (they are memory-mapped).
    pub fn open(dir: &Path, dtype: Option<WeightFormat>) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        if !index_path.exists() {
            return Self::open_file(&dir.join("model.safetensors"), dtype);
        }
        let text = std::fs::read_to_string(&index_path).map_err(|source| EngineError::Io {
            op: "read index",
            path: index_path.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| EngineError::Json {
                path: index_path.clone(),
                source,
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| EngineError::Safetensors {
                path: index_path.clone(),
                reason: "no `weight_map` object".into(),
            })?;
        let mut files = BTreeSet::new();
        let mut named = Vec::with_capacity(map.len());
        for (tensor, file) in map {
            let file = file.as_str().filter(|f| is_plain_file_name(f)).ok_or_else(|| EngineError::Safetensors {
                path: index_path.clone(),
                reason: format!("weight_map entry for `{tensor}` is not a plain file name in the model directory"),
            })?;
            files.insert(file.to_string());
            named.push((tensor.clone(), file.to_string()));
        }
        let mut shards = Vec::new();
        let mut shard_of = HashMap::new();
        for f in &files {
            shard_of.insert(f.clone(), shards.len());
            shards.push(open_shard(&dir.join(f), &index_path)?);
        }
        let mut index = HashMap::with_capacity(named.len());
        for (tensor, file) in named {
            let s = shard_of[&file];
            if !shards[s].tensors.contains_key(&tensor) {
                return Err(EngineError::MissingTensor {
                    name: tensor,
                    file: shards[s].path.clone(),
                });
            }
            index.insert(tensor, s);
        }
        Ok(Self {
            shards,
            index,
            source: index_path,
            dtype,
        })
    }

    /// Opens one safetensors file (e.g. a packed model's `dense.safetensors`).
    pub fn open_file(path: &Path, dtype: Option<WeightFormat>) -> Result<Self> {
        let shard = open_shard(path, path)?;
        let index = shard.tensors.keys().map(|k| (k.clone(), 0)).collect();
        Ok(Self {
            shards: vec![shard],
            index,
            source: path.to_path_buf(),
            dtype,
        })
    }

    /// The tensor `name` as stored, whatever its shape and dtype.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let &s = self
            .index
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                name: name.into(),
                file: self.source.clone(),
            })?;
        let shard = &self.shards[s];
        let info = &shard.tensors[name];
        let (a, b) = info.data_offsets;
        Ok(RawTensor {
            bytes: shard.checked(shard.data_start + a, shard.data_start + b)?,
            shape: &info.shape,
            dtype: info.dtype,
            file: &shard.path,
        })
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The tensor `name`, checked to have `shape` (and the config's dtype).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<TensorRef<'_>> {
        let &s = self
            .index
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                name: name.into(),
                file: self.source.clone(),
            })?;
        let shard = &self.shards[s];
        let info = &shard.tensors[name];
        if info.shape != shape {
            return Err(EngineError::TensorShape {
                file: shard.path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                got: info.shape.clone(),
            });
        }
        let format = format_of(info.dtype)
            .filter(|f| self.dtype.is_none_or(|d| d == *f))
            .ok_or_else(|| EngineError::TensorDtype {
                file: shard.path.clone(),
                name: name.into(),
                expected: self.dtype.map_or("BF16, F16 or F32".into(), |d| {
                    format!("{d:?} (from config)")
                }),
                got: format!("{:?}", info.dtype),
            })?;
        let (a, b) = info.data_offsets;
        Ok(TensorRef {
            bytes: shard.checked(shard.data_start + a, shard.data_start + b)?,
            format,
            file: &shard.path,
        })
    }
}

impl Checkpoint {
    /// The text model's tensors only, under text-model names: a multimodal checkpoint's
    /// `model.language_model.X` becomes `model.X` (its other `model.*` tensors, the vision
    /// tower, are dropped), and multi-token-prediction heads (`mtp.*`) are dropped. A text-only
    /// checkpoint keeps every other name.
    pub fn text_only(mut self) -> Self {
        const PREFIX: &str = "model.language_model.";
        let multimodal = self.index.keys().any(|k| k.starts_with(PREFIX));
        let rename = |k: &str| -> Option<String> {
            if k.starts_with("mtp.") {
                None
            } else if let Some(rest) = k.strip_prefix(PREFIX) {
                Some(format!("model.{rest}"))
            } else if multimodal && k.starts_with("model.") {
                None
            } else {
                Some(k.to_string())
            }
        };
        self.index = std::mem::take(&mut self.index)
            .into_iter()
            .filter_map(|(k, s)| rename(&k).map(|n| (n, s)))
            .collect();
        for shard in &mut self.shards {
            shard.tensors = std::mem::take(&mut shard.tensors)
                .into_iter()
                .filter_map(|(k, v)| rename(&k).map(|n| (n, v)))
                .collect();
        }
        self
    }
}

/// A shard name must stay inside the model directory.
fn is_plain_file_name(f: &str) -> bool {
    !f.is_empty() && !f.contains('/') && !f.contains('\\') && f != "." && f != ".."
}

impl TensorRef<'_> {
    /// The values as f32.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let n = self.bytes.len() / (self.format.bits() as usize / 8);
        flashmoe_backends::quant::dequantize(self.bytes, 1, n, self.format)
            .ctx(|| format!("decoding a tensor of {}", self.file.display()))
    }
}
