//! Prints CPU matvec throughput in GB/s of weight bytes streamed, per format, beside memcpy.
//!
//! `cargo run --release -p flashmoe-backends --example q4_matvec_bw [rows cols [copies]]`
//! (default 16384 x 4096: 36 MB in Q4, beyond the caches; the memcpy and read streams are at
//! least 2 GiB: beyond a server L3). With `copies`, also one Q4 matvec
//! over each of that many distinct matrices in turn, as a decode step runs its small
//! projections: none is in the caches when its turn comes. Not a benchmark with statistics:
//! the best of a few runs, on a shared machine, for orders of magnitude and ratios.

use flashmoe_backends::quant::{WeightFormat, quantize};
use flashmoe_backends::{ComputeBackend, CpuBackend};
use std::time::Instant;

/// The best and the median of `reps` timed runs after one warm-up run, in seconds.
fn timed_secs(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut secs: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    (secs[0], secs[secs.len() / 2])
}

fn best_secs(reps: usize, f: impl FnMut()) -> f64 {
    timed_secs(reps, f).0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (rows, cols) = if args.len() >= 2 {
        (args[0], args[1])
    } else {
        (16384, 4096)
    };
    let copies = args.get(2).copied().unwrap_or(0);
    let be = CpuBackend::new();
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let x = be.upload(&(0..cols).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>())?;
    let mut y = be.zeros(rows)?;

    // memcpy of a buffer the size of the Q4 matrix, single thread (read bytes per second).
    let q4_bytes = WeightFormat::Q4_64.byte_size(rows, cols)?;
    let src = vec![1u8; q4_bytes.max(1 << 31)];
    let mut dst = vec![0u8; src.len()];
    let t = best_secs(5, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    });
    let memcpy = src.len() as f64 / t / 1e9;
    // A read-only stream of the same buffer (sum of u64 words), single thread.
    let words: Vec<u64> = src
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let t = best_secs(5, || {
        std::hint::black_box(words.iter().fold(0u64, |a, &w| a.wrapping_add(w)));
    });
    let read = src.len() as f64 / t / 1e9;
    // The same stream split between the pool's threads (the bound a decode step is held to).
    let threads = flashmoe_backends::cpu_threads();
    let t = best_secs(5, || {
        let chunk = words.len().div_ceil(threads);
        std::thread::scope(|s| {
            for part in words.chunks(chunk) {
                s.spawn(move || {
                    std::hint::black_box(part.iter().fold(0u64, |a, &w| a.wrapping_add(w)))
                });
            }
        });
    });
    let read_all = src.len() as f64 / t / 1e9;
    println!(
        "matrix {rows} x {cols}, {} threads in the CPU backend's pool",
        flashmoe_backends::cpu_threads()
    );
    println!(
        "memcpy ({} MB, 1 thread): {memcpy:.2} GB/s copied (as many bytes written); read-only stream: {read:.2} GB/s",
        src.len() >> 20
    );
    println!("read-only stream, {threads} threads: {read_all:.2} GB/s");

    for format in [WeightFormat::Bf16, WeightFormat::Q8_64, WeightFormat::Q4_64] {
        let bytes = quantize(&w, rows, cols, format)?;
        let weight = be.load_weight(&bytes, rows, cols, format)?;
        for threads in [1, flashmoe_backends::cpu_threads()] {
            let (t, median) = flashmoe_backends::with_cpu_threads(threads, || {
                timed_secs(15, || be.matvec(&weight, &x, &mut y).expect("matvec"))
            });
            let gbs = bytes.len() as f64 / t / 1e9;
            println!(
                "{format:?} matvec, {threads} thread(s): {:.2} ms (median {:.2}), {gbs:.2} GB/s of weights ({:.2}x memcpy), {:.2} Gweights/s",
                t * 1e3,
                median * 1e3,
                gbs / memcpy,
                (rows * cols) as f64 / t / 1e9
            );
        }
    }
    if copies > 0 {
        let bytes = quantize(&w, rows, cols, WeightFormat::Q4_64)?;
        let weights = (0..copies)
            .map(|_| be.load_weight(&bytes, rows, cols, WeightFormat::Q4_64))
            .collect::<Result<Vec<_>, _>>()?;
        let (t, median) = timed_secs(15, || {
            for weight in &weights {
                be.matvec(weight, &x, &mut y).expect("matvec");
            }
        });
        let total = (bytes.len() * copies) as f64;
        println!(
            "Q4 matvec over {copies} distinct matrices in turn, {threads} thread(s): {:.3} ms each (median {:.3}), {:.2} GB/s of weights ({:.2}x the {threads}-thread read stream)",
            t * 1e3 / copies as f64,
            median * 1e3 / copies as f64,
            total / t / 1e9,
            total / t / 1e9 / read_all
        );
    }
    Ok(())
}
