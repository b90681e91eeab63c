//! Where every expert's bytes live: (layer, expert) → (file, offset, len, checksum).
//!
//! An [`ExpertLayout`] is built in code with [`LayoutBuilder`] or loaded from a manifest
//! (see [`crate::manifest`]). [`ExpertLayout::validate_files`] checks it against the files on disk.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Alignment of every record's offset and length, so that direct I/O works on any device.
pub const RECORD_ALIGN: u64 = 4096;

/// Names one expert of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpertKey {
    pub layer: u32,
    pub expert: u32,
}

impl ExpertKey {
    pub const fn new(layer: u32, expert: u32) -> Self {
        Self { layer, expert }
    }
}

/// Where one expert record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertLocation {
    /// Index into [`ExpertLayout::files`].
    pub file: u32,
    /// Byte offset of the record, a multiple of [`RECORD_ALIGN`].
    pub offset: u64,
    /// Bytes of payload the consumer gets (may be less than the aligned read length).
    pub len: u64,
    /// Checksum of the `len` payload bytes ([`crate::checksum::checksum`]: block-wise xxh3-64).
    pub checksum: u64,
}

impl ExpertLocation {
    /// Bytes actually read: `len` rounded up to [`RECORD_ALIGN`].
    pub fn read_len(&self) -> u64 {
        self.len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
    }
}

/// A dense (layers × experts) table of expert locations over a list of files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertLayout {
    files: Vec<PathBuf>,
    layers: u32,
    experts: u32,
    entries: Vec<ExpertLocation>,
}

impl ExpertLayout {
    /// Builds a layout from its parts, checking counts, alignment and overlaps (not file sizes:
    /// see [`Self::validate_files`]).
    pub fn new(
        files: Vec<PathBuf>,
        layers: u32,
        experts: u32,
        entries: Vec<ExpertLocation>,
    ) -> Result<Self> {
        let layout = Self {
            files,
            layers,
            experts,
            entries,
        };
        layout.validate_shape()?;
        Ok(layout)
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
    pub fn num_layers(&self) -> u32 {
        self.layers
    }
    pub fn num_experts(&self) -> u32 {
        self.experts
    }

    /// The location of one expert, or [`Error::UnknownExpert`].
    pub fn get(&self, key: ExpertKey) -> Result<&ExpertLocation> {
        if key.layer >= self.layers || key.expert >= self.experts {
            return Err(Error::UnknownExpert {
                layer: key.layer,
                expert: key.expert,
                layers: self.layers,
                experts: self.experts,
            });
        }
        Ok(&self.entries[(key.layer as usize) * self.experts as usize + key.expert as usize])
    }

    /// Every (key, location), layer-major.
    pub fn iter(&self) -> impl Iterator<Item = (ExpertKey, &ExpertLocation)> + '_ {
        let experts = self.experts;
        self.entries.iter().enumerate().map(move |(i, loc)| {
            let i = i as u32;
            (ExpertKey::new(i / experts, i % experts), loc)
        })
    }

    /// Largest aligned read length of any record: the cache's slot size.
    pub fn max_read_len(&self) -> u64 {
        self.entries.iter().map(|e| e.read_len()).max().unwrap_or(0)
    }

    /// Sum of payload bytes of all experts.
    pub fn total_expert_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.len).sum()
    }

    /// Returns the path of file `index`, for error messages.
    pub fn file_path(&self, index: u32) -> &Path {
        &self.files[index as usize]
    }

    fn validate_shape(&self) -> Result<()> {
        if self.layers == 0 || self.experts == 0 {
            return Err(Error::layout(format!(
                "layout has {} layers x {} experts; both must be > 0",
                self.layers, self.experts
            )));
        }
        let want = self.layers as u64 * self.experts as u64;
        if self.entries.len() as u64 != want {
            return Err(Error::layout(format!(
                "layout has {} entries, expected {} layers x {} experts = {}",
                self.entries.len(),
                self.layers,
                self.experts,
                want
            )));
        }
        if self.files.is_empty() {
            return Err(Error::layout("layout names no files"));
        }
        for (key, loc) in self.iter() {
            let at = || format!("layer {} expert {}", key.layer, key.expert);
            if loc.file as usize >= self.files.len() {
                return Err(Error::layout(format!(
                    "{}: file index {} out of range (layout has {} files)",
                    at(),
                    loc.file,
                    self.files.len()
                )));
            }
            if loc.offset % RECORD_ALIGN != 0 {
                return Err(Error::layout(format!(
                    "{}: offset {} in {} is not a multiple of {RECORD_ALIGN}",
                    at(),
                    loc.offset,
                    self.files[loc.file as usize].display()
                )));
            }
            if loc.len == 0 {
                return Err(Error::layout(format!("{}: record length is 0", at())));
            }
            if loc.offset.checked_add(loc.read_len()).is_none() {
                return Err(Error::layout(format!(
                    "{}: offset {} + length {} overflows",
                    at(),
                    loc.offset,
                    loc.len
                )));
            }
        }
        // Overlaps: sort (file, offset) and compare neighbours' aligned extents.
        let mut order: Vec<(u32, u64, u64, ExpertKey)> = self
            .iter()
            .map(|(k, l)| (l.file, l.offset, l.read_len(), k))
            .collect();
        order.sort_unstable();
        for pair in order.windows(2) {
            let (fa, oa, la, ka) = pair[0];
            let (fb, ob, _, kb) = pair[1];
            if fa == fb && oa + la > ob {
                return Err(Error::layout(format!(
                    "layer {} expert {} [{}..{}) overlaps layer {} expert {} at {} in {}",
                    ka.layer,
                    ka.expert,
                    oa,
                    oa + la,
                    kb.layer,
                    kb.expert,
                    ob,
                    self.files[fa as usize].display()
                )));
            }
        }
        Ok(())
    }

    /// Checks every record against the real size of its file (records must lie inside it,
    /// including the alignment padding that direct I/O reads).
    pub fn validate_files(&self) -> Result<()> {
        let mut sizes = Vec::with_capacity(self.files.len());
        for path in &self.files {
            let meta = std::fs::metadata(path).map_err(|e| Error::file("stat", path, e))?;
            sizes.push(meta.len());
        }
        for (key, loc) in self.iter() {
            let size = sizes[loc.file as usize];
            let end = loc.offset + loc.read_len();
            if end > size {
                return Err(Error::layout(format!(
                    "layer {} expert {}: record [{}..{}) lies past the end of {} ({} bytes)",
                    key.layer,
                    key.expert,
                    loc.offset,
                    end,
                    self.files[loc.file as usize].display(),
                    size
                )));
            }
        }
        Ok(())
    }
}

