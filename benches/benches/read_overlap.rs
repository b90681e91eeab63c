//! Cold expert reads, K per layer overlapped: serial pread vs pread pool vs io_uring at several
//! queue depths vs mmap, on the real disk. Throughput in bytes, so criterion prints GB/s.
//!
//! `FLASHMOE_BENCH_DIR` chooses where the 1 GiB test file lives.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flashmoe_benches::{bench_file, drop_page_cache};
use io_sched::backend::BackendKind;
use io_sched::backend::files::DirectMode;
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::bench::layer_reads;

const EXPERT: u64 = 1_769_472; // a 4-bit Qwen3.5-35B expert
const K: usize = 8;
const LAYERS_PER_ITER: u64 = 8;

fn read_overlap(c: &mut Criterion) {
    let (path, layout) = bench_file(9, 64, EXPERT);
    let mut g = c.benchmark_group("read_overlap");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(
        K as u64 * LAYERS_PER_ITER * layout.max_read_len(),
    ));
    let configs: Vec<(String, BackendKind, u32, usize, DirectMode, usize)> = vec![
        (
            "serial_pread".into(),
            BackendKind::Pread,
            1,
            1,
            DirectMode::Auto,
            EXPERT as usize,
        ),
        (
            "pread_pool16".into(),
            BackendKind::Pread,
            16,
            16,
            DirectMode::Auto,
            1 << 20,
        ),
        (
            "io_uring_qd4".into(),
            BackendKind::IoUring,
            4,
            0,
            DirectMode::Auto,
            1 << 20,
        ),
        (
            "io_uring_qd16".into(),
            BackendKind::IoUring,
            16,
            0,
            DirectMode::Auto,
            1 << 20,
        ),
        (
            "io_uring_qd32".into(),
            BackendKind::IoUring,
            32,
            0,
            DirectMode::Auto,
            1 << 20,
        ),
        (
            "mmap8_cold".into(),
            BackendKind::Mmap,
            8,
            8,
            DirectMode::Off,
            1 << 20,
        ),
    ];
    for (name, kind, qd, threads, direct, chunk) in configs {
        let cfg = BackendConfig::default()
            .kind(Some(kind))
            .queue_depth(qd)
            .threads((threads > 0).then_some(threads))
            .direct(direct);
        if let Err(e) = open_backend(&layout, &cfg) {
            eprintln!("skipping {name}: {e}");
            continue;
        }
        let mut seed = 0;
        g.bench_function(name, |b| {
            // A fresh backend per iteration, opened after dropping the page cache: an mmap
            // kept across iterations would pin its pages and measure warm reads.
            b.iter_batched(
                || {
                    drop_page_cache(&path);
                    seed += 1;
                    let opened = open_backend(&layout, &cfg).expect("backend opened above");
                    (opened.backend, seed)
                },
                |(mut backend, seed)| {
                    layer_reads(backend.as_mut(), &layout, K, chunk, LAYERS_PER_ITER, seed)
                        .expect("reads")
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, read_overlap);
criterion_main!(benches);
