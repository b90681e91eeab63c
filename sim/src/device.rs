//! Device profiles: SSD read paths, RAM, compute speed and memory contention, as data.
//!
//! Presets live in `presets/devices/*.json` (embedded at build time); users pass their own
//! file with `--device path.json`. Every number is a [`Fig`] carrying its source.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};
use crate::figure::Fig;
use crate::geometry::Geometry;
use crate::ssd::SsdParams;

/// One read path of the SSD (direct I/O, or buffered through the OS page cache).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SsdPath {
    /// GB/s sustained at depth.
    pub peak_gbps: Fig,
    /// GB/s one request gets alone.
    pub single_request_gbps: Fig,
    /// Microseconds per request before data flows.
    pub latency_us: Fig,
    /// Requests the device serves at once.
    pub channels: Fig,
}

impl SsdPath {
    pub fn params(&self) -> SsdParams {
        SsdParams {
            peak_bps: self.peak_gbps.value * 1e9,
            single_bps: self.single_request_gbps.value * 1e9,
            latency_ns: self.latency_us.value * 1e3,
            channels: self.channels.value.max(1.0) as usize,
        }
    }
}

/// How long a layer computes, from a memory-bandwidth throughput model:
/// `time = bytes the layer's kernels read / (mem_bw × efficiency)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputeModel {
    /// GB/s of the memory system the GPU reads weights from.
    pub mem_bw_gbps: Fig,
    /// A measured per-layer time that fixes the efficiency.
    #[serde(default)]
    pub calibration: Option<ComputeCalibration>,
    /// Or: the efficiency taken from another preset's calibration (same GPU family/kernels).
    #[serde(default)]
    pub efficiency_of: Option<String>,
    /// Fixed time per layer that does not scale with bytes (command-buffer encode, CPU-GPU
    /// syncs, dispatch launches), µs; absent = 0. The calibration's bandwidth term is what is
    /// left of its per-layer time after this.
    #[serde(default)]
    pub layer_overhead_us: Option<Fig>,
    /// Set by sensitivity runs: the efficiency to use instead of the calibration's.
    #[serde(skip)]
    pub(crate) efficiency_override: Option<f64>,
}

/// A published per-layer compute time for one model on this device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputeCalibration {
    pub model: String,
    pub bits: u32,
    pub k: u32,
    pub ms_per_layer: Fig,
}

/// A device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub name: String,
    pub description: String,
    pub ram_bytes: Fig,
    /// RAM taken by the OS, apps and scratch buffers (not by model weights).
    pub os_reserved_bytes: Fig,
    /// Page cache observed for expert data in the "trust the OS" setup, if published;
    /// otherwise RAM − reserved − non-expert weights.
    #[serde(default)]
    pub page_cache_bytes: Option<Fig>,
    /// Reads with the page cache bypassed (O_DIRECT / F_NOCACHE), as flashmoe issues them.
    pub ssd_direct: SsdPath,
    /// Cold buffered reads through the page cache (flash-moe's `pread`).
    pub ssd_buffered: SsdPath,
    /// GB/s one thread copies out of the page cache into a user buffer.
    pub page_cache_copy_gbps_per_thread: Fig,
    /// Threads the "trust the OS" baseline reads with.
    pub buffered_threads: Fig,
    pub compute: ComputeModel,
    /// Compute slows by `1 + contention × SSD utilisation` while the SSD transfers
    /// (unified memory: DMA and GPU share the memory controller). 0 = no contention.
    pub contention: Fig,
    /// "Trust the OS" only: each expert pread is split into this many page-aligned chunks
    /// read in parallel (Anemll's iOS "Expert I/O Fanout"); absent = 1.
    #[serde(default)]
    pub buffered_io_split: Option<Fig>,
    /// Power, battery, thermal and flash-endurance figures (energy and wear reports).
    #[serde(default)]
    pub costs: Option<crate::costs::CostProfile>,
    /// Peak arithmetic throughput, for prefill (compute-bound once tokens are batched).
    #[serde(default)]
    pub prefill: Option<crate::prefill::PrefillProfile>,
}

const PRESETS: &[(&str, &str)] = &[
    (
        "macbook-m3-max",
        include_str!("../presets/devices/macbook-m3-max.json"),
    ),
    (
        "iphone-17-pro",
        include_str!("../presets/devices/iphone-17-pro.json"),
    ),
    (
        "iphone-17-pro-256gb",
        include_str!("../presets/devices/iphone-17-pro-256gb.json"),
    ),
    (
        "iphone-17",
        include_str!("../presets/devices/iphone-17.json"),
    ),
    (
        "linux-nvme-gen4",
        include_str!("../presets/devices/linux-nvme-gen4.json"),
    ),
];

