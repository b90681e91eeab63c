//! What the virtual-time simulator ([`crate::vtime`]) predicts for a replay row, on a device
//! profile (normally `this-machine`, calibrated on the same disk), with the same geometry,
//! trace, budget, compute and predictor, so predicted and measured can be printed side by side.

use std::sync::Arc;

use io_sched::ExpertLayout;
use io_sched::trace::Trace;

use super::{ReplaySpec, RowKind};
use crate::device::DeviceProfile;
use crate::error::Result;
use crate::predict::PredictorKind;
use crate::vtime::{self, Mode, RunSpec};

/// The simulator's figures for one row.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Predicted {
    pub tok_per_s: f64,
    pub hit_rate: f64,
    /// Demanded experts cached from an earlier demand ([`crate::report::cache_hit_rate`]):
    /// what Belady's bound bounds.
    pub cache_hit_rate: f64,
    pub stall_ms_per_token: f64,
    pub bytes_per_token: f64,
    /// Of the bytes prefetched, the share never used (0 without prefetches).
    pub wasted_share: f64,
}

/// Simulates `kind` as [`super::run_row`] runs it.
///
/// Mapping: (a) → trust-os mode (buffered path, one copy thread per routed expert, as the
/// replay's mmap row copies); (b) → flashmoe mode, queue depth 1, one request per record, no
/// predictor; (c)–(e) → flashmoe mode with the row's predictor at the replay's queue depth.
/// Compute does not slow under I/O here (contention 0): the replay busy-waits a CPU core.
pub fn predict_row(
    kind: RowKind,
    layout: &ExpertLayout,
    trace: &Arc<Trace>,
    spec: &ReplaySpec,
    device: &DeviceProfile,
) -> Result<Predicted> {
    let rec = layout.max_read_len();
    let pre = spec.compute_ns as f64 * spec.pre_share.clamp(0.0, 1.0);
    // The row's own session policy (over-fetch, tie rule, idle bound): the same object the
    // replay runs.
    let policy = kind.policy(spec.max_per_layer, spec.horizon, spec.compute_ns);
    let (mode, ssd, qd, predictor, demand_chunk) = match kind {
        RowKind::Mmap => (
            Mode::TrustOs,
            device.ssd_buffered.params(),
            trace.header.k as usize,
            PredictorKind::None,
            rec,
        ),
        RowKind::SyncPread => (
            Mode::Flashmoe,
            sync_path(device, spec),
            1,
            PredictorKind::None,
            rec,
        ),
        RowKind::Sched(p) | RowKind::SchedOver(p, _) => (
            Mode::Flashmoe,
            device.ssd_direct.params(),
            spec.queue_depth.max(1) as usize,
            p,
            1 << 20,
        ),
    };
    let rs = RunSpec {
        mode,
        layers: layout.num_layers(),
        experts: layout.num_experts(),
        expert_bytes: rec,
        budget_bytes: spec.budget_bytes,
        ssd,
        queue_depth: qd,
        compute_pre_ns: pre,
        compute_post_ns: spec.compute_ns as f64 - pre,
        contention: 0.0,
        copy_bps_per_thread: device.page_cache_copy_gbps_per_thread.value * 1e9,
        trust_os_split: 1,
        dense_reread_bytes_per_layer: 0.0,
        eviction: kind.eviction(),
        predictor,
        horizon: policy.horizon(),
        max_per_layer: policy.per_layer(),
        pregate_recall: spec.pregate_recall,
        far_recall: None,
        demand_chunk,
        prefetch_chunk: 1 << 20,
        max_prefetch_bytes_in_flight: spec.max_prefetch_bytes.unwrap_or(8 << 20),
        min_confidence: 0.0,
        warmup_tokens: spec.warmup,
        tokens: spec.tokens,
        timeline_tokens: 0,
        seed: spec.seed,
    };
    let r = vtime::run_session(&rs, trace, spec.far_trace.as_ref(), policy)?;
    let m = r.total();
    let t = r.time_total();
    let tokens = r.tokens.max(1) as f64;
    Ok(Predicted {
        tok_per_s: r.tok_per_s(),
        hit_rate: m.hit_rate(),
        cache_hit_rate: crate::report::cache_hit_rate(&m),
        stall_ms_per_token: t.stall_ns / 1e6 / tokens,
        bytes_per_token: m.bytes_read() as f64 / tokens,
        wasted_share: if m.prefetch_bytes > 0 {
            m.wasted_bytes as f64 / m.prefetch_bytes as f64
        } else {
            0.0
        },
    })
}

/// Row (b)'s path: one whole-record O_DIRECT pread at a time. The kernel splits such a read
/// into block-layer requests (max_sectors_kb) served in parallel, so one "request" of the
/// model is not one device request; when the replay measured that very read alone
/// ([`ReplaySpec::sync_read_gbps`]), it is the path's bandwidth, latency included. Otherwise the
/// device profile's direct path.
fn sync_path(device: &DeviceProfile, spec: &ReplaySpec) -> crate::ssd::SsdParams {
    let mut p = device.ssd_direct.params();
    if let Some(g) = spec.sync_read_gbps.filter(|g| *g > 0.0) {
        p.single_bps = g * 1e9;
        p.peak_bps = p.peak_bps.max(p.single_bps);
        p.latency_ns = 0.0;
    }
    p
}

/// Re-measures `device`'s direct-read path on the model's own files with the replay's own
/// pattern (per layer `k` experts split into 1 MiB requests: peak at queue depth 32, single at
/// depth 1), so the simulator's bandwidth term is the one the replay meets (the same files,
/// and whatever the host caches of them). Returns (peak, single) GB/s.
pub fn calibrate_on_model(
    layout: &ExpertLayout,
    k: usize,
    device: &mut DeviceProfile,
) -> Result<(f64, f64)> {
    use io_sched::backend::select::{BackendConfig, open_backend};
    let per_step = k as u64 * layout.max_read_len().max(1);
    let steps = ((512u64 << 20) / per_step).max(8);
    let mut gbps = [0.0f64; 2];
    for (i, qd) in [32u32, 1].into_iter().enumerate() {
        let cfg = BackendConfig::default()
            .queue_depth(qd)
            .threads(Some(qd as usize));
        let mut opened = open_backend(layout, &cfg)?;
        let steps = if qd == 1 { steps / 2 } else { steps };
        let r = io_sched::bench::layer_reads(opened.backend.as_mut(), layout, k, 1 << 20, steps, 7)
            .map_err(|e| crate::error::SimError::Setup(format!("calibrating on the model: {e}")))?;
        gbps[i] = r.gb_per_s();
    }
    let how = |qd: u32| {
        format!(
            "measured on the replayed model's files: k = {k} experts per layer, 1 MiB requests, {qd} in flight"
        )
    };
    for p in [&mut device.ssd_direct, &mut device.ssd_buffered] {
        p.peak_gbps = crate::figure::Fig::new(gbps[0], how(32));
        p.single_request_gbps = crate::figure::Fig::new(gbps[1], how(1));
        p.channels = crate::figure::Fig::new(32.0, "depth of the peak measurement");
    }
    Ok((gbps[0], gbps[1]))
}
