//! The packed-experts file format, version 1, with its streaming writer and checking reader.
//!
//! A packed file holds the expert records of some consecutive layers (all of them, or one layer
//! per file) laid out for direct I/O. Other runtimes may produce it; io-sched treats it as
//! untrusted input.
//!
//! # Layout
//!
//! ```text
//! [0, 4096)                     header
//! [4096, table_offset)          records, each at a multiple of 4096, zero-padded to a multiple of 4096
//! [table_offset, +table_len)    record table; the file ends exactly here
//! ```
//!
//! All integers are little-endian, all fields fixed-size. Every "checksum" is
//! [`crate::checksum::checksum`]: xxh3-64 over the xxh3-64s of 256 KiB blocks.
//!
//! ## Header (4096 bytes)
//!
//! | bytes | type | field |
//! |---|---|---|
//! | 0..8 | `[u8; 8]` | magic, ASCII `FMOEXPT1` |
//! | 8..12 | u32 | version = 1 |
//! | 12..16 | u32 | header size = 4096 |
//! | 16..20 | u32 | `layers`: layers of the whole model (≥ 1) |
//! | 20..24 | u32 | `experts`: experts per layer (≥ 1) |
//! | 24..28 | u32 | `first_layer`: first layer stored in this file |
//! | 28..32 | u32 | `layer_count`: layers stored (≥ 1, `first_layer + layer_count ≤ layers`) |
//! | 32..40 | u64 | `record_count` = `layer_count × experts` (at most 2²⁴ per file) |
//! | 40..48 | u64 | `table_offset`: multiple of 4096, ≥ 4096 |
//! | 48..56 | u64 | `table_len` = `record_count × 32` |
//! | 56..64 | u64 | `table_checksum`: checksum (see below) of the `table_len` table bytes |
//! | 64..72 | u64 | `flags`: none defined in v1; must be 0 (a reader rejects unknown bits) |
//! | 72..4088 | — | reserved, written as zero |
//! | 4088..4096 | u64 | `header_checksum`: checksum of bytes 0..4088 |
//!
//! ## Record table (`record_count` entries of 32 bytes, any order)
//!
//! | bytes | type | field |
//! |---|---|---|
//! | 0..4 | u32 | layer (in `first_layer..first_layer + layer_count`) |
//! | 4..8 | u32 | expert (in `0..experts`) |
//! | 8..16 | u64 | offset: multiple of 4096, ≥ 4096 |
//! | 16..24 | u64 | len: payload bytes, ≥ 1; the record occupies `len` rounded up to 4096, which must end at or before `table_offset` and overlap no other record |
//! | 24..32 | u64 | checksum of the `len` payload bytes |
//!
//! Every `(layer, expert)` of the file's layers appears exactly once.
//!
//! # Writing and reading
//!
//! [`PackWriter`] streams records to a temporary name and renames it only after the table and
//! header are written and fsynced, so a file under the final name is always complete.
//! [`write_pack_set`] writes a whole model (one file, or one file per layer) plus its manifest.
//! [`PackReader::open`] checks everything above against the real file length before allocating
//! anything sized by the file; [`verify()`] re-reads every record and checks its checksum.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::checksum::checksum;
use crate::error::{Error, Result};
use crate::layout::{ExpertKey, ExpertLayout, LayoutBuilder, RECORD_ALIGN};

mod verify;
mod writer;

pub use verify::{VerifyProgress, verify};
pub use writer::{PackSplit, PackWriter, write_pack_set};

/// First 8 bytes of every packed-experts file.
pub const PACK_MAGIC: [u8; 8] = *b"FMOEXPT1";
/// The format version this code reads and writes.
pub const PACK_VERSION: u32 = 1;
/// Size of the header, also the alignment of records and of the table.
pub const HEADER_LEN: u64 = 4096;
/// Size of one record-table entry.
pub const TABLE_ENTRY_LEN: u64 = 32;
const HEADER_CHECKSUM_AT: usize = 4088;
/// Most records one file may hold (a 512 MiB table); real models have tens of thousands.
pub const MAX_RECORDS: u64 = 1 << 24;

