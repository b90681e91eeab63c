//! The device's best throughput for the replay's own request size, measured in the same run:
//! the reference that a row's device GB/s (bytes over busy time) is compared with.
//!
//! Two short bursts per queue depth on the replayed model's files, through the automatic
//! backend (io_uring O_DIRECT here), as `flashmoe io-bench` runs them:
//! - `layer-k`: per layer, `k` random experts in `request`-byte reads, all in flight, a barrier
//!   per layer (the pattern of a demand-only row at its best);
//! - `random`: `request`-byte reads at random aligned offsets, always `qd` in flight (fio's
//!   randread; no barrier, so the device is never drained).
//!
//! The best of them is the "io-bench best" of the target (device GB/s during (d) ≥ 0.9 × it).

use io_sched::ExpertLayout;
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::bench::{layer_reads, random_reads};

use crate::error::{Result, SimError};

/// One burst.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Burst {
    /// `layer-k<K>` or `random`.
    pub pattern: String,
    pub request_bytes: u64,
    pub queue_depth: u32,
    pub bytes: u64,
    pub gbps: f64,
    pub backend: String,
}

/// Bursts of about `mib` MiB each, per pattern and queue depth in `depths`.
pub fn measure(
    layout: &ExpertLayout,
    k: usize,
    request: usize,
    depths: &[u32],
    mib: u64,
) -> Result<Vec<Burst>> {
    let setup = |e: std::io::Error| SimError::Setup(format!("reference burst: {e}"));
    let rec = layout.max_read_len().max(1);
    let per_layer = k as u64 * rec;
    let steps = ((mib << 20) / per_layer).max(4);
    let reads = ((mib << 20) / request.max(1) as u64).max(16);
    let file_len = std::fs::metadata(&layout.files()[0])
        .map_err(|e| SimError::Setup(format!("reference burst: {e}")))?
        .len();
    if file_len < request as u64 {
        // Checked before any burst runs, not after the first one (seconds later).
        return Err(SimError::Setup(format!(
            "reference burst: {} ({file_len} bytes) is smaller than one {request}-byte request",
            layout.files()[0].display()
        )));
    }
    let mut out = Vec::new();
    for &qd in depths {
        let cfg = BackendConfig::default()
            .queue_depth(qd)
            .threads(Some(qd as usize));
        let mut opened = open_backend(layout, &cfg)?;
        let backend = opened.backend.describe();
        let r =
            layer_reads(opened.backend.as_mut(), layout, k, request, steps, 11).map_err(setup)?;
        out.push(Burst {
            pattern: format!("layer-k{k}"),
            request_bytes: request as u64,
            queue_depth: qd,
            bytes: r.bytes,
            gbps: r.gb_per_s(),
            backend: backend.clone(),
        });
        let r = random_reads(
            opened.backend.as_mut(),
            file_len,
            request,
            qd as usize,
            reads,
            13,
        )
        .map_err(setup)?;
        out.push(Burst {
            pattern: "random".into(),
            request_bytes: request as u64,
            queue_depth: qd,
            bytes: r.bytes,
            gbps: r.gb_per_s(),
            backend,
        });
    }
    Ok(out)
}

/// Row (b)'s own request, as a device figure: per layer `k` records, each one whole-record
/// O_DIRECT `pread` on one thread (one request in flight, however the kernel splits it into
/// block-layer requests), about `mib` MiB. What the simulator's row (b) is calibrated on.
pub fn sync_record_burst(layout: &ExpertLayout, k: usize, mib: u64) -> Result<Burst> {
    let setup = |e: std::io::Error| SimError::Setup(format!("reference burst: {e}"));
    let rec = layout.max_read_len().max(1);
    let steps = ((mib << 20) / (k as u64 * rec)).max(2);
    let cfg = BackendConfig::default()
        .kind(Some(io_sched::backend::BackendKind::Pread))
        .queue_depth(1)
        .threads(Some(1));
    let mut opened = open_backend(layout, &cfg)?;
    let backend = opened.backend.describe();
    let r =
        layer_reads(opened.backend.as_mut(), layout, k, rec as usize, steps, 17).map_err(setup)?;
    Ok(Burst {
        pattern: format!("layer-k{k} sync"),
        request_bytes: rec,
        queue_depth: 1,
        bytes: r.bytes,
        gbps: r.gb_per_s(),
        backend,
    })
}

/// The best burst's GB/s (0 when there is none).
pub fn best(bursts: &[Burst]) -> f64 {
    bursts.iter().map(|b| b.gbps).fold(0.0, f64::max)
}
