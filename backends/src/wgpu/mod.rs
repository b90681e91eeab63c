//! The wgpu backend: every op of the decode step as a WGSL compute shader, on Vulkan, Metal
//! or DX12.
//!
//! Design choices:
//! - **Portable kernels only.** No subgroup operations and no `shader-f16`: reductions go
//!   through workgroup memory (correct for any subgroup size: 8 on lavapipe, 32 on Apple), f16
//!   scales are unpacked from `u32` with `unpack2x16float`. Every shader translates to MSL
//!   (a test checks it with naga). Optional features are reported in [`GpuInfo`], not needed.
//! - **One binding ≤ min(adapter limit, 1 GiB).** Resident weights are split into row blocks
//!   (lavapipe's 128 MiB limit makes CI exercise the splits); KV caches are a
//!   buffer per layer; the expert ring is as many buffers of at most one binding as it needs.
//! - **Commands are batched.** Ops record into one command encoder; it is submitted only when
//!   the host needs a result (a [`crate::ComputeBackend::read`]) or must overwrite memory the GPU may
//!   still read (an expert slot), so a layer's ops reach the GPU in one submission.
//! - **Experts in a GPU-resident ring** ([`ring`]): `moe_experts` runs all routed experts of a
//!   token in three dispatches (gate+up+SwiGLU for every expert, down for every expert with
//!   its combine weight, then the sum; the first two once per ring buffer the layer's experts
//!   lie in) over records in the ring; records already resident —
//!   used recently, or staged ahead with [`crate::ComputeBackend::stage_expert`] while the previous
//!   layer computed — are not uploaded.
//! - **Row ops tiled**: `matmul`/`matmul_bytes` on a prompt chunk are one dispatch per row
//!   block (`matmul`: 4 rows x 4 tokens per slice of 32 lanes), each weight chunk loaded and
//!   decoded once for 4 tokens.
//! - **Router top-k on the host**: the logits are tiny (one read of `num_experts` floats) and
//!   the host needs the ids anyway to ask io-sched for the experts; `read_many` brings the
//!   router and pre-gate logits back in one wait.
//! - **Kernel time is measurable**: [`WgpuConfig::profile`] times every dispatch with GPU
//!   timestamps ([`WgpuBackend::kernel_times`]).
//!
//! Files: `context` (adapter, device, limits), `kernels` (WGSL sources, pipelines), `ops`
//! (the trait's ops), `matmul` (the row ops), `record` (arena, bind groups, dispatch, submission, read-back), `tensor`
//! (tensors, row-blocked weights, KV cache), `ring` (expert slots), `moe` (routed experts),
//! `linear_attn` (the hybrid layers' ops: DeltaNet step, conv1d step, gated norm, sigmoid
//! gates, partial RoPE), `profile` (timestamps).
//!
//! ```no_run
//! use flashmoe_backends::{ComputeBackend, wgpu::WgpuBackend};
//! let be = WgpuBackend::new(&Default::default())?;
//! println!("{}", be.info());
//! let x = be.upload(&[1.0, 2.0, 3.0])?;
//! assert_eq!(be.read(&x)?, vec![1.0, 2.0, 3.0]);
//! # Ok::<(), flashmoe_backends::BackendError>(())
//! ```

mod context;
pub mod kernels;
mod linear_attn;
mod matmul;
mod moe;
mod ops;
mod profile;
mod record;
pub mod ring;
mod tensor;

pub use context::{GpuInfo, MAX_BINDING, WgpuConfig};
pub use profile::KernelTime;
pub use ring::RingStats;
pub use tensor::{GpuKvCache, GpuTensor, GpuWeight};

use crate::error::Result;
use crate::quant::WeightFormat;
use context::{Gpu, gpu_error};
use kernels::{Fmt, Kernel, Pipelines};
use parking_lot::Mutex;
use profile::Profiler;
use record::{ARENA_BYTES, Bind, BindKey, grid, to_u32, words};
use ring::ExpertRing;
use std::time::Instant;
use tensor::MatRef;

/// Default bytes of the expert ring.
const DEFAULT_RING_BYTES: u64 = 256 << 20;
/// Rows per workgroup (8 slices of 32 lanes, as in the shaders): down_combine 8 per slice,
/// matvec and gate_up 4 per slice.
const DOWN_ROWS_PER_GROUP: u32 = 64;
const MATVEC_ROWS_PER_GROUP: u32 = 32;
const GATE_UP_ROWS_PER_GROUP: u32 = 32;
/// Invocations of the element-wise workgroups.
const WG: u32 = 256;
/// Most workgroups along one dispatch dimension.
const MAX_GROUPS: u32 = 65535;

/// Counters of the backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct WgpuStats {
    /// The expert ring (zero until the first expert).
    pub ring: RingStats,
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Command buffers submitted.
    pub submits: u64,
    /// Reads back to the host.
    pub readbacks: u64,
    /// Nanoseconds the host waited for the GPU in reads.
    pub wait_ns: u64,
    /// Nanoseconds spent recording commands and creating their small buffers.
    pub record_ns: u64,
}

/// Mutable state behind the `&self` API.
#[derive(Default)]
struct State {
    encoder: Option<::wgpu::CommandEncoder>,
    /// Incremented at each submission: names the encoder being recorded.
    generation: u64,
    readback: Option<::wgpu::Buffer>,
    scores: Option<::wgpu::Buffer>,
    moe_h: Option<::wgpu::Buffer>,
    moe_parts: Option<::wgpu::Buffer>,
    ring: Option<ExpertRing>,
    /// Small per-dispatch data (params, expert tables, RoPE tables) of the commands being
    /// recorded, written into `arena` just before they are submitted.
    arena_data: Vec<u8>,
    /// Kernel timestamps (profiling only).
    profiler: Option<Profiler>,
    /// Bind groups by kernel and buffers: a decode step reuses the same tensors every token.
    bind_groups: std::collections::HashMap<BindKey, ::wgpu::BindGroup>,
    stats: WgpuStats,
}

