//! Opening a GPU for tests: skips with a printed reason where none can be had.
#![allow(dead_code)] // each test crate uses some of these

use flashmoe_backends::wgpu::{WgpuBackend, WgpuConfig};

/// A wgpu backend, or `None` (with the reason on stderr) where no adapter is available.
pub fn backend() -> Option<WgpuBackend> {
    backend_with(&WgpuConfig::default())
}

/// A wgpu backend with `cfg`, or `None` where no adapter is available (a panic instead when
/// `FLASHMOE_REQUIRE_GPU` is set, as CI does once it has installed lavapipe).
pub fn backend_with(cfg: &WgpuConfig) -> Option<WgpuBackend> {
    match WgpuBackend::new(cfg) {
        Ok(be) => Some(be),
        Err(e) if std::env::var_os("FLASHMOE_REQUIRE_GPU").is_some() => {
            panic!("FLASHMOE_REQUIRE_GPU is set but no wgpu adapter opened: {e}")
        }
        Err(e) => {
            eprintln!("skipping: no wgpu adapter ({e}); install mesa-vulkan-drivers for lavapipe");
            None
        }
    }
}
