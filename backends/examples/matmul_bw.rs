//! Prints CPU matvec / matmul throughput at Qwen3-30B-A3B's expert shapes, one line per case.
//!
//! `cargo run --release -p flashmoe-backends --example matmul_bw [rounds]`
//!
//! Cases: `matvec` of `[768 x 2048]` (gate/up) and `[2048 x 768]` (down) in Q4 group 64 and Q8;
//! one MoE layer's experts (`moe_experts`, k = 8); and `matmul_bytes` at n = 1, 4, 16, 64 tokens
//! on `[768 x 2048]` Q4 (a routed expert run on all the chunk's tokens), also on a bigger
//! `[4096 x 2048]` Q4 matrix, and bf16 `[768 x 2048]` at n = 16. Each case prints the median and the min..max over `rounds` (default
//! 5) of the best-of-a-burst time: GB/s of weight bytes (per call, so a matmul of n tokens
//! counts its weights once) and tokens/s. Uses only the public API, so the same file measures
//! an older build for before/after ratios. Not a test: timing on a shared machine
//! (`FLASHMOE_BENCH_CPU_TIME=1 FLASHMOE_THREADS=1` times on-CPU time of one core instead).

use flashmoe_backends::quant::WeightFormat;
use flashmoe_backends::{
    ComputeBackend, CpuBackend, ExpertId, ExpertScratch, RoutedExpert, WeightView,
};
use std::hint::black_box;
use std::time::Instant;

fn matrix(rows: usize, cols: usize, f: WeightFormat) -> Vec<u8> {
    let l = f.layout(rows, cols).expect("bench shapes fit the formats");
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes: Vec<u8> = (0..l.total)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let small = half::f16::from_f32(0.01).to_le_bytes();
    match f {
        // Clear the exponent's top bits: finite, small values.
        WeightFormat::Bf16 => bytes.chunks_exact_mut(2).for_each(|b| b[1] &= 0x3c),
        _ => bytes[l.scales_offset..]
            .chunks_exact_mut(2)
            .for_each(|b| b.copy_from_slice(&small)),
    }
    bytes
}

/// On-CPU nanoseconds of every thread of this process so far (`/proc/self/task/*/schedstat`),
/// or `None` where that is not readable.
fn cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// A clock: wall time, or with `FLASHMOE_BENCH_CPU_TIME=1` the process's on-CPU time (robust
/// to other processes taking turns on the cores of a shared machine; use it with
/// `FLASHMOE_THREADS=1`, or it also counts the pool's idle spinning).
fn now(cpu: bool) -> f64 {
    match cpu.then(cpu_ns).flatten() {
        Some(ns) => ns as f64 * 1e-9,
        None => START.with(|s| s.elapsed().as_secs_f64()),
    }
}

thread_local! {
    static START: Instant = Instant::now();
}

/// Seconds per call: the best of three bursts of calls lasting ~50 ms each.
fn secs_per_call(cpu: bool, mut f: impl FnMut()) -> f64 {
    f();
    let t = now(cpu);
    let mut calls = 0u32;
    while now(cpu) - t < 0.02 {
        f();
        calls += 1;
    }
    let per_call = (now(cpu) - t) / calls.max(1) as f64;
    let per_burst = ((0.05 / per_call.max(1e-9)) as u32).max(1);
    (0..3)
        .map(|_| {
            let t = now(cpu);
            for _ in 0..per_burst {
                f();
            }
            (now(cpu) - t) / per_burst as f64
        })
        .fold(f64::MAX, f64::min)
}

