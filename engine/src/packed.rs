//! Expert records packed into one file, and a simple synchronous [`ExpertSource`] reading them
//! back with positioned reads. The I/O scheduler (io-sched) replaces the reader; the file format
//! is what it reads.
//!
//! # File format
//!
//! No header: the record of `(layer, expert)` lies at
//! `(layer * num_experts + expert) * stride`, where `stride` is the record length rounded up to
//! [`FILE_ALIGN`] (4096, so O_DIRECT reads of whole records are aligned). Each record follows the
//! [expert record layout](crate::experts); the bytes between records are zero.

use crate::error::{EngineError, Result};
use crate::experts::{ExpertBatch, ExpertLayout, ExpertSource, InMemoryExperts};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Alignment of every record in a packed file.
pub const FILE_ALIGN: usize = 4096;

/// Where each record lies in a packed expert file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedLayout {
    /// Layout of one record.
    pub record: ExpertLayout,
    /// Layers in the file.
    pub num_layers: usize,
    /// Experts per layer.
    pub num_experts: usize,
    /// Distance between records (record length rounded up to [`FILE_ALIGN`]).
    pub stride: usize,
}

impl PackedLayout {
    /// The layout of a file holding `num_layers x num_experts` records of `record`.
    pub fn new(record: ExpertLayout, num_layers: usize, num_experts: usize) -> Self {
        let stride = record.record_len.div_ceil(FILE_ALIGN) * FILE_ALIGN;
        Self {
            record,
            num_layers,
            num_experts,
            stride,
        }
    }

    /// Byte offset of `(layer, expert)`, or `None` if out of range.
    pub fn offset(&self, layer: u32, expert: u32) -> Option<u64> {
        let (l, e) = (layer as usize, expert as usize);
        (l < self.num_layers && e < self.num_experts)
            .then(|| ((l * self.num_experts + e) * self.stride) as u64)
    }

    /// Size of the whole file.
    pub fn file_len(&self) -> u64 {
        (self.num_layers * self.num_experts * self.stride) as u64
    }
}

/// Writes every record of `experts` to `path` in the packed format.
pub fn write_packed(experts: &InMemoryExperts, path: &Path) -> Result<PackedLayout> {
    let layout = PackedLayout::new(
        *experts.layout(),
        experts.num_layers(),
        experts.num_experts(),
    );
    let io = |source| EngineError::Io {
        op: "write packed experts",
        path: path.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    let pad = vec![0u8; layout.stride - layout.record.record_len];
    for l in 0..layout.num_layers as u32 {
        for e in 0..layout.num_experts as u32 {
            out.write_all(experts.record(l, e)?).map_err(io)?;
            out.write_all(&pad).map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    Ok(layout)
}

/// Reads the records a layer needs from a packed file, one positioned read per expert.
pub struct FileExperts {
    file: File,
    path: PathBuf,
    layout: PackedLayout,
    bufs: Vec<Vec<u8>>,
}

impl FileExperts {
    /// Opens a packed file, checking its length against `layout`.
    pub fn open(path: &Path, layout: PackedLayout) -> Result<Self> {
        let io = |source| EngineError::Io {
            op: "open packed experts",
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len != layout.file_len() {
            return Err(EngineError::Safetensors {
                path: path.to_path_buf(),
                reason: format!(
                    "packed expert file is {len} bytes, layout needs {}",
                    layout.file_len()
                ),
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            layout,
            bufs: Vec::new(),
        })
    }
}

impl ExpertSource for FileExperts {
    fn layout(&self) -> &ExpertLayout {
        &self.layout.record
    }

    fn experts(&mut self, layer: u32, ids: &[u32]) -> Result<ExpertBatch<'_>> {
        let n = self.layout.record.record_len;
        self.bufs
            .resize_with(ids.len().max(self.bufs.len()), || vec![0; n]);
        for (buf, &e) in self.bufs.iter_mut().zip(ids) {
            let offset = self
                .layout
                .offset(layer, e)
                .ok_or_else(|| EngineError::Expert {
                    layer,
                    expert: e,
                    reason: format!(
                        "outside {} ({} layers x {} experts)",
                        self.path.display(),
                        self.layout.num_layers,
                        self.layout.num_experts
                    ),
                })?;
            self.file
                .read_exact_at(buf, offset)
                .map_err(|err| EngineError::Expert {
                    layer,
                    expert: e,
                    reason: format!("read {} at offset {offset}: {err}", self.path.display()),
                })?;
        }
        Ok(ExpertBatch {
            records: self.bufs[..ids.len()].iter().map(Vec::as_slice).collect(),
            keep_alive: None,
        })
    }
}
