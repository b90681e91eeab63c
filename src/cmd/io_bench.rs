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
    #[arg(long, default_value_t = 512, value_parser = super::values::mib)]
    pub file_mib: u64,
    /// Expert record sizes in bytes (defaults: the 4-bit Qwen3.5 35B and 397B experts).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_769_472u64, 7_077_888], value_parser = super::values::expert_bytes)]
    pub expert_bytes: Vec<u64>,
    /// Experts per file layer.
    #[arg(long, default_value_t = 64, value_parser = super::values::positive_u32)]
    pub experts: u32,
    /// Experts read together per layer (K).
    #[arg(long, value_delimiter = ',', default_values_t = vec![4usize, 8], value_parser = super::values::positive_usize)]
    pub k: Vec<usize>,
    /// io_uring queue depths to try.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 4, 16, 32], value_parser = super::values::positive_u32)]
    pub qd: Vec<u32>,
    /// Request size of the layer pattern (experts are split into requests of this size).
    #[arg(long, default_value_t = 1 << 20, value_parser = super::values::positive_usize)]
    pub chunk: usize,
    /// MiB moved per row.
    #[arg(long, default_value_t = 256, value_parser = super::values::mib)]
    pub mib_per_row: u64,
    /// Also run fio (io_uring, O_DIRECT, randread) with the same block size and queue depths,
    /// back to back, and print ratios to it.
    #[arg(long)]
    pub fio: bool,
    /// Rounds; every round runs every configuration once (interleaved), and the table shows
    /// the median, so a noisy shared disk affects all rows alike.
    #[arg(long, default_value_t = 3, value_parser = super::values::positive_usize)]
    pub repeat: usize,
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
    repeat: usize,
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
    if let Some(&k) = args.k.iter().find(|&&k| k > args.experts as usize) {
        return Err(format!("--k {k}: more than --experts {}", args.experts).into());
    }
    if args.expert_bytes.is_empty() || args.k.is_empty() || args.qd.is_empty() {
        return Err("io-bench needs at least one --expert-bytes, --k and --qd".into());
    }
    let mut report = Report {
        file_mib: args.file_mib,
        chunk: args.chunk,
        mib_per_row: args.mib_per_row,
        repeat: args.repeat,
        rows: Vec::new(),
        fio: Vec::new(),
        notes: Vec::new(),
    };
    // Both at most 2^30 and 2^40 bytes (value parsers), experts below 2^32: no overflow.
    let file_bytes = args.file_mib << 20;
    if let Some(&bytes) = args
        .expert_bytes
        .iter()
        .find(|&&b| b * args.experts as u64 > file_bytes)
    {
        return Err(format!(
            "--file-mib {} holds no layer of --experts {} x --expert-bytes {bytes} ({} MiB); \
             raise --file-mib or lower the others",
            args.file_mib,
            args.experts,
            (bytes * args.experts as u64).div_ceil(1 << 20)
        )
        .into());
    }
    for &bytes in &args.expert_bytes {
        // Too many records for one file is refused by the pack writer, naming the geometry.
        let layers = (file_bytes / bytes / args.experts as u64).min(u32::MAX as u64) as u32;
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
    BackendConfig::default()
        .kind(kind)
        .queue_depth(qd)
        .threads(threads)
        .direct(direct)
        .register_buffers(RegisterBuffers::Auto)
        .allow_io_uring(true)
}

/// One configuration measured in every round.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// fio-like random reads, one expert per request, `qd` in flight, through io_uring.
    Random { qd: u32 },
    /// fio itself, same file, block size, queue depth and volume.
    Fio { qd: u32 },
    /// K experts per layer, overlapped, barrier per layer.
    Layer { k: usize, method: LayerMethod },
}

#[derive(Debug, Clone, Copy)]
enum LayerMethod {
    Serial,
    PreadPool,
    Uring(u32),
    Mmap,
    /// Through `Scheduler::acquire`; the flag: verify checksums.
    Scheduler(bool),
}

impl Job {
    fn pattern(&self) -> String {
        match self {
            Job::Random { .. } | Job::Fio { .. } => "random".into(),
            Job::Layer { k, .. } => format!("layer-k{k}"),
        }
    }
    fn method_and_qd(&self) -> (&'static str, u32) {
        match self {
            Job::Random { qd } => ("io_uring", *qd),
            Job::Fio { qd } => ("fio io_uring", *qd),
            Job::Layer { method, .. } => match method {
                LayerMethod::Serial => ("serial pread (1 expert at a time)", 1),
                LayerMethod::PreadPool => ("pread pool x16", 16),
                LayerMethod::Uring(qd) => ("io_uring", *qd),
                LayerMethod::Mmap => ("mmap x8 (page cache, cold)", 8),
                LayerMethod::Scheduler(true) => ("io-sched acquire (io_uring qd32, checksums)", 32),
                LayerMethod::Scheduler(false) => {
                    ("io-sched acquire (io_uring qd32, no checksums)", 32)
                }
            },
        }
    }
}

