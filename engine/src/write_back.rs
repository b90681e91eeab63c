//! Keeping the packer's page cache small: what it read is dropped from the cache once read,
//! and what it wrote is flushed to disk and dropped every [`FLUSH_EVERY`] bytes.
//!
//! Page cache counts against a memory cgroup (cgroup v1 and v2 both charge it to the group
//! that touched it). Clean cached pages can be reclaimed, but dirty ones must first be
//! written back, and a cgroup filling with them stalls or kills the writer. So the packer
//! writes back as it goes: [`WriteBack::wrote`] counts bytes handed to the files, and every
//! [`FLUSH_EVERY`] of them `fdatasync`s each file of the output directory and asks the kernel
//! to drop its (now clean) pages (`posix_fadvise(POSIX_FADV_DONTNEED)`, Linux only; elsewhere
//! the flush alone). Nothing here changes what is written: it is about memory only, and the
//! safe-replace protocol ([`crate::safe_replace`]) still fsyncs everything before the rename.

use crate::error::{EngineError, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Bytes written between two flushes.
pub const FLUSH_EVERY: u64 = 256 << 20;

/// Asks the kernel to drop `len` bytes at `offset` of `file` from the page cache (clean
/// pages only; a hint: ignored where unsupported).
pub fn drop_cached(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is owned by
        // `file`, which outlives the call. Its result is a hint's: ignoring it is harmless.
        let _ =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Flushes and drops the page cache of the files of one directory as bytes are written.
#[derive(Debug)]
pub struct WriteBack {
    dir: PathBuf,
    pending: u64,
}

impl WriteBack {
    /// Write-back for the files under `dir` (not recursive).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            pending: 0,
        }
    }

    /// Counts `n` more bytes handed to the files; flushes once [`FLUSH_EVERY`] are pending.
    pub fn wrote(&mut self, n: u64) -> Result<()> {
        self.pending += n;
        if self.pending >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// `fdatasync`s every regular file of the directory and drops its cached pages.
    pub fn flush(&mut self) -> Result<()> {
        self.pending = 0;
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| EngineError::Io { op, path, source }
        };
        let entries = std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))?;
        for entry in entries {
            let path = entry.map_err(io("list", &self.dir))?.path();
            if !path.is_file() {
                continue;
            }
            let file = File::open(&path).map_err(io("open", &path))?;
            file.sync_data().map_err(io("fsync", &path))?;
            drop_cached(&file, 0, 0); // len 0: to the end of the file
        }
        Ok(())
    }
}
