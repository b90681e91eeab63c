//! The wgpu backend: every op of the decode step as a WGSL compute shader, on Vulkan, Metal
//! or DX12.
//!
//! Design choices:
//! - **Portable kernels only.** No subgroup operations and no `shader-f16`: reductions go
//!   through workgroup memory (correct for any subgroup size: 8 on lavapipe, 32 on Apple), f16
//!   scales are unpacked from `u32` with `unpack2x16float`. Every shader translates to MSL
//!   (a test checks it with naga). Optional features are reported in [`GpuInfo`], not needed.
//! - **One binding ≤ 128 MiB.** Resident weights are split into row blocks; KV caches are a
//!   buffer per layer; the expert ring is one binding. Same splits on every adapter.
//! - **Commands are batched.** Ops record into one command encoder; it is submitted only when
//!   the host needs a result (a [`ComputeBackend::read`]) or must overwrite memory the GPU may
//!   still read (an expert slot), so a layer's ops reach the GPU in one submission.
//! - **Experts in a GPU-resident ring** ([`experts`]): `moe_experts` runs all routed experts of
//!   a token in two dispatches (gate+up+SwiGLU, then down with the weighted combine) over
//!   records in the ring; records already resident — used recently, or staged ahead with
//!   [`ComputeBackend::stage_expert`] while the previous layer computed — are not uploaded.
//! - **Router top-k on the host**: the logits are tiny (one read of `num_experts` floats) and
//!   the host needs the ids anyway to ask io-sched for the experts.
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
pub mod experts;
pub mod kernels;
mod profile;
mod tensor;

pub use context::{GpuInfo, MAX_BINDING, WgpuConfig};
pub use experts::RingStats;
pub use profile::KernelTime;
pub use tensor::{GpuKvCache, GpuTensor, GpuWeight};

use crate::backend::{
    AttnShape, ComputeBackend, ExpertId, ExpertScratch, KvShape, RoutedExpert, WeightView,
};
use crate::checks::{check_attention, check_index, check_kv_write, check_norm_heads, check_rope};
use crate::error::{BackendError, Result, check_len};
use crate::quant::WeightFormat;
use ::wgpu::util::DeviceExt;
use context::{Gpu, gpu_error};
use experts::ExpertRing;
use kernels::{Fmt, Kernel, Pipelines, check_gpu_dims};
use parking_lot::Mutex;
use profile::Profiler;
use std::time::Instant;
use tensor::{MatRef, TENSOR_USAGE, tensor_bytes};

/// Default bytes of the expert ring (clamped to one binding).
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

/// Bytes of the arena of small per-dispatch data (one submission's worth: ~4k dispatches).
const ARENA_BYTES: u64 = 1 << 20;
/// Alignment of each item in the arena (uniform and storage offsets on every adapter).
const ARENA_ALIGN: usize = 256;

/// A binding of a dispatch: a whole buffer, an item of the arena, or a whole buffer that
/// lives for one dispatch only (its bind group is not cached).
#[derive(Clone, Copy)]
enum Bind<'a> {
    Buf(&'a ::wgpu::Buffer),
    Arena { offset: u64, size: u64 },
    Temp(&'a ::wgpu::Buffer),
}

/// Bind groups kept at most; past it the cache starts over (it also holds its buffers alive).
const BIND_GROUP_CACHE: usize = 8192;

/// What makes a bind group reusable: the kernel, and per binding the buffer (or the arena
/// item's size; its offset is dynamic).
type BindKey = (Kernel, Vec<(u32, Option<::wgpu::Buffer>, u64)>);

/// The wgpu implementation of [`ComputeBackend`].
pub struct WgpuBackend {
    gpu: Gpu,
    pipelines: Pipelines,
    ring_bytes: u64,
    /// Per-dispatch data of one submission. Rewritten for each submission: the queue orders
    /// that write after the previous submission's reads.
    arena: ::wgpu::Buffer,
    state: Mutex<State>,
}

/// A scratch buffer of at least `bytes`, reallocated (zeroed) when too small.
fn grown(
    slot: &mut Option<::wgpu::Buffer>,
    device: &::wgpu::Device,
    bytes: u64,
    usage: ::wgpu::BufferUsages,
    label: &'static str,
) -> ::wgpu::Buffer {
    match slot {
        Some(b) if b.size() >= bytes => b.clone(),
        _ => {
            let b = device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(16),
                usage,
                mapped_at_creation: false,
            });
            *slot = Some(b.clone());
            b
        }
    }
}

