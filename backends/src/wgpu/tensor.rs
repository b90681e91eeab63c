//! GPU-resident tensors, weights and KV cache.
//!
//! Weights larger than one storage binding are split into row blocks, each laid out as its own
//! matrix in the same format, so every kernel sees one binding of at most
//! the adapter's binding limit or [`super::context::MAX_BINDING`] (1 GiB, far below Metal's
//! 4 GiB), whichever is smaller.

use super::kernels::check_gpu_dims;
use crate::error::{BackendError, Result};
use crate::quant::{MatrixLayout, WeightFormat};
use ::wgpu::util::DeviceExt;

/// Usage of every activation buffer.
pub(crate) const TENSOR_USAGE: ::wgpu::BufferUsages = ::wgpu::BufferUsages::STORAGE
    .union(::wgpu::BufferUsages::COPY_SRC)
    .union(::wgpu::BufferUsages::COPY_DST);

/// An f32 vector in GPU memory, padded to whole `vec4`s (the padding stays zero).
pub struct GpuTensor {
    pub(crate) buf: ::wgpu::Buffer,
    pub(crate) len: usize,
}

/// Bytes of the buffer behind a tensor of `len` elements.
pub(crate) fn tensor_bytes(len: usize) -> u64 {
    (len.div_ceil(4).max(1) * 16) as u64
}

/// Where one matrix lies in a buffer, in the units the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MatRef {
    /// `vec4<u32>` index of the codes or floats.
    pub data: u32,
    /// f16 index of the scales.
    pub scales: u32,
    /// f16 index of the biases.
    pub biases: u32,
}

impl MatRef {
    /// The sections of `layout` placed at byte `base` of a buffer (`base` 16-aligned).
    pub fn at(base: u64, layout: &MatrixLayout) -> Result<Self> {
        let idx = |bytes: u64, unit: u64| {
            u32::try_from(bytes / unit).map_err(|_| BackendError::OutOfRange {
                op: "gpu matrix",
                what: "offset",
                index: bytes as usize,
                limit: u32::MAX as usize,
            })
        };
        Ok(Self {
            data: idx(base, 16)?,
            scales: idx(base + layout.scales_offset as u64, 2)?,
            biases: idx(base + layout.biases_offset as u64, 2)?,
        })
    }
}

/// A block of rows of a resident weight.
pub(crate) struct RowBlock {
    pub buf: ::wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
    pub mat: MatRef,
}

/// A resident weight: its layout and its row blocks.
pub struct GpuWeight {
    pub(crate) layout: MatrixLayout,
    pub(crate) blocks: Vec<RowBlock>,
}

impl GpuWeight {
    /// Uploads `bytes` (a `[rows x cols]` matrix in `format`), split into row blocks of at
    /// most `max_binding` bytes.
    pub(crate) fn upload(
        device: &::wgpu::Device,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        format: WeightFormat,
        max_binding: u64,
    ) -> Result<Self> {
        let layout = format.layout(rows, cols)?;
        layout.check("load_weight", bytes)?;
        check_gpu_dims(format, rows, cols)?;
        let row_bytes = format.byte_size(1, cols)? as u64 + 256;
        let per_block = ((max_binding / row_bytes.max(1)) as usize).clamp(1, rows.max(1));
        let mut blocks = Vec::with_capacity(rows.div_ceil(per_block));
        let mut row0 = 0;
        while row0 < rows {
            let n = per_block.min(rows - row0);
            let sub = format.layout(n, cols)?;
            let data = sub_matrix(bytes, &layout, &sub, row0);
            let buf = device.create_buffer_init(&::wgpu::util::BufferInitDescriptor {
                label: Some("weight"),
                contents: &data,
                usage: ::wgpu::BufferUsages::STORAGE,
            });
            blocks.push(RowBlock {
                buf,
                row0,
                rows: n,
                mat: MatRef::at(0, &sub)?,
            });
            row0 += n;
        }
        Ok(Self { layout, blocks })
    }
}

/// Rows `row0..row0 + sub.rows` of a matrix in `full` layout, re-laid out as `sub`, padded
/// to whole 16-byte chunks.
fn sub_matrix(bytes: &[u8], full: &MatrixLayout, sub: &MatrixLayout, row0: usize) -> Vec<u8> {
    let mut out = vec![0u8; sub.total.div_ceil(16) * 16];
    let row_data = full.data_len / full.rows.max(1);
    let d0 = row0 * row_data;
    out[..sub.data_len].copy_from_slice(&bytes[d0..d0 + sub.data_len]);
    if let Some(g) = full.format.group() {
        let row_scales = full.cols / g * 2;
        let s0 = row0 * row_scales;
        let n = sub.rows * row_scales;
        out[sub.scales_offset..sub.scales_offset + n]
            .copy_from_slice(&bytes[full.scales_offset + s0..full.scales_offset + s0 + n]);
        out[sub.biases_offset..sub.biases_offset + n]
            .copy_from_slice(&bytes[full.biases_offset + s0..full.biases_offset + s0 + n]);
    }
    out
}

/// Keys and values of every layer: one buffer per layer each, `[max_seq][kv_dim]` f32.
pub struct GpuKvCache {
    pub(crate) k: Vec<::wgpu::Buffer>,
    pub(crate) v: Vec<::wgpu::Buffer>,
    pub(crate) shape: crate::KvShape,
}
