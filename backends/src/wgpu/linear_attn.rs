//! Commands of the hybrid (Qwen3.5 / Qwen3-Next) layers' ops, after the operand checks in
//! `ops`: partial RoPE, sigmoid gates, the conv1d step, the gated delta rule, the gated norm.

use super::kernels::Kernel;
use super::record::{Bind, to_u32, words};
use super::tensor::GpuTensor;
use super::{WG, WgpuBackend};
use crate::backend::DeltaShape;
use crate::error::{BackendError, Result};

/// Largest key head the delta-rule kernel holds in workgroup memory.
const MAX_KEY_DIM: usize = 256;

impl WgpuBackend {
    /// Rotate-half RoPE over the first `rot` dims of each head.
    pub(super) fn rope_dims(
        &self,
        x: &mut GpuTensor,
        n_heads: usize,
        head_dim: usize,
        rot: usize,
        pos: usize,
        theta: f32,
    ) -> Result<()> {
        let (cos, sin) = crate::cpu::rope_table(rot, pos, theta);
        let table: Vec<f32> = cos.into_iter().chain(sin).collect();
        let mut st = self.state.lock();
        let table = self.arena_item(&mut st, bytemuck::cast_slice(&table));
        let p = self.arena_item(
            &mut st,
            &words(&[n_heads as u32, head_dim as u32, rot as u32, 0]),
        );
        self.dispatch(
            &mut st,
            Kernel::Rope,
            &[(0, Bind::Buf(&x.buf)), (1, table), (2, p)],
            (((n_heads * rot / 2) as u32).div_ceil(WG).max(1), 1, 1),
        );
        Ok(())
    }

    /// `x[i] *= sigmoid(gate[i / (len(x) / len(gate))])`.
    pub(super) fn sigmoid_gate(&self, x: &mut GpuTensor, gate: &GpuTensor) -> Result<()> {
        let n = to_u32("sigmoid_mul", "length", x.len)?;
        let group = (x.len / gate.len) as u32;
        let mut st = self.state.lock();
        let p = self.arena_item(&mut st, &words(&[n, 0, group, 0]));
        self.dispatch(
            &mut st,
            Kernel::SigmoidMul,
            &[(0, Bind::Buf(&x.buf)), (1, Bind::Buf(&gate.buf)), (2, p)],
            (n.div_ceil(WG).max(1), 1, 1),
        );
        Ok(())
    }

    /// Causal conv1d step + SiLU in place.
    pub(super) fn conv1d(
        &self,
        x: &mut GpuTensor,
        state: &mut GpuTensor,
        weight: &GpuTensor,
        kernel: usize,
    ) -> Result<()> {
        let n = to_u32("conv1d_silu_step", "channels", x.len)?;
        let mut st = self.state.lock();
        let p = self.arena_item(&mut st, &words(&[n, kernel as u32, 0, 0]));
        self.dispatch(
            &mut st,
            Kernel::Conv1d,
            &[
                (0, Bind::Buf(&x.buf)),
                (1, Bind::Buf(&state.buf)),
                (2, Bind::Buf(&weight.buf)),
                (3, p),
            ],
            (n.div_ceil(WG).max(1), 1, 1),
        );
        Ok(())
    }

    /// One token of the gated delta rule: one workgroup per value head.
    pub(super) fn delta_rule(
        &self,
        qkv: &GpuTensor,
        ba: &GpuTensor,
        decay: &GpuTensor,
        state: &mut GpuTensor,
        shape: DeltaShape,
        out: &mut GpuTensor,
    ) -> Result<()> {
        if shape.key_dim > MAX_KEY_DIM {
            return Err(BackendError::OutOfRange {
                op: "gated_delta_step",
                what: "key head dim (the GPU kernel holds at most 256)",
                index: shape.key_dim,
                limit: MAX_KEY_DIM + 1,
            });
        }
        let mut st = self.state.lock();
        let p = self.arena_item(
            &mut st,
            &words(&[
                shape.key_heads as u32,
                shape.value_heads as u32,
                shape.key_dim as u32,
                shape.value_dim as u32,
            ]),
        );
        self.dispatch(
            &mut st,
            Kernel::DeltaRule,
            &[
                (0, Bind::Buf(&qkv.buf)),
                (1, Bind::Buf(&ba.buf)),
                (2, Bind::Buf(&decay.buf)),
                (3, Bind::Buf(&state.buf)),
                (4, Bind::Buf(&out.buf)),
                (5, p),
            ],
            (
                to_u32("gated_delta_step", "value heads", shape.value_heads)?,
                1,
                1,
            ),
        );
        Ok(())
    }

    /// Gated RMSNorm per head in place.
    pub(super) fn gated_norm(
        &self,
        x: &mut GpuTensor,
        z: &GpuTensor,
        weight: &GpuTensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        let mut st = self.state.lock();
        let p = self.arena_item(&mut st, &words(&[head_dim as u32, eps.to_bits(), 0, 0]));
        self.dispatch(
            &mut st,
            Kernel::GatedRmsNormHeads,
            &[
                (0, Bind::Buf(&x.buf)),
                (1, Bind::Buf(&z.buf)),
                (2, Bind::Buf(&weight.buf)),
                (3, p),
            ],
            (
                to_u32("gated_rms_norm_heads", "heads", x.len / head_dim)?,
                1,
                1,
            ),
        );
        Ok(())
    }
}
