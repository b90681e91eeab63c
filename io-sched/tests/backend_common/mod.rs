//! Shared helpers for the backend tests: files of random records, aligned buffers, and a
//! driver that reads every record through a backend and checks its checksum.
#![allow(dead_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use io_sched::backend::{Completion, ReadBackend, ReadOp};
use io_sched::checksum::checksum;
use io_sched::layout::RECORD_ALIGN;
use io_sched::{ExpertKey, ExpertLayout, ExpertLocation, LayoutBuilder};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// A zeroed heap buffer aligned to 4096 bytes.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer is plain owned memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation of {len} bytes failed");
        Self { ptr, layout }
    }
    pub fn len(&self) -> usize {
        self.layout.size()
    }
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
    pub fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.len());
        self.ptr.wrapping_add(offset)
    }
    pub fn slice(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.len());
        // SAFETY: in bounds of a live allocation; no read is in flight when tests look.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset), len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// A file of random records and its layout.
pub struct Fixture {
    pub dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
    pub layout: ExpertLayout,
    pub bytes: Vec<u8>,
}

impl Fixture {
    /// `layers x experts` records of random lengths in `1..=max_len`, at 4096-aligned offsets
    /// with random gaps, in a new temp dir under `parent` (or the default temp dir).
    pub fn new(parent: Option<&Path>, layers: u32, experts: u32, max_len: u64, seed: u64) -> Self {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p).expect("tempdir"),
            None => tempfile::tempdir().expect("tempdir"),
        };
        let path = dir.path().join("experts.bin");
        let (layout, bytes) = write_records(&path, layers, experts, max_len, seed);
        Self {
            dir: Some(dir),
            path,
            layout,
            bytes,
        }
    }

    pub fn record(&self, key: ExpertKey) -> &[u8] {
        let loc = self.layout.get(key).expect("key");
        &self.bytes[loc.offset as usize..(loc.offset + loc.len) as usize]
    }
}

/// Writes the records to `path`; returns the layout and the file's bytes.
pub fn write_records(
    path: &Path,
    layers: u32,
    experts: u32,
    max_len: u64,
    seed: u64,
) -> (ExpertLayout, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = LayoutBuilder::new(layers, experts);
    let f = b.add_file(path);
    let mut bytes = Vec::new();
    let mut keys: Vec<ExpertKey> = (0..layers)
        .flat_map(|l| (0..experts).map(move |e| ExpertKey::new(l, e)))
        .collect();
    // Records in a shuffled order in the file, so layout order is not file order.
    for i in (1..keys.len()).rev() {
        let j = rng.random_range(0..=i);
        keys.swap(i, j);
    }
    for key in keys {
        let gap = rng.random_range(0..3u64) * RECORD_ALIGN;
        let offset = bytes.len() as u64 + gap;
        let len = rng.random_range(1..=max_len);
        let read_len = len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
        let payload = random_bytes(len as usize, rng.random());
        bytes.resize(offset as usize, 0xEE);
        bytes.extend_from_slice(&payload);
        bytes.resize((offset + read_len) as usize, 0xAA);
        b.set(key, f, offset, len, checksum(&payload));
    }
    let mut file = std::fs::File::create(path).expect("create");
    file.write_all(&bytes).expect("write");
    file.sync_all().expect("sync");
    let layout = b.build().expect("layout");
    layout.validate_files().expect("validate");
    (layout, bytes)
}

/// `len` pseudo-random bytes (xorshift64*: fast even in debug builds).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One arena holding every record's aligned read length, and where each record goes.
pub struct Arena {
    pub buf: AlignedBuf,
    pub slots: Vec<(ExpertKey, ExpertLocation, usize)>,
}

impl Arena {
    pub fn new(layout: &ExpertLayout) -> Self {
        let mut at = 0usize;
        let mut slots = Vec::new();
        for (key, loc) in layout.iter() {
            slots.push((key, *loc, at));
            at += loc.read_len() as usize;
        }
        Self {
            buf: AlignedBuf::new(at),
            slots,
        }
    }
}

