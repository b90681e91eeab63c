//! One checkpoint tensor read on demand with `pread`, by a handle that outlives the
//! [`crate::Checkpoint`] it came from: for tables that stay on disk rather than in memory (the
//! token embeddings, a row per token; the page cache keeps the rows in use, and under memory
//! pressure the kernel reclaims them instead of the process being killed).

use crate::error::{EngineError, Result};
use safetensors::Dtype;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A tensor's bytes in its shard file (see [`crate::Checkpoint::reader`]).
#[derive(Clone, Debug)]
pub struct TensorReader {
    file: Arc<File>,
    path: PathBuf,
    /// File offset of the tensor's first byte.
    offset: u64,
    len: usize,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl TensorReader {
    pub(crate) fn new(
        file: Arc<File>,
        path: PathBuf,
        offset: u64,
        len: usize,
        dtype: Dtype,
        shape: Vec<usize>,
    ) -> Self {
        Self {
            file,
            path,
            offset,
            len,
            dtype,
            shape,
        }
    }

    /// Its dtype as stored.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Bytes of its data.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file it is in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads bytes `start..start + dst.len()` of the tensor's data into `dst`. A range past
    /// the tensor, or a file truncated under it, is an error naming the file and offset.
    pub fn read_into(&self, start: usize, dst: &mut [u8]) -> Result<()> {
        let io = |source: std::io::Error| EngineError::Io {
            op: "read tensor",
            path: self.path.clone(),
            source,
        };
        if start
            .checked_add(dst.len())
            .is_none_or(|end| end > self.len)
        {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "bytes {start}..+{} lie past the tensor's {} bytes",
                    dst.len(),
                    self.len
                ),
            )));
        }
        let at = self.offset + start as u64;
        self.file.read_exact_at(dst, at).map_err(|e| {
            io(std::io::Error::new(
                e.kind(),
                format!("at offset {at}: {e}"),
            ))
        })
    }
}
