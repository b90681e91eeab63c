//! Every compute kernel: its WGSL source (one `.wgsl` per kernel family, the weight format
//! appended from `formats.wgsl`), its entry point, and a cache of compiled pipelines keyed by
//! kernel and format.

use crate::error::{BackendError, Result};
use crate::quant::WeightFormat;
use parking_lot::Mutex;
use std::collections::HashMap;

const FORMATS: &str = include_str!("shaders/formats.wgsl");
const QUANT_COMMON: &str = include_str!("shaders/quant_common.wgsl");
const MAT: &str = include_str!("shaders/mat.wgsl");
const MATVEC: &str = include_str!("shaders/matvec.wgsl");
const MATMUL: &str = include_str!("shaders/matmul.wgsl");
const EXPERTS: &str = include_str!("shaders/experts.wgsl");
const EMBED: &str = include_str!("shaders/embed.wgsl");
const ELEMENTWISE: &str = include_str!("shaders/elementwise.wgsl");
const RMS_NORM: &str = include_str!("shaders/rms_norm.wgsl");
const ROPE: &str = include_str!("shaders/rope.wgsl");
const ATTENTION: &str = include_str!("shaders/attention.wgsl");
const CONV1D: &str = include_str!("shaders/conv1d.wgsl");
const DELTA_RULE: &str = include_str!("shaders/delta_rule.wgsl");

/// A weight format as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fmt {
    /// 4-bit affine codes.
    Q4,
    /// 8-bit affine codes.
    Q8,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// f32.
    F32,
}

impl Fmt {
    /// Every format.
    pub const ALL: [Fmt; 5] = [Fmt::Q4, Fmt::Q8, Fmt::Bf16, Fmt::F16, Fmt::F32];

    /// The kernels' format for `f`.
    pub fn of(f: WeightFormat) -> Self {
        match f {
            WeightFormat::Q4 { .. } => Fmt::Q4,
            WeightFormat::Q8 { .. } => Fmt::Q8,
            WeightFormat::Bf16 => Fmt::Bf16,
            WeightFormat::F16 => Fmt::F16,
            WeightFormat::F32 => Fmt::F32,
        }
    }

    /// Values in one 16-byte chunk (one `vec4<u32>` load).
    pub fn vals_per_chunk(self) -> usize {
        match self {
            Fmt::Q4 => 32,
            Fmt::Q8 => 16,
            Fmt::Bf16 | Fmt::F16 => 8,
            Fmt::F32 => 4,
        }
    }

    fn marker(self) -> &'static str {
        match self {
            Fmt::Q4 => "q4",
            Fmt::Q8 => "q8",
            Fmt::Bf16 => "bf16",
            Fmt::F16 => "f16",
            Fmt::F32 => "f32",
        }
    }

    /// Whether scales and biases come with the codes (the kernels then bind them as u32s).
    pub fn quantized(self) -> bool {
        matches!(self, Fmt::Q4 | Fmt::Q8)
    }

    /// `log2(group / VALS)`: how far to shift a chunk index to get its group.
    pub fn group_shift(self, format: WeightFormat) -> u32 {
        format
            .group()
            .map(|g| (g / self.vals_per_chunk()).trailing_zeros())
            .unwrap_or(0)
    }

    /// The matrix helpers, the shared format helpers and this format's block.
    fn wgsl(self) -> String {
        let mut blocks = FORMATS.split("//! format ");
        let common = blocks.next().unwrap_or_default();
        let block = blocks
            .find(|b| b.split_whitespace().next() == Some(self.marker()))
            .unwrap_or_default();
        let body = block.split_once('\n').map(|(_, b)| b).unwrap_or_default();
        let quant = if self.quantized() { QUANT_COMMON } else { "" };
        format!("{MAT}\n{common}\n{quant}\n{body}")
    }
}

/// Checks that a `[rows x cols]` matrix in `format` suits the kernels: rows start on 16-byte
/// chunks and no chunk straddles two quantization groups.
pub fn check_gpu_dims(format: WeightFormat, rows: usize, cols: usize) -> Result<()> {
    let vals = Fmt::of(format).vals_per_chunk();
    let bad = |reason| BackendError::BadDims {
        format,
        rows,
        cols,
        reason,
    };
    if !cols.is_multiple_of(vals) {
        return Err(bad(
            "the GPU kernels need columns in whole 16-byte chunks (Q4: 32, Q8: 16, 16-bit: 8, f32: 4)",
        ));
    }
    if let Some(g) = format.group()
        && !(g.is_multiple_of(vals) && (g / vals).is_power_of_two())
    {
        return Err(bad(
            "the GPU kernels need the group size to be a power-of-two multiple of the values per 16-byte chunk (Q4: 32, 64, 128..; Q8: 16, 32, 64..)",
        ));
    }
    Ok(())
}

