//! Read-pattern drivers shared by `flashmoe io-bench` and the criterion benches: they push
//! expert-sized reads through any [`ReadBackend`] and report bytes and time.
//!
//! Two patterns:
//! - [`random_reads`]: `block`-byte reads at random aligned offsets, `qd` always in flight —
//!   what `fio --rw=randread --bs=B --iodepth=QD` does, for a like-for-like ratio;
//! - [`layer_reads`]: the MoE pattern — per layer, `k` random experts read in `chunk`-sized
//!   requests, all overlapped, and the layer ends when all `k` are in (a barrier per layer).

use std::io;
use std::time::{Duration, Instant};

use crate::backend::{Completion, ReadBackend, ReadOp};
use crate::cache::Arena;
use crate::layout::{ExpertKey, ExpertLayout, RECORD_ALIGN};

/// What one run moved.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BenchResult {
    pub bytes: u64,
    pub reads: u64,
    pub elapsed: Duration,
}

impl BenchResult {
    /// Throughput in GB/s (10^9 bytes per second).
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-12) / 1e9
    }
}

/// A tiny deterministic generator (xorshift64*), so runs are repeatable without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// `count` distinct experts of `0..experts`, uniformly.
pub fn pick_experts(rng: &mut Rng, experts: u32, count: usize, out: &mut Vec<u32>) {
    out.clear();
    let count = count.min(experts as usize);
    while out.len() < count {
        let e = rng.below(experts as u64) as u32;
        if !out.contains(&e) {
            out.push(e);
        }
    }
}

/// An arena lent to a backend for one run.
///
/// Dropping it first reaps every read still in flight and withdraws the registration, and only
/// then frees the arena; if the backend cannot confirm that (a failing `reap` or
/// unregistration), the arena is leaked rather than freed under a read. So no exit from a
/// driver (`?`, an error completion, EOF) can leave the device writing into freed memory.
struct LentArena<'b> {
    backend: &'b mut dyn ReadBackend,
    arena: Option<Arena>,
}

impl<'b> LentArena<'b> {
    /// `slots × slot_size` bytes, registered with `backend` (which must be idle: the drain on
    /// drop counts on every read in flight being ours).
    fn new(backend: &'b mut dyn ReadBackend, slots: usize, slot_size: usize) -> io::Result<Self> {
        if backend.in_flight() > 0 {
            return Err(io::Error::other(format!(
                "{} has {} reads in flight: a bench run needs an idle backend",
                backend.describe(),
                backend.in_flight()
            )));
        }
        let arena = Arena::new(slots, slot_size).map_err(io::Error::other)?;
        // SAFETY: the arena stays allocated until `drop` below has withdrawn the registration
        // (`register_memory` returned `Ok` again); otherwise it is leaked.
        let _ = unsafe { backend.register_memory(arena.base(), arena.len()) };
        Ok(Self {
            backend,
            arena: Some(arena),
        })
    }

    /// The backend and the arena, for one run.
    fn parts(&mut self) -> (&mut dyn ReadBackend, &Arena) {
        let arena = self
            .arena
            .as_ref()
            .expect("the arena is taken only by drop");
        (&mut *self.backend, arena)
    }
}

impl Drop for LentArena<'_> {
    fn drop(&mut self) {
        let mut sink = Vec::new();
        let mut idle = true;
        while self.backend.in_flight() > 0 {
            sink.clear();
            if let Err(e) = self.backend.reap(&mut sink, None) {
                tracing::warn!(
                    "bench: reaping the reads in flight failed ({e}); leaking the arena"
                );
                idle = false;
                break;
            }
        }
        // SAFETY: nothing is in flight; a null registration only withdraws the earlier one.
        let withdrawn =
            idle && unsafe { self.backend.register_memory(std::ptr::null_mut(), 0) }.is_ok();
        if let Some(arena) = self.arena.take()
            && !withdrawn
        {
            // The device may still own these bytes: never free them.
            std::mem::forget(arena);
        }
    }
}

