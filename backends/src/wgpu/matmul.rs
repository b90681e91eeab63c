//! The row ops on the GPU: a weight times every token of a prompt chunk in one tiled dispatch
//! per row block (`shaders/matmul.wgsl`: 4 rows x 4 tokens per slice, each weight chunk loaded
//! and decoded once for the 4 tokens), instead of one matvec per token.

use super::kernels::{Fmt, Kernel, check_gpu_dims};
use super::record::{Bind, grid, to_u32};
use super::tensor::{GpuTensor, GpuWeight, MatRef};
use super::{State, WgpuBackend};
use crate::backend::{ComputeBackend, WeightView};
use crate::checks::check_rows;
use crate::error::Result;
use crate::quant::WeightFormat;

/// Rows per workgroup (8 slices of 4 rows) and tokens per workgroup (its z index).
const ROWS_PER_GROUP: u32 = 32;
const TOKENS_PER_GROUP: u32 = 4;

/// The params of `matmul.wgsl`, field for field.
#[repr(C)]
struct MatmulParams {
    rows: u32,
    cols: u32,
    group: u32,
    gshift: u32,
    /// data, scales, biases (vec4 index, f16 indices), unused.
    mat: [u32; 4],
    /// Tokens.
    n: u32,
    /// First output row of this row block.
    y_off: u32,
    /// Output elements per token (all rows of the weight).
    out_stride: u32,
    pad: u32,
}

impl MatmulParams {
    fn bytes(&self) -> Vec<u8> {
        let [d, s, b, z] = self.mat;
        let w = [
            self.rows,
            self.cols,
            self.group,
            self.gshift,
            d,
            s,
            b,
            z,
            self.n,
            self.y_off,
            self.out_stride,
            self.pad,
        ];
        w.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// One row block of a weight: where it is and which output rows it fills.
struct Block<'a> {
    buf: Bind<'a>,
    mat: MatRef,
    rows: usize,
    row0: usize,
}

impl WgpuBackend {
    /// Records `out[t][row0 + r] = W[r] . x[t]` for the `b.rows` rows of one block and `n`
    /// tokens; `total_rows` is the output's row stride.
    #[allow(clippy::too_many_arguments)]
    fn matmul_at(
        &self,
        st: &mut State,
        b: Block<'_>,
        format: WeightFormat,
        cols: usize,
        x: &GpuTensor,
        n: usize,
        out: &GpuTensor,
        total_rows: usize,
    ) -> Result<()> {
        let fmt = Fmt::of(format);
        let params = MatmulParams {
            rows: to_u32("matmul", "rows", b.rows)?,
            cols: to_u32("matmul", "cols", cols)?,
            group: format.group().unwrap_or(0) as u32,
            gshift: fmt.group_shift(format),
            mat: [b.mat.data, b.mat.scales, b.mat.biases, 0],
            n: to_u32("matmul", "tokens", n)?,
            y_off: to_u32("matmul", "row offset", b.row0)?,
            out_stride: to_u32("matmul", "rows", total_rows)?,
            pad: 0,
        };
        let p = self.arena_item(st, &params.bytes());
        let (gx, gy) = grid(params.rows.div_ceil(ROWS_PER_GROUP));
        let gz = params.n.div_ceil(TOKENS_PER_GROUP);
        let mut bindings = vec![
            (0, b.buf),
            (1, Bind::Buf(&x.buf)),
            (2, Bind::Buf(&out.buf)),
            (3, p),
        ];
        if fmt.quantized() {
            bindings.push((5, b.buf));
        }
        self.dispatch(st, Kernel::Matmul(fmt), &bindings, (gx, gy, gz));
        Ok(())
    }

    /// [`ComputeBackend::matmul`]: one dispatch per row block of the resident weight.
    pub(super) fn matmul_resident(
        &self,
        w: &GpuWeight,
        x: &GpuTensor,
        n: usize,
        out: &GpuTensor,
    ) -> Result<()> {
        let l = w.layout;
        check_rows("matmul", "x", n, l.cols, x.len)?;
        check_rows("matmul", "out", n, l.rows, out.len)?;
        if n == 0 {
            return Ok(());
        }
        let mut st = self.state.lock();
        for b in &w.blocks {
            let block = Block {
                buf: Bind::Buf(&b.buf),
                mat: b.mat,
                rows: b.rows,
                row0: b.row0,
            };
            self.matmul_at(&mut st, block, l.format, l.cols, x, n, out, l.rows)?;
        }
        Ok(())
    }

    /// [`ComputeBackend::matmul_bytes`]: the bytes in a buffer for this dispatch (split into
    /// row blocks like a resident weight when larger than one binding).
    pub(super) fn matmul_view(
        &self,
        w: WeightView<'_>,
        x: &GpuTensor,
        n: usize,
        out: &GpuTensor,
    ) -> Result<()> {
        let l = *w.layout();
        check_rows("matmul_bytes", "x", n, l.cols, x.len)?;
        check_rows("matmul_bytes", "out", n, l.rows, out.len)?;
        check_gpu_dims(l.format, l.rows, l.cols)?;
        if n == 0 {
            return Ok(());
        }
        if l.total as u64 > self.gpu.info.max_binding {
            let tmp = self.load_weight(w.bytes(), l.rows, l.cols, l.format)?;
            return self.matmul_resident(&tmp, x, n, out);
        }
        let buf = self.storage(w.bytes());
        let mut st = self.state.lock();
        let block = Block {
            buf: Bind::Temp(&buf),
            mat: MatRef::at(0, &l)?,
            rows: l.rows,
            row0: 0,
        };
        self.matmul_at(&mut st, block, l.format, l.cols, x, n, out, l.rows)
    }
}
