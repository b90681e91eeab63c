//! `this-machine`: a device profile measured on the local disk, through io-sched's own read
//! backends (the automatic choice: io_uring with O_DIRECT here, with its fallbacks), so the
//! profile describes the path flashmoe really reads with.
//!
//! Measures random reads on a scratch file: 4 KiB at depth 1 (latency), 1 MiB at depth 1
//! (one request's bandwidth) and 1 MiB at depth 16 (peak).

use std::io::Write;
use std::path::Path;

use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::bench::{Rng as BenchRng, random_reads};
use io_sched::{ExpertKey, LayoutBuilder};

use crate::device::{ComputeModel, DeviceProfile, SsdPath};
use crate::error::{Result, SimError};
use crate::figure::Fig;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SimError + 'a {
    move |source| SimError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Random aligned reads of `size` bytes at depth `depth` for about `total` bytes through the
/// automatically chosen io-sched backend; returns (seconds per request, bytes/s) and the
/// backend's description.
fn measure(
    path: &Path,
    file_len: u64,
    size: usize,
    depth: usize,
    total: u64,
) -> Result<(f64, f64, String)> {
    let records = (file_len / size as u64).max(1) as u32;
    let mut b = LayoutBuilder::new(1, records);
    let f = b.add_file(path);
    for e in 0..records {
        b.set(
            ExpertKey::new(0, e),
            f,
            e as u64 * size as u64,
            size as u64,
            0,
        );
    }
    let layout = b
        .build()
        .map_err(|e| SimError::Setup(format!("calibration layout: {e}")))?;
    let cfg = BackendConfig::default()
        .queue_depth(depth as u32)
        .threads(Some(depth));
    let mut opened =
        open_backend(&layout, &cfg).map_err(|e| SimError::Setup(format!("calibration: {e}")))?;
    let reads = (total / size as u64).max(4 * depth as u64);
    let r = random_reads(opened.backend.as_mut(), file_len, size, depth, reads, 1)
        .map_err(io_err("read", path))?;
    let secs = r.elapsed.as_secs_f64();
    Ok((
        secs * depth as f64 / r.reads as f64,
        r.bytes as f64 / secs,
        opened.backend.describe(),
    ))
}

/// Measures the disk holding `dir` with a scratch file of `file_mb` MiB, and returns a profile.
pub fn this_machine(dir: &Path, file_mb: u64) -> Result<DeviceProfile> {
    let path = dir.join(format!("flashmoe-sim-calibrate-{}.bin", std::process::id()));
    let len = file_mb.max(64) << 20;
    {
        let mut f = std::fs::File::create(&path).map_err(io_err("create", &path))?;
        // Incompressible bytes, so no layer of the storage stack can shortcut the reads.
        let mut rng = BenchRng::new(0xCA11);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..(len >> 20) {
            for c in chunk.chunks_mut(8) {
                c.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            f.write_all(&chunk).map_err(io_err("write", &path))?;
        }
        f.sync_all().map_err(io_err("fsync", &path))?;
    }
    let run = || -> Result<[(f64, f64, String); 3]> {
        Ok([
            measure(&path, len, 4096, 1, 4 << 20)?,
            measure(&path, len, 1 << 20, 1, 256 << 20)?,
            measure(&path, len, 1 << 20, 16, 512 << 20)?,
        ])
    };
    let r = run();
    let _ = std::fs::remove_file(&path);
    let [
        (lat, _, lat_how),
        (_, single, single_how),
        (_, peak, peak_how),
    ] = r?;
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(8e9, |kb| kb * 1024.0);
    let src = |what: &str, how: &str| {
        format!("measured by `flashmoe sim --device this-machine` ({what}, {how})")
    };
    let path_model = SsdPath {
        peak_gbps: Fig::new(
            peak / 1e9,
            src("1 MiB random reads, 16 in flight", &peak_how),
        ),
        single_request_gbps: Fig::new(
            single / 1e9,
            src("1 MiB random reads, 1 in flight", &single_how),
        ),
        latency_us: Fig::new(lat * 1e6, src("4 KiB random reads, 1 in flight", &lat_how)),
        channels: Fig::new(16.0, "depth of the peak measurement"),
    };
    Ok(DeviceProfile {
        name: "this-machine".into(),
        description: format!("measured on {}", dir.display()),
        ram_bytes: Fig::new(ram, "/proc/meminfo MemTotal"),
        os_reserved_bytes: Fig::new(2e9, "assumption: OS and other processes"),
        page_cache_bytes: None,
        ssd_buffered: path_model.clone(),
        ssd_direct: path_model,
        page_cache_copy_gbps_per_thread: Fig::new(5.0, "assumption: copy_to_user of one thread"),
        buffered_threads: Fig::new(4.0, "as flash-moe"),
        compute: ComputeModel {
            mem_bw_gbps: Fig::new(
                20.0,
                "assumption: a 2-core share of a server's memory bandwidth",
            ),
            calibration: None,
            efficiency_of: Some("macbook-m3-max".into()),
            layer_overhead_us: None,
            efficiency_override: None,
        },
        contention: Fig::new(0.0, "assumption: discrete memory paths"),
        buffered_io_split: None,
        costs: None,
        prefill: None,
    })
}