/// One compute kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `y[row] = W[row] . x`.
    Matvec(Fmt),
    /// `y[t][row] = W[row] . x[t]` for the tokens of a chunk (tiled: 4 rows x 4 tokens).
    Matmul(Fmt),
    /// Routed experts: `h = silu(gate x) * up x` for each expert.
    GateUp(Fmt),
    /// Routed experts: `y_e = w_e down_e h_e` for each expert.
    DownCombine(Fmt),
    /// `y = W[token]` decoded.
    Embed(Fmt),
    /// `y += alpha x`.
    Axpy,
    /// `y = silu(y) * x`.
    Swiglu,
    /// `y = sum_e x[e]` (the routed experts' weighted outputs).
    Combine,
    /// `y = rmsnorm(x) * weight`.
    RmsNorm,
    /// Per-head RMSNorm in place.
    RmsNormHeads,
    /// Rotate-half RoPE in place.
    Rope,
    /// Causal GQA for one query.
    Attention,
    /// `y *= sigmoid(x[i / group])` (attention output gate, shared-expert gate).
    SigmoidMul,
    /// Per-head RMSNorm times `silu(z)`, in place.
    GatedRmsNormHeads,
    /// Causal depthwise conv1d step + SiLU, with its state.
    Conv1d,
    /// One token of the gated delta rule.
    DeltaRule,
}

impl Kernel {
    /// Every kernel (every format of the format kernels).
    pub fn all() -> Vec<Kernel> {
        let mut v = Vec::new();
        for f in Fmt::ALL {
            v.extend([
                Kernel::Matvec(f),
                Kernel::Matmul(f),
                Kernel::GateUp(f),
                Kernel::DownCombine(f),
                Kernel::Embed(f),
            ]);
        }
        v.extend([
            Kernel::Axpy,
            Kernel::Swiglu,
            Kernel::Combine,
            Kernel::RmsNorm,
            Kernel::RmsNormHeads,
            Kernel::Rope,
            Kernel::Attention,
            Kernel::SigmoidMul,
            Kernel::GatedRmsNormHeads,
            Kernel::Conv1d,
            Kernel::DeltaRule,
        ]);
        v
    }

    /// The entry point.
    pub fn entry(self) -> &'static str {
        match self {
            Kernel::Matvec(_) => "matvec",
            Kernel::Matmul(_) => "matmul",
            Kernel::GateUp(_) => "gate_up",
            Kernel::DownCombine(_) => "down_combine",
            Kernel::Embed(_) => "embed",
            Kernel::Axpy => "axpy",
            Kernel::Swiglu => "swiglu",
            Kernel::Combine => "combine",
            Kernel::RmsNorm => "rms_norm",
            Kernel::RmsNormHeads => "rms_norm_heads",
            Kernel::Rope => "rope",
            Kernel::Attention => "attention",
            Kernel::SigmoidMul => "sigmoid_mul",
            Kernel::GatedRmsNormHeads => "gated_rms_norm_heads",
            Kernel::Conv1d => "conv1d_silu_step",
            Kernel::DeltaRule => "gated_delta_step",
        }
    }

    /// The complete WGSL module.
    pub fn source(self) -> String {
        match self {
            Kernel::Matvec(f) => format!("{MATVEC}\n{}", f.wgsl()),
            Kernel::Matmul(f) => format!("{MATMUL}\n{}", f.wgsl()),
            Kernel::GateUp(f) | Kernel::DownCombine(f) => format!("{EXPERTS}\n{}", f.wgsl()),
            Kernel::Embed(f) => format!("{EMBED}\n{}", f.wgsl()),
            Kernel::Axpy | Kernel::Swiglu | Kernel::Combine | Kernel::SigmoidMul => {
                ELEMENTWISE.to_string()
            }
            Kernel::RmsNorm | Kernel::RmsNormHeads | Kernel::GatedRmsNormHeads => {
                RMS_NORM.to_string()
            }
            Kernel::Rope => ROPE.to_string(),
            Kernel::Attention => ATTENTION.to_string(),
            Kernel::Conv1d => CONV1D.to_string(),
            Kernel::DeltaRule => DELTA_RULE.to_string(),
        }
    }

    /// A readable name, e.g. `matvec-q4`.
    pub fn name(self) -> String {
        match self {
            Kernel::Matvec(f)
            | Kernel::Matmul(f)
            | Kernel::GateUp(f)
            | Kernel::DownCombine(f)
            | Kernel::Embed(f) => format!("{}-{}", self.entry(), f.marker()),
            _ => self.entry().to_string(),
        }
    }
}

