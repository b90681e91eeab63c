//! Prints the routed-expert path's throughput in GB/s of expert bytes, cold, beside the
//! pool's read stream: the 30B-A3B geometry by default (hidden 2048, intermediate 768, top-8,
//! Q4 g64), every expert a record of `[gate | up | down]` in one huge-page-advised arena as the
//! io-sched cache lays them out, and each call routed to experts no earlier call of the run
//! touched recently, so none is in the caches (the arena is 4x a 480 MiB server L3).
//!
//! `cargo run --release -p flashmoe-backends --example moe_bw [hidden inter k [records]]`
//!
//! Not a benchmark with statistics: the best and the median of a few passes, on a shared
//! machine, for ratios (the read stream is measured in the same run).

use flashmoe_backends::quant::{WeightFormat, quantize};
use flashmoe_backends::{ComputeBackend, CpuBackend, ExpertId, RoutedExpert, WeightView};
use memmap2::MmapMut;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (hidden, inter, k) = match args[..] {
        [h, i, k, ..] => (h, i, k),
        _ => (2048, 768, 8),
    };
    let format = WeightFormat::Q4_64;
    let up_bytes = format.byte_size(inter, hidden)?;
    let down_bytes = format.byte_size(hidden, inter)?;
    let record = (2 * up_bytes + down_bytes).next_multiple_of(4096);
    let records = args
        .get(3)
        .copied()
        .unwrap_or(((2usize << 30) / record).max(4 * k));
    // One record's matrices, quantized once and copied into every slot (the bytes a kernel
    // streams are what matters here, not their values).
    let values = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    };
    let gate = quantize(&values(inter * hidden, 1), inter, hidden, format)?;
    let up = quantize(&values(inter * hidden, 2), inter, hidden, format)?;
    let down = quantize(&values(hidden * inter, 3), hidden, inter, format)?;
    let mut arena = MmapMut::map_anon(records * record)?;
    #[cfg(target_os = "linux")]
    let _ = arena.advise(memmap2::Advice::HugePage);
    for slot in arena.chunks_exact_mut(record) {
        slot[..up_bytes].copy_from_slice(&gate);
        slot[up_bytes..2 * up_bytes].copy_from_slice(&up);
        slot[2 * up_bytes..2 * up_bytes + down_bytes].copy_from_slice(&down);
    }
    let arena = arena.make_read_only()?;
    let slot = |r: usize| -> Result<[WeightView<'_>; 3], Box<dyn std::error::Error>> {
        let s = &arena[r * record..(r + 1) * record];
        Ok([
            WeightView::new(&s[..up_bytes], inter, hidden, format)?,
            WeightView::new(&s[up_bytes..2 * up_bytes], inter, hidden, format)?,
            WeightView::new(
                &s[2 * up_bytes..2 * up_bytes + down_bytes],
                hidden,
                inter,
                format,
            )?,
        ])
    };

    let be = CpuBackend::new();
    let x = be.upload(&values(hidden, 4))?;
    let mut out = be.zeros(hidden)?;
    let mut scratch = flashmoe_backends::ExpertScratch {
        h1: be.zeros(inter)?,
        h2: be.zeros(inter)?,
        out: be.zeros(hidden)?,
    };
    // Calls per pass: each routes to k records in a stride through the arena, so a pass
    // touches every record once.
    let calls = records / k;
    let routed = |call: usize| -> Result<Vec<RoutedExpert<'_>>, Box<dyn std::error::Error>> {
        (0..k)
            .map(|j| {
                let r = (j * calls + call) % records;
                Ok(RoutedExpert {
                    id: ExpertId {
                        layer: 0,
                        expert: r as u32,
                    },
                    weights: slot(r)?,
                    combine: 1.0 / k as f32,
                })
            })
            .collect()
    };
    let batches = (0..calls).map(routed).collect::<Result<Vec<_>, _>>()?;
    let pass = |be: &CpuBackend, out: &mut _, scratch: &mut _| {
        let t = Instant::now();
        for experts in &batches {
            be.moe_experts(experts, &x, scratch, out)
                .expect("moe_experts");
        }
        t.elapsed().as_secs_f64()
    };
    let bytes_per_pass = (calls * k * (2 * up_bytes + down_bytes)) as f64;

    // The pool's threads reading the same arena as one stream split in contiguous parts.
    let threads = flashmoe_backends::cpu_threads();
    let stream = || {
        let t = Instant::now();
        let chunk = arena.len().div_ceil(threads);
        std::thread::scope(|s| {
            for part in arena.chunks(chunk) {
                s.spawn(move || {
                    let sum = part.chunks_exact(8).fold(0u64, |a, w| {
                        a.wrapping_add(u64::from_ne_bytes(w.try_into().unwrap_or([0; 8])))
                    });
                    std::hint::black_box(sum)
                });
            }
        });
        arena.len() as f64 / t.elapsed().as_secs_f64() / 1e9
    };

    println!(
        "experts: hidden {hidden}, intermediate {inter}, top-{k}, {format:?}, record {:.2} MB, {records} records ({:.0} MB), {threads} threads",
        record as f64 / 1e6,
        (records * record) as f64 / 1e6
    );
    pass(&be, &mut out, &mut scratch);
    let (mut moe, mut read) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        read.push(stream());
        moe.push(bytes_per_pass / pass(&be, &mut out, &mut scratch) / 1e9);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let ((moe_med, moe_best), (read_med, read_best)) = (median(&mut moe), median(&mut read));
    println!("read stream, {threads} threads: median {read_med:.2} GB/s (best {read_best:.2})");
    println!(
        "moe_experts: median {moe_med:.2} GB/s (best {moe_best:.2}), {:.3} ms per call; {:.2}x the read stream (medians)",
        bytes_per_pass / calls as f64 / moe_med / 1e6,
        moe_med / read_med
    );
    Ok(())
}