/// Keeps `qd` reads of `block` bytes in flight at random `block`-aligned offsets of the
/// layout's first file, until `total_reads` have completed.
pub fn random_reads(
    backend: &mut dyn ReadBackend,
    file_len: u64,
    block: usize,
    qd: usize,
    total_reads: u64,
    seed: u64,
) -> io::Result<BenchResult> {
    let block = block.div_ceil(RECORD_ALIGN as usize) * RECORD_ALIGN as usize;
    let qd = qd.clamp(1, backend.max_in_flight());
    let blocks_in_file = file_len / block as u64;
    if blocks_in_file == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file of {file_len} bytes is smaller than one {block}-byte block"),
        ));
    }
    // Every exit below (`?` included) drops `lent` first, which waits for the reads still in
    // flight before the arena is freed.
    let mut lent = LentArena::new(backend, qd, block)?;
    let (backend, arena) = lent.parts();
    let mut rng = Rng::new(seed);
    let mut free: Vec<usize> = (0..qd).collect();
    let mut done = Vec::with_capacity(qd);
    let (mut issued, mut completed, mut bytes) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while completed < total_reads {
        while issued < total_reads {
            let Some(slot) = free.pop() else { break };
            let offset = rng.below(blocks_in_file) * block as u64;
            let op = ReadOp {
                tag: slot as u64,
                file: 0,
                offset,
                len: block,
                buf: arena.slot_ptr(slot),
            };
            // SAFETY: slot `slot` of the arena is used by this read alone until its
            // completion comes back (it returns to `free` only then); `lent` keeps the arena
            // alive until no read is in flight.
            unsafe { backend.submit(op)? };
            issued += 1;
        }
        backend.flush()?;
        done.clear();
        backend.reap(&mut done, None)?;
        for c in done.drain(..) {
            bytes += c.result? as u64;
            completed += 1;
            free.push(c.tag as usize);
        }
    }
    Ok(BenchResult {
        bytes,
        reads: completed,
        elapsed: start.elapsed(),
    })
}

