//! Opening the files of a layout read-only, around the page cache when the filesystem allows.
//!
//! Linux uses `O_DIRECT`; Apple opens normally and sets `fcntl(F_NOCACHE)`. Some filesystems
//! refuse direct I/O either at `open` (`EINVAL`) or at the first aligned read (`EINVAL`), so every
//! file opened for direct I/O is probed with one 4096-byte aligned read at offset 0. Under
//! [`DirectMode::Auto`] a refusing file is reopened buffered and the reason is logged and kept.

use std::alloc::{Layout, alloc, dealloc};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::ExpertLayout;

/// Whether reads should go around the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectMode {
    /// Try direct I/O; fall back to buffered, with a logged reason, where it is refused.
    #[default]
    Auto,
    /// Direct I/O or an error.
    Require,
    /// Buffered reads through the page cache.
    Off,
}

/// A probe deciding whether an already opened direct file really accepts direct reads.
///
/// The default is [`probe_aligned_read`]. Tests may pass another one to exercise the fallback
/// on filesystems that accept direct I/O (this is the documented injection point).
pub type DirectProbe = fn(&File, &Path) -> io::Result<()>;

/// One 4096-byte read at offset 0 into a 4096-aligned buffer: `EINVAL` means "no direct I/O".
pub fn probe_aligned_read(file: &File, _path: &Path) -> io::Result<()> {
    const PROBE: usize = 4096;
    let layout = Layout::from_size_align(PROBE, PROBE)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `layout` has a non-zero size.
    let buf = unsafe { alloc(layout) };
    if buf.is_null() {
        return Err(io::Error::from(io::ErrorKind::OutOfMemory));
    }
    let result = loop {
        // SAFETY: `buf` is valid for writes of PROBE bytes (allocated above, freed below) and
        // the fd is open for the lifetime of `file`.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.cast(), PROBE, 0) };
        if n >= 0 {
            break Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            break Err(err);
        }
    };
    // SAFETY: `buf` came from `alloc(layout)` above and is freed once.
    unsafe { dealloc(buf, layout) };
    result
}

/// The files of one layout, opened read-only, in layout order.
#[derive(Debug)]
pub struct OpenFiles {
    files: Vec<File>,
    paths: Vec<PathBuf>,
    direct: Vec<bool>,
    fallbacks: Vec<String>,
}

impl OpenFiles {
    /// Opens every file of `layout` under `mode`.
    ///
    /// ```no_run
    /// # use io_sched::backend::files::{OpenFiles, DirectMode};
    /// # fn f(layout: &io_sched::ExpertLayout) -> io_sched::Result<()> {
    /// let files = OpenFiles::open(layout, DirectMode::Auto)?;
    /// for reason in files.fallbacks() { eprintln!("{reason}"); }
    /// # Ok(()) }
    /// ```
    pub fn open(layout: &ExpertLayout, mode: DirectMode) -> Result<Self> {
        Self::open_paths(layout.files(), mode, probe_aligned_read)
    }

