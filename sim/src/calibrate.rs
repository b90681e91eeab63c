//! `this-machine`: a device profile measured on the local disk.
//!
//! Measures O_DIRECT `pread`s on a scratch file: 4 KiB at depth 1 (latency), 1 MiB at depth 1
//! (one request's bandwidth) and 1 MiB at depth 16 (peak), with one thread per request in
//! flight.
//!
//! TODO(io-sched backends): once `io_sched::backend::select::open_backend` is merged, measure
//! through it instead (io_uring at depth, the same path flashmoe reads with), keeping these
//! preads as the fallback.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use crate::device::{ComputeModel, DeviceProfile, SsdPath};
use crate::error::{Result, SimError};
use crate::figure::Fig;
use crate::rng::Rng;

const ALIGN: usize = 4096;

/// An aligned buffer carved out of a larger Vec (no unsafe needed).
struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN];
        let off = (ALIGN - raw.as_ptr() as usize % ALIGN) % ALIGN;
        Self { raw, off, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SimError + 'a {
    move |source| SimError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Random aligned reads of `size` bytes at depth `depth` for about `total` bytes; returns
/// (seconds per request at depth 1 or bandwidth in bytes/s at depth).
fn measure(
    path: &Path,
    file_len: u64,
    size: usize,
    depth: usize,
    total: u64,
) -> Result<(f64, f64)> {
    let per_thread = (total / size as u64 / depth as u64).max(4);
    let start = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..depth)
            .map(|t| {
                s.spawn(move || -> Result<()> {
                    let f = OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(path)
                        .map_err(io_err("open O_DIRECT", path))?;
                    let mut buf = AlignedBuf::new(size);
                    let mut rng = Rng::new(t as u64 + 1);
                    let slots = file_len / size as u64;
                    for _ in 0..per_thread {
                        let off = rng.below(slots) * size as u64;
                        let mut done = 0;
                        while done < size {
                            let n = f
                                .read_at(&mut buf.as_mut()[done..], off + done as u64)
                                .map_err(io_err("pread", path))?;
                            if n == 0 {
                                break;
                            }
                            done += n;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(SimError::Setup("reader thread panicked".into())))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = per_thread as f64 * depth as f64;
    Ok((secs / per_thread as f64, n * size as f64 / secs))
}

/// Measures the disk holding `dir` with a scratch file of `file_mb` MiB, and returns a profile.
pub fn this_machine(dir: &Path, file_mb: u64) -> Result<DeviceProfile> {
    let path = dir.join(format!("flashmoe-sim-calibrate-{}.bin", std::process::id()));
    let len = file_mb.max(64) << 20;
    {
        let mut f = std::fs::File::create(&path).map_err(io_err("create", &path))?;
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..(len >> 20) {
            f.write_all(&chunk).map_err(io_err("write", &path))?;
        }
        f.sync_all().map_err(io_err("fsync", &path))?;
    }
    let run = || -> Result<(f64, f64, f64)> {
        let (lat, _) = measure(&path, len, 4096, 1, 4 << 20)?;
        let (_, single) = measure(&path, len, 1 << 20, 1, 256 << 20)?;
        let (_, peak) = measure(&path, len, 1 << 20, 16, 512 << 20)?;
        Ok((lat, single, peak))
    };
    let r = run();
    let _ = std::fs::remove_file(&path);
    let (lat, single, peak) = r?;
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(8e9, |kb| kb * 1024.0);
    let src = |what: &str| {
        format!("measured by `flashmoe sim --device this-machine` ({what}, O_DIRECT pread)")
    };
    let path_model = SsdPath {
        peak_gbps: Fig::new(peak / 1e9, src("1 MiB random reads, 16 threads")),
        single_request_gbps: Fig::new(single / 1e9, src("1 MiB random reads, 1 thread")),
        latency_us: Fig::new(lat * 1e6, src("4 KiB random reads, 1 thread")),
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
        },
        contention: Fig::new(0.0, "assumption: discrete memory paths"),
    })
}
