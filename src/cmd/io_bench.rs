//! `flashmoe io-bench`: cold expert-sized reads on this machine's disk, every backend side by
//! side in one run, printed as GB/s and as ratios (to serial pread, and to fio when asked).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;
use io_sched::backend::BackendKind;
use io_sched::backend::files::DirectMode;
use io_sched::backend::select::{BackendConfig, RegisterBuffers, open_backend};
use io_sched::bench::{BenchResult, Rng, layer_reads, pick_experts, random_reads};
use io_sched::{ExpertLayout, Scheduler, SchedulerConfig};
use serde::Serialize;

use super::CliResult;
use super::testfile::{self, Geometry};

#[derive(Args, Debug)]
pub struct IoBenchArgs {
    /// Where the packed test files live (created once, then reused).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("flashmoe-io-bench"))]
    pub dir: PathBuf,
    /// Size of each test file in MiB (make it larger than RAM for honest mmap figures).
    #[arg(long, default_value_t = 512)]
    pub file_mib: u64,
    /// Expert record sizes in bytes (defaults: the 4-bit Qwen3.5 35B and 397B experts).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_769_472u64, 7_077_888])]
    pub expert_bytes: Vec<u64>,
    /// Experts per file layer.
    #[arg(long, default_value_t = 64)]
    pub experts: u32,
    /// Experts read together per layer (K).
    #[arg(long, value_delimiter = ',', default_values_t = vec![4usize, 8])]
    pub k: Vec<usize>,
    /// io_uring queue depths to try.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 4, 16, 32])]
    pub qd: Vec<u32>,
    /// Request size of the layer pattern (experts are split into requests of this size).
    #[arg(long, default_value_t = 1 << 20)]
    pub chunk: usize,
    /// MiB moved per row.
    #[arg(long, default_value_t = 256)]
    pub mib_per_row: u64,
    /// Also run fio (io_uring, O_DIRECT, randread) with the same block size and queue depths,
    /// back to back, and print ratios to it.
    #[arg(long)]
    pub fio: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub expert_bytes: u64,
    /// `random` (fio-like, qd reads of one expert each always in flight) or `layer-k<K>`.
    pub pattern: String,
    pub method: String,
    pub qd: u32,
    pub gb_per_s: f64,
    /// Layer rows: ratio to serial pread of the same K.
    pub vs_serial: Option<f64>,
    /// Ratio to fio at the same block size and queue depth (random rows).
    pub vs_fio_same_qd: Option<f64>,
    /// Ratio to the best fio figure over queue depths for this block size.
    pub vs_fio_best: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    file_mib: u64,
    chunk: usize,
    mib_per_row: u64,
    rows: Vec<Row>,
    fio: Vec<FioPoint>,
    notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct FioPoint {
    expert_bytes: u64,
    qd: u32,
    gb_per_s: f64,
}

pub fn run(args: &IoBenchArgs) -> CliResult<()> {
    if args.expert_bytes.is_empty() || args.k.is_empty() || args.qd.is_empty() {
        return Err("io-bench needs at least one --expert-bytes, --k and --qd".into());
    }
    let mut report = Report {
        file_mib: args.file_mib,
        chunk: args.chunk,
        mib_per_row: args.mib_per_row,
        rows: Vec::new(),
        fio: Vec::new(),
        notes: Vec::new(),
    };
    for &bytes in &args.expert_bytes {
        let per_file = (args.file_mib << 20) / bytes.max(1);
        let layers = (per_file / args.experts as u64).max(1) as u32;
        let g = Geometry {
            layers,
            experts: args.experts,
            expert_bytes: bytes,
        };
        let (path, layout) = testfile::ensure(&args.dir, g, args.json)?;
        if !args.json {
            eprintln!(
                "{}: {} layers x {} experts of {} bytes",
                path.display(),
                layers,
                args.experts,
                bytes
            );
        }
        bench_geometry(args, &path, &layout, bytes, &mut report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn cfg(kind: BackendKind, qd: u32, threads: usize, direct: DirectMode) -> BackendConfig {
    BackendConfig {
        kind: Some(kind),
        queue_depth: qd,
        threads: Some(threads),
        direct,
        register_buffers: RegisterBuffers::Auto,
        allow_io_uring: true,
    }
}

fn bench_geometry(
    args: &IoBenchArgs,
    path: &Path,
    layout: &ExpertLayout,
    bytes: u64,
    report: &mut Report,
) -> CliResult<()> {
    let file_len = std::fs::metadata(path)?.len();
    let block = layout.max_read_len() as usize;
    let budget = args.mib_per_row << 20;
    let reads = (budget / block as u64).max(1);
    let mut rows = Vec::new();
    let mut fio = Vec::new();

    // fio-like random reads, one expert per request, qd in flight.
    for &qd in &args.qd {
        testfile::drop_page_cache(path);
        let mut be = open_backend(layout, &cfg(BackendKind::IoUring, qd, 0, DirectMode::Auto))?;
        note_fallbacks(&be.fallbacks, report);
        let r = random_reads(be.backend.as_mut(), file_len, block, qd as usize, reads, 7)?;
        rows.push(row(bytes, "random", "io_uring", qd, r));
        if args.fio {
            match run_fio(path, block, qd, reads * block as u64) {
                Ok(gbs) => fio.push(FioPoint {
                    expert_bytes: bytes,
                    qd,
                    gb_per_s: gbs,
                }),
                Err(e) => report.notes.push(format!("fio qd={qd}: {e}")),
            }
        }
    }

    // The MoE pattern: K experts per layer, overlapped, barrier per layer.
    for &k in &args.k {
        let pattern = format!("layer-k{k}");
        let steps = (budget / (k as u64 * bytes)).max(2);
        let whole = block;
        let mut run_layer = |c: BackendConfig, chunk: usize| -> CliResult<BenchResult> {
            testfile::drop_page_cache(path);
            let mut be = open_backend(layout, &c)?;
            note_fallbacks(&be.fallbacks, report);
            Ok(layer_reads(
                be.backend.as_mut(),
                layout,
                k,
                chunk,
                steps,
                11,
            )?)
        };
        let serial = run_layer(cfg(BackendKind::Pread, 1, 1, DirectMode::Auto), whole)?;
        rows.push(row(
            bytes,
            &pattern,
            "serial pread (1 expert at a time)",
            1,
            serial,
        ));
        let pool = run_layer(
            cfg(BackendKind::Pread, 16, 16, DirectMode::Auto),
            args.chunk,
        )?;
        rows.push(row(bytes, &pattern, "pread pool x16", 16, pool));
        for &qd in &args.qd {
            let r = run_layer(
                cfg(BackendKind::IoUring, qd, 0, DirectMode::Auto),
                args.chunk,
            )?;
            rows.push(row(bytes, &pattern, "io_uring", qd, r));
        }
        let mmap = run_layer(cfg(BackendKind::Mmap, 8, 8, DirectMode::Off), args.chunk)?;
        rows.push(row(bytes, &pattern, "mmap x8 (page cache, cold)", 8, mmap));
        let sched = scheduler_layer_reads(layout, k, steps, args.chunk, path, report)?;
        rows.push(row(
            bytes,
            &pattern,
            "io-sched acquire (io_uring qd32, checksums)",
            32,
            sched,
        ));
    }

    // Ratios, all from this one run.
    let fio_best = fio
        .iter()
        .map(|f| f.gb_per_s)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let serial_of = |rows: &[Row], pattern: &str| {
        rows.iter()
            .find(|r| r.pattern == pattern && r.method.starts_with("serial"))
            .map(|r| r.gb_per_s)
    };
    let serials: Vec<(String, Option<f64>)> = rows
        .iter()
        .map(|r| (r.pattern.clone(), serial_of(&rows, &r.pattern)))
        .collect();
    for (r, (_, serial)) in rows.iter_mut().zip(serials) {
        if r.pattern != "random" {
            r.vs_serial = serial.map(|s| r.gb_per_s / s);
        }
        if r.pattern == "random" {
            r.vs_fio_same_qd = fio
                .iter()
                .find(|f| f.qd == r.qd)
                .map(|f| r.gb_per_s / f.gb_per_s);
        }
        r.vs_fio_best = fio_best.map(|b| r.gb_per_s / b);
    }
    report.rows.extend(rows);
    report.fio.extend(fio);
    Ok(())
}

/// K-expert layers through the whole scheduler (cache too small to hit, so every expert is a
/// demand read): what the engine gets, checksums included.
fn scheduler_layer_reads(
    layout: &ExpertLayout,
    k: usize,
    steps: u64,
    chunk: usize,
    path: &Path,
    report: &mut Report,
) -> CliResult<BenchResult> {
    testfile::drop_page_cache(path);
    let be = open_backend(layout, &cfg(BackendKind::IoUring, 32, 0, DirectMode::Auto))?;
    note_fallbacks(&be.fallbacks, report);
    let mut sc = SchedulerConfig::with_budget(layout.max_read_len() * 2 * k as u64);
    sc.core.demand_chunk = chunk;
    let sched = Scheduler::with_backend(layout.clone(), sc, be.backend)?;
    let mut rng = Rng::new(11);
    let mut experts = Vec::new();
    let start = Instant::now();
    for step in 0..steps {
        let layer = (step % layout.num_layers() as u64) as u32;
        pick_experts(&mut rng, layout.num_experts(), k, &mut experts);
        drop(sched.acquire(layer, &experts)?);
    }
    let elapsed = start.elapsed();
    let m = sched.metrics().total();
    Ok(BenchResult {
        bytes: m.bytes_read(),
        reads: m.misses,
        elapsed,
    })
}

fn row(expert_bytes: u64, pattern: &str, method: &str, qd: u32, r: BenchResult) -> Row {
    Row {
        expert_bytes,
        pattern: pattern.to_string(),
        method: method.to_string(),
        qd,
        gb_per_s: r.gb_per_s(),
        vs_serial: None,
        vs_fio_same_qd: None,
        vs_fio_best: None,
    }
}

fn note_fallbacks(fallbacks: &[String], report: &mut Report) {
    for f in fallbacks {
        if !report.notes.contains(f) {
            report.notes.push(f.clone());
        }
    }
}

/// Runs fio with the same block size, queue depth and volume; returns GB/s.
fn run_fio(path: &Path, block: usize, qd: u32, bytes: u64) -> CliResult<f64> {
    let out = Command::new("fio")
        .args([
            "--name=flashmoe",
            "--ioengine=io_uring",
            "--direct=1",
            "--rw=randread",
            "--randrepeat=0",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", path.display()))
        .arg(format!("--bs={block}"))
        .arg(format!("--iodepth={qd}"))
        .arg(format!("--io_size={bytes}"))
        .output()
        .map_err(|e| format!("cannot run fio (is it installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("fio printed no JSON: {e}"))?;
    let bw = v["jobs"][0]["read"]["bw_bytes"]
        .as_f64()
        .ok_or("fio JSON has no jobs[0].read.bw_bytes")?;
    Ok(bw / 1e9)
}

fn fmt_ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.2}x"))
}

fn print_table(report: &Report) {
    println!(
        "io-bench: cold reads, {} MiB per row, layer requests of {} bytes",
        report.mib_per_row, report.chunk
    );
    println!(
        "{:>9} {:>9} {:<44} {:>4} {:>8} {:>9} {:>9} {:>9}",
        "expert B", "pattern", "method", "qd", "GB/s", "vs serial", "vs fio qd", "vs fio best"
    );
    for r in &report.rows {
        println!(
            "{:>9} {:>9} {:<44} {:>4} {:>8.3} {:>9} {:>9} {:>9}",
            r.expert_bytes,
            r.pattern,
            r.method,
            r.qd,
            r.gb_per_s,
            fmt_ratio(r.vs_serial),
            fmt_ratio(r.vs_fio_same_qd),
            fmt_ratio(r.vs_fio_best)
        );
    }
    if !report.fio.is_empty() {
        println!("fio (io_uring, O_DIRECT, randread, same file, same block size):");
        for f in &report.fio {
            println!(
                "  expert B {:>9} qd {:>3}: {:.3} GB/s",
                f.expert_bytes, f.qd, f.gb_per_s
            );
        }
    }
    for n in &report.notes {
        println!("note: {n}");
    }
}