struct Case {
    name: String,
    bytes: usize,
    tokens: usize,
    run: Box<dyn FnMut()>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let cpu = std::env::var("FLASHMOE_BENCH_CPU_TIME").is_ok_and(|v| v == "1");
    let be = CpuBackend::new();
    let mut cases: Vec<Case> = Vec::new();
    for (fname, f) in [("q4", WeightFormat::Q4_64), ("q8", WeightFormat::Q8_64)] {
        for (rows, cols) in [(768usize, 2048usize), (2048, 768)] {
            let bytes = matrix(rows, cols, f);
            let x = be.upload(&vec![0.5; cols])?;
            let mut y = be.zeros(rows)?;
            let be = be.clone();
            let len = bytes.len();
            cases.push(Case {
                name: format!("matvec {fname} {rows}x{cols}"),
                bytes: len,
                tokens: 1,
                run: Box::new(move || {
                    let w = WeightView::new(&bytes, rows, cols, f).expect("valid");
                    be.matvec_bytes(w, black_box(&x), &mut y).expect("matvec");
                }),
            });
        }
    }
    {
        let (hidden, inter, k) = (2048usize, 768usize, 8usize);
        let f = WeightFormat::Q4_64;
        let recs: Vec<[Vec<u8>; 3]> = (0..k)
            .map(|_| {
                [
                    matrix(inter, hidden, f),
                    matrix(inter, hidden, f),
                    matrix(hidden, inter, f),
                ]
            })
            .collect();
        let total: usize = recs.iter().flatten().map(Vec::len).sum();
        let x = be.upload(&vec![0.5; hidden])?;
        let z = |n| be.zeros(n);
        let mut scratch = ExpertScratch {
            h1: z(inter)?,
            h2: z(inter)?,
            out: z(hidden)?,
        };
        let mut out = z(hidden)?;
        let be = be.clone();
        cases.push(Case {
            name: "experts q4 k8 (768x2048 x2 + 2048x768)".into(),
            bytes: total,
            tokens: 1,
            run: Box::new(move || {
                let routed: Vec<RoutedExpert<'_>> = recs
                    .iter()
                    .enumerate()
                    .map(|(e, r)| RoutedExpert {
                        id: ExpertId {
                            layer: 0,
                            expert: e as u32,
                        },
                        weights: [
                            WeightView::new(&r[0], inter, hidden, f).expect("gate"),
                            WeightView::new(&r[1], inter, hidden, f).expect("up"),
                            WeightView::new(&r[2], hidden, inter, f).expect("down"),
                        ],
                        combine: 1.0 / k as f32,
                    })
                    .collect();
                be.moe_experts(&routed, black_box(&x), &mut scratch, &mut out)
                    .expect("experts");
            }),
        });
    }
    for (rows, cols) in [(768usize, 2048usize), (4096, 2048)] {
        let f = WeightFormat::Q4_64;
        for n in [1usize, 4, 16, 64] {
            let bytes = matrix(rows, cols, f);
            let xs: Vec<f32> = (0..n * cols)
                .map(|i| ((i % 13) as f32 - 6.0) / 8.0)
                .collect();
            let x = be.upload(&xs)?;
            let mut y = be.zeros(n * rows)?;
            let be = be.clone();
            let len = bytes.len();
            cases.push(Case {
                name: format!("matmul q4 {rows}x{cols} n={n}"),
                bytes: len,
                tokens: n,
                run: Box::new(move || {
                    let w = WeightView::new(&bytes, rows, cols, f).expect("valid");
                    be.matmul_bytes(w, black_box(&x), n, &mut y)
                        .expect("matmul");
                }),
            });
        }
    }
    {
        let (rows, cols, n, f) = (768usize, 2048usize, 16usize, WeightFormat::Bf16);
        let bytes = matrix(rows, cols, f);
        let x = be.upload(&vec![0.25; n * cols])?;
        let mut y = be.zeros(n * rows)?;
        let be = be.clone();
        let len = bytes.len();
        cases.push(Case {
            name: format!("matmul bf16 {rows}x{cols} n={n}"),
            bytes: len,
            tokens: n,
            run: Box::new(move || {
                let w = WeightView::new(&bytes, rows, cols, f).expect("valid");
                be.matmul_bytes(w, black_box(&x), n, &mut y)
                    .expect("matmul");
            }),
        });
    }
    // Rounds interleave the cases: each round times every case once.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (c, t) in cases.iter_mut().zip(&mut times) {
            t.push(secs_per_call(cpu, &mut c.run));
        }
    }
    println!(
        "{} threads; {rounds} rounds; median [min..max] of best-of-burst; {} time",
        flashmoe_backends::cpu_threads(),
        if cpu { "on-CPU" } else { "wall" }
    );
    for (c, t) in cases.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        let med = t[t.len() / 2];
        let gbs = |s: f64| c.bytes as f64 / s / 1e9;
        println!(
            "{:<42} {:7.1} us  {:6.2} GB/s [{:.2}..{:.2}]  {:9.0} tok/s",
            c.name,
            med * 1e6,
            gbs(med),
            gbs(t[t.len() - 1]),
            gbs(t[0]),
            c.tokens as f64 / med
        );
    }
    Ok(())
}
