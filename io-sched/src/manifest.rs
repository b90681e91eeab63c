//! The JSON manifest describing an [`ExpertLayout`]: a public, versioned format.
//!
//! Other runtimes (and our packer) write a `manifest.json` next to their expert files; io-sched
//! reads it, checks it like any untrusted input, and gets an [`ExpertLayout`].
//!
//! # Format, version 1
//!
//! ```json
//! {
//!   "format": "flashmoe-experts-manifest",
//!   "version": 1,
//!   "layers": 2,
//!   "experts": 2,
//!   "files": ["experts.fmoe", "more/other.bin"],
//!   "records": [
//!     {"layer": 0, "expert": 0, "file": 0, "offset": 4096,  "len": 7000, "checksum": "9f0c1e2d3b4a5968"},
//!     {"layer": 0, "expert": 1, "file": 0, "offset": 12288, "len": 7000, "checksum": "0000000000000001"},
//!     {"layer": 1, "expert": 0, "file": 1, "offset": 0,     "len": 4096, "checksum": "00000000deadbeef"},
//!     {"layer": 1, "expert": 1, "file": 1, "offset": 4096,  "len": 1,    "checksum": "0123456789abcdef"}
//!   ],
//!   "meta": {"dtype": "q4", "hidden": 4096}
//! }
//! ```
//!
//! - `format` must be exactly `"flashmoe-experts-manifest"` and `version` exactly `1`.
//! - `layers`, `experts`: both ≥ 1 and < 2³²; the layout is the dense `layers × experts` table.
//! - `files`: file paths relative to the directory holding the manifest, inside it: an
//!   absolute path or a `..` component is refused (a model directory must not make us read
//!   files elsewhere; symlinks the owner placed inside it are followed).
//! - `records`: exactly one per `(layer, expert)`, in any order. `file` indexes `files`;
//!   `offset` is a multiple of 4096; `len` (≥ 1) is the payload length, and the record occupies
//!   `len` rounded up to 4096 bytes, which must lie inside the file and overlap no other record;
//!   `checksum` is the flashmoe checksum ([`crate::checksum::checksum`]: block-wise xxh3-64) of the `len` payload bytes,
//!   written as exactly 16 hexadecimal digits (either case, no `0x`).
//! - `meta` (optional): any JSON value; io-sched carries it through untouched (dtype, shapes,
//!   quantisation — whatever the producing runtime needs).
//! - Unknown top-level or record keys are rejected, so that a typo does not silently drop a field.
//!
//! [`Manifest::load`] checks all of that, then [`ExpertLayout::new`] (counts, alignment,
//! overlaps) and [`ExpertLayout::validate_files`] (sizes). Every error names the manifest and,
//! where there is one, the record (its index and its layer/expert).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::{ExpertLayout, ExpertLocation};

/// Value of the manifest's `"format"` key.
pub const MANIFEST_FORMAT: &str = "flashmoe-experts-manifest";
/// The manifest version this code reads and writes.
pub const MANIFEST_VERSION: u64 = 1;
/// Largest manifest accepted (a 60-layer × 512-expert model needs about 4 MB).
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// Free-form metadata carried through a manifest (`None` when the manifest has no `"meta"`).
pub type Meta = Option<serde_json::Value>;

/// Reads and writes manifests. See the [module documentation](self) for the format.
///
/// ```no_run
/// use io_sched::manifest::Manifest;
/// let (layout, meta) = Manifest::load("model/manifest.json")?;
/// println!("{} layers, meta {:?}", layout.num_layers(), meta);
/// # Ok::<(), io_sched::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Manifest;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestV1 {
    format: String,
    version: u64,
    layers: u64,
    experts: u64,
    files: Vec<PathBuf>,
    records: Vec<RecordV1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordV1 {
    layer: u64,
    expert: u64,
    file: u64,
    offset: u64,
    len: u64,
    checksum: String,
}