/// The parsed, validated header of a packed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackHeader {
    /// Layers of the whole model.
    pub layers: u32,
    /// Experts per layer.
    pub experts: u32,
    /// First layer stored in this file.
    pub first_layer: u32,
    /// Number of consecutive layers stored in this file.
    pub layer_count: u32,
    /// `layer_count × experts`.
    pub record_count: u64,
    /// Where the record table starts (the file ends at `table_offset + table_len`).
    pub table_offset: u64,
    /// `record_count × 32`.
    pub table_len: u64,
    /// Checksum of the record table.
    pub table_checksum: u64,
    /// Feature bits; 0 in version 1.
    pub flags: u64,
}

impl PackHeader {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN as usize];
        h[0..8].copy_from_slice(&PACK_MAGIC);
        h[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[16..20].copy_from_slice(&self.layers.to_le_bytes());
        h[20..24].copy_from_slice(&self.experts.to_le_bytes());
        h[24..28].copy_from_slice(&self.first_layer.to_le_bytes());
        h[28..32].copy_from_slice(&self.layer_count.to_le_bytes());
        h[32..40].copy_from_slice(&self.record_count.to_le_bytes());
        h[40..48].copy_from_slice(&self.table_offset.to_le_bytes());
        h[48..56].copy_from_slice(&self.table_len.to_le_bytes());
        h[56..64].copy_from_slice(&self.table_checksum.to_le_bytes());
        h[64..72].copy_from_slice(&self.flags.to_le_bytes());
        let sum = checksum(&h[..HEADER_CHECKSUM_AT]);
        h[HEADER_CHECKSUM_AT..].copy_from_slice(&sum.to_le_bytes());
        h
    }
}

/// One record of a packed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// Which expert.
    pub key: ExpertKey,
    /// Byte offset in the file, a multiple of 4096.
    pub offset: u64,
    /// Payload bytes (the record occupies `len` rounded up to 4096).
    pub len: u64,
    /// Checksum of the payload.
    pub checksum: u64,
}