/// Builds an [`ExpertLayout`] in code, for runtimes with their own file formats.
///
/// ```
/// use io_sched::layout::{LayoutBuilder, ExpertKey};
/// let mut b = LayoutBuilder::new(2, 4);
/// let f = b.add_file("/models/experts.bin");
/// for layer in 0..2 {
///     for expert in 0..4 {
///         let offset = ((layer * 4 + expert) as u64) * 8192;
///         b.set(ExpertKey::new(layer, expert), f, offset, 8000, 0);
///     }
/// }
/// let layout = b.build().unwrap();
/// assert_eq!(layout.max_read_len(), 8192);
/// ```
#[derive(Debug)]
pub struct LayoutBuilder {
    files: Vec<PathBuf>,
    layers: u32,
    experts: u32,
    entries: Vec<Option<ExpertLocation>>,
}

impl LayoutBuilder {
    pub fn new(layers: u32, experts: u32) -> Self {
        Self {
            files: Vec::new(),
            layers,
            experts,
            entries: vec![None; layers as usize * experts as usize],
        }
    }

    /// Adds a file and returns its index.
    pub fn add_file(&mut self, path: impl Into<PathBuf>) -> u32 {
        self.files.push(path.into());
        (self.files.len() - 1) as u32
    }

    /// Sets one record. Out-of-range keys are reported by [`Self::build`].
    pub fn set(&mut self, key: ExpertKey, file: u32, offset: u64, len: u64, checksum: u64) {
        if key.layer < self.layers && key.expert < self.experts {
            let i = key.layer as usize * self.experts as usize + key.expert as usize;
            self.entries[i] = Some(ExpertLocation {
                file,
                offset,
                len,
                checksum,
            });
        }
    }

    pub fn build(self) -> Result<ExpertLayout> {
        let experts = self.experts.max(1);
        let mut entries = Vec::with_capacity(self.entries.len());
        for (i, e) in self.entries.into_iter().enumerate() {
            match e {
                Some(loc) => entries.push(loc),
                None => {
                    return Err(Error::layout(format!(
                        "layer {} expert {} has no record",
                        i as u32 / experts,
                        i as u32 % experts
                    )));
                }
            }
        }
        ExpertLayout::new(self.files, self.layers, self.experts, entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_by_two(offsets: [u64; 4], len: u64) -> Result<ExpertLayout> {
        let mut b = LayoutBuilder::new(2, 2);
        let f = b.add_file("x.bin");
        for (i, off) in offsets.into_iter().enumerate() {
            b.set(ExpertKey::new(i as u32 / 2, i as u32 % 2), f, off, len, 0);
        }
        b.build()
    }

    #[test]
    fn accepts_aligned_disjoint_records() {
        let l = two_by_two([0, 4096, 8192, 12288], 4000).unwrap();
        assert_eq!(l.get(ExpertKey::new(1, 1)).unwrap().offset, 12288);
        assert_eq!(l.total_expert_bytes(), 16000);
    }

    #[test]
    fn rejects_misaligned_offset_naming_the_entry() {
        let e = two_by_two([0, 4096, 8193, 16384], 4000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 1 expert 0") && e.contains("8193"), "{e}");
    }

    #[test]
    fn rejects_overlap_naming_both_entries() {
        // 5000 bytes round up to 8192, so the record at 4096 runs into the one at 8192.
        let e = two_by_two([0, 4096, 8192, 16384], 5000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlaps"), "{e}");
        assert!(
            e.contains("layer 0 expert 0") || e.contains("layer 0 expert 1"),
            "{e}"
        );
    }

    #[test]
    fn rejects_missing_entry_and_unknown_key() {
        let mut b = LayoutBuilder::new(1, 2);
        let f = b.add_file("x.bin");
        b.set(ExpertKey::new(0, 0), f, 0, 10, 0);
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains("layer 0 expert 1 has no record"), "{e}");

        let l = two_by_two([0, 4096, 8192, 12288], 10).unwrap();
        let e = l.get(ExpertKey::new(2, 0)).unwrap_err().to_string();
        assert!(e.contains("layer 2 expert 0"), "{e}");
    }

    #[test]
    fn validate_files_catches_record_past_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        std::fs::write(&path, vec![0u8; 12288]).unwrap();
        let mut b = LayoutBuilder::new(1, 2);
        let f = b.add_file(&path);
        b.set(ExpertKey::new(0, 0), f, 0, 4096, 0);
        b.set(ExpertKey::new(0, 1), f, 8192, 4097, 0);
        let e = b.build().unwrap().validate_files().unwrap_err().to_string();
        assert!(
            e.contains("layer 0 expert 1") && e.contains("past the end"),
            "{e}"
        );
    }
}