/// Names of the built-in device presets (`this-machine` is made by calibration).
pub fn device_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

fn parse(name: &str, text: &str) -> Result<DeviceProfile> {
    let p: DeviceProfile = serde_json::from_str(text).map_err(|e| SimError::Profile {
        name: name.into(),
        reason: e.to_string(),
    })?;
    crate::validate::check_profile(name, &p)?;
    Ok(p)
}

/// A preset by name, or a user profile if `name` is a path to a `.json` file.
pub fn device_profile(name: &str) -> Result<DeviceProfile> {
    if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) {
        return parse(name, text);
    }
    if name.ends_with(".json") || Path::new(name).exists() {
        let text = std::fs::read_to_string(name).map_err(|source| SimError::Io {
            op: "read device profile",
            path: name.into(),
            source,
        })?;
        return parse(name, &text);
    }
    Err(SimError::Unknown {
        what: "device",
        name: name.into(),
        known: format!(
            "{}, this-machine, or a .json profile",
            device_names().join(", ")
        ),
    })
}

/// The page cache under "trust the OS": non-expert weights (mmap'd) and expert pages (pread)
/// share the file-backed memory `RAM − os_reserved`. Every token sweeps all non-expert
/// weights and `layers × k` experts: under LRU (and its CLOCK approximations) a page hits
/// only if fewer distinct bytes were touched since its last use than the cache holds. So
/// while the per-token working set fits, the weights stay resident and experts get the rest;
/// once it does not, the sweep evicts pages before their reuse. Strict LRU would evict every
/// page (the cliff of LRU on a cyclic pattern); XNU's reclaim (FIFO queues with reference
/// bits) picks victims closer to random, and under random eviction a page of a sweep of
/// `S` bytes through a cache of `F` survives until its next use with probability `h`:
///
/// ```text
/// h = exp(−(S/F)(1 − h))     (each of the S(1−h) misses in between evicts it with p 1/F)
/// ```
///
/// so a share `1 − h` of the weights is faulted back from flash every token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrustOsCache {
    /// Memory for file pages: RAM − os_reserved.
    pub file_cache_bytes: f64,
    /// Non-expert bytes + one token's experts.
    pub working_set_bytes: f64,
    /// The working set does not fit the file cache.
    pub thrashing: bool,
    /// Share of the non-expert weights still resident at each token's use (1 when it fits).
    pub retention: f64,
    /// Page cache left to experts.
    pub expert_cache_bytes: f64,
    /// Non-expert bytes faulted back from flash per layer and token.
    pub dense_reread_bytes_per_layer: f64,
}

/// Survival of a page between two uses in a cyclic sweep `ratio` = sweep / cache times the
/// cache, under random eviction: the smallest root of `h = exp(-ratio (1 - h))` (1 if it fits).
pub fn sweep_retention(ratio: f64) -> f64 {
    if ratio.is_nan() || ratio <= 1.0 {
        return 1.0;
    }
    let mut h = 0.0;
    for _ in 0..200 {
        h = (-ratio * (1.0 - h)).exp();
    }
    h
}

/// Bytes the GPU reads for one layer of one token: the layer's share of the non-expert weights
/// plus `k` experts.
pub fn layer_bytes(g: &Geometry, k: u32) -> f64 {
    g.non_expert_bytes as f64 / g.layers as f64 + k as f64 * g.expert_bytes as f64
}

impl DeviceProfile {
    /// Effective share of memory bandwidth the kernels reach, from the calibration (or from
    /// the preset named in `efficiency_of`).
    pub fn compute_efficiency(&self) -> Result<f64> {
        if let Some(e) = self.compute.efficiency_override {
            return Ok(e);
        }
        if let Some(c) = &self.compute.calibration {
            let m = crate::geometry::model_preset(&c.model)?.at_bits(c.bits)?;
            let bytes = layer_bytes(&m, c.k);
            let secs = (c.ms_per_layer.value - self.layer_overhead_ns() / 1e6) / 1e3;
            if secs <= 0.0 {
                return Err(self
                    .bad("compute.layer_overhead_us is not below the calibration's ms_per_layer"));
            }
            return Ok(bytes / secs / (self.compute.mem_bw_gbps.value * 1e9));
        }
        if let Some(other) = &self.compute.efficiency_of {
            if other == &self.name {
                return Err(self.bad("efficiency_of names itself"));
            }
            return device_profile(other)?.compute_efficiency();
        }
        Err(self.bad("compute needs a calibration or efficiency_of"))
    }