fn bench_geometry(
    args: &IoBenchArgs,
    path: &Path,
    layout: &ExpertLayout,
    bytes: u64,
    report: &mut Report,
) -> CliResult<()> {
    let mut jobs = Vec::new();
    for &qd in &args.qd {
        jobs.push(Job::Random { qd });
        if args.fio {
            jobs.push(Job::Fio { qd });
        }
    }
    for &k in &args.k {
        jobs.push(Job::Layer {
            k,
            method: LayerMethod::Serial,
        });
        jobs.push(Job::Layer {
            k,
            method: LayerMethod::PreadPool,
        });
        for &qd in &args.qd {
            jobs.push(Job::Layer {
                k,
                method: LayerMethod::Uring(qd),
            });
        }
        jobs.push(Job::Layer {
            k,
            method: LayerMethod::Mmap,
        });
        for verify in [true, false] {
            jobs.push(Job::Layer {
                k,
                method: LayerMethod::Scheduler(verify),
            });
        }
    }
    // Rounds interleave every job, so slow and fast phases of a shared disk hit all of them.
    let rounds = args.repeat.max(1);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); jobs.len()];
    for round in 0..rounds {
        for (i, job) in jobs.iter().enumerate() {
            let seed = 1 + round as u64 * 1000 + i as u64;
            match run_job(args, path, layout, bytes, *job, seed, report) {
                Ok(gbs) => samples[i].push(gbs),
                Err(e) if matches!(job, Job::Fio { .. }) => {
                    report.notes.push(format!("fio: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut rows = Vec::new();
    let mut fio = Vec::new();
    for (job, s) in jobs.iter().zip(samples) {
        if s.is_empty() {
            continue;
        }
        let gbs = median(s);
        let (method, qd) = job.method_and_qd();
        match job {
            Job::Fio { .. } => fio.push(FioPoint {
                expert_bytes: bytes,
                qd,
                gb_per_s: gbs,
            }),
            _ => rows.push(Row {
                expert_bytes: bytes,
                pattern: job.pattern(),
                method: method.into(),
                qd,
                gb_per_s: gbs,
                vs_serial: None,
                vs_fio_same_qd: None,
                vs_fio_best: None,
            }),
        }
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
    let serials: Vec<Option<f64>> = rows.iter().map(|r| serial_of(&rows, &r.pattern)).collect();
    for (r, serial) in rows.iter_mut().zip(serials) {
        if r.pattern == "random" {
            r.vs_fio_same_qd = fio
                .iter()
                .find(|f| f.qd == r.qd)
                .map(|f| r.gb_per_s / f.gb_per_s);
        } else {
            r.vs_serial = serial.map(|s| r.gb_per_s / s);
        }
        r.vs_fio_best = fio_best.map(|b| r.gb_per_s / b);
    }
    report.rows.extend(rows);
    report.fio.extend(fio);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs one job once, cold; returns GB/s.
fn run_job(
    args: &IoBenchArgs,
    path: &Path,
    layout: &ExpertLayout,
    bytes: u64,
    job: Job,
    seed: u64,
    report: &mut Report,
) -> CliResult<f64> {
    let file_len = std::fs::metadata(path)?.len();
    let block = layout.max_read_len() as usize;
    let budget = args.mib_per_row << 20;
    let reads = (budget / block as u64).max(1);
    testfile::drop_page_cache(path);
    let mut open = |c: BackendConfig| -> CliResult<Box<dyn io_sched::backend::ReadBackend>> {
        let be = open_backend(layout, &c)?;
        note_fallbacks(&be.fallbacks, report);
        Ok(be.backend)
    };
    let r = match job {
        Job::Random { qd } => {
            let mut be = open(cfg(BackendKind::IoUring, qd, 0, DirectMode::Auto))?;
            random_reads(be.as_mut(), file_len, block, qd as usize, reads, seed)?
        }
        Job::Fio { qd } => return run_fio(path, block, qd, reads * block as u64),
        Job::Layer { k, method } => {
            let steps = (budget / (k as u64 * bytes)).max(2);
            let (c, chunk) = match method {
                LayerMethod::Serial => (cfg(BackendKind::Pread, 1, 1, DirectMode::Auto), block),
                LayerMethod::PreadPool => (
                    cfg(BackendKind::Pread, 16, 16, DirectMode::Auto),
                    args.chunk,
                ),
                LayerMethod::Uring(qd) => (
                    cfg(BackendKind::IoUring, qd, 0, DirectMode::Auto),
                    args.chunk,
                ),
                LayerMethod::Mmap => (cfg(BackendKind::Mmap, 8, 8, DirectMode::Off), args.chunk),
                LayerMethod::Scheduler(verify) => {
                    let be = open(cfg(BackendKind::IoUring, 32, 0, DirectMode::Auto))?;
                    return Ok(scheduler_layer_reads(
                        layout, be, k, steps, args.chunk, verify, seed,
                    )?
                    .gb_per_s());
                }
            };
            let mut be = open(c)?;
            layer_reads(be.as_mut(), layout, k, chunk, steps, seed)?
        }
    };
    Ok(r.gb_per_s())
}

/// K-expert layers through the whole scheduler (cache too small to hit, so every expert is a
/// demand read): what the engine gets, checksums included.
fn scheduler_layer_reads(
    layout: &ExpertLayout,
    backend: Box<dyn io_sched::backend::ReadBackend>,
    k: usize,
    steps: u64,
    chunk: usize,
    verify: bool,
    seed: u64,
) -> CliResult<BenchResult> {
    let mut sc = SchedulerConfig::with_budget(layout.max_read_len() * 2 * k as u64);
    sc = sc.demand_chunk(chunk);
    sc = sc.verify_checksums(verify);
    let sched = Scheduler::with_backend(layout.clone(), sc, backend)?;
    let mut rng = Rng::new(seed);
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

fn note_fallbacks(fallbacks: &[io_sched::backend::fallback::Fallback], report: &mut Report) {
    for f in fallbacks {
        if !report.notes.iter().any(|n| n == f.reason()) {
            report.notes.push(f.reason().to_string());
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
        "io-bench: cold reads, {} MiB per run, median of {} interleaved rounds, layer requests of {} bytes",
        report.mib_per_row, report.repeat, report.chunk
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
