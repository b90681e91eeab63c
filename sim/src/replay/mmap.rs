//! Row (a), "trust the OS": experts copied out of `mmap`ed files through the page cache, with
//! the page cache held to the same byte budget as every other row.
//!
//! Method: the files are mapped here (not through io-sched's mmap backend, whose mapping this
//! code cannot `madvise`). Every expert touched enters an LRU of `budget / record` entries;
//! when one falls out, its pages are unmapped from this process (`MADV_DONTNEED`) and dropped
//! from the page cache (`POSIX_FADV_DONTNEED`), so at most the budget's worth of expert records
//! stays cached (plus the kernel's readahead past a record end, which the disk-bytes column
//! counts). The host under this virtual disk may cache too; that applies to every row alike.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use io_sched::{ExpertKey, ExpertLayout};

use crate::error::{Result, SimError};

struct Map {
    file: File,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is read-only and only ever read through shared slices.
unsafe impl Send for Map {}
// SAFETY: as above: concurrent reads of a read-only mapping are fine.
unsafe impl Sync for Map {}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing borrows them any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Mapped expert files with a budget-limited page cache.
pub struct LimitedMmap {
    maps: Vec<Map>,
    layout: ExpertLayout,
    lru: VecDeque<ExpertKey>,
    capacity: usize,
    bufs: Vec<Vec<u8>>,
}

impl LimitedMmap {
    /// Maps every file of `layout`; the page cache may keep `budget_bytes` of records.
    pub fn open(layout: &ExpertLayout, budget_bytes: u64) -> Result<Self> {
        let mut maps = Vec::new();
        for path in layout.files() {
            maps.push(map_file(path)?);
        }
        let rec = layout.max_read_len().max(1);
        Ok(Self {
            maps,
            layout: layout.clone(),
            lru: VecDeque::new(),
            capacity: (budget_bytes / rec) as usize,
            bufs: Vec::new(),
        })
    }

    /// Copies `experts` of `layer` out of the mappings (one thread per expert, as a pread pool
    /// would); returns how many were already resident by this LRU's account.
    pub fn acquire(&mut self, layer: u32, experts: &[u32]) -> Result<u64> {
        let mut hits = 0;
        let mut ranges = Vec::with_capacity(experts.len());
        for &e in experts {
            let key = ExpertKey::new(layer, e);
            let loc = *self.layout.get(key)?;
            let map = &self.maps[loc.file as usize];
            let end = loc
                .offset
                .checked_add(loc.len)
                .filter(|&x| x <= map.len as u64);
            if end.is_none() {
                return Err(SimError::Setup(format!(
                    "record {key:?} ends past its mapped file"
                )));
            }
            ranges.push((loc.file as usize, loc.offset as usize, loc.len as usize));
            if let Some(i) = self.lru.iter().position(|k| *k == key) {
                self.lru.remove(i);
                hits += 1;
            }
            self.lru.push_back(key);
        }
        self.bufs.resize_with(experts.len(), Vec::new);
        let maps = &self.maps;
        let files = self.layout.files();
        // Copied out through `io_sched::mapped::copy_out`: a page that fails (EIO, a file
        // truncated while mapped) is an error naming file and offset, not SIGBUS.
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .bufs
                .iter_mut()
                .zip(&ranges)
                .map(|(buf, &(f, off, len))| {
                    s.spawn(move || {
                        let m = &maps[f];
                        // SAFETY: `off + len <= m.len` was checked above; the mapping is live
                        // and read-only for the life of `self`; it is only read by the kernel.
                        let map = unsafe { std::slice::from_raw_parts(m.ptr, m.len) };
                        buf.resize(len, 0);
                        io_sched::mapped::copy_out(map, off, buf, &m.file).map_err(|source| {
                            SimError::Io {
                                op: "copy out of mapping",
                                path: format!("{} at offset {off}", files[f].display()),
                                source,
                            }
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(SimError::Setup("mmap copy thread panicked".into()))
                    })
                })
                .collect::<Result<Vec<()>>>()
        })?;
        while self.lru.len() > self.capacity {
            let Some(old) = self.lru.pop_front() else {
                break;
            };
            self.evict(old)?;
        }
        Ok(hits)
    }

    fn evict(&self, key: ExpertKey) -> Result<()> {
        let loc = self.layout.get(key)?;
        let m = &self.maps[loc.file as usize];
        let len = loc.read_len().min(m.len as u64 - loc.offset) as usize;
        // SAFETY: the range lies inside the live mapping (offsets are 4096-aligned, so is the
        // mapping's base); MADV_DONTNEED on a read-only file mapping only drops page-table
        // entries: later reads fault the file's bytes back in. No slice of it is alive now.
        unsafe {
            libc::madvise(
                m.ptr.add(loc.offset as usize).cast(),
                len,
                libc::MADV_DONTNEED,
            )
        };
        // SAFETY: posix_fadvise takes no pointers; the fd is valid while `m.file` lives.
        unsafe {
            libc::posix_fadvise(
                m.file.as_raw_fd(),
                loc.offset as i64,
                len as i64,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        Ok(())
    }
}

fn map_file(path: &Path) -> Result<Map> {
    let io = |source| SimError::Io {
        op: "mmap",
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len() as usize;
    if len == 0 {
        return Err(SimError::Setup(format!("{} is empty", path.display())));
    }
    // SAFETY: a fresh read-only shared mapping of an open file; checked for MAP_FAILED below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(Map {
        file,
        ptr: ptr.cast(),
        len,
    })
}

/// Drops every page of `layout`'s files from the page cache (a cold start for each row).
pub fn drop_page_cache(layout: &ExpertLayout) {
    for path in layout.files() {
        if let Ok(f) = File::open(path) {
            // SAFETY: posix_fadvise takes no pointers; the fd is valid while `f` lives.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_sched::LayoutBuilder;

    #[test]
    fn a_file_truncated_while_mapped_is_an_error_not_sigbus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("experts.bin");
        std::fs::write(&path, vec![7u8; 4 * 4096]).unwrap();
        let mut b = LayoutBuilder::new(1, 4);
        let f = b.add_file(&path);
        for e in 0..4u32 {
            b.set(ExpertKey::new(0, e), f, e as u64 * 4096, 4096, 0);
        }
        let layout = b.build().unwrap();
        let mut m = LimitedMmap::open(&layout, 1 << 20).unwrap();
        m.acquire(0, &[0, 3]).unwrap();
        assert_eq!(m.bufs[1], vec![7u8; 4096]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        m.acquire(0, &[0]).unwrap();
        let e = m.acquire(0, &[2]).unwrap_err().to_string();
        assert!(
            e.contains("experts.bin at offset 8192") && e.contains("truncated"),
            "{e}"
        );
    }
}