    /// Fixed per-layer compute overhead, ns.
    pub fn layer_overhead_ns(&self) -> f64 {
        self.compute
            .layer_overhead_us
            .as_ref()
            .map_or(0.0, |f| f.value * 1e3)
    }

    /// Bytes/s the kernels reach: memory bandwidth × calibrated efficiency.
    pub fn effective_compute_bps(&self) -> Result<f64> {
        Ok(self.compute.mem_bw_gbps.value * 1e9 * self.compute_efficiency()?)
    }

    /// Compute time of one layer in ns, split into (before routing is known, expert FFN):
    /// the fixed overhead goes before routing, then every byte at the effective bandwidth.
    pub fn layer_compute_ns(&self, g: &Geometry, k: u32) -> Result<(f64, f64)> {
        let bw = self.effective_compute_bps()?;
        let total = layer_bytes(g, k) / bw * 1e9;
        let experts = k as f64 * g.expert_bytes as f64 / bw * 1e9;
        Ok((total - experts + self.layer_overhead_ns(), experts))
    }

    /// Chunks each trust-the-OS expert read is split into (>= 1).
    pub fn io_split(&self) -> usize {
        self.buffered_io_split
            .as_ref()
            .map_or(1, |f| f.value.max(1.0) as usize)
    }

    /// How the OS page cache holds the model in "trust the OS" mode: see [`TrustOsCache`].
    pub fn trust_os_cache(&self, g: &Geometry, k: u32) -> TrustOsCache {
        let file_cache = (self.ram_bytes.value - self.os_reserved_bytes.value).max(0.0);
        let experts_per_token = g.layers as f64 * k as f64 * g.expert_bytes as f64;
        let working_set = g.non_expert_bytes as f64 + experts_per_token;
        if file_cache >= working_set {
            return TrustOsCache {
                file_cache_bytes: file_cache,
                working_set_bytes: working_set,
                thrashing: false,
                retention: 1.0,
                expert_cache_bytes: self.page_cache_bytes(g) as f64,
                dense_reread_bytes_per_layer: 0.0,
            };
        }
        let h = sweep_retention(working_set / file_cache.max(1.0));
        let dense = g.non_expert_bytes as f64;
        TrustOsCache {
            file_cache_bytes: file_cache,
            working_set_bytes: working_set,
            thrashing: true,
            retention: h,
            expert_cache_bytes: (file_cache - h * dense)
                .max((2 * k as u64 * g.expert_bytes) as f64),
            dense_reread_bytes_per_layer: (1.0 - h) * dense / g.layers as f64,
        }
    }

    /// Page cache available to expert data in the "trust the OS" setup.
    pub fn page_cache_bytes(&self, g: &Geometry) -> u64 {
        match &self.page_cache_bytes {
            Some(f) => f.value as u64,
            None => self.cache_budget(g),
        }
    }

    /// flashmoe's memory plan: (expert cache bytes, non-expert bytes streamed from flash per
    /// layer and token). The expert cache gets RAM − reserved − non-expert weights, at least
    /// two layers' experts; when the weights do not fit beside that minimum, flashmoe keeps
    /// what fits resident and streams only the rest (a deliberate split, not LRU's sweep).
    pub fn flashmoe_memory(&self, g: &Geometry, k: u32) -> (u64, f64) {
        let minimal = 2 * k as u64 * g.expert_bytes;
        let budget = self.cache_budget(g).max(minimal);
        let free = self.ram_bytes.value - self.os_reserved_bytes.value - minimal as f64;
        let stream = (g.non_expert_bytes as f64 - free.max(0.0)).max(0.0);
        (budget, stream / g.layers as f64)
    }

    /// RAM left for an expert cache: RAM − reserved − non-expert weights.
    pub fn cache_budget(&self, g: &Geometry) -> u64 {
        (self.ram_bytes.value - self.os_reserved_bytes.value - g.non_expert_bytes as f64).max(0.0)
            as u64
    }

    fn bad(&self, reason: &str) -> SimError {
        SimError::Profile {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }
}
