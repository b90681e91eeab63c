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

/// Bytes the GPU reads for one layer of one token: the layer's share of the non-expert weights
/// plus `k` experts.
pub fn layer_bytes(g: &Geometry, k: u32) -> f64 {
    g.non_expert_bytes as f64 / g.layers as f64 + k as f64 * g.expert_bytes as f64
}

impl DeviceProfile {
    /// Effective share of memory bandwidth the kernels reach, from the calibration (or from
    /// the preset named in `efficiency_of`).
    pub fn compute_efficiency(&self) -> Result<f64> {
        if let Some(c) = &self.compute.calibration {
            let m = crate::geometry::model_preset(&c.model)?.at_bits(c.bits)?;
            let bytes = layer_bytes(&m, c.k);
            let secs = c.ms_per_layer.value / 1e3;
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

    /// Compute time of one layer in ns, split into (before routing is known, expert FFN).
    pub fn layer_compute_ns(&self, g: &Geometry, k: u32) -> Result<(f64, f64)> {
        let bw = self.compute.mem_bw_gbps.value * 1e9 * self.compute_efficiency()?;
        let total = layer_bytes(g, k) / bw * 1e9;
        let experts = k as f64 * g.expert_bytes as f64 / bw * 1e9;
        Ok((total - experts, experts))
    }

    /// Page cache available to expert data in the "trust the OS" setup.
    pub fn page_cache_bytes(&self, g: &Geometry) -> u64 {
        match &self.page_cache_bytes {
            Some(f) => f.value as u64,
            None => self.cache_budget(g),
        }
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
