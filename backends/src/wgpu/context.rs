//! The GPU a [`super::WgpuBackend`] runs on: adapter choice, device limits, optional features,
//! and validation errors turned into [`BackendError`]s instead of panics.

use crate::error::{BackendError, Result};
use parking_lot::Mutex;
use std::sync::Arc;

/// How to choose and set up the GPU.
#[derive(Clone, Debug, Default)]
pub struct WgpuConfig {
    /// Pick the first adapter whose name contains this (case-insensitive); default: the
    /// high-performance adapter wgpu prefers (`WGPU_ADAPTER_NAME` also works).
    pub adapter_name: Option<String>,
    /// Bytes of GPU memory for the ring of expert slots (default: 256 MiB; more than one
    /// storage binding of the adapter becomes several buffers). It must hold at least two
    /// records and a layer's routed experts.
    pub expert_ring_bytes: Option<u64>,
    /// Largest storage binding to use (default and ceiling: [`MAX_BINDING`]); smaller values
    /// split weights into more row blocks (tests use it to exercise the splits).
    pub max_binding: Option<u64>,
    /// Time every kernel on the GPU with timestamp queries (where the adapter has them); adds
    /// a wait per submission. See [`super::WgpuBackend::kernel_times`].
    pub profile: bool,
}

/// What was chosen, for logs and reports.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    /// Adapter name, e.g. `NVIDIA H100 80GB HBM3` or `llvmpipe (LLVM 19.1.7, 256 bits)`.
    pub name: String,
    /// `Vulkan`, `Metal`, ...
    pub backend: String,
    /// Driver name and version.
    pub driver: String,
    /// Largest storage binding (bytes) this backend uses: tensors above it are split.
    pub max_binding: u64,
    /// Whether the adapter offers subgroup operations (unused by the portable kernels).
    pub subgroups: bool,
    /// Whether the adapter offers `shader-f16` (unused: scales are unpacked from u32).
    pub shader_f16: bool,
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}; max binding {} MiB)",
            self.name,
            self.backend,
            self.driver,
            self.max_binding >> 20
        )
    }
}

/// Largest binding we ever use, whatever the adapter allows: well under Metal's 4 GiB buffer
/// limit. The adapter's own limit applies below it (lavapipe: 128 MiB, so CI exercises the
/// splits that weights over 128 MiB take everywhere).
pub const MAX_BINDING: u64 = 1 << 30;

/// Device, queue and what we know about them.
pub(crate) struct Gpu {
    pub device: ::wgpu::Device,
    pub queue: ::wgpu::Queue,
    pub info: GpuInfo,
    /// Whether kernels are timed (profiling asked for and timestamp queries available).
    pub timestamps: bool,
    /// The first validation or out-of-memory error wgpu reported, taken by the next check.
    errors: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    /// Opens the adapter `cfg` asks for and a device with its limits.
    pub fn open(cfg: &WgpuConfig) -> Result<Self> {
        let instance = ::wgpu::Instance::new(
            ::wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
        );
        let adapter = pollster::block_on(pick_adapter(&instance, cfg))?;
        let ainfo = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let timestamps = cfg.profile && features.contains(::wgpu::Features::TIMESTAMP_QUERY);
        if cfg.profile && !timestamps {
            tracing::warn!(
                "profiling asked for, but {} has no timestamp queries",
                ainfo.name
            );
        }
        let (device, queue) =
            pollster::block_on(adapter.request_device(&::wgpu::DeviceDescriptor {
                label: Some("flashmoe"),
                required_features: if timestamps {
                    ::wgpu::Features::TIMESTAMP_QUERY
                } else {
                    ::wgpu::Features::empty()
                },
                required_limits: limits.clone(),
                experimental_features: ::wgpu::ExperimentalFeatures::disabled(),
                memory_hints: ::wgpu::MemoryHints::Performance,
                trace: ::wgpu::Trace::Off,
            }))
            .map_err(|e| gpu_error("request_device", format!("{}: {e}", ainfo.name)))?;
        let errors: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: ::wgpu::Error| {
            tracing::error!("wgpu: {e}");
            sink.lock().get_or_insert_with(|| e.to_string());
        }));
        let max_binding = cfg
            .max_binding
            .unwrap_or(MAX_BINDING)
            .min(MAX_BINDING)
            .min(limits.max_storage_buffer_binding_size)
            .min(limits.max_buffer_size);
        let info = GpuInfo {
            name: ainfo.name.clone(),
            backend: format!("{:?}", ainfo.backend),
            driver: format!("{} {}", ainfo.driver, ainfo.driver_info)
                .trim()
                .to_string(),
            max_binding,
            subgroups: features.contains(::wgpu::Features::SUBGROUP),
            shader_f16: features.contains(::wgpu::Features::SHADER_F16),
        };
        tracing::info!("wgpu adapter: {info}");
        Ok(Self {
            device,
            queue,
            info,
            timestamps,
            errors,
        })
    }

    /// Fails with the first error wgpu reported since the last check.
    pub fn check(&self, op: &'static str) -> Result<()> {
        match self.errors.lock().take() {
            None => Ok(()),
            Some(reason) => Err(gpu_error(op, reason)),
        }
    }
}

async fn pick_adapter(instance: &::wgpu::Instance, cfg: &WgpuConfig) -> Result<::wgpu::Adapter> {
    let adapters = instance.enumerate_adapters(::wgpu::Backends::all()).await;
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    if let Some(want) = &cfg.adapter_name {
        let want_l = want.to_lowercase();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&want_l))
            .ok_or_else(|| {
                gpu_error(
                    "adapter",
                    format!("no adapter named like `{want}` (found: {names:?})"),
                )
            });
    }
    instance
        .request_adapter(&::wgpu::RequestAdapterOptions {
            power_preference: ::wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            gpu_error(
                "adapter",
                format!("{e} (adapters found: {names:?}; on Linux without a GPU install mesa-vulkan-drivers for lavapipe)"),
            )
        })
}

pub(crate) fn gpu_error(op: &'static str, reason: impl Into<String>) -> BackendError {
    BackendError::Gpu {
        op,
        reason: reason.into(),
    }
}
