//! HF safetensors checkpoints, sharded through `model.safetensors.index.json` or single-file,
//! every tensor looked up with its expected shape and dtype.
//!
//! Two ways to open one:
//!
//! - [`Checkpoint::open`] memory-maps every shard and lends tensors as borrowed bytes
//!   ([`Checkpoint::tensor`], [`Checkpoint::raw`]): what the model loader wants.
//! - [`Checkpoint::open_unmapped`] reads only the headers; tensors are read on demand with
//!   `pread` into a caller's buffer ([`Checkpoint::read_tensor`], [`Checkpoint::read_raw`],
//!   [`Checkpoint::read_range`]) and, on Linux, the page cache of what was read is dropped
//!   (`posix_fadvise(DONTNEED)`): what the packer wants, so that packing a checkpoint larger
//!   than memory needs memory for the tensor in hand only (no mapping counts in the address
//!   space, no touched page stays resident or fills a memory cgroup). The borrowing accessors
//!   refuse such a checkpoint with an error saying so. The `read_*` accessors work in both
//!   modes; [`Checkpoint::meta`] gives shapes and dtypes without any I/O.
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
//! that window is short; a model's mapping is not touched after load. Reads (`read_*`) have
//! no such window: a short file is an error naming it.

use crate::error::{BackendContext, EngineError, Result};
use flashmoe_backends::quant::WeightFormat;
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::tensor_reader::TensorReader;
pub use text_names::{is_multimodal, text_model_name};

mod text_names;

