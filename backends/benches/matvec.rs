//! Criterion benches of the CPU decode kernels at Qwen3-30B-A3B's shapes, with the machine's
//! read bandwidth beside them so a kernel's GB/s reads as a share of the bound.
//!
//! `cargo bench -p flashmoe-backends --bench matvec` (add `-- matvec/q4` to pick). Throughput is
//! in bytes of weights streamed per call. Groups:
//! - `read_bw`: a read-only sum over a 1 GiB buffer on 2 threads (the bound for a matvec);
//! - `matvec/{q4,q8,bf16}/{rows}x{cols}`: one matvec, 2048x768 (down), 768x2048 (gate, up),
//!   4096x2048 (q_proj), 151936x2048 (lm_head);
//! - `experts/q4/k8`: `moe_experts` with 8 routed experts of 768x2048 (one MoE layer), the
//!   same 8 each call (in the caches); `experts_dram/q4/k8`: the next of 48 layers' 8 each
//!   call (from DRAM, as decode reads them), and `.../per_matrix` the same bytes as a matvec
//!   per matrix;
//! - `matmul/{q4,bf16}/768x2048/n{N}`: `matmul_bytes` on a chunk of N = 1, 4, 16, 64 tokens
//!   (a routed expert run on the chunk's tokens routed to it; throughput counts the weights
//!   once per call, so tokens/s = N x calls/s).
//!
//! Weights are random codes with valid f16 scales (values do not change the timing).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashmoe_backends::quant::WeightFormat;
use flashmoe_backends::{
    ComputeBackend, CpuBackend, ExpertId, ExpertScratch, RoutedExpert, WeightView,
};
use std::hint::black_box;
use std::time::Duration;

/// Bytes of a `[rows x cols]` matrix in `f`, filled with pseudo-random codes and small f16
/// scales and biases (or bf16 values).
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
        WeightFormat::Bf16 => {
            // Clear the exponent's top bits: finite, small values.
            bytes.chunks_exact_mut(2).for_each(|b| b[1] &= 0x3c);
        }
        _ => bytes[l.scales_offset..]
            .chunks_exact_mut(2)
            .for_each(|b| b.copy_from_slice(&small)),
    }
    bytes
}

fn read_bw(c: &mut Criterion) {
    let words: Vec<u64> = (0..(1usize << 30) / 8).map(|i| i as u64).collect();
    let mut g = c.benchmark_group("read_bw");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes((words.len() * 8) as u64));
    g.bench_function("2threads_1GiB", |b| {
        b.iter(|| {
            let (a, z) = words.split_at(words.len() / 2);
            std::thread::scope(|s| {
                let h = s.spawn(|| sum(a));
                sum(z).wrapping_add(h.join().unwrap_or(0))
            })
        })
    });
    g.finish();
}

