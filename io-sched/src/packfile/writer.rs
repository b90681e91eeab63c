//! [`PackWriter`]: streams records into a packed file; [`write_pack_set`]: a whole model.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{HEADER_LEN, MAX_RECORDS, PackEntry, PackHeader, TABLE_ENTRY_LEN};
use crate::checksum::checksum;
use crate::error::{Error, Result};
use crate::layout::{ExpertKey, ExpertLayout, LayoutBuilder, RECORD_ALIGN};
use crate::manifest::{Manifest, sync_parent, temp_sibling};

/// Streams expert records into one packed file.
///
/// ```
/// use io_sched::{ExpertKey, packfile::{PackWriter, PackReader}};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("experts.fmoe");
/// let mut w = PackWriter::create(&path, 1, 2)?;
/// w.append(ExpertKey::new(0, 1), &[7u8; 5000])?;
/// w.append(ExpertKey::new(0, 0), &[9u8; 100])?;
/// w.finish()?;
/// let layout = PackReader::open(&path)?.layout()?;
/// assert_eq!(layout.get(ExpertKey::new(0, 1))?.len, 5000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PackWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    header: PackHeader,
    pos: u64,
    entries: Vec<PackEntry>,
    seen: Vec<bool>,
}

impl PackWriter {
    /// Starts a file holding every layer of a `layers × experts` model.
    pub fn create(path: impl AsRef<Path>, layers: u32, experts: u32) -> Result<Self> {
        Self::create_layers(path, layers, experts, 0, layers)
    }