/// One shard (memory-mapped, or read on demand) and its parsed header.
struct Shard {
    path: PathBuf,
    /// The open file (its length is re-checked before a tensor is handed out or read); shared
    /// with the [`TensorReader`]s made from it.
    file: Arc<File>,
    /// The mapping of the whole file; `None` for a checkpoint opened unmapped.
    mmap: Option<Mmap>,
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

/// A tensor's header entry: what it is, without its bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorMeta<'a> {
    /// Its shape.
    pub shape: &'a [usize],
    /// Its dtype.
    pub dtype: Dtype,
    /// The file it is in.
    pub file: &'a Path,
    /// Bytes of its data.
    pub len: usize,
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

/// Largest safetensors header accepted (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Reads and validates the header of the safetensors file `file` of `file_len` bytes with
/// `pread` (as `SafeTensors::read_metadata` does on a whole buffer): returns the offset of the
/// data section and the metadata, whose tensors must exactly fill the rest of the file.
fn read_header(file: &File, file_len: u64, path: &Path) -> Result<(usize, Metadata)> {
    let bad = |e: SafeTensorError| EngineError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let io = |source| EngineError::Io {
        op: "read header",
        path: path.to_path_buf(),
        source,
    };
    if file_len < 8 {
        return Err(bad(SafeTensorError::HeaderTooSmall));
    }
    let mut n = [0u8; 8];
    file.read_exact_at(&mut n, 0).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER {
        return Err(bad(SafeTensorError::HeaderTooLarge));
    }
    if n > file_len - 8 {
        return Err(bad(SafeTensorError::InvalidHeaderLength));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8).map_err(io)?;
    let text = std::str::from_utf8(&header).map_err(|e| bad(SafeTensorError::InvalidHeader(e)))?;
    // Deserializing validates the offsets: contiguous from 0, sizes matching shapes.
    let metadata: Metadata = serde_json::from_str(text)
        .map_err(|e| bad(SafeTensorError::InvalidHeaderDeserialization(e)))?;
    let data_start = 8 + n as usize;
    if (data_start + metadata.data_len()) as u64 != file_len {
        return Err(bad(SafeTensorError::MetadataIncompleteBuffer));
    }
    Ok((data_start, metadata))
}

fn open_shard(path: &Path, index: &Path, mapped: bool) -> Result<Shard> {
    let file = File::open(path).map_err(|source| EngineError::MissingShard {
        index: index.to_path_buf(),
        shard: path.to_path_buf(),
        source,
    })?;
    let file_len = file
        .metadata()
        .map_err(|source| EngineError::Io {
            op: "stat",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let (data_start, metadata) = read_header(&file, file_len, path)?;
    let mmap = if mapped {
        // SAFETY: the file is opened read-only and the map is never written through. All
        // offsets are checked against the file's length below, and a tensor's pages are read
        // through `Shard::checked` (a fault there is an error) before its bytes are handed
        // out; see the module doc for the window that remains.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| EngineError::Io {
            op: "mmap",
            path: path.to_path_buf(),
            source,
        })?;
        Some(map)
    } else {
        None
    };
    let len = mmap.as_ref().map_or(file_len as usize, |m| m.len());
    let tensors: HashMap<String, TensorInfo> = metadata
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    for (name, info) in &tensors {
        if data_start + info.data_offsets.1 > len || info.data_offsets.0 > info.data_offsets.1 {
            return Err(EngineError::Safetensors {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` lies outside the file"),
            });
        }
    }
    Ok(Shard {
        path: path.to_path_buf(),
        file: Arc::new(file),
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
        let mmap = self.mmap.as_ref().ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the checkpoint was opened unmapped (for streaming): tensors are read with \
                 Checkpoint::read_*, not borrowed",
            ))
        })?;
        self.check_len(end).map_err(io)?;
        let mut scratch = vec![0u8; PROBE_CHUNK.min(end - start)];
        let mut at = start;
        while at < end {
            let n = PROBE_CHUNK.min(end - at);
            io_sched::mapped::copy_out(mmap, at, &mut scratch[..n], &self.file).map_err(|e| {
                io(std::io::Error::new(
                    e.kind(),
                    format!("at offset {at}: {e}"),
                ))
            })?;
            at += n;
        }
        Ok(&mmap[start..end])
    }

    /// Fails with `UnexpectedEof` when the file no longer holds `end` bytes (truncated while
    /// open).
    fn check_len(&self, end: usize) -> std::io::Result<()> {
        let len = self.file.metadata()?.len();
        if len < end as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("truncated to {len} bytes while open (a tensor needs bytes ..{end})"),
            ));
        }
        Ok(())
    }

    /// Reads `len` bytes at file offset `at` into `buf` (resized to `len`) with `pread`; an
    /// unmapped shard then drops those pages from the page cache (Linux).
    fn read_at(&self, at: usize, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        buf.resize(len, 0);
        self.read_into(at, buf)
    }

    /// Reads `dst.len()` bytes at file offset `at` into `dst`, as [`Self::read_at`].
    fn read_into(&self, at: usize, dst: &mut [u8]) -> Result<()> {
        let len = dst.len();
        let io = |source: std::io::Error| EngineError::Io {
            op: "read tensor",
            path: self.path.clone(),
            source: std::io::Error::new(source.kind(), format!("at offset {at}: {source}")),
        };
        let end = at.checked_add(len).ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "range overflows",
            ))
        })?;
        self.check_len(end).map_err(io)?;
        self.file.read_exact_at(dst, at as u64).map_err(io)?;
        if self.mmap.is_none() {
            // Everything cached before the end of this read, not just this range: the page
            // cache holds large folios, and one that straddles the range's edges would stay
            // (the packer reads each shard roughly in order, so little is read twice).
            crate::write_back::drop_cached(&self.file, 0, end as u64);
        }
        Ok(())
    }
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json` and maps every shard it names (or
    /// `dir/model.safetensors` when there is no index). Every tensor the index names must be in
    /// its shard. If `dtype` is given, [`Checkpoint::tensor`] requires it of every tensor.
    ///
    /// Tensors are named as the text model names them ([`Checkpoint::text_only`]).
    ///
    /// The files must not be modified while the checkpoint is open (they are memory-mapped).
    pub fn open(dir: &Path, dtype: Option<WeightFormat>) -> Result<Self> {
        Self::open_with(dir, dtype, true).map(Self::text_only)
    }

    /// Opens the checkpoint in `dir` as [`Checkpoint::open`] does, but maps nothing: only the
    /// headers are read, and tensors are read on demand with the `read_*` accessors (see the
    /// module doc). What the packer uses, so that its memory does not grow with the checkpoint.
    pub fn open_unmapped(dir: &Path, dtype: Option<WeightFormat>) -> Result<Self> {
        Self::open_with(dir, dtype, false).map(Self::text_only)
    }

    fn open_with(dir: &Path, dtype: Option<WeightFormat>, mapped: bool) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        if !index_path.exists() {
            return Self::open_file_with(&dir.join("model.safetensors"), dtype, mapped);
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
            shards.push(open_shard(&dir.join(f), &index_path, mapped)?);
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
        Self::open_file_with(path, dtype, true)
    }

    fn open_file_with(path: &Path, dtype: Option<WeightFormat>, mapped: bool) -> Result<Self> {
        let shard = open_shard(path, path, mapped)?;
        let index = shard.tensors.keys().map(|k| (k.clone(), 0)).collect();
        Ok(Self {
            shards: vec![shard],
            index,
            source: path.to_path_buf(),
            dtype,
        })
    }

    /// The shard and header entry of tensor `name`.
    fn find(&self, name: &str) -> Result<(&Shard, &TensorInfo)> {
        let &s = self
            .index
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                name: name.into(),
                file: self.source.clone(),
            })?;
        let shard = &self.shards[s];
        Ok((shard, &shard.tensors[name]))
    }

    /// A handle that reads tensor `name`'s bytes on demand, after this checkpoint is gone: a
    /// table that stays on disk (the token embeddings, read a row per token).
    pub fn reader(&self, name: &str) -> Result<TensorReader> {
        let (shard, info) = self.find(name)?;
        let (a, b) = info.data_offsets;
        Ok(TensorReader::new(
            Arc::clone(&shard.file),
            shard.path.clone(),
            (shard.data_start + a) as u64,
            b - a,
            info.dtype,
            info.shape.clone(),
        ))
    }

    /// Whether the checkpoint holds a tensor `name` (no I/O).
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The shape, dtype and file of tensor `name`, from the header (no I/O).
    pub fn meta(&self, name: &str) -> Result<TensorMeta<'_>> {
        let (shard, info) = self.find(name)?;
        Ok(TensorMeta {
            shape: &info.shape,
            dtype: info.dtype,
            file: &shard.path,
            len: info.data_offsets.1 - info.data_offsets.0,
        })
    }

    /// The tensor `name` as stored, whatever its shape and dtype (a mapped checkpoint only).
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let (shard, info) = self.find(name)?;
        let (a, b) = info.data_offsets;
        Ok(RawTensor {
            bytes: shard.checked(shard.data_start + a, shard.data_start + b)?,
            shape: &info.shape,
            dtype: info.dtype,
            file: &shard.path,
        })
    }

    /// The tensor `name` as stored, read into `buf` (either mode).
    pub fn read_raw<'a>(&'a self, name: &str, buf: &'a mut Vec<u8>) -> Result<RawTensor<'a>> {
        let (shard, info) = self.find(name)?;
        let (a, b) = info.data_offsets;
        shard.read_at(shard.data_start + a, b - a, buf)?;
        Ok(RawTensor {
            bytes: buf,
            shape: &info.shape,
            dtype: info.dtype,
            file: &shard.path,
        })
    }

    /// Bytes `start..start + len` of tensor `name`'s data, read into `buf` (either mode): one
    /// matrix of a stacked tensor, a band of rows.
    pub fn read_range(
        &self,
        name: &str,
        start: usize,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        buf.clear();
        buf.resize(len, 0);
        self.read_range_into(name, start, buf)
    }

    /// Bytes `start..start + dst.len()` of tensor `name`'s data, read into `dst`: a weight
    /// read straight into the memory that keeps it, with no copy on the heap.
    pub fn read_range_into(&self, name: &str, start: usize, dst: &mut [u8]) -> Result<()> {
        let len = dst.len();
        let (shard, info) = self.find(name)?;
        let (a, b) = info.data_offsets;
        if start.checked_add(len).is_none_or(|end| end > b - a) {
            return Err(EngineError::Safetensors {
                path: shard.path.clone(),
                reason: format!(
                    "tensor `{name}`: bytes {start}..+{len} lie past its {} bytes",
                    b - a
                ),
            });
        }
        shard.read_into(shard.data_start + a + start, dst)
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Checks that tensor `name` has `shape` (and the config's dtype): its shard, header entry
    /// and format.
    fn checked_meta(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<(&Shard, &TensorInfo, WeightFormat)> {
        let (shard, info) = self.find(name)?;
        if info.shape != shape {
            return Err(EngineError::TensorShape {
                file: shard.path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                got: info.shape.clone(),
            });
        }
        // A vector may also be f32 whatever the config's dtype: f32 holds every value of the
        // others exactly (mlx-lm keeps `A_log` in f32; the packer writes mlx-lm's `1 + w`
        // norm weights back as f32 offsets).
        let vector_f32 = |f: WeightFormat| shape.len() == 1 && f == WeightFormat::F32;
        let format = format_of(info.dtype)
            .filter(|f| self.dtype.is_none_or(|d| d == *f || vector_f32(*f)))
            .ok_or_else(|| EngineError::TensorDtype {
                file: shard.path.clone(),
                name: name.into(),
                expected: self.dtype.map_or("BF16, F16 or F32".into(), |d| {
                    format!("{d:?} (from config)")
                }),
                got: format!("{:?}", info.dtype),
            })?;
        Ok((shard, info, format))
    }

    /// The format tensor `name` would be handed out in, checked to have `shape` and the
    /// config's dtype (no I/O).
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<WeightFormat> {
        Ok(self.checked_meta(name, shape)?.2)
    }

    /// The tensor `name`, checked to have `shape` (and the config's dtype; a mapped checkpoint
    /// only).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<TensorRef<'_>> {
        let (shard, info, format) = self.checked_meta(name, shape)?;
        let (a, b) = info.data_offsets;
        Ok(TensorRef {
            bytes: shard.checked(shard.data_start + a, shard.data_start + b)?,
            format,
            file: &shard.path,
        })
    }

    /// The format of tensor `name`, checked to have `shape` (no data read).
    pub fn tensor_format(&self, name: &str, shape: &[usize]) -> Result<WeightFormat> {
        self.checked_meta(name, shape).map(|(_, _, f)| f)
    }

    /// The tensor `name` of `shape` read into `dst`, which must be its size; its format.
    pub fn read_tensor_into(
        &self,
        name: &str,
        shape: &[usize],
        dst: &mut [u8],
    ) -> Result<WeightFormat> {
        let (shard, info, format) = self.checked_meta(name, shape)?;
        let (a, b) = info.data_offsets;
        if dst.len() != b - a {
            return Err(EngineError::Safetensors {
                path: shard.path.clone(),
                reason: format!("tensor `{name}` holds {} bytes, not {}", b - a, dst.len()),
            });
        }
        shard.read_into(shard.data_start + a, dst)?;
        Ok(format)
    }

    /// [`Checkpoint::tensor`], read into `buf` (either mode).
    pub fn read_tensor<'a>(
        &'a self,
        name: &str,
        shape: &[usize],
        buf: &'a mut Vec<u8>,
    ) -> Result<TensorRef<'a>> {
        let (shard, info, format) = self.checked_meta(name, shape)?;
        let (a, b) = info.data_offsets;
        shard.read_at(shard.data_start + a, b - a, buf)?;
        Ok(TensorRef {
            bytes: buf,
            format,
            file: &shard.path,
        })
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