fn words(w: &[u32]) -> Vec<u8> {
    bytemuck::cast_slice(w).to_vec()
}

/// `(x, y)` workgroups covering `n` with at most [`MAX_GROUPS`] along x.
fn grid(n: u32) -> (u32, u32) {
    if n <= MAX_GROUPS {
        (n.max(1), 1)
    } else {
        (MAX_GROUPS, n.div_ceil(MAX_GROUPS))
    }
}

fn to_u32(op: &'static str, what: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| BackendError::OutOfRange {
        op,
        what,
        index: v,
        limit: u32::MAX as usize,
    })
}

impl WgpuBackend {
    /// Opens the GPU `cfg` asks for.
    pub fn new(cfg: &WgpuConfig) -> Result<Self> {
        let gpu = Gpu::open(cfg)?;
        let ring_bytes = cfg
            .expert_ring_bytes
            .unwrap_or(DEFAULT_RING_BYTES)
            .min(gpu.info.max_binding);
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

    /// Submits the commands recorded so far.
    fn flush(&self, st: &mut State) {
        if !st.arena_data.is_empty() {
            self.gpu.queue.write_buffer(&self.arena, 0, &st.arena_data);
            st.arena_data.clear();
        }
        if let Some(mut enc) = st.encoder.take() {
            if let Some(p) = &st.profiler {
                p.resolve(&mut enc);
            }
            self.gpu.queue.submit([enc.finish()]);
            st.stats.submits += 1;
            if let Some(p) = &mut st.profiler {
                p.collect(&self.gpu.device);
            }
        }
        st.generation += 1;
    }

    /// Puts `bytes` (params, a small table) in the arena for the commands being recorded.
    fn arena_item(&self, st: &mut State, bytes: &[u8]) -> Bind<'static> {
        let size = bytes.len().div_ceil(16).max(1) * 16;
        if st.arena_data.len() + size > ARENA_BYTES as usize {
            self.flush(st);
        }
        let offset = st.arena_data.len();
        st.arena_data.extend_from_slice(bytes);
        let padded = offset + size.div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
        st.arena_data.resize(padded, 0);
        Bind::Arena {
            offset: offset as u64,
            size: size as u64,
        }
    }

