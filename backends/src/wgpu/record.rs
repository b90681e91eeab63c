//! Recording commands: the per-submission arena of small data, bind groups (cached by kernel
//! and buffers), dispatches, submission, and reading tensors back.

use super::context::gpu_error;
use super::kernels::Kernel;
use super::tensor::GpuTensor;
use super::{MAX_GROUPS, State, WgpuBackend};
use crate::error::{BackendError, Result};
use ::wgpu::util::DeviceExt;
use std::time::Instant;

/// Bytes of the arena of small per-dispatch data (one submission's worth: ~4k dispatches).
pub(super) const ARENA_BYTES: u64 = 1 << 20;
/// Alignment of each item in the arena (uniform and storage offsets on every adapter).
const ARENA_ALIGN: usize = 256;

/// A binding of a dispatch: a whole buffer, an item of the arena, or a whole buffer that
/// lives for one dispatch only (its bind group is not cached).
#[derive(Clone, Copy)]
pub(super) enum Bind<'a> {
    Buf(&'a ::wgpu::Buffer),
    Arena { offset: u64, size: u64 },
    Temp(&'a ::wgpu::Buffer),
}

/// Bind groups kept at most; past it the cache starts over (it also holds its buffers alive).
const BIND_GROUP_CACHE: usize = 8192;

/// What makes a bind group reusable: the kernel, and per binding the buffer (or the arena
/// item's size; its offset is dynamic).
pub(super) type BindKey = (Kernel, Vec<(u32, Option<::wgpu::Buffer>, u64)>);

/// A scratch buffer of at least `bytes`, reallocated (zeroed) when too small.
pub(super) fn grown(
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

pub(super) fn words(w: &[u32]) -> Vec<u8> {
    bytemuck::cast_slice(w).to_vec()
}

/// `(x, y)` workgroups covering `n` with at most [`MAX_GROUPS`] along x.
pub(super) fn grid(n: u32) -> (u32, u32) {
    if n <= MAX_GROUPS {
        (n.max(1), 1)
    } else {
        (MAX_GROUPS, n.div_ceil(MAX_GROUPS))
    }
}

pub(super) fn to_u32(op: &'static str, what: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| BackendError::OutOfRange {
        op,
        what,
        index: v,
        limit: u32::MAX as usize,
    })
}

impl WgpuBackend {
    /// Submits the commands recorded so far.
    pub(super) fn flush(&self, st: &mut State) {
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
    pub(super) fn arena_item(&self, st: &mut State, bytes: &[u8]) -> Bind<'static> {
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
    pub(super) fn storage(&self, bytes: &[u8]) -> ::wgpu::Buffer {
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
    pub(super) fn dispatch(
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

    /// Copies every tensor of `ts` into one staging buffer, submits, and waits once.
    pub(super) fn read_back(&self, ts: &[&GpuTensor]) -> Result<Vec<Vec<f32>>> {
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
}