    /// Opens `paths` under `mode`, checking direct files with `probe`.
    pub fn open_paths(paths: &[PathBuf], mode: DirectMode, probe: DirectProbe) -> Result<Self> {
        let mut out = OpenFiles {
            files: Vec::with_capacity(paths.len()),
            paths: paths.to_vec(),
            direct: Vec::with_capacity(paths.len()),
            fallbacks: Vec::new(),
        };
        for path in paths {
            let (file, direct) = match mode {
                DirectMode::Off => (open_buffered(path)?, false),
                DirectMode::Require | DirectMode::Auto => match open_direct(path, probe) {
                    Ok(file) => (file, true),
                    Err(Refusal::Fatal(e)) => return Err(e),
                    Err(Refusal::Refused { op, errno }) => {
                        let reason = format!(
                            "{}: direct I/O refused ({op} failed: {errno}); reading through the page cache",
                            path.display()
                        );
                        if mode == DirectMode::Require {
                            return Err(Error::file(op, path, errno));
                        }
                        tracing::warn!("{reason}");
                        out.fallbacks.push(reason);
                        (open_buffered(path)?, false)
                    }
                },
            };
            out.files.push(file);
            out.direct.push(direct);
        }
        Ok(out)
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there are no files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The raw fd of file `index`, or `None` when out of range.
    pub fn fd(&self, index: u32) -> Option<RawFd> {
        self.files.get(index as usize).map(AsRawFd::as_raw_fd)
    }

    /// The opened file `index`.
    pub fn file(&self, index: u32) -> Option<&File> {
        self.files.get(index as usize)
    }

    /// The path of file `index`.
    pub fn path(&self, index: u32) -> Option<&Path> {
        self.paths.get(index as usize).map(PathBuf::as_path)
    }

    /// All raw fds, in layout order.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.files.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Whether file `index` was opened for direct I/O.
    pub fn is_direct(&self, index: u32) -> bool {
        self.direct.get(index as usize).copied().unwrap_or(false)
    }

    /// Whether every file reads around the page cache.
    pub fn all_direct(&self) -> bool {
        !self.direct.is_empty() && self.direct.iter().all(|&d| d)
    }

    /// `O_DIRECT`, `buffered` or `mixed (k of n direct)`, for `describe()` lines.
    pub fn mode_name(&self) -> String {
        let k = self.direct.iter().filter(|&&d| d).count();
        match k {
            0 => "buffered".to_string(),
            k if k == self.direct.len() => DIRECT_NAME.to_string(),
            k => format!("mixed ({k} of {} {DIRECT_NAME})", self.direct.len()),
        }
    }

    /// Why files that should have been direct are buffered, one line each.
    pub fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
const DIRECT_NAME: &str = "F_NOCACHE";
#[cfg(not(any(target_os = "macos", target_os = "ios")))]
const DIRECT_NAME: &str = "O_DIRECT";

enum Refusal {
    /// The filesystem refuses direct I/O: fall back or fail, depending on the mode.
    Refused { op: &'static str, errno: io::Error },
    /// Any other error (missing file, permissions, I/O error): always fatal.
    Fatal(Error),
}

fn open_buffered(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| Error::file("open", path, e))
}

fn is_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

fn open_direct(path: &Path, probe: DirectProbe) -> std::result::Result<File, Refusal> {
    let file = open_direct_raw(path).map_err(|e| {
        if is_refusal(&e) {
            Refusal::Refused {
                op: "open (direct)",
                errno: e,
            }
        } else {
            Refusal::Fatal(Error::file("open", path, e))
        }
    })?;
    probe(&file, path).map_err(|e| {
        if is_refusal(&e) {
            Refusal::Refused {
                op: "aligned probe read",
                errno: e,
            }
        } else {
            Refusal::Fatal(Error::file("probe read", path, e))
        }
    })?;
    Ok(file)
}

#[cfg(target_os = "linux")]
fn open_direct_raw(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn open_direct_raw(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).open(path)?;
    // SAFETY: fcntl(F_NOCACHE) on an fd owned by `file`, which is open; no pointers are passed.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "ios")))]
fn open_direct_raw(_path: &Path) -> io::Result<File> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let paths = vec![PathBuf::from("/nonexistent/flashmoe/x.bin")];
        let e = OpenFiles::open_paths(&paths, DirectMode::Auto, probe_aligned_read)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/flashmoe/x.bin"), "{e}");
    }

    #[test]
    fn off_opens_buffered_without_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        let f = OpenFiles::open_paths(&[p], DirectMode::Off, probe_aligned_read).unwrap();
        assert!(!f.all_direct());
        assert!(f.fallbacks().is_empty());
        assert_eq!(f.mode_name(), "buffered");
        assert!(f.fd(0).is_some() && f.fd(1).is_none());
    }
}