impl PackEntry {
    pub(crate) fn read_len(&self) -> u64 {
        self.len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
    }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
/// A packed file whose header and table have been fully validated.
#[derive(Debug, Clone)]
pub struct PackReader {
    path: PathBuf,
    header: PackHeader,
    entries: Vec<PackEntry>,
}

impl PackReader {
    /// Opens and validates `path`: magic, version, header and table checksums, counts, and every
    /// record (inside the file, aligned, non-empty, unique, no overlaps). Nothing sized by the
    /// file is allocated before its size has been checked against the real file length.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bad = |msg: String| Error::layout(format!("{}: {msg}", path.display()));
        let mut f = File::open(&path).map_err(|e| Error::file("open", &path, e))?;
        let file_len = f
            .metadata()
            .map_err(|e| Error::file("stat", &path, e))?
            .len();
        if file_len < HEADER_LEN {
            return Err(bad(format!(
                "truncated: {file_len} bytes, shorter than the {HEADER_LEN}-byte header"
            )));
        }
        let mut h = vec![0u8; HEADER_LEN as usize];
        f.read_exact(&mut h)
            .map_err(|e| Error::file("read header", &path, e))?;
        if h[0..8] != PACK_MAGIC {
            return Err(bad(format!(
                "not a packed-experts file: magic {:?}, expected \"FMOEXPT1\"",
                String::from_utf8_lossy(&h[0..8])
            )));
        }
        let stored = u64_at(&h, HEADER_CHECKSUM_AT);
        let actual = checksum(&h[..HEADER_CHECKSUM_AT]);
        if stored != actual {
            return Err(bad(format!(
                "header checksum mismatch: stored {stored:#018x}, computed {actual:#018x}"
            )));
        }
        let version = u32_at(&h, 8);
        if version != PACK_VERSION {
            return Err(bad(format!(
                "unsupported version {version}, this reader knows version {PACK_VERSION}"
            )));
        }
        if u32_at(&h, 12) as u64 != HEADER_LEN {
            return Err(bad(format!(
                "header size {} is not {HEADER_LEN}",
                u32_at(&h, 12)
            )));
        }
        let hd = PackHeader {
            layers: u32_at(&h, 16),
            experts: u32_at(&h, 20),
            first_layer: u32_at(&h, 24),
            layer_count: u32_at(&h, 28),
            record_count: u64_at(&h, 32),
            table_offset: u64_at(&h, 40),
            table_len: u64_at(&h, 48),
            table_checksum: u64_at(&h, 56),
            flags: u64_at(&h, 64),
        };
        validate_header(&hd, file_len).map_err(bad)?;
        // Sized by the header, but the header was just checked against the real file length.
        let mut table = vec![0u8; hd.table_len as usize];
        f.seek(SeekFrom::Start(hd.table_offset))
            .and_then(|_| f.read_exact(&mut table))
            .map_err(|e| Error::file("read record table", &path, e))?;
        let actual = checksum(&table);
        if actual != hd.table_checksum {
            return Err(bad(format!(
                "record table checksum mismatch: header says {:#018x}, table hashes to {actual:#018x}",
                hd.table_checksum
            )));
        }
        let entries = parse_table(&hd, &table).map_err(bad)?;
        Ok(Self {
            path,
            header: hd,
            entries,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &PackHeader {
        &self.header
    }

    /// Every record, in table order.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// The layout of a file that holds every layer of its model.
    pub fn layout(&self) -> Result<ExpertLayout> {
        Self::layout_of_set(std::slice::from_ref(self))
    }

    /// Opens several packed files (e.g. one per layer) and joins them into one layout.
    pub fn open_set<P: AsRef<Path>>(paths: &[P]) -> Result<ExpertLayout> {
        let readers = paths.iter().map(Self::open).collect::<Result<Vec<_>>>()?;
        Self::layout_of_set(&readers)
    }

    /// Joins already opened files into one layout: they must agree on the model's shape and
    /// together hold every layer exactly once.
    pub fn layout_of_set(readers: &[PackReader]) -> Result<ExpertLayout> {
        let Some(first) = readers.first() else {
            return Err(Error::layout("no packed files given"));
        };
        let (layers, experts) = (first.header.layers, first.header.experts);
        // A header may claim billions of layers: check that the files can cover them before
        // allocating anything sized by `layers`.
        let held: u64 = readers.iter().map(|r| r.header.layer_count as u64).sum();
        if held < layers as u64 {
            return Err(Error::layout(format!(
                "no packed file holds some of the {layers} layers: {} files given hold {held} layers in all (first {})",
                readers.len(),
                first.path.display()
            )));
        }
        let mut owner: Vec<Option<usize>> = vec![None; layers as usize];
        for (i, r) in readers.iter().enumerate() {
            let h = &r.header;
            if (h.layers, h.experts) != (layers, experts) {
                return Err(Error::layout(format!(
                    "{}: model is {} layers x {} experts, but {} says {layers} x {experts}",
                    r.path.display(),
                    h.layers,
                    h.experts,
                    first.path.display()
                )));
            }
            for layer in h.first_layer..h.first_layer + h.layer_count {
                if let Some(j) = owner[layer as usize].replace(i) {
                    return Err(Error::layout(format!(
                        "layer {layer} is stored in both {} and {}",
                        readers[j].path.display(),
                        r.path.display()
                    )));
                }
            }
        }
        if let Some(layer) = owner.iter().position(Option::is_none) {
            return Err(Error::layout(format!(
                "no packed file holds layer {layer} of {layers} ({} files given, first {})",
                readers.len(),
                first.path.display()
            )));
        }
        let mut b = LayoutBuilder::new(layers, experts);
        for r in readers {
            let f = b.add_file(&r.path);
            for e in &r.entries {
                b.set(e.key, f, e.offset, e.len, e.checksum);
            }
        }
        b.build()
    }
}

fn validate_header(h: &PackHeader, file_len: u64) -> std::result::Result<(), String> {
    if h.flags != 0 {
        return Err(format!(
            "unknown flags {:#x} (version 1 defines none)",
            h.flags
        ));
    }
    if h.layers == 0 || h.experts == 0 || h.layer_count == 0 {
        return Err(format!(
            "header says {} layers x {} experts with {} layers in this file; all must be > 0",
            h.layers, h.experts, h.layer_count
        ));
    }
    if h.first_layer as u64 + h.layer_count as u64 > h.layers as u64 {
        return Err(format!(
            "header says layers {}..{} but the model has {} layers",
            h.first_layer,
            h.first_layer as u64 + h.layer_count as u64,
            h.layers
        ));
    }
    let want = h.layer_count as u64 * h.experts as u64;
    if want > MAX_RECORDS {
        return Err(format!(
            "header says {} layers x {} experts = {want} records, more than the {MAX_RECORDS} accepted",
            h.layer_count, h.experts
        ));
    }
    if h.record_count != want {
        return Err(format!(
            "header says {} records, expected {} layers x {} experts = {want}",
            h.record_count, h.layer_count, h.experts
        ));
    }
    if h.record_count.checked_mul(TABLE_ENTRY_LEN) != Some(h.table_len) {
        return Err(format!(
            "record table length {} is not {} records x {TABLE_ENTRY_LEN} bytes",
            h.table_len, h.record_count
        ));
    }
    if h.table_offset < HEADER_LEN || !h.table_offset.is_multiple_of(RECORD_ALIGN) {
        return Err(format!(
            "record table offset {} is not a multiple of {RECORD_ALIGN} after the header",
            h.table_offset
        ));
    }
    match h.table_offset.checked_add(h.table_len) {
        Some(end) if end == file_len => {}
        Some(end) if end > file_len => {
            return Err(format!(
                "truncated: file is {file_len} bytes, the record table ends at {end}"
            ));
        }
        end => {
            return Err(format!(
                "file is {file_len} bytes, but the record table ends at {} (trailing bytes?)",
                end.map_or("overflow".to_string(), |e| e.to_string())
            ));
        }
    }
    // Every record occupies at least one aligned block between header and table.
    let room = (h.table_offset - HEADER_LEN) / RECORD_ALIGN;
    if h.record_count > room {
        return Err(format!(
            "{} records cannot fit in the {} bytes between header and table",
            h.record_count,
            h.table_offset - HEADER_LEN
        ));
    }
    Ok(())
}

fn parse_table(h: &PackHeader, table: &[u8]) -> std::result::Result<Vec<PackEntry>, String> {
    let mut entries = Vec::with_capacity(h.record_count as usize);
    let mut seen: Vec<Option<usize>> = vec![None; h.record_count as usize];
    for (i, raw) in table.chunks_exact(TABLE_ENTRY_LEN as usize).enumerate() {
        let e = PackEntry {
            key: ExpertKey::new(u32_at(raw, 0), u32_at(raw, 4)),
            offset: u64_at(raw, 8),
            len: u64_at(raw, 16),
            checksum: u64_at(raw, 24),
        };
        let at = format!(
            "record table entry {i} (layer {} expert {})",
            e.key.layer, e.key.expert
        );
        let rel = e.key.layer.wrapping_sub(h.first_layer);
        if e.key.layer < h.first_layer || rel >= h.layer_count || e.key.expert >= h.experts {
            return Err(format!(
                "{at}: outside this file's layers {}..{} x {} experts",
                h.first_layer,
                h.first_layer as u64 + h.layer_count as u64,
                h.experts
            ));
        }
        if e.len == 0 {
            return Err(format!("{at}: record length is 0"));
        }
        if !e.offset.is_multiple_of(RECORD_ALIGN) || e.offset < HEADER_LEN {
            return Err(format!(
                "{at}: offset {} is not a multiple of {RECORD_ALIGN} after the header",
                e.offset
            ));
        }
        // len ≤ table_offset is checked first, so neither sum can overflow.
        if e.len > h.table_offset || e.offset > h.table_offset - e.read_len() {
            return Err(format!(
                "{at}: record [{}..+{}) runs past the record table at {}",
                e.offset, e.len, h.table_offset
            ));
        }
        let slot = &mut seen[rel as usize * h.experts as usize + e.key.expert as usize];
        if let Some(first) = slot {
            return Err(format!("{at}: duplicate of record table entry {first}"));
        }
        *slot = Some(i);
        entries.push(e);
    }
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_unstable_by_key(|&i| entries[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&entries[w[0]], &entries[w[1]]);
        if a.offset + a.read_len() > b.offset {
            return Err(format!(
                "record table entry {} (layer {} expert {}) [{}..{}) overlaps entry {} (layer {} expert {}) at {}",
                w[0],
                a.key.layer,
                a.key.expert,
                a.offset,
                a.offset + a.read_len(),
                w[1],
                b.key.layer,
                b.key.expert,
                b.offset
            ));
        }
    }
    Ok(entries)
}