    /// Starts a file holding layers `first_layer..first_layer + layer_count` of a
    /// `layers × experts` model (one file per layer: `layer_count = 1`).
    pub fn create_layers(
        path: impl AsRef<Path>,
        layers: u32,
        experts: u32,
        first_layer: u32,
        layer_count: u32,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if layers == 0 || experts == 0 || layer_count == 0 {
            return Err(Error::layout(format!(
                "{}: {layers} layers x {experts} experts, {layer_count} layers in this file: all must be > 0",
                path.display()
            )));
        }
        if first_layer as u64 + layer_count as u64 > layers as u64 {
            return Err(Error::layout(format!(
                "{}: layers {first_layer}..{} lie outside the model's {layers} layers",
                path.display(),
                first_layer as u64 + layer_count as u64
            )));
        }
        let record_count = layer_count as u64 * experts as u64;
        if record_count > MAX_RECORDS {
            return Err(Error::layout(format!(
                "{}: {layer_count} layers x {experts} experts = {record_count} records, more than the {MAX_RECORDS} a file may hold",
                path.display()
            )));
        }
        let tmp = temp_sibling(&path);
        let file = File::create(&tmp).map_err(|e| Error::file("create", &tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Placeholder header; the real one is written by `finish`.
        out.write_all(&[0u8; HEADER_LEN as usize])
            .map_err(|e| Error::file("write", &tmp, e))?;
        Ok(Self {
            path,
            tmp,
            out: Some(out),
            header: PackHeader {
                layers,
                experts,
                first_layer,
                layer_count,
                record_count,
                table_offset: 0,
                table_len: record_count * TABLE_ENTRY_LEN,
                table_checksum: 0,
                flags: 0,
            },
            pos: HEADER_LEN,
            entries: Vec::new(),
            seen: vec![false; record_count as usize],
        })
    }

    fn slot(&self, key: ExpertKey) -> Option<usize> {
        let h = &self.header;
        let rel = key.layer.checked_sub(h.first_layer)?;
        (rel < h.layer_count && key.expert < h.experts)
            .then(|| rel as usize * h.experts as usize + key.expert as usize)
    }

    /// Writes one record now (nothing is buffered beyond the writer's 1 MiB) and returns where it
    /// went. Rejects keys outside this file's layers, duplicates and empty records.
    pub fn append(&mut self, key: ExpertKey, bytes: &[u8]) -> Result<PackEntry> {
        let at = || {
            format!(
                "{}: layer {} expert {}",
                self.path.display(),
                key.layer,
                key.expert
            )
        };
        let Some(slot) = self.slot(key) else {
            let h = &self.header;
            return Err(Error::layout(format!(
                "{}: outside this file's layers {}..{} x {} experts",
                at(),
                h.first_layer,
                h.first_layer + h.layer_count,
                h.experts
            )));
        };
        if bytes.is_empty() {
            return Err(Error::layout(format!("{}: record is empty", at())));
        }
        if self.seen[slot] {
            return Err(Error::layout(format!("{}: appended twice", at())));
        }
        let out = self.out.as_mut().ok_or_else(|| {
            Error::layout(format!("{}: writer already failed", self.path.display()))
        })?;
        let entry = PackEntry {
            key,
            offset: self.pos,
            len: bytes.len() as u64,
            checksum: checksum(bytes),
        };
        let pad = (entry.read_len() - entry.len) as usize;
        let res = out
            .write_all(bytes)
            .and_then(|_| out.write_all(&[0u8; RECORD_ALIGN as usize][..pad]));
        if let Err(e) = res {
            self.out = None;
            return Err(Error::file("write", &self.tmp, e));
        }
        self.pos += entry.read_len();
        self.seen[slot] = true;
        self.entries.push(entry);
        Ok(entry)
    }

    /// Checks that every record was appended, writes the table, patches the header, fsyncs and
    /// renames the temporary file to its final name. Returns the entries sorted by key.
    pub fn finish(mut self) -> Result<Vec<PackEntry>> {
        if self.entries.len() as u64 != self.header.record_count {
            let missing = (0..self.header.record_count as usize)
                .find(|&i| !self.seen.get(i).copied().unwrap_or(false))
                .unwrap_or(0);
            let e = self.header.experts as usize;
            return Err(Error::layout(format!(
                "{}: no record appended for layer {} expert {} ({} of {} written)",
                self.path.display(),
                self.header.first_layer as usize + missing / e,
                missing % e,
                self.entries.len(),
                self.header.record_count
            )));
        }
        self.entries.sort_unstable_by_key(|e| e.key);
        let mut table = Vec::with_capacity(self.header.table_len as usize);
        for e in &self.entries {
            table.extend_from_slice(&e.key.layer.to_le_bytes());
            table.extend_from_slice(&e.key.expert.to_le_bytes());
            table.extend_from_slice(&e.offset.to_le_bytes());
            table.extend_from_slice(&e.len.to_le_bytes());
            table.extend_from_slice(&e.checksum.to_le_bytes());
        }
        self.header.table_offset = self.pos;
        self.header.table_checksum = checksum(&table);
        let header = self.header.encode();
        let tmp_owned = self.tmp.clone();
        let tmp = &tmp_owned;
        let out = self.out.take().ok_or_else(|| {
            Error::layout(format!("{}: writer already failed", self.path.display()))
        })?;
        let io = |op: &'static str| move |e| Error::file(op, tmp, e);
        let mut out = out.into_inner().map_err(|e| io("write")(e.into_error()))?;
        out.write_all(&table).map_err(io("write"))?;
        out.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
        out.write_all(&header).map_err(io("write"))?;
        out.sync_all().map_err(io("fsync"))?;
        drop(out);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::file("rename", &self.path, e))?;
        sync_parent(&self.path);
        Ok(std::mem::take(&mut self.entries))
    }
}

impl Drop for PackWriter {
    /// An unfinished writer removes its temporary file (the final name was never created).
    fn drop(&mut self) {
        if self.out.is_some() || self.tmp.exists() {
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// How [`write_pack_set`] splits a model into files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackSplit {
    /// `experts.fmoe` holds every layer.
    SingleFile,
    /// `experts-layer-NNNN.fmoe` per layer.
    PerLayer,
}

/// Writes a whole `layers × experts` model into `dir` (one file or one per layer, see
/// [`PackSplit`]) plus `dir/manifest.json` carrying `meta`, and returns the layout.
///
/// `fill(key, buf)` must replace `buf`'s contents with the record of `key`; it is called once
/// per record, layer-major, and `buf` is reused so only one record is in memory at a time.
pub fn write_pack_set(
    dir: impl AsRef<Path>,
    layers: u32,
    experts: u32,
    split: PackSplit,
    meta: Option<&serde_json::Value>,
    mut fill: impl FnMut(ExpertKey, &mut Vec<u8>) -> Result<()>,
) -> Result<ExpertLayout> {
    let dir = dir.as_ref();
    let groups: Vec<(PathBuf, u32, u32)> = match split {
        PackSplit::SingleFile => vec![(dir.join("experts.fmoe"), 0, layers)],
        PackSplit::PerLayer => (0..layers)
            .map(|l| (dir.join(format!("experts-layer-{l:04}.fmoe")), l, 1))
            .collect(),
    };
    let mut b = LayoutBuilder::new(layers, experts);
    let mut buf = Vec::new();
    for (path, first, count) in &groups {
        let mut w = PackWriter::create_layers(path, layers, experts, *first, *count)?;
        for layer in *first..first + count {
            for expert in 0..experts {
                let key = ExpertKey::new(layer, expert);
                buf.clear();
                fill(key, &mut buf)?;
                w.append(key, &buf)?;
            }
        }
        let f = b.add_file(path);
        for e in w.finish()? {
            b.set(e.key, f, e.offset, e.len, e.checksum);
        }
    }
    let layout = b.build()?;
    Manifest::save(dir.join("manifest.json"), &layout, meta)?;
    Ok(layout)
}
