//! Opening a GPU for tests: skips with a printed reason where none can be had.

use flashmoe_backends::wgpu::{WgpuBackend, WgpuConfig};

/// A wgpu backend, or `None` (with the reason on stderr) where no adapter is available.
pub fn backend() -> Option<WgpuBackend> {
    backend_with(&WgpuConfig::default())
}

/// A wgpu backend with `cfg`, or `None` where no adapter is available.
pub fn backend_with(cfg: &WgpuConfig) -> Option<WgpuBackend> {
    match WgpuBackend::new(cfg) {
        Ok(be) => Some(be),
        Err(e) => {
            eprintln!("skipping: no wgpu adapter ({e}); install mesa-vulkan-drivers for lavapipe");
            None
        }
    }
}