    /// A storage buffer holding `bytes` (padded to 16), for data too large for the arena.
    fn storage(&self, bytes: &[u8]) -> ::wgpu::Buffer {
        let mut padded;
        let contents = if bytes.len().is_multiple_of(16) && !bytes.is_empty() {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(16).max(1) * 16, 0);
            &padded
        };
        self.gpu
            .device
            .create_buffer_init(&::wgpu::util::BufferInitDescriptor {
                label: Some("data"),
                contents,
                usage: ::wgpu::BufferUsages::STORAGE,
            })
    }

    /// Records one dispatch of `kernel` with `bindings` (binding index, buffer; the params
    /// uniform is one of them).
    fn dispatch(
        &self,
        st: &mut State,
        kernel: Kernel,
        bindings: &[(u32, Bind<'_>)],
        groups: (u32, u32, u32),
    ) {
        let t = Instant::now();
        let compiled = self.pipelines.get(&self.gpu.device, kernel);
        let mut sorted: Vec<(u32, Bind<'_>)> = bindings.to_vec();
        sorted.sort_by_key(|&(binding, _)| binding);
        let dynamic: Vec<u32> = sorted
            .iter()
            .filter_map(|(_, b)| match b {
                Bind::Arena { offset, .. } => Some(*offset as u32),
                _ => None,
            })
            .collect();
        let cacheable = !sorted.iter().any(|(_, b)| matches!(b, Bind::Temp(_)));
        let key: BindKey = (
            kernel,
            sorted
                .iter()
                .map(|&(binding, b)| match b {
                    Bind::Buf(buf) | Bind::Temp(buf) => (binding, Some(buf.clone()), 0),
                    Bind::Arena { size, .. } => (binding, None, size),
                })
                .collect(),
        );
        let bind_group = match st.bind_groups.get(&key) {
            Some(bg) => bg.clone(),
            None => {
                let entries: Vec<::wgpu::BindGroupEntry<'_>> = sorted
                    .iter()
                    .map(|&(binding, b)| ::wgpu::BindGroupEntry {
                        binding,
                        resource: match b {
                            Bind::Buf(buf) | Bind::Temp(buf) => buf.as_entire_binding(),
                            Bind::Arena { size, .. } => {
                                ::wgpu::BindingResource::Buffer(::wgpu::BufferBinding {
                                    buffer: &self.arena,
                                    offset: 0,
                                    size: std::num::NonZeroU64::new(size),
                                })
                            }
                        },
                    })
                    .collect();
                let bg = self
                    .gpu
                    .device
                    .create_bind_group(&::wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &compiled.layout,
                        entries: &entries,
                    });
                if cacheable {
                    if st.bind_groups.len() >= BIND_GROUP_CACHE {
                        st.bind_groups.clear();
                    }
                    st.bind_groups.insert(key, bg.clone());
                }
                bg
            }
        };
        if st.profiler.as_ref().is_some_and(|p| !p.has_room()) {
            self.flush(st);
        }
        st.encoder(&self.gpu.device);
        let State {
            encoder, profiler, ..
        } = st;
        let enc = encoder.as_mut().expect("encoder just made");
        {
            let mut pass = enc.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: profiler.as_mut().map(|p| p.next(kernel)),
            });
            pass.set_pipeline(&compiled.pipeline);
            pass.set_bind_group(0, &bind_group, &dynamic);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        }
        st.stats.dispatches += 1;
        st.stats.record_ns += t.elapsed().as_nanos() as u64;
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

    /// The expert ring, created on first use with slots shaped like `views`; records of
    /// another shape (another model, another format) replace it, forgetting what it held.
    fn ring<'s>(
        &self,
        st: &'s mut State,
        views: &[WeightView<'_>; 3],
    ) -> Result<&'s mut ExpertRing> {
        let fits = st.ring.as_ref().map(|r| r.check_shape(views).is_ok());
        if fits != Some(true) {
            let mut ring = ExpertRing::new(&self.gpu.device, views, self.ring_bytes)?;
            if let Some(old) = st.ring.take() {
                tracing::info!("expert records changed shape: the GPU expert ring starts anew");
                ring.stats.carry(&old.stats);
                st.bind_groups.clear(); // they hold the old ring alive
            }
            st.ring = Some(ring);
        }
        Ok(st.ring.as_mut().expect("ring exists"))
    }

    /// Puts `id`'s record in a ring slot (uploading it unless resident) and returns the slot.
    fn place_expert(
        &self,
        st: &mut State,
        id: ExpertId,
        views: &[WeightView<'_>; 3],
        keep: &[usize],
        staging: bool,
    ) -> Result<(usize, bool)> {
        let generation = st.generation;
        let placed = self.ring(st, views)?.place(id, keep, generation, staging)?;
        let Some(writes) = placed.writes else {
            return Ok((placed.slot, false));
        };
        if placed.flush_first {
            self.flush(st);
        }
        let ring = st.ring.as_mut().expect("ring exists");
        let t = Instant::now();
        for ((offset, len), v) in writes.iter().zip(views) {
            let bytes = v.bytes();
            debug_assert_eq!(bytes.len(), *len);
            if bytes.len().is_multiple_of(4) {
                self.gpu.queue.write_buffer(&ring.buf, *offset, bytes);
            } else {
                let mut padded = bytes.to_vec();
                padded.resize(bytes.len().div_ceil(4) * 4, 0);
                self.gpu.queue.write_buffer(&ring.buf, *offset, &padded);
            }
            ring.stats.upload_bytes += bytes.len() as u64;
        }
        ring.stats.upload_ns += t.elapsed().as_nanos() as u64;
        Ok((placed.slot, true))
    }
}

