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
    let arena = Arena::new(qd, block).map_err(io::Error::other)?;
    // SAFETY: `arena` outlives every read: we reap all completions before returning, and it
    // is dropped after the loop.
    let _ = unsafe { backend.register_memory(arena.base(), arena.len()) };
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
            // completion comes back (it returns to `free` only then).
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
    let arena = Arena::new(k, slot).map_err(io::Error::other)?;
    // SAFETY: `arena` outlives every read (all reaped before return).
    let _ = unsafe { backend.register_memory(arena.base(), arena.len()) };
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
                // one slot do not overlap, and the arena outlives the reads.
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

    #[test]
    fn pick_experts_is_distinct() {
        let mut rng = Rng::new(3);
        let mut v = Vec::new();
        pick_experts(&mut rng, 8, 8, &mut v);
        v.sort();
        assert_eq!(v, (0..8).collect::<Vec<_>>());
    }
}
