//! The "trust the OS" baseline: every file mapped with `memmap2`, worker threads copying the
//! requested range out of the mapping, so pages come through the page cache and its readahead.
//!
//! Ranges are bounds-checked against the mapping: a read that runs past the end of the file
//! is short, one that starts past it reads 0 bytes, as `pread` would. Bytes are copied out
//! through [`crate::mapped::copy_out`], never by dereferencing the mapping, so a file
//! truncated while mapped or a page that fails with EIO completes the read with an error
//! (the scheduler adds layer, expert, file and offset) instead of killing the process with
//! `SIGBUS`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use memmap2::Mmap;

use super::files::{DirectMode, OpenFiles, probe_aligned_read};
use super::pool::{BlockingRead, WorkerPool};
use super::{BackendKind, BackendWaker, Completion, ReadBackend, ReadOp};
use crate::error::{Error, Result};
use crate::layout::ExpertLayout;

/// Default number of mmap copy threads.
pub const DEFAULT_MMAP_THREADS: usize = 8;

/// Copies ranges out of memory-mapped files on a pool of worker threads.
pub struct MmapBackend {
    pool: WorkerPool,
    maps: Arc<Maps>,
}

struct Maps {
    maps: Vec<Mmap>,
    /// The mapped files (for the fault's explanation and the `pread` fallback).
    files: Vec<std::fs::File>,
}

impl Maps {
    fn get(&self, file: u32) -> io::Result<&Mmap> {
        self.maps.get(file as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file index {file} out of range ({} files)", self.maps.len()),
            )
        })
    }
}

impl BlockingRead for Maps {
    fn check(&self, op: &ReadOp) -> io::Result<()> {
        self.get(op.file).map(|_| ())
    }

    unsafe fn read(&self, op: &ReadOp) -> io::Result<usize> {
        let map = self.get(op.file)?;
        let size = map.len() as u64;
        if op.offset >= size {
            return Ok(0);
        }
        // Both fit in usize: `offset < size`, a mapping's length is a usize.
        let start = op.offset as usize;
        let n = op.len.min(map.len() - start);
        // SAFETY: the caller guarantees `op.buf` is valid for writes of `op.len >= n` bytes and
        // unaliased until completion; it cannot overlap the read-only mapping.
        let dst = unsafe { std::slice::from_raw_parts_mut(op.buf, n) };
        crate::mapped::copy_out(map, start, dst, &self.files[op.file as usize])?;
        Ok(n)
    }
}

impl MmapBackend {
    /// Maps every file of `layout` and starts `threads` copy workers.
    pub fn open(layout: &ExpertLayout, threads: usize) -> Result<Self> {
        let files = OpenFiles::open_paths(layout.files(), DirectMode::Off, probe_aligned_read)?;
        Self::new(&files, threads)
    }

    /// Maps the already opened `files` (their direct flag does not matter to a mapping).
    pub fn new(files: &OpenFiles, threads: usize) -> Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        let mut handles = Vec::with_capacity(files.len());
        for i in 0..files.len() as u32 {
            let (Some(file), Some(path)) = (files.file(i), files.path(i)) else {
                break;
            };
            handles.push(file.try_clone().map_err(|e| Error::file("dup", path, e))?);
            // SAFETY: the mapping is read-only and expert files are not modified while a model
            // is loaded; memmap2 keeps the mapping valid for the life of the `Mmap`.
            let map = unsafe { Mmap::map(file) }.map_err(|e| Error::file("mmap", path, e))?;
            maps.push(map);
        }
        let maps = Arc::new(Maps {
            maps,
            files: handles,
        });
        let pool = WorkerPool::new("flashmoe-mmap", threads, maps.clone()).map_err(|e| {
            Error::Backend {
                backend: "mmap",
                reason: format!("cannot start {threads} copy threads: {e}"),
            }
        })?;
        Ok(Self { pool, maps })
    }
}

impl ReadBackend for MmapBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Mmap
    }

    fn describe(&self) -> String {
        format!(
            "mmap threads={} files={} page-cache",
            self.pool.threads(),
            self.maps.maps.len()
        )
    }

    fn max_in_flight(&self) -> usize {
        self.pool.max_in_flight()
    }

    fn in_flight(&self) -> usize {
        self.pool.in_flight()
    }

    fn direct(&self) -> bool {
        false
    }

    unsafe fn submit(&mut self, op: ReadOp) -> io::Result<()> {
        // SAFETY: forwarded from this method's own contract.
        unsafe { self.pool.submit(op) }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>, timeout: Option<Duration>) -> io::Result<()> {
        self.pool.reap(out, timeout)
    }

    fn waker(&self) -> BackendWaker {
        self.pool.waker()
    }
}
