//! The routed experts of one token in one or two parallel regions instead of three per expert.
//!
//! With int8 activations and at least two experts per thread (the 30B geometry's 8 on 2
//! cores), **one region with an expert per task**: each task runs its expert whole (gate and
//! up, SwiGLU, the hidden vector quantized, down) on one thread, reading its record front to
//! back, and the calling thread then adds the outputs in expert order. Otherwise (few experts
//! for many threads, or f32 activations) **two regions split by rows**: region 1 computes every
//! expert's `gate x` and `up x` (one list of `k * 2 * inter` rows over the same activations,
//! quantized once); SwiGLU and the quantization of each expert's hidden vector run on the
//! calling thread; region 2 computes each output row as `sum_e combine_e * (down_e h_e)`, the
//! combine fused into the row. Either way the arithmetic is the same, op for op, as
//! [`crate::ComputeBackend::moe_experts`]'s default composition of matvecs, SwiGLU and axpy,
//! so the results are bit-identical (tested).

use super::block::ROWS;
use super::int8::{Isa, QuantizedX};
use super::matmul::{for_row_blocks, quant_rows};
use super::matvec::{Act, for_rows, prepare, row_dot};
use super::ops::swiglu;
use super::pool::Disjoint;
use crate::backend::RoutedExpert;
use std::cell::RefCell;