/// Reads every record of `layout` `rounds` times through `backend` into `arena`, keeping up
/// to `depth` reads in flight, retrying short reads, and checks every checksum. Returns the
/// number of completions seen.
pub fn read_all_and_check(
    backend: &mut dyn ReadBackend,
    arena: &Arena,
    depth: usize,
    rounds: usize,
) -> usize {
    let slots = &arena.slots;
    let arena = &arena.buf;
    let depth = depth.min(backend.max_in_flight()).max(1);
    let mut completions = 0;
    for round in 0..rounds {
        // tag → (slot index, bytes done)
        let mut pending: HashMap<u64, (usize, usize)> = HashMap::new();
        let mut next = 0usize;
        let mut done = 0usize;
        let mut out: Vec<Completion> = Vec::new();
        // Odd rounds go in reverse to vary the pattern.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..slots.len()).collect()
        } else {
            (0..slots.len()).rev().collect()
        };
        let mut tag_seq = (round as u64) << 40;
        while done < slots.len() {
            while pending.len() < depth && next < order.len() {
                let i = order[next];
                let (_, loc, at) = slots[i];
                tag_seq += 1;
                submit(backend, arena, tag_seq, &loc, at, 0);
                pending.insert(tag_seq, (i, 0));
                next += 1;
            }
            backend.flush().expect("flush");
            out.clear();
            backend
                .reap(&mut out, Some(Duration::from_secs(60)))
                .expect("reap");
            for c in out.drain(..) {
                completions += 1;
                let (i, before) = pending.remove(&c.tag).expect("unknown or repeated tag");
                let (key, loc, at) = slots[i];
                let n = c
                    .result
                    .unwrap_or_else(|e| panic!("read of {key:?} failed: {e}"));
                let total = before + n;
                let want = loc.read_len() as usize;
                if total < want {
                    assert!(n > 0, "read of {key:?} hit EOF at {total} of {want}");
                    tag_seq += 1;
                    submit(backend, arena, tag_seq, &loc, at, total);
                    pending.insert(tag_seq, (i, total));
                    continue;
                }
                let got = checksum(arena.slice(at, loc.len as usize));
                assert_eq!(got, loc.checksum, "checksum of {key:?} (round {round})");
                done += 1;
            }
        }
        // Scribble over the arena so the next round proves it read again.
        // SAFETY: nothing is in flight now.
        unsafe { std::ptr::write_bytes(arena.ptr(), 0x5A, arena.len()) };
    }
    assert_eq!(backend.in_flight(), 0);
    completions
}

fn submit(
    backend: &mut dyn ReadBackend,
    arena: &AlignedBuf,
    tag: u64,
    loc: &ExpertLocation,
    at: usize,
    done: usize,
) {
    let op = ReadOp {
        tag,
        file: loc.file,
        offset: loc.offset + done as u64,
        len: loc.read_len() as usize - done,
        buf: arena.at(at + done),
    };
    // SAFETY: each slot of the arena is used by one read at a time and not looked at until
    // its completion is reaped.
    unsafe { backend.submit(op) }.expect("submit");
}

/// Submits one read of `key` into `buf` at 0 (whole aligned record) with `tag`.
///
/// # Safety
/// `buf` must hold the record's read length and not be touched until completion or drop.
pub unsafe fn submit_record(
    backend: &mut dyn ReadBackend,
    layout: &ExpertLayout,
    key: ExpertKey,
    buf: *mut u8,
    tag: u64,
) {
    let loc = layout.get(key).expect("key");
    let op = ReadOp {
        tag,
        file: loc.file,
        offset: loc.offset,
        len: loc.read_len() as usize,
        buf,
    };
    // SAFETY: per this function's contract.
    unsafe { backend.submit(op) }.expect("submit");
}

/// Reaps until `n` completions arrived (60 s per reap at most).
pub fn reap_n(backend: &mut dyn ReadBackend, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    while out.len() < n {
        backend
            .reap(&mut out, Some(Duration::from_secs(60)))
            .expect("reap");
    }
    out
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
