//! Prints CPU matvec throughput in GB/s of weight bytes streamed, per format, beside memcpy.
//!
//! `cargo run --release -p flashmoe-backends --example q4_matvec_bw [rows cols]`
//! (default 16384 x 4096: 36 MB in Q4, beyond the caches). Not a benchmark with statistics:
//! the best of a few runs, on a shared machine, for orders of magnitude and ratios.

use flashmoe_backends::quant::{WeightFormat, quantize};
use flashmoe_backends::{ComputeBackend, CpuBackend};
use std::time::Instant;

fn best_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (rows, cols) = if args.len() == 2 {
        (args[0], args[1])
    } else {
        (16384, 4096)
    };
    let be = CpuBackend::new();
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let x = be.upload(&(0..cols).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>())?;
    let mut y = be.zeros(rows)?;

    // memcpy of a buffer the size of the Q4 matrix, single thread (read bytes per second).
    let q4_bytes = WeightFormat::Q4_64.byte_size(rows, cols)?;
    let src = vec![1u8; q4_bytes.max(1 << 26)];
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
    println!(
        "matrix {rows} x {cols}, {} threads in the CPU backend's pool",
        flashmoe_backends::cpu_threads()
    );
    println!(
        "memcpy ({} MB, 1 thread): {memcpy:.2} GB/s copied (as many bytes written); read-only stream: {read:.2} GB/s",
        src.len() >> 20
    );

    for format in [WeightFormat::Bf16, WeightFormat::Q8_64, WeightFormat::Q4_64] {
        let bytes = quantize(&w, rows, cols, format)?;
        let weight = be.load_weight(&bytes, rows, cols, format)?;
        for threads in [1, flashmoe_backends::cpu_threads()] {
            let t = flashmoe_backends::with_cpu_threads(threads, || {
                best_secs(5, || be.matvec(&weight, &x, &mut y).expect("matvec"))
            });
            let gbs = bytes.len() as f64 / t / 1e9;
            println!(
                "{format:?} matvec, {threads} thread(s): {:.2} ms, {gbs:.2} GB/s of weights ({:.2}x memcpy), {:.2} Gweights/s",
                t * 1e3,
                gbs / memcpy,
                (rows * cols) as f64 / t / 1e9
            );
        }
    }
    Ok(())
}