/// Checks that an expert's three views suit the expert kernels.
fn check_expert(views: &[WeightView<'_>; 3], hidden: usize) -> Result<(usize, WeightFormat)> {
    let [g, u, d] = views.map(|v| *v.layout());
    let inter = g.rows;
    let ok = u == g && g.cols == hidden && d.rows == hidden && d.cols == inter;
    if !ok {
        return Err(BackendError::Shape {
            op: "moe_experts",
            what: "expert [gate, up, down] dims",
            expected: hidden,
            got: g.cols,
        });
    }
    if d.format != g.format {
        return Err(BackendError::BadDims {
            format: d.format,
            rows: d.rows,
            cols: d.cols,
            reason: "gate, up and down of one expert must share a format on the GPU",
        });
    }
    check_gpu_dims(g.format, g.rows, g.cols)?;
    check_gpu_dims(d.format, d.rows, d.cols)?;
    Ok((inter, g.format))
}

impl ComputeBackend for WgpuBackend {
    type Tensor = GpuTensor;
    type Weight = GpuWeight;
    type KvCache = GpuKvCache;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn zeros(&self, len: usize) -> Result<GpuTensor> {
        let buf = self.gpu.device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("tensor"),
            size: tensor_bytes(len),
            usage: TENSOR_USAGE,
            mapped_at_creation: false,
        });
        Ok(GpuTensor { buf, len })
    }

    fn upload(&self, data: &[f32]) -> Result<GpuTensor> {
        let mut padded = data.to_vec();
        padded.resize(tensor_bytes(data.len()) as usize / 4, 0.0);
        let buf = self
            .gpu
            .device
            .create_buffer_init(&::wgpu::util::BufferInitDescriptor {
                label: Some("tensor"),
                contents: bytemuck::cast_slice(&padded),
                usage: TENSOR_USAGE,
            });
        Ok(GpuTensor {
            buf,
            len: data.len(),
        })
    }

    fn len(&self, t: &GpuTensor) -> usize {
        t.len
    }

    fn read(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        Ok(self.read_many(&[t])?.pop().unwrap_or_default())
    }

    /// Copies every tensor into one staging buffer and waits once.
    fn read_many(&self, ts: &[&GpuTensor]) -> Result<Vec<Vec<f32>>> {
        // Each tensor at a 256-byte aligned offset (map and copy alignments).
        let mut offsets = Vec::with_capacity(ts.len());
        let mut total = 0u64;
        for t in ts {
            offsets.push(total);
            total += (t.len as u64 * 4).div_ceil(256) * 256;
        }
        if total == 0 {
            return Ok(ts.iter().map(|_| Vec::new()).collect());
        }
        let mut st = self.state.lock();
        let rb = grown(
            &mut st.readback,
            &self.gpu.device,
            total.max(1 << 16),
            ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
            "readback",
        );
        let enc = st.encoder(&self.gpu.device);
        for (t, &off) in ts.iter().zip(&offsets) {
            if t.len > 0 {
                enc.copy_buffer_to_buffer(&t.buf, 0, &rb, off, t.len as u64 * 4);
            }
        }
        self.flush(&mut st);
        let slice = rb.slice(0..total);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(::wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let t0 = Instant::now();
        self.gpu
            .device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu_error("read", e.to_string()))?;
        st.stats.wait_ns += t0.elapsed().as_nanos() as u64;
        st.stats.readbacks += 1;
        self.gpu.check("read")?;
        rx.recv()
            .map_err(|_| gpu_error("read", "the map callback never ran"))?
            .map_err(|e| gpu_error("read", e.to_string()))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| gpu_error("read", e.to_string()))?;
            ts.iter()
                .zip(&offsets)
                .map(|(t, &off)| {
                    view[off as usize..off as usize + t.len * 4]
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                })
                .collect()
        };
        rb.unmap();
        Ok(out)
    }

    fn copy(&self, src: &GpuTensor, dst: &mut GpuTensor) -> Result<()> {
        check_len("copy", "dst", src.len, dst.len)?;
        let mut st = self.state.lock();
        st.encoder(&self.gpu.device).copy_buffer_to_buffer(
            &src.buf,
            0,
            &dst.buf,
            0,
            tensor_bytes(src.len),
        );
        Ok(())
    }

    fn load_weight(
        &self,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<GpuWeight> {
        let w = GpuWeight::upload(
            &self.gpu.device,
            bytes,
            rows,
            cols,
            format,
            self.gpu.info.max_binding,
        )?;
        self.gpu.check("load_weight")?;
        Ok(w)
    }

    fn kv_cache(&self, shape: KvShape) -> Result<GpuKvCache> {
        let bytes = (shape.max_seq as u64)
            .checked_mul(shape.kv_dim as u64 * 4)
            .filter(|&b| b <= self.gpu.info.max_binding)
            .ok_or(BackendError::OutOfRange {
                op: "kv_cache",
                what: "bytes per layer (max_seq * kv_dim * 4)",
                index: shape.max_seq.saturating_mul(shape.kv_dim * 4),
                limit: self.gpu.info.max_binding as usize,
            })?;
        let layer = |label| {
            self.gpu.device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(16),
                usage: TENSOR_USAGE,
                mapped_at_creation: false,
            })
        };
        Ok(GpuKvCache {
            k: (0..shape.layers).map(|_| layer("k cache")).collect(),
            v: (0..shape.layers).map(|_| layer("v cache")).collect(),
            shape,
        })
    }

    fn embedding(&self, table: &GpuWeight, token: u32, out: &mut GpuTensor) -> Result<()> {
        let l = table.layout;
        check_index("embedding", "token", token as usize, l.rows)?;
        check_len("embedding", "out", l.cols, out.len)?;
        let t = token as usize;
        let block = table
            .blocks
            .iter()
            .find(|b| (b.row0..b.row0 + b.rows).contains(&t))
            .expect("row blocks cover every row");
        let fmt = Fmt::of(l.format);
        let mut st = self.state.lock();
        let p = self.arena_item(
            &mut st,
            &words(&[
                (t - block.row0) as u32,
                l.cols as u32,
                l.format.group().unwrap_or(0) as u32,
                fmt.group_shift(l.format),
                block.mat.data,
                block.mat.scales,
                block.mat.biases,
                0,
            ]),
        );
        let mut bindings = vec![(0, Bind::Buf(&block.buf)), (2, Bind::Buf(&out.buf)), (3, p)];
        if fmt.quantized() {
            bindings.push((5, Bind::Buf(&block.buf)));
        }
        self.dispatch(
            &mut st,
            Kernel::Embed(fmt),
            &bindings,
            ((l.cols as u32).div_ceil(WG), 1, 1),
        );
        Ok(())
    }

    fn matvec(&self, w: &GpuWeight, x: &GpuTensor, out: &mut GpuTensor) -> Result<()> {
        let l = w.layout;
        check_len("matvec", "x", l.cols, x.len)?;
        check_len("matvec", "out", l.rows, out.len)?;
        let mut st = self.state.lock();
        for b in &w.blocks {
            self.matvec_at(
                &mut st,
                Bind::Buf(&b.buf),
                b.mat,
                l.format,
                b.rows,
                l.cols,
                x,
                out,
                b.row0,
            )?;
        }
        Ok(())
    }

    fn matvec_bytes(&self, w: WeightView<'_>, x: &GpuTensor, out: &mut GpuTensor) -> Result<()> {
        let l = *w.layout();
        check_len("matvec", "x", l.cols, x.len)?;
        check_len("matvec", "out", l.rows, out.len)?;
        check_gpu_dims(l.format, l.rows, l.cols)?;
        if l.total as u64 > self.gpu.info.max_binding {
            // Larger than one binding: split into row blocks like a resident weight.
            let tmp = self.load_weight(w.bytes(), l.rows, l.cols, l.format)?;
            return self.matvec(&tmp, x, out);
        }
        let buf = self.storage(w.bytes());
        let mut st = self.state.lock();
        self.matvec_at(
            &mut st,
            Bind::Temp(&buf),
            MatRef::at(0, &l)?,
            l.format,
            l.rows,
            l.cols,
            x,
            out,
            0,
        )
    }

    fn rms_norm(
        &self,
        x: &GpuTensor,
        weight: &GpuTensor,
        eps: f32,
        out: &mut GpuTensor,
    ) -> Result<()> {
        check_len("rms_norm", "weight", x.len, weight.len)?;
        check_len("rms_norm", "out", x.len, out.len)?;
        let n = to_u32("rms_norm", "length", x.len)?;
        let mut st = self.state.lock();
        let p = self.arena_item(&mut st, &words(&[n, eps.to_bits(), 0, 0]));
        self.dispatch(
            &mut st,
            Kernel::RmsNorm,
            &[
                (0, Bind::Buf(&out.buf)),
                (1, Bind::Buf(&x.buf)),
                (2, Bind::Buf(&weight.buf)),
                (3, p),
            ],
            (1, 1, 1),
        );
        Ok(())
    }

    fn rms_norm_heads(
        &self,
        x: &mut GpuTensor,
        weight: &GpuTensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        check_norm_heads(x.len, weight.len, head_dim)?;
        let mut st = self.state.lock();
        let p = self.arena_item(&mut st, &words(&[head_dim as u32, eps.to_bits(), 0, 0]));
        self.dispatch(
            &mut st,
            Kernel::RmsNormHeads,
            &[(0, Bind::Buf(&x.buf)), (2, Bind::Buf(&weight.buf)), (3, p)],
            (to_u32("rms_norm_heads", "heads", x.len / head_dim)?, 1, 1),
        );
        Ok(())
    }

    fn rope(
        &self,
        x: &mut GpuTensor,
        n_heads: usize,
        head_dim: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()> {
        check_rope(x.len, n_heads, head_dim)?;
        let (cos, sin) = crate::cpu::rope_table(head_dim, pos, theta);
        let table: Vec<f32> = cos.into_iter().chain(sin).collect();
        let mut st = self.state.lock();
        let table = self.arena_item(&mut st, bytemuck::cast_slice(&table));
        let p = self.arena_item(&mut st, &words(&[n_heads as u32, head_dim as u32, 0, 0]));
        self.dispatch(
            &mut st,
            Kernel::Rope,
            &[(0, Bind::Buf(&x.buf)), (1, table), (2, p)],
            (((n_heads * head_dim / 2) as u32).div_ceil(WG).max(1), 1, 1),
        );
        Ok(())
    }

    fn kv_write(
        &self,
        cache: &mut GpuKvCache,
        layer: usize,
        pos: usize,
        k: &GpuTensor,
        v: &GpuTensor,
    ) -> Result<()> {
        let s = cache.shape;
        check_kv_write(s, layer, pos, k.len, v.len)?;
        let (off, n) = ((pos * s.kv_dim * 4) as u64, (s.kv_dim * 4) as u64);
        let mut st = self.state.lock();
        let enc = st.encoder(&self.gpu.device);
        enc.copy_buffer_to_buffer(&k.buf, 0, &cache.k[layer], off, n);
        enc.copy_buffer_to_buffer(&v.buf, 0, &cache.v[layer], off, n);
        Ok(())
    }

    fn attention(
        &self,
        q: &GpuTensor,
        cache: &GpuKvCache,
        layer: usize,
        seq_len: usize,
        shape: AttnShape,
        out: &mut GpuTensor,
    ) -> Result<()> {
        let s = cache.shape;
        check_attention(s, layer, seq_len, shape, q.len, out.len)?;
        let mut st = self.state.lock();
        let p = self.arena_item(
            &mut st,
            &words(&[
                seq_len as u32,
                shape.head_dim as u32,
                s.kv_dim as u32,
                (shape.n_heads / shape.n_kv_heads) as u32,
                s.max_seq as u32,
                0,
                (1.0 / (shape.head_dim as f32).sqrt()).to_bits(),
                0,
            ]),
        );
        let scores = grown(
            &mut st.scores,
            &self.gpu.device,
            (shape.n_heads * s.max_seq * 4) as u64,
            ::wgpu::BufferUsages::STORAGE,
            "attention scores",
        );
        self.dispatch(
            &mut st,
            Kernel::Attention,
            &[
                (0, Bind::Buf(&q.buf)),
                (1, Bind::Buf(&cache.k[layer])),
                (2, Bind::Buf(&cache.v[layer])),
                (3, Bind::Buf(&scores)),
                (4, Bind::Buf(&out.buf)),
                (5, p),
            ],
            (shape.n_heads as u32, 1, 1),
        );
        Ok(())
    }

    fn swiglu(&self, gate: &mut GpuTensor, up: &GpuTensor) -> Result<()> {
        check_len("swiglu", "up", gate.len, up.len)?;
        self.elementwise(Kernel::Swiglu, gate, up, 0.0)
    }

    fn axpy(&self, y: &mut GpuTensor, alpha: f32, x: &GpuTensor) -> Result<()> {
        check_len("axpy", "x", y.len, x.len)?;
        self.elementwise(Kernel::Axpy, y, x, alpha)
    }

    fn fill_zero(&self, y: &mut GpuTensor) -> Result<()> {
        let mut st = self.state.lock();
        st.encoder(&self.gpu.device).clear_buffer(&y.buf, 0, None);
        Ok(())
    }

    fn moe_experts(
        &self,
        experts: &[RoutedExpert<'_>],
        x: &GpuTensor,
        _scratch: &mut ExpertScratch<GpuTensor>,
        out: &mut GpuTensor,
    ) -> Result<()> {
        let Some(first) = experts.first() else {
            return self.fill_zero(out);
        };
        let hidden = x.len;
        check_len("moe_experts", "out", hidden, out.len)?;
        let (inter, format) = check_expert(&first.weights, hidden)?;
        for e in experts {
            if check_expert(&e.weights, hidden)? != (inter, format) {
                return Err(BackendError::Shape {
                    op: "moe_experts",
                    what: "expert intermediate size",
                    expected: inter,
                    got: e.weights[0].layout().rows,
                });
            }
        }
        let mut st = self.state.lock();
        let mut slots = Vec::with_capacity(experts.len());
        for e in experts {
            let (slot, _) = self.place_expert(&mut st, e.id, &e.weights, &slots, false)?;
            slots.push(slot);
        }
        let generation = st.generation;
        let ring = st.ring.as_mut().expect("placed experts");
        let mut table: Vec<u32> = Vec::with_capacity(16 * experts.len());
        for (e, &slot) in experts.iter().zip(&slots) {
            ring.mark_read(slot, generation);
            for m in ring.mats(slot)? {
                table.extend([m.data, m.scales, m.biases, 0]);
            }
            table.extend([e.combine.to_bits(), 0, 0, 0]);
        }
        let ring_buf = ring.buf.clone();
        let table = self.arena_item(&mut st, bytemuck::cast_slice(&table));
        let n = to_u32("moe_experts", "experts", experts.len())?;
        let h = grown(
            &mut st.moe_h,
            &self.gpu.device,
            tensor_bytes(experts.len() * inter),
            ::wgpu::BufferUsages::STORAGE,
            "expert activations",
        );
        let fmt = Fmt::of(format);
        let (group, shift) = (format.group().unwrap_or(0) as u32, fmt.group_shift(format));
        let (inter32, hidden32) = (inter as u32, hidden as u32);
        let p_up = self.arena_item(
            &mut st,
            &words(&[inter32, hidden32, group, shift, n, 0, 0, 0]),
        );
        let p_down = self.arena_item(
            &mut st,
            &words(&[hidden32, inter32, group, shift, n, 0, 0, 0]),
        );
        let ring = Bind::Buf(&ring_buf);
        let mut up = vec![
            (0, ring),
            (1, Bind::Buf(&x.buf)),
            (2, Bind::Buf(&h)),
            (3, p_up),
            (4, table),
        ];
        let mut down = vec![
            (0, ring),
            (1, Bind::Buf(&h)),
            (2, Bind::Buf(&out.buf)),
            (3, p_down),
            (4, table),
        ];
        if fmt.quantized() {
            up.push((5, ring));
            down.push((5, ring));
        }
        self.dispatch(
            &mut st,
            Kernel::GateUp(fmt),
            &up,
            (inter32.div_ceil(GATE_UP_ROWS_PER_GROUP), n, 1),
        );
        let parts = grown(
            &mut st.moe_parts,
            &self.gpu.device,
            tensor_bytes(experts.len() * hidden),
            ::wgpu::BufferUsages::STORAGE,
            "expert outputs",
        );
        let mut down = vec![
            (0, ring),
            (1, Bind::Buf(&h)),
            (2, Bind::Buf(&parts)),
            (3, p_down),
            (4, table),
        ];
        if fmt.quantized() {
            down.push((5, ring));
        }
        self.dispatch(
            &mut st,
            Kernel::DownCombine(fmt),
            &down,
            (hidden32.div_ceil(DOWN_ROWS_PER_GROUP), n, 1),
        );
        let p_sum = self.arena_item(&mut st, &words(&[hidden32, 0, n, 0]));
        self.dispatch(
            &mut st,
            Kernel::Combine,
            &[(0, Bind::Buf(&out.buf)), (1, Bind::Buf(&parts)), (2, p_sum)],
            (hidden32.div_ceil(WG), 1, 1),
        );
        Ok(())
    }

    fn stages_experts(&self) -> bool {
        true
    }

    fn stage_expert(&self, id: ExpertId, weights: [WeightView<'_>; 3]) -> Result<bool> {
        let hidden = weights[0].layout().cols;
        check_expert(&weights, hidden)?;
        let mut st = self.state.lock();
        // Hand the GPU what is recorded (the previous layer's experts, this layer's attention)
        // so that it computes while the host copies the record.
        self.flush(&mut st);
        Ok(self.place_expert(&mut st, id, &weights, &[], true)?.1)
    }
}