/// What a kernel binds at one binding index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A read-only storage buffer.
    Read,
    /// A read-write storage buffer.
    ReadWrite,
    /// The params uniform, an item of the per-submission arena (dynamic offset).
    Params,
    /// A small read-only table, an item of the arena (dynamic offset).
    Table,
}

impl Kernel {
    /// The kernel's bindings, by binding index (the WGSL declares exactly these).
    pub(crate) fn slots(self) -> Vec<(u32, Slot)> {
        use Slot::*;
        let with_scales = |f: Fmt, mut v: Vec<(u32, Slot)>| {
            if f.quantized() {
                v.push((5, Read));
            }
            v
        };
        match self {
            Kernel::Matvec(f) | Kernel::Matmul(f) => {
                with_scales(f, vec![(0, Read), (1, Read), (2, ReadWrite), (3, Params)])
            }
            Kernel::GateUp(f) | Kernel::DownCombine(f) => with_scales(
                f,
                vec![
                    (0, Read),
                    (1, Read),
                    (2, ReadWrite),
                    (3, Params),
                    (4, Table),
                ],
            ),
            Kernel::Embed(f) => with_scales(f, vec![(0, Read), (2, ReadWrite), (3, Params)]),
            Kernel::Axpy | Kernel::Swiglu | Kernel::Combine | Kernel::SigmoidMul => {
                vec![(0, ReadWrite), (1, Read), (2, Params)]
            }
            Kernel::RmsNorm | Kernel::GatedRmsNormHeads => {
                vec![(0, ReadWrite), (1, Read), (2, Read), (3, Params)]
            }
            Kernel::Conv1d => vec![(0, ReadWrite), (1, ReadWrite), (2, Read), (3, Params)],
            Kernel::DeltaRule => vec![
                (0, Read),
                (1, Read),
                (2, Read),
                (3, ReadWrite),
                (4, ReadWrite),
                (5, Params),
            ],
            Kernel::RmsNormHeads => vec![(0, ReadWrite), (2, Read), (3, Params)],
            Kernel::Rope => vec![(0, ReadWrite), (1, Table), (2, Params)],
            Kernel::Attention => vec![
                (0, Read),
                (1, Read),
                (2, Read),
                (3, ReadWrite),
                (4, ReadWrite),
                (5, Params),
            ],
        }
    }
}

/// A compiled kernel and the layout of its bind group.
#[derive(Clone)]
pub(crate) struct Compiled {
    pub pipeline: ::wgpu::ComputePipeline,
    pub layout: ::wgpu::BindGroupLayout,
}

/// Compiled pipelines, built on first use, with explicit bind group layouts (params and tables
/// at dynamic offsets, so one bind group serves every dispatch over the same buffers).
#[derive(Default)]
pub(crate) struct Pipelines {
    cache: Mutex<HashMap<Kernel, Compiled>>,
}

impl Pipelines {
    /// The pipeline of `kernel` (compiled now if it is the first use).
    pub fn get(&self, device: &::wgpu::Device, kernel: Kernel) -> Compiled {
        self.cache
            .lock()
            .entry(kernel)
            .or_insert_with(|| compile(device, kernel))
            .clone()
    }
}

fn compile(device: &::wgpu::Device, kernel: Kernel) -> Compiled {
    let name = kernel.name();
    let entries: Vec<::wgpu::BindGroupLayoutEntry> = kernel
        .slots()
        .into_iter()
        .map(|(binding, slot)| ::wgpu::BindGroupLayoutEntry {
            binding,
            visibility: ::wgpu::ShaderStages::COMPUTE,
            ty: ::wgpu::BindingType::Buffer {
                ty: match slot {
                    Slot::Params => ::wgpu::BufferBindingType::Uniform,
                    Slot::Read | Slot::Table => {
                        ::wgpu::BufferBindingType::Storage { read_only: true }
                    }
                    Slot::ReadWrite => ::wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: matches!(slot, Slot::Params | Slot::Table),
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&::wgpu::BindGroupLayoutDescriptor {
        label: Some(&name),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&::wgpu::PipelineLayoutDescriptor {
        label: Some(&name),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(::wgpu::ShaderModuleDescriptor {
        label: Some(&name),
        source: ::wgpu::ShaderSource::Wgsl(kernel.source().into()),
    });
    let pipeline = device.create_compute_pipeline(&::wgpu::ComputePipelineDescriptor {
        label: Some(&name),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(kernel.entry()),
        compilation_options: Default::default(),
        cache: None,
    });
    Compiled { pipeline, layout }
}