impl State {
    fn encoder(&mut self, device: &::wgpu::Device) -> &mut ::wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                label: Some("flashmoe ops"),
            })
        })
    }
}

/// The wgpu implementation of [`crate::ComputeBackend`].
pub struct WgpuBackend {
    gpu: Gpu,
    pipelines: Pipelines,
    ring_bytes: u64,
    /// Per-dispatch data of one submission. Rewritten for each submission: the queue orders
    /// that write after the previous submission's reads.
    arena: ::wgpu::Buffer,
    state: Mutex<State>,
}

impl WgpuBackend {
    /// Opens the GPU `cfg` asks for.
    pub fn new(cfg: &WgpuConfig) -> Result<Self> {
        let gpu = Gpu::open(cfg)?;
        let ring_bytes = cfg.expert_ring_bytes.unwrap_or(DEFAULT_RING_BYTES);
        let arena = gpu.device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("per-dispatch data"),
            size: ARENA_BYTES,
            usage: ::wgpu::BufferUsages::UNIFORM
                | ::wgpu::BufferUsages::STORAGE
                | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let state = State {
            profiler: gpu
                .timestamps
                .then(|| Profiler::new(&gpu.device, &gpu.queue)),
            ..State::default()
        };
        Ok(Self {
            gpu,
            pipelines: Pipelines::default(),
            ring_bytes,
            arena,
            state: Mutex::new(state),
        })
    }

    /// The adapter in use.
    pub fn info(&self) -> &GpuInfo {
        &self.gpu.info
    }

    /// The wgpu device, for runtimes that add kernels of their own beside these.
    pub fn device(&self) -> &::wgpu::Device {
        &self.gpu.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &::wgpu::Queue {
        &self.gpu.queue
    }

    /// Compiles every kernel now (they are otherwise compiled on first use, which then lands
    /// in the first token's time). Returns how many.
    pub fn compile_all(&self) -> usize {
        let all = Kernel::all();
        for k in &all {
            self.pipelines.get(&self.gpu.device, *k);
        }
        all.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> WgpuStats {
        let st = self.state.lock();
        let mut s = st.stats;
        if let Some(r) = &st.ring {
            s.ring = r.stats;
        }
        s
    }

    /// GPU time per kernel so far (empty unless [`WgpuConfig::profile`] and the adapter has
    /// timestamp queries).
    pub fn kernel_times(&self) -> Vec<KernelTime> {
        let mut st = self.state.lock();
        self.flush(&mut st);
        st.profiler
            .as_ref()
            .map(Profiler::report)
            .unwrap_or_default()
    }

    /// Forgets every resident expert record (e.g. before loading another model's experts).
    pub fn forget_experts(&self) {
        if let Some(r) = &mut self.state.lock().ring {
            r.clear();
        }
    }

    /// Submits everything recorded and waits until the GPU has run it.
    pub fn sync(&self) -> Result<()> {
        let mut st = self.state.lock();
        self.flush(&mut st);
        let t = Instant::now();
        self.gpu
            .device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu_error("sync", e.to_string()))?;
        st.stats.wait_ns += t.elapsed().as_nanos() as u64;
        self.gpu.check("sync")
    }

    /// Records `y[y_off + r] = W[r] . x[x_off..]` for the rows of one matrix at `mat` in `w`.
    #[allow(clippy::too_many_arguments)]
    fn matvec_at(
        &self,
        st: &mut State,
        w: Bind<'_>,
        mat: MatRef,
        format: WeightFormat,
        rows: usize,
        cols: usize,
        x: &GpuTensor,
        out: &GpuTensor,
        y_off: usize,
    ) -> Result<()> {
        let fmt = Fmt::of(format);
        let p = self.arena_item(
            st,
            &words(&[
                to_u32("matvec", "rows", rows)?,
                to_u32("matvec", "cols", cols)?,
                format.group().unwrap_or(0) as u32,
                fmt.group_shift(format),
                mat.data,
                mat.scales,
                mat.biases,
                0,
                0,
                to_u32("matvec", "row offset", y_off)?,
                0,
                0,
            ]),
        );
        let (gx, gy) = grid(to_u32("matvec", "rows", rows)?.div_ceil(MATVEC_ROWS_PER_GROUP));
        let mut bindings = vec![
            (0, w),
            (1, Bind::Buf(&x.buf)),
            (2, Bind::Buf(&out.buf)),
            (3, p),
        ];
        if fmt.quantized() {
            bindings.push((5, w));
        }
        self.dispatch(st, Kernel::Matvec(fmt), &bindings, (gx, gy, 1));
        Ok(())
    }

    /// Records an element-wise op `y = f(y, x)`.
    fn elementwise(&self, kernel: Kernel, y: &GpuTensor, x: &GpuTensor, alpha: f32) -> Result<()> {
        let n = to_u32("elementwise", "length", y.len)?;
        let mut st = self.state.lock();
        let p = self.arena_item(&mut st, &words(&[n, alpha.to_bits(), 0, 0]));
        self.dispatch(
            &mut st,
            kernel,
            &[(0, Bind::Buf(&y.buf)), (1, Bind::Buf(&x.buf)), (2, p)],
            (n.div_ceil(WG).max(1), 1, 1),
        );
        Ok(())
    }
}
