//! Compute backends for flashmoe.
//!
//! - [`ComputeBackend`]: the ops of a MoE decode step on backend-owned tensor handles; expert
//!   weights can be given as raw bytes ([`WeightView`]) straight from I/O buffers.
//! - [`quant`]: weight formats (`F32`, `Bf16`, `F16`, MLX-style affine `Q8`/`Q4`), their byte
//!   layouts, quantize and dequantize.
//! - [`CpuBackend`]: the reference implementation: ops split over rows on a small spinning
//!   thread pool ([`cpu_threads`]; the caller takes part), with
//!   AVX2/FMA/F16C kernels for bf16, Q8 and Q4 picked at run time on x86_64 (portable kernels
//!   elsewhere; both are tested against the dequantized reference).
//! - [`Profiled`]: a wrapper that times every op of another backend into a [`profile::Profile`]
//!   (`flashmoe generate --profile`).
//! - [`routing`]: softmax / top-k router maths shared by backends.
//! - `wgpu` (feature `wgpu`, on by default): [`wgpu::WgpuBackend`], WGSL compute shaders that
//!   run on Vulkan, Metal and DX12, with a GPU-resident ring of expert slots.

mod backend;
mod checks;
pub mod cpu;
mod error;
pub mod profile;
mod profiled;
pub mod quant;
pub mod routing;
mod rows;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use backend::{
    AttnShape, ComputeBackend, DeltaShape, ExpertId, ExpertScratch, KvShape, RoutedExpert,
    WeightView,
};
pub use cpu::{Activations, CpuBackend, cpu_threads, with_cpu_threads};
pub use error::{BackendError, Result};
pub use profiled::{Profiled, ProfiledWeight};