impl Manifest {
    /// Loads `path`, validates it (see the module doc) and checks every record against its file.
    pub fn load(path: impl AsRef<Path>) -> Result<(ExpertLayout, Meta)> {
        let path = path.as_ref();
        let size = std::fs::metadata(path)
            .map_err(|e| Error::file("stat", path, e))?
            .len();
        if size > MAX_MANIFEST_BYTES {
            return Err(Error::layout(format!(
                "{}: manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES} accepted",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::file("read", path, e))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let (layout, meta) = Self::parse(&text, base, path)?;
        layout.validate_files().map_err(|e| match e {
            Error::Layout(msg) => Error::layout(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        Ok((layout, meta))
    }

    /// Parses manifest text without touching the files. Relative paths are joined to `base_dir`;
    /// `name` is only used in error messages.
    pub fn parse(text: &str, base_dir: &Path, name: &Path) -> Result<(ExpertLayout, Meta)> {
        let bad = |msg: String| Error::layout(format!("{}: {msg}", name.display()));
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let format = value.get("format").and_then(|v| v.as_str());
        if format != Some(MANIFEST_FORMAT) {
            return Err(bad(format!(
                "\"format\" is {}, expected \"{MANIFEST_FORMAT}\"",
                value
                    .get("format")
                    .map_or("missing".to_string(), |v| v.to_string())
            )));
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(MANIFEST_VERSION) => {}
            _ => {
                return Err(bad(format!(
                    "unsupported \"version\" {}, this reader knows version {MANIFEST_VERSION}",
                    value
                        .get("version")
                        .map_or("missing".to_string(), |v| v.to_string())
                )));
            }
        }
        let m: ManifestV1 = serde_json::from_value(value)
            .map_err(|e| bad(format!("malformed version-1 manifest: {e}")))?;

        if m.layers == 0 || m.experts == 0 || m.layers > u32::MAX as u64 {
            return Err(bad(format!(
                "\"layers\" {} and \"experts\" {} must be in 1..2^32",
                m.layers, m.experts
            )));
        }
        if m.experts > u32::MAX as u64 {
            return Err(bad(format!("\"experts\" {} must be < 2^32", m.experts)));
        }
        if m.files.is_empty() {
            return Err(bad("\"files\" is empty".into()));
        }
        // Checked before allocating anything sized by `layers × experts`: the record list
        // was bounded by the size of the text.
        let want = m.layers * m.experts;
        if m.records.len() as u64 != want {
            let mut msg = format!(
                "has {} records, expected {} layers x {} experts = {want}",
                m.records.len(),
                m.layers,
                m.experts
            );
            if want <= m.records.len() as u64 + (1 << 20) {
                // Small enough to find the first key without a record, to name it.
                let mut seen = vec![false; want as usize];
                for r in &m.records {
                    if r.layer < m.layers && r.expert < m.experts {
                        seen[(r.layer * m.experts + r.expert) as usize] = true;
                    }
                }
                if let Some(i) = seen.iter().position(|&s| !s) {
                    let i = i as u64;
                    msg += &format!(
                        "; first without a record: layer {} expert {}",
                        i / m.experts,
                        i % m.experts
                    );
                }
            }
            return Err(bad(msg));
        }
        let mut slots: Vec<Option<(usize, ExpertLocation)>> = vec![None; want as usize];
        for (i, r) in m.records.iter().enumerate() {
            let at = || format!("record {i} (layer {} expert {})", r.layer, r.expert);
            if r.layer >= m.layers || r.expert >= m.experts {
                return Err(bad(format!(
                    "{}: out of range ({} layers x {} experts)",
                    at(),
                    m.layers,
                    m.experts
                )));
            }
            if r.file >= m.files.len() as u64 {
                return Err(bad(format!(
                    "{}: file index {} out of range ({} files)",
                    at(),
                    r.file,
                    m.files.len()
                )));
            }
            let checksum = parse_hex16(&r.checksum).ok_or_else(|| {
                bad(format!(
                    "{}: checksum {:?} is not 16 hexadecimal digits",
                    at(),
                    r.checksum
                ))
            })?;
            let slot = &mut slots[(r.layer * m.experts + r.expert) as usize];
            if let Some((first, _)) = slot {
                return Err(bad(format!("{}: duplicate of record {first}", at())));
            }
            *slot = Some((
                i,
                ExpertLocation {
                    file: r.file as u32,
                    offset: r.offset,
                    len: r.len,
                    checksum,
                },
            ));
        }
        let mut entries = Vec::with_capacity(slots.len());
        for (i, slot) in slots.into_iter().enumerate() {
            match slot {
                Some((_, loc)) => entries.push(loc),
                // Unreachable with exact counts and no duplicates, but cheap to report well.
                None => {
                    return Err(bad(format!(
                        "no record for layer {} expert {}",
                        i as u64 / m.experts,
                        i as u64 % m.experts
                    )));
                }
            }
        }
        for (i, f) in m.files.iter().enumerate() {
            let inside = !f.as_os_str().is_empty()
                && f.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::Normal(_) | std::path::Component::CurDir
                    )
                });
            if !inside {
                return Err(bad(format!(
                    "files[{i}] = {}: must be a relative path inside the manifest's directory \
                     (no absolute path, no `..`)",
                    f.display()
                )));
            }
        }
        let files = m.files.iter().map(|f| base_dir.join(f)).collect();
        let layout =
            ExpertLayout::new(files, m.layers as u32, m.experts as u32, entries).map_err(|e| {
                match e {
                    Error::Layout(msg) => bad(msg),
                    other => other,
                }
            })?;
        Ok((layout, m.meta))
    }

    /// Renders a manifest for `layout`. File paths under `base_dir` are written relative to it;
    /// others are written absolute (which [`Manifest::parse`] refuses: keep files inside).
    pub fn to_json(
        layout: &ExpertLayout,
        meta: Option<&serde_json::Value>,
        base_dir: &Path,
    ) -> String {
        let files = layout
            .files()
            .iter()
            .map(|f| relative_to(f, base_dir))
            .collect();
        let records = layout
            .iter()
            .map(|(k, l)| RecordV1 {
                layer: k.layer as u64,
                expert: k.expert as u64,
                file: l.file as u64,
                offset: l.offset,
                len: l.len,
                checksum: format!("{:016x}", l.checksum),
            })
            .collect();
        let m = ManifestV1 {
            format: MANIFEST_FORMAT.to_string(),
            version: MANIFEST_VERSION,
            layers: layout.num_layers() as u64,
            experts: layout.num_experts() as u64,
            files,
            records,
            meta: meta.cloned(),
        };
        // Serialising plain structs of strings and integers into a String cannot fail.
        serde_json::to_string_pretty(&m).unwrap_or_default()
    }

    /// Writes a manifest for `layout` to `path` (through a temporary file, fsynced, then
    /// renamed, so a crash never leaves half a manifest).
    pub fn save(
        path: impl AsRef<Path>,
        layout: &ExpertLayout,
        meta: Option<&serde_json::Value>,
    ) -> Result<()> {
        let path = path.as_ref();
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let text = Self::to_json(layout, meta, base);
        write_atomically(path, text.as_bytes())
    }
}

/// Parses exactly 16 hex digits.
fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// `path` relative to `base` when it lies under it, else absolute.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (p, b) = (abs(path), abs(base));
    match p.strip_prefix(&b) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
        _ => p,
    }
}

/// Writes `bytes` to a temporary sibling of `path`, fsyncs it, renames it over `path` and
/// fsyncs the directory (best effort).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::file("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::file("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::file("fsync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::file("rename", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path);
    Ok(())
}

/// A hidden temporary name next to `path`, unique to this process and call.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Fsyncs the directory holding `path` so a rename is durable (best effort: not every
/// platform lets a directory be opened or synced).
pub(crate) fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing_is_strict() {
        assert_eq!(parse_hex16("00000000DEADbeef"), Some(0xdead_beef));
        assert_eq!(parse_hex16("deadbeef"), None);
        assert_eq!(parse_hex16("+000000000000001"), None);
        assert_eq!(parse_hex16("0x00000000000001"), None);
    }
}