/// Sum with 8 independent lanes (vectorizes to full-width loads).
fn sum(w: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in w.chunks_exact(8) {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    black_box(acc.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
}

fn matvecs(c: &mut Criterion) {
    let be = CpuBackend::new();
    let mut g = c.benchmark_group("matvec");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (name, f) in [
        ("q4", WeightFormat::Q4_64),
        ("q8", WeightFormat::Q8_64),
        ("bf16", WeightFormat::Bf16),
    ] {
        for (rows, cols) in [
            (2048usize, 768usize),
            (768, 2048),
            (4096, 2048),
            (151936, 2048),
        ] {
            let bytes = matrix(rows, cols, f);
            let w = WeightView::new(&bytes, rows, cols, f).expect("valid matrix");
            let x = be.upload(&vec![0.5; cols]).expect("cpu upload");
            let mut y = be.zeros(rows).expect("cpu zeros");
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_function(format!("{name}/{rows}x{cols}"), |b| {
                b.iter(|| be.matvec_bytes(w, black_box(&x), &mut y).expect("matvec"))
            });
        }
    }
    g.finish();
}

/// `n` routed experts' records (gate, up, down) at the 30B geometry in Q4.
fn expert_records(n: usize) -> Vec<[Vec<u8>; 3]> {
    let (hidden, inter, f) = (2048usize, 768usize, WeightFormat::Q4_64);
    (0..n)
        .map(|_| {
            [
                matrix(inter, hidden, f),
                matrix(inter, hidden, f),
                matrix(hidden, inter, f),
            ]
        })
        .collect()
}

/// The records as one layer's routed experts, equal combine weights.
fn routed(recs: &[[Vec<u8>; 3]], layer: u32) -> Vec<RoutedExpert<'_>> {
    let (hidden, inter, f) = (2048usize, 768usize, WeightFormat::Q4_64);
    recs.iter()
        .enumerate()
        .map(|(e, r)| RoutedExpert {
            id: ExpertId {
                layer,
                expert: e as u32,
            },
            weights: [
                WeightView::new(&r[0], inter, hidden, f).expect("gate"),
                WeightView::new(&r[1], inter, hidden, f).expect("up"),
                WeightView::new(&r[2], hidden, inter, f).expect("down"),
            ],
            combine: 1.0 / recs.len() as f32,
        })
        .collect()
}

/// `moe_experts` on 8 experts: the same 8 every call (`experts`, in the caches), and each call
/// the next of 48 layers' 8 (`experts_dram`, 1 GB in all, more than the caches: the weights
/// come from DRAM, as in decode), with the same bytes as one matvec per matrix beside it.
fn experts(c: &mut Criterion) {
    let be = CpuBackend::new();
    let (hidden, inter, k, layers) = (2048usize, 768usize, 8usize, 48usize);
    let recs = expert_records(k * layers);
    let layers_routed: Vec<Vec<RoutedExpert<'_>>> = (0..layers)
        .map(|l| routed(&recs[l * k..(l + 1) * k], l as u32))
        .collect();
    let x = be.upload(&vec![0.5; hidden]).expect("cpu upload");
    let z = |n| be.zeros(n).expect("cpu zeros");
    let mut scratch = ExpertScratch {
        h1: z(inter),
        h2: z(inter),
        out: z(hidden),
    };
    let mut out = z(hidden);
    let (mut h, mut y) = (z(inter), z(hidden));
    let bytes: usize = recs[..k].iter().flatten().map(Vec::len).sum();
    let mut g = c.benchmark_group("experts");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("q4/k8", |b| {
        b.iter(|| {
            be.moe_experts(&layers_routed[0], black_box(&x), &mut scratch, &mut out)
                .expect("experts")
        })
    });
    g.finish();
    let mut g = c.benchmark_group("experts_dram");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(bytes as u64));
    let mut l = 0;
    g.bench_function("q4/k8", |b| {
        b.iter(|| {
            l = (l + 1) % layers;
            be.moe_experts(&layers_routed[l], black_box(&x), &mut scratch, &mut out)
                .expect("experts")
        })
    });
    g.bench_function("q4/k8/per_matrix", |b| {
        b.iter(|| {
            l = (l + 1) % layers;
            for e in &layers_routed[l] {
                be.matvec_bytes(e.weights[0], black_box(&x), &mut h)
                    .expect("gate");
                be.matvec_bytes(e.weights[1], black_box(&x), &mut h)
                    .expect("up");
                be.matvec_bytes(e.weights[2], black_box(&h), &mut y)
                    .expect("down");
            }
        })
    });
    g.finish();
}

fn matmuls(c: &mut Criterion) {
    let be = CpuBackend::new();
    let (rows, cols) = (768usize, 2048usize);
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (name, f) in [("q4", WeightFormat::Q4_64), ("bf16", WeightFormat::Bf16)] {
        let bytes = matrix(rows, cols, f);
        let w = WeightView::new(&bytes, rows, cols, f).expect("valid matrix");
        for n in [1usize, 4, 16, 64] {
            let x = be.upload(&vec![0.5; n * cols]).expect("cpu upload");
            let mut y = be.zeros(n * rows).expect("cpu zeros");
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_function(format!("{name}/{rows}x{cols}/n{n}"), |b| {
                b.iter(|| {
                    be.matmul_bytes(w, black_box(&x), n, &mut y)
                        .expect("matmul")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, read_bw, matvecs, experts, matmuls);
criterion_main!(benches);
