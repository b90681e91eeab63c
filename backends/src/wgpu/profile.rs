//! GPU time per kernel from timestamp queries (`WgpuConfig::profile`, where the adapter offers
//! `TIMESTAMP_QUERY`). Each compute pass writes a start and an end timestamp; a submission's
//! timestamps are resolved into a buffer and read back right after it, so profiling adds one
//! wait per submission: use it to measure kernels, not to time the whole pipeline.

use super::kernels::Kernel;
use std::collections::HashMap;

/// Passes timed per submission (two queries each; wgpu allows 4096 queries per set).
const MAX_PASSES: u32 = 2048;

/// GPU time of one kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// Kernel name, e.g. `gate_up-q4`.
    pub kernel: String,
    /// Dispatches timed.
    pub dispatches: u64,
    /// GPU nanoseconds, start to end of their passes.
    pub gpu_ns: f64,
}

pub(crate) struct Profiler {
    queries: ::wgpu::QuerySet,
    resolve: ::wgpu::Buffer,
    readback: ::wgpu::Buffer,
    pending: Vec<Kernel>,
    period_ns: f64,
    totals: HashMap<Kernel, (u64, f64)>,
}

impl Profiler {
    pub fn new(device: &::wgpu::Device, queue: &::wgpu::Queue) -> Self {
        let bytes = u64::from(MAX_PASSES) * 2 * 8;
        let buffer = |usage, label| {
            device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Self {
            queries: device.create_query_set(&::wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: ::wgpu::QueryType::Timestamp,
                count: MAX_PASSES * 2,
            }),
            resolve: buffer(
                ::wgpu::BufferUsages::QUERY_RESOLVE | ::wgpu::BufferUsages::COPY_SRC,
                "timestamps",
            ),
            readback: buffer(
                ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
                "timestamps readback",
            ),
            pending: Vec::new(),
            period_ns: f64::from(queue.get_timestamp_period()),
            totals: HashMap::new(),
        }
    }

    /// Whether the submission being recorded has room for another timed pass.
    pub fn has_room(&self) -> bool {
        (self.pending.len() as u32) < MAX_PASSES
    }

    /// The timestamp writes of the next pass, which runs `kernel`.
    pub fn next(&mut self, kernel: Kernel) -> ::wgpu::ComputePassTimestampWrites<'_> {
        let i = self.pending.len() as u32;
        self.pending.push(kernel);
        ::wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        }
    }

    /// Records the resolve of this submission's timestamps (before the encoder is finished).
    pub fn resolve(&self, enc: &mut ::wgpu::CommandEncoder) {
        let n = self.pending.len() as u32 * 2;
        if n > 0 {
            enc.resolve_query_set(&self.queries, 0..n, &self.resolve, 0);
            enc.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, u64::from(n) * 8);
        }
    }

    /// After the submission: waits for it, reads its timestamps and adds them up.
    pub fn collect(&mut self, device: &::wgpu::Device) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = self.pending.len() as u64 * 16;
        let slice = self.readback.slice(0..bytes);
        slice.map_async(::wgpu::MapMode::Read, |_| {});
        if device.poll(::wgpu::PollType::wait_indefinitely()).is_ok()
            && let Ok(view) = slice.get_mapped_range()
        {
            let ticks: Vec<u64> = view
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            for (k, pair) in self.pending.iter().zip(ticks.chunks_exact(2)) {
                let e = self.totals.entry(*k).or_default();
                e.0 += 1;
                e.1 += pair[1].saturating_sub(pair[0]) as f64 * self.period_ns;
            }
        }
        self.readback.unmap();
        self.pending.clear();
    }

    /// Totals so far, slowest kernel first.
    pub fn report(&self) -> Vec<KernelTime> {
        let mut v: Vec<KernelTime> = self
            .totals
            .iter()
            .map(|(k, &(n, ns))| KernelTime {
                kernel: k.name(),
                dispatches: n,
                gpu_ns: ns,
            })
            .collect();
        v.sort_by(|a, b| b.gpu_ns.total_cmp(&a.gpu_ns));
        v
    }
}