/// Reused buffers of the calling thread.
#[derive(Default)]
struct Scratch {
    /// `[k][gate | up][inter]`, then `[k][silu(gate) * up]` in the gate halves.
    h: Vec<f32>,
    /// Each expert's hidden vector quantized for `down_proj`.
    qh: Vec<QuantizedX>,
    /// `x` quantized for `gate_proj`/`up_proj`.
    qx: QuantizedX,
    /// `[k][out_len]`: each expert's `down h` (the expert-per-task path).
    y: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Whether [`moe_experts`] handles `experts`: every matrix in one format, gate and up
/// `[inter x x_len]`, down `[out_len x inter]`. Other batches take the generic path.
pub(crate) fn fits(experts: &[RoutedExpert<'_>], x_len: usize, out_len: usize) -> bool {
    let Some(first) = experts.first() else {
        return false;
    };
    let format = first.weights[0].layout().format;
    let inter = first.weights[0].layout().rows;
    experts.iter().all(|e| {
        let [g, u, d] = e.weights.map(|w| *w.layout());
        [g, u, d].iter().all(|l| l.format == format)
            && (g.rows, g.cols) == (inter, x_len)
            && (u.rows, u.cols) == (inter, x_len)
            && (d.rows, d.cols) == (out_len, inter)
    })
}

/// `out = sum_e combine_e * down_e(silu(gate_e x) * up_e x)`; the caller checked [`fits`].
/// `int8`: quantize the activations (as [`super::matvec::matvec`]).
pub(crate) fn moe_experts(
    isa: Isa,
    int8: bool,
    experts: &[RoutedExpert<'_>],
    x: &[f32],
    out: &mut [f32],
) {
    moe_experts_on(super::pool::threads(), isa, int8, experts, x, out)
}

/// [`moe_experts`] choosing its path as for `threads` threads (tests force either path).
fn moe_experts_on(
    threads: usize,
    isa: Isa,
    int8: bool,
    experts: &[RoutedExpert<'_>],
    x: &[f32],
    out: &mut [f32],
) {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => run(threads, isa, int8, experts, x, out, &mut s),
        // Re-entered on this thread (a nested parallel job): fresh buffers.
        Err(_) => run(threads, isa, int8, experts, x, out, &mut Scratch::default()),
    });
}

fn run(
    threads: usize,
    isa: Isa,
    int8: bool,
    experts: &[RoutedExpert<'_>],
    x: &[f32],
    out: &mut [f32],
    s: &mut Scratch,
) {
    let gl = *experts[0].weights[0].layout();
    let (format, inter, hidden) = (gl.format, gl.rows, gl.cols);
    let k = experts.len();
    s.h.resize(k * 2 * inter, 0.0);
    let quantized = int8 && prepare(format, x, &mut s.qx);
    // (`fits` already checked every down projection has `out.len()` rows.)
    if quantized && inter.is_multiple_of(ROWS) && k >= 2 * threads {
        return per_expert(isa, experts, out, s);
    }
    let act = Act {
        x,
        qx: quantized.then_some(&s.qx),
    };
    match act.qx {
        // Blocks of rows inside one matrix (the multi-row kernels).
        Some(qx) if inter.is_multiple_of(ROWS) => {
            let qx = std::slice::from_ref(qx);
            for_row_blocks(k * 2 * inter * hidden, hidden, 1, &mut s.h, |i, o| {
                let (e, m, r) = (i / (2 * inter), (i / inter) % 2, i % inter);
                let w = &experts[e].weights[m];
                quant_rows(isa, w.bytes(), w.layout(), qx, r, o)
            })
        }
        _ => for_rows(k * 2 * inter * hidden, hidden, &mut s.h, |i| {
            let (e, m, r) = (i / (2 * inter), (i / inter) % 2, i % inter);
            let w = &experts[e].weights[m];
            row_dot(isa, w.bytes(), w.layout(), act, r)
        }),
    }
    s.qh.resize_with(k, QuantizedX::default);
    for (e, pair) in s.h.chunks_exact_mut(2 * inter).enumerate() {
        let (gate, up) = pair.split_at_mut(inter);
        swiglu(gate, up);
        if quantized {
            prepare(format, gate, &mut s.qh[e]);
        }
    }
    let (h, qh) = (&s.h, &s.qh);
    if quantized {
        // Each block of output rows: every expert's down rows by the multi-row kernel, the
        // combine added in expert order (the per-row sum below, block-wise).
        for_row_blocks(k * hidden * inter, inter, 1, out, |r0, o| {
            let mut part = [0f32; ROWS];
            o.fill(0.0);
            for (e, ex) in experts.iter().enumerate() {
                let d = &ex.weights[2];
                let p = &mut part[..o.len()];
                quant_rows(
                    isa,
                    d.bytes(),
                    d.layout(),
                    std::slice::from_ref(&qh[e]),
                    r0,
                    p,
                );
                o.iter_mut()
                    .zip(p.iter())
                    .for_each(|(acc, v)| *acc += ex.combine * v);
            }
        });
        return;
    }
    for_rows(k * hidden * inter, inter, out, |r| {
        let mut acc = 0f32;
        for (e, ex) in experts.iter().enumerate() {
            let d = &ex.weights[2];
            let act = Act {
                x: &h[e * 2 * inter..e * 2 * inter + inter],
                qx: None,
            };
            acc += ex.combine * row_dot(isa, d.bytes(), d.layout(), act, r);
        }
        acc
    });
}

/// One task per expert (see the module doc): `s.qx` holds `x` quantized, `s.h` room for
/// `[k][gate | up]`.
fn per_expert(isa: Isa, experts: &[RoutedExpert<'_>], out: &mut [f32], s: &mut Scratch) {
    let (k, hidden) = (experts.len(), out.len());
    let inter = experts[0].weights[0].layout().rows;
    let format = experts[0].weights[0].layout().format;
    s.y.resize(k * hidden, 0.0);
    s.qh.resize_with(k, QuantizedX::default);
    let qx = std::slice::from_ref(&s.qx);
    let rows = |w: &crate::WeightView<'_>, qx: &[QuantizedX], o: &mut [f32]| {
        for (b, o) in o.chunks_mut(ROWS).enumerate() {
            quant_rows(isa, w.bytes(), w.layout(), qx, b * ROWS, o);
        }
    };
    let expert = |e: &RoutedExpert<'_>, h: &mut [f32], y: &mut [f32], qh: &mut QuantizedX| {
        let (gate, up) = h.split_at_mut(inter);
        rows(&e.weights[0], qx, gate);
        rows(&e.weights[1], qx, up);
        swiglu(gate, up);
        prepare(format, gate, qh);
        rows(&e.weights[2], std::slice::from_ref(qh), y);
    };
    let (h, y, qh) = (
        Disjoint::new(&mut s.h[..k * 2 * inter]),
        Disjoint::new(&mut s.y[..k * hidden]),
        Disjoint::new(&mut s.qh[..k]),
    );
    super::pool::run(k, |e| {
        // SAFETY: task `e` alone takes expert `e`'s ranges.
        let (h, y, qh) = unsafe {
            (
                h.range(e * 2 * inter..(e + 1) * 2 * inter),
                y.range(e * hidden..(e + 1) * hidden),
                &mut qh.range(e..e + 1)[0],
            )
        };
        expert(&experts[e], h, y, qh)
    });
    // The combine in expert order, as the row-split path adds it.
    out.fill(0.0);
    for (e, y) in experts.iter().zip(s.y.chunks_exact(hidden)) {
        out.iter_mut()
            .zip(y)
            .for_each(|(acc, v)| *acc += e.combine * v);
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::{ExpertId, ExpertScratch, RoutedExpert, WeightView};
    use crate::quant::{WeightFormat, quantize};
    use crate::{ComputeBackend, CpuBackend};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0) * 0.5)
            .collect()
    }