/// The MoE pattern: for each of `steps` layers (cycling through the layout's layers), read
/// `k` random distinct experts, each split into `chunk`-byte requests, with up to the
/// backend's queue depth in flight; a layer ends when all its experts are in.
pub fn layer_reads(
    backend: &mut dyn ReadBackend,
    layout: &ExpertLayout,
    k: usize,
    chunk: usize,
    steps: u64,
    seed: u64,
) -> io::Result<BenchResult> {
    let k = k.clamp(1, layout.num_experts() as usize);
    let slot = layout.max_read_len() as usize;
    let chunk = chunk.div_ceil(RECORD_ALIGN as usize).max(1) * RECORD_ALIGN as usize;
    // As in `random_reads`: an early return waits for the reads in flight before the arena goes.
    let mut lent = LentArena::new(backend, k, slot)?;
    let (backend, arena) = lent.parts();
    let mut rng = Rng::new(seed);
    let mut experts = Vec::with_capacity(k);
    let mut pending: Vec<(usize, u64, u64)> = Vec::new();
    let mut done: Vec<Completion> = Vec::new();
    let (mut bytes, mut reads) = (0u64, 0u64);
    let start = Instant::now();
    for step in 0..steps {
        let layer = (step % layout.num_layers() as u64) as u32;
        pick_experts(&mut rng, layout.num_experts(), k, &mut experts);
        // (slot, start, end) of every request of this layer, issued in order.
        pending.clear();
        for (i, &e) in experts.iter().enumerate() {
            let loc = layout
                .get(ExpertKey::new(layer, e))
                .map_err(io::Error::other)?;
            let mut s = 0;
            while s < loc.read_len() {
                let end = (s + chunk as u64).min(loc.read_len());
                pending.push((i, s, end));
                s = end;
            }
        }
        pending.reverse();
        let mut in_flight = 0usize;
        let mut retries: Vec<(usize, u64, u64)> = Vec::new();
        let mut tags: Vec<(usize, u64, u64)> = Vec::new();
        while !pending.is_empty() || !retries.is_empty() || in_flight > 0 {
            while in_flight < backend.max_in_flight() {
                let Some((i, s, end)) = retries.pop().or_else(|| pending.pop()) else {
                    break;
                };
                let loc = layout
                    .get(ExpertKey::new(layer, experts[i]))
                    .map_err(io::Error::other)?;
                tags.push((i, s, end));
                let op = ReadOp {
                    tag: (tags.len() - 1) as u64,
                    file: loc.file,
                    offset: loc.offset + s,
                    len: (end - s) as usize,
                    buf: arena.slot_ptr(i).wrapping_add(s as usize),
                };
                // SAFETY: each (slot, range) is read by exactly one request at a time; ranges of
                // one slot do not overlap, and `lent` keeps the arena alive until no read is in
                // flight.
                unsafe { backend.submit(op)? };
                in_flight += 1;
            }
            backend.flush()?;
            done.clear();
            backend.reap(&mut done, None)?;
            for c in done.drain(..) {
                in_flight -= 1;
                let (i, s, end) = tags[c.tag as usize];
                let n = c.result? as u64;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "read past EOF",
                    ));
                }
                let got = n.min(end - s);
                // A short read keeps what arrived down to the alignment direct I/O needs.
                let good = if got == end - s {
                    got
                } else {
                    got / RECORD_ALIGN * RECORD_ALIGN
                };
                bytes += good;
                reads += 1;
                if s + good < end {
                    retries.push((i, s + good, end));
                }
            }
        }
    }
    Ok(BenchResult {
        bytes,
        reads,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::layout::LayoutBuilder;
    use std::sync::Arc;

    #[test]
    fn layer_reads_reads_k_whole_records_per_step() {
        let mut b = LayoutBuilder::new(2, 8);
        let f = b.add_file("m");
        for i in 0..16u32 {
            b.set(ExpertKey::new(i / 8, i % 8), f, i as u64 * 16384, 16384, 0);
        }
        let layout = b.build().unwrap();
        let mut be = MemoryBackend::new(vec![Arc::from(vec![7u8; 16 * 16384])], 3);
        let r = layer_reads(&mut be, &layout, 4, 4096, 10, 1).unwrap();
        assert_eq!(r.bytes, 10 * 4 * 16384);
        assert_eq!(r.reads, 10 * 4 * 4);
    }

    #[test]
    fn random_reads_counts_every_block() {
        let mut be = MemoryBackend::new(vec![Arc::from(vec![1u8; 1 << 20])], 4);
        let r = random_reads(&mut be, 1 << 20, 65536, 4, 50, 9).unwrap();
        assert_eq!((r.bytes, r.reads), (50 * 65536, 50));
    }

    /// A device whose reads land at `reap`, one per call, as a real one would finish them
    /// later: a driver that returns with reads in flight leaves them to land in its freed
    /// arena. Dropping it discards what is still queued (never writes it), so a failing test
    /// stays memory-safe.
    /// The memory a [`SlowDevice`] has registered now, as (address, length); `None` once withdrawn.
    type Registered = Arc<parking_lot::Mutex<Option<(usize, usize)>>>;

    struct SlowDevice {
        image: Vec<u8>,
        queue: std::collections::VecDeque<ReadOp>,
        registered: Registered,
    }

    impl ReadBackend for SlowDevice {
        fn kind(&self) -> crate::backend::BackendKind {
            crate::backend::BackendKind::Pread
        }
        fn describe(&self) -> String {
            "slow device".into()
        }
        fn max_in_flight(&self) -> usize {
            4
        }
        fn in_flight(&self) -> usize {
            self.queue.len()
        }
        fn direct(&self) -> bool {
            false
        }
        unsafe fn register_memory(&mut self, ptr: *mut u8, len: usize) -> io::Result<bool> {
            *self.registered.lock() = (!ptr.is_null() && len > 0).then_some((ptr as usize, len));
            Ok(false)
        }
        unsafe fn submit(&mut self, op: ReadOp) -> io::Result<()> {
            self.queue.push_back(op);
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn reap(
            &mut self,
            out: &mut Vec<Completion>,
            _timeout: Option<std::time::Duration>,
        ) -> io::Result<()> {
            let Some(op) = self.queue.pop_front() else {
                return Ok(());
            };
            let start = (op.offset as usize).min(self.image.len());
            let n = op.len.min(self.image.len() - start);
            // SAFETY: the driver keeps `op.buf` valid for `op.len` bytes until this completion
            // is reaped (the contract under test); `n <= op.len`.
            unsafe { std::ptr::copy_nonoverlapping(self.image.as_ptr().add(start), op.buf, n) };
            out.push(Completion {
                tag: op.tag,
                result: Ok(n),
            });
            Ok(())
        }
        fn waker(&self) -> crate::backend::BackendWaker {
            Arc::new(|| {})
        }
    }

    fn slow_device(image_len: usize) -> (SlowDevice, Registered) {
        let registered = Arc::default();
        let dev = SlowDevice {
            image: vec![5u8; image_len],
            queue: Default::default(),
            registered: Arc::clone(&registered),
        };
        (dev, registered)
    }

    #[test]
    fn random_reads_error_mid_burst_leaves_no_read_in_flight() {
        let mut b = LayoutBuilder::new(1, 1);
        let f = b.add_file("m");
        b.set(ExpertKey::new(0, 0), f, 0, 65536, 0);
        let layout = b.build().unwrap();
        let (dev, registered) = slow_device(1 << 20);
        // The first read fails while three more are queued on the device.
        let mut be = crate::backend::faulty::FaultyBackend::new(Box::new(dev), &layout).with_rule(
            crate::backend::faulty::Target::Any,
            crate::backend::faulty::Fault::Eio { times: 1 },
        );
        let err = random_reads(&mut be, 1 << 20, 65536, 4, 100, 3).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        // Anything still in flight would be written into the arena `random_reads` freed.
        assert_eq!(be.in_flight(), 0, "reads left in flight into a freed arena");
        assert_eq!(*registered.lock(), None, "freed arena left registered");
    }

    #[test]
    fn layer_reads_eof_mid_layer_leaves_no_read_in_flight() {
        // Experts 2 and 3 lie past the end of the 2-expert image: their reads hit EOF while
        // reads of the others are in flight.
        let mut b = LayoutBuilder::new(1, 4);
        let f = b.add_file("m");
        for e in 0..4u32 {
            b.set(ExpertKey::new(0, e), f, e as u64 * 16384, 16384, 0);
        }
        let layout = b.build().unwrap();
        let (mut dev, registered) = slow_device(2 * 16384);
        let err = layer_reads(&mut dev, &layout, 4, 4096, 1, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            dev.in_flight(),
            0,
            "reads left in flight into a freed arena"
        );
        assert_eq!(*registered.lock(), None, "freed arena left registered");
        // The same device runs a good layer afterwards (its registration was replaced cleanly).
        let mut b = LayoutBuilder::new(1, 2);
        let f = b.add_file("m");
        for e in 0..2u32 {
            b.set(ExpertKey::new(0, e), f, e as u64 * 16384, 16384, 0);
        }
        let r = layer_reads(&mut dev, &b.build().unwrap(), 2, 4096, 3, 1).unwrap();
        assert_eq!((r.bytes, r.reads), (3 * 2 * 16384, 3 * 2 * 4));
    }

    #[test]
    fn a_busy_backend_is_refused() {
        let (mut dev, _) = slow_device(1 << 16);
        let mut buf = vec![0u8; 4096];
        let op = ReadOp {
            tag: 0,
            file: 0,
            offset: 0,
            len: 4096,
            buf: buf.as_mut_ptr(),
        };
        // SAFETY: `buf` outlives the read: it is reaped below before `buf` drops.
        unsafe { dev.submit(op).unwrap() };
        let err = random_reads(&mut dev, 1 << 16, 4096, 2, 4, 1).unwrap_err();
        assert!(err.to_string().contains("reads in flight"), "{err}");
        let mut out = Vec::new();
        dev.reap(&mut out, None).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn pick_experts_is_distinct() {
        let mut rng = Rng::new(3);
        let mut v = Vec::new();
        pick_experts(&mut rng, 8, 8, &mut v);
        v.sort();
        assert_eq!(v, (0..8).collect::<Vec<_>>());
    }
}