    /// The fused two-region path gives the same bits as one `expert_ffn` + `axpy` per expert
    /// (the trait's default composition), for quantized and float formats, and a batch whose
    /// formats differ takes the per-expert path.
    #[test]
    fn fused_experts_equal_the_default_composition() {
        let (hidden, inter, k) = (256usize, 192usize, 4usize);
        for be in [
            CpuBackend::new(),
            CpuBackend::new().with_activations(crate::Activations::F32),
        ] {
            let formats = [WeightFormat::Q4_64, WeightFormat::Q8_64, WeightFormat::Bf16];
            for (case, fmts) in [
                [formats[0]; 4],
                [formats[1]; 4],
                [formats[2]; 4],
                [formats[0], formats[1], formats[0], formats[2]],
            ]
            .iter()
            .enumerate()
            {
                let records: Vec<[Vec<u8>; 3]> = (0..k)
                    .map(|e| {
                        let f = fmts[e];
                        [
                            quantize(&values(inter * hidden, 3 * e), inter, hidden, f).unwrap(),
                            quantize(&values(inter * hidden, 3 * e + 1), inter, hidden, f).unwrap(),
                            quantize(&values(hidden * inter, 3 * e + 2), hidden, inter, f).unwrap(),
                        ]
                    })
                    .collect();
                let routed: Vec<RoutedExpert<'_>> = records
                    .iter()
                    .enumerate()
                    .map(|(e, r)| RoutedExpert {
                        id: ExpertId {
                            layer: 0,
                            expert: e as u32,
                        },
                        weights: [
                            WeightView::new(&r[0], inter, hidden, fmts[e]).unwrap(),
                            WeightView::new(&r[1], inter, hidden, fmts[e]).unwrap(),
                            WeightView::new(&r[2], hidden, inter, fmts[e]).unwrap(),
                        ],
                        combine: 0.1 + e as f32 * 0.2,
                    })
                    .collect();
                let x = be.upload(&values(hidden, 99)).unwrap();
                let z = |n| be.zeros(n).unwrap();
                let mut scratch = ExpertScratch {
                    h1: z(inter),
                    h2: z(inter),
                    out: z(hidden),
                };
                // 1 thread: an expert per task; 4 threads for 4 experts: split by rows.
                let fused: Vec<crate::cpu::CpuTensor> = [1usize, 4]
                    .iter()
                    .map(|&threads| {
                        let mut fused = z(hidden);
                        if !super::fits(&routed, hidden, hidden) {
                            let mut scratch = ExpertScratch {
                                h1: z(inter),
                                h2: z(inter),
                                out: z(hidden),
                            };
                            be.moe_experts(&routed, &x, &mut scratch, &mut fused)
                                .unwrap();
                            return fused;
                        }
                        super::moe_experts_on(
                            threads,
                            super::super::int8::Isa::detect(),
                            be.int8(),
                            &routed,
                            x.as_slice(),
                            &mut fused.0,
                        );
                        fused
                    })
                    .collect();
                let mut want = z(hidden);
                for e in &routed {
                    be.expert_ffn(
                        e.weights,
                        &x,
                        &mut scratch.h1,
                        &mut scratch.h2,
                        &mut scratch.out,
                    )
                    .unwrap();
                    be.axpy(&mut want, e.combine, &scratch.out).unwrap();
                }
                let bits = |t: &crate::cpu::CpuTensor| {
                    t.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                for (path, fused) in fused.iter().enumerate() {
                    assert_eq!(bits(fused), bits(&want), "case {case}, path {path}");
                    assert!(fused.as_slice().iter().any(|v| *v != 0.0), "case {case}");
                }
            }
        }
    }

    #[test]
    fn wrong_output_length_is_an_error() {
        let be = CpuBackend::new();
        let f = WeightFormat::Q4_64;
        let (hidden, inter) = (128usize, 64usize);
        let rec = [
            quantize(&values(inter * hidden, 1), inter, hidden, f).unwrap(),
            quantize(&values(hidden * inter, 2), hidden, inter, f).unwrap(),
        ];
        let routed = [RoutedExpert {
            id: ExpertId {
                layer: 0,
                expert: 0,
            },
            weights: [
                WeightView::new(&rec[0], inter, hidden, f).unwrap(),
                WeightView::new(&rec[0], inter, hidden, f).unwrap(),
                WeightView::new(&rec[1], hidden, inter, f).unwrap(),
            ],
            combine: 1.0,
        }];
        let x = be.upload(&values(hidden, 3)).unwrap();
        let z = |n| be.zeros(n).unwrap();
        let mut scratch = ExpertScratch {
            h1: z(inter),
            h2: z(inter),
            out: z(hidden),
        };
        let mut out = z(hidden + 1);
        assert!(be.moe_experts(&routed, &x, &mut scratch, &mut out).is_err());
    }
}
