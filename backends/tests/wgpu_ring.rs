//! wgpu-specific behaviour: weights split across bindings, the expert ring (reuse of slots
//! that queued commands still read, staging ahead, counters), and refusals.

#![cfg(feature = "wgpu")]

mod gpu;

use flashmoe_backends::quant::{WeightFormat, quantize};
use flashmoe_backends::wgpu::WgpuConfig;
use flashmoe_backends::{
    ComputeBackend, CpuBackend, ExpertId, ExpertScratch, RoutedExpert, WeightView,
};

fn vals(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((((i + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0) * 0.3)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn weights_larger_than_a_binding_are_split_into_row_blocks() {
    let Some(be) = gpu::backend_with(&WgpuConfig {
        max_binding: Some(64 << 10),
        ..WgpuConfig::default()
    }) else {
        return;
    };
    // The GPU computes with f32 activations: compare the CPU's same maths.
    let cpu = CpuBackend::new().with_activations(flashmoe_backends::Activations::F32);
    let (rows, cols) = (301, 512);
    for f in [WeightFormat::Bf16, WeightFormat::Q4_64, WeightFormat::Q8_64] {
        let bytes = quantize(&vals(rows * cols, 3), rows, cols, f).unwrap();
        assert!(
            bytes.len() > 64 << 10,
            "the test needs a weight over one binding"
        );
        let x = vals(cols, 5);
        let (wg, wc) = (
            be.load_weight(&bytes, rows, cols, f).unwrap(),
            cpu.load_weight(&bytes, rows, cols, f).unwrap(),
        );
        let (mut yg, mut yc) = (be.zeros(rows).unwrap(), cpu.zeros(rows).unwrap());
        be.matvec(&wg, &be.upload(&x).unwrap(), &mut yg).unwrap();
        cpu.matvec(&wc, &cpu.upload(&x).unwrap(), &mut yc).unwrap();
        let d = max_diff(&be.read(&yg).unwrap(), &cpu.read(&yc).unwrap());
        assert!(d < 1e-4, "{f:?}: split matvec differs from the CPU by {d}");
        // The last row lives in the last block.
        let (mut eg, mut ec) = (be.zeros(cols).unwrap(), cpu.zeros(cols).unwrap());
        be.embedding(&wg, (rows - 1) as u32, &mut eg).unwrap();
        cpu.embedding(&wc, (rows - 1) as u32, &mut ec).unwrap();
        assert_eq!(
            be.read(&eg).unwrap(),
            cpu.read(&ec).unwrap(),
            "{f:?}: last row"
        );
    }
}

struct Records {
    h: usize,
    i: usize,
    recs: Vec<[Vec<u8>; 3]>,
}

impl Records {
    fn new(n: usize, h: usize, i: usize) -> Self {
        let f = WeightFormat::Q4_64;
        let recs = (0..n)
            .map(|e| {
                [
                    quantize(&vals(i * h, 10 * e + 1), i, h, f).unwrap(),
                    quantize(&vals(i * h, 10 * e + 2), i, h, f).unwrap(),
                    quantize(&vals(h * i, 10 * e + 3), h, i, f).unwrap(),
                ]
            })
            .collect();
        Self { h, i, recs }
    }

    fn routed(&self, e: usize, combine: f32) -> RoutedExpert<'_> {
        let f = WeightFormat::Q4_64;
        let [g, u, d] = &self.recs[e];
        RoutedExpert {
            id: ExpertId {
                layer: 0,
                expert: e as u32,
            },
            weights: [
                WeightView::new(g, self.i, self.h, f).unwrap(),
                WeightView::new(u, self.i, self.h, f).unwrap(),
                WeightView::new(d, self.h, self.i, f).unwrap(),
            ],
            combine,
        }
    }

    /// Scratch tensors of this geometry on `be`.
    fn scratch<B: ComputeBackend>(&self, be: &B) -> ExpertScratch<B::Tensor> {
        ExpertScratch {
            h1: be.zeros(self.i).unwrap(),
            h2: be.zeros(self.i).unwrap(),
            out: be.zeros(self.h).unwrap(),
        }
    }

    fn slot_bytes(&self) -> u64 {
        self.recs[0]
            .iter()
            .map(|t| (t.len() as u64).div_ceil(256) * 256)
            .sum()
    }
}

/// Many layers' worth of experts recorded back to back on a 3-slot ring, read only at the
/// end: slots are rewritten while earlier commands that read them are still unsubmitted, so
/// every result is right only if the ring submits those commands before overwriting.
#[test]
fn reused_slots_never_change_queued_results() {
    let r = Records::new(6, 128, 64);
    let Some(be) = gpu::backend_with(&WgpuConfig {
        expert_ring_bytes: Some(3 * r.slot_bytes()),
        ..WgpuConfig::default()
    }) else {
        return;
    };
    // The GPU computes with f32 activations: compare the CPU's same maths.
    let cpu = CpuBackend::new().with_activations(flashmoe_backends::Activations::F32);
    let x = vals(r.h, 77);
    let (xg, xc) = (be.upload(&x).unwrap(), cpu.upload(&x).unwrap());
    let pairs = [(0, 1), (2, 3), (4, 5), (1, 0), (3, 5), (2, 4), (0, 5)];
    let mut outs = Vec::new();
    let mut sg = r.scratch(&be);
    for &(a, b) in &pairs {
        let mut out = be.zeros(r.h).unwrap();
        be.moe_experts(
            &[r.routed(a, 0.7), r.routed(b, 0.3)],
            &xg,
            &mut sg,
            &mut out,
        )
        .unwrap();
        outs.push(out);
    }
    let mut sc = r.scratch(&cpu);
    for (&(a, b), out) in pairs.iter().zip(&outs) {
        let mut want = cpu.zeros(r.h).unwrap();
        cpu.moe_experts(
            &[r.routed(a, 0.7), r.routed(b, 0.3)],
            &xc,
            &mut sc,
            &mut want,
        )
        .unwrap();
        let d = max_diff(&be.read(out).unwrap(), &cpu.read(&want).unwrap());
        assert!(d < 1e-4, "experts ({a}, {b}): differs from the CPU by {d}");
    }
    let s = be.stats().ring;
    assert_eq!(s.slots, 3);
    assert_eq!(s.resident_hits + s.demand_uploads, 2 * pairs.len() as u64);
    assert!(
        s.demand_uploads > 3,
        "the ring must have reused slots: {s:?}"
    );
}

/// A ring larger than one binding is several buffers: a layer whose experts lie in different
/// buffers gives the CPU's result, and bit for bit what a one-buffer ring gives (the sum
/// runs in routing order either way).
#[test]
fn a_ring_over_several_buffers_gives_the_one_buffer_results() {
    let r = Records::new(6, 128, 64);
    let split = WgpuConfig {
        expert_ring_bytes: Some(6 * r.slot_bytes()),
        max_binding: Some(2 * r.slot_bytes()),
        ..WgpuConfig::default()
    };
    let one = WgpuConfig {
        expert_ring_bytes: Some(6 * r.slot_bytes()),
        ..WgpuConfig::default()
    };
    let (Some(be), Some(be1)) = (gpu::backend_with(&split), gpu::backend_with(&one)) else {
        return;
    };
    let cpu = CpuBackend::new().with_activations(flashmoe_backends::Activations::F32);
    let x = vals(r.h, 9);
    let layers: [&[usize]; 3] = [&[0, 1, 2, 3], &[4, 5, 0, 2], &[3, 1, 5, 4]];
    for ids in layers {
        let routed: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(rank, &e)| r.routed(e, 0.4 - 0.1 * rank as f32))
            .collect();
        let run = |b: &flashmoe_backends::wgpu::WgpuBackend| {
            let mut out = b.zeros(r.h).unwrap();
            b.moe_experts(&routed, &b.upload(&x).unwrap(), &mut r.scratch(b), &mut out)
                .unwrap();
            b.read(&out).unwrap()
        };
        let (got, got1) = (run(&be), run(&be1));
        let mut want = cpu.zeros(r.h).unwrap();
        cpu.moe_experts(
            &routed,
            &cpu.upload(&x).unwrap(),
            &mut r.scratch(&cpu),
            &mut want,
        )
        .unwrap();
        let d = max_diff(&got, &cpu.read(&want).unwrap());
        assert!(d < 1e-4, "experts {ids:?}: differs from the CPU by {d}");
        assert_eq!(got, got1, "experts {ids:?}: several buffers vs one");
    }
    let s = be.stats().ring;
    assert_eq!(s.slots, 6);
    assert_eq!(s.demand_uploads, 6, "every record uploaded once: {s:?}");
}

#[test]
fn staged_records_are_used_without_another_upload() {
    let r = Records::new(3, 128, 64);
    let Some(be) = gpu::backend_with(&WgpuConfig {
        expert_ring_bytes: Some(8 * r.slot_bytes()),
        ..WgpuConfig::default()
    }) else {
        return;
    };
    assert!(be.stages_experts());
    let e0 = r.routed(0, 1.0);
    assert!(
        be.stage_expert(e0.id, e0.weights).unwrap(),
        "first staging uploads"
    );
    assert!(
        !be.stage_expert(e0.id, e0.weights).unwrap(),
        "already resident"
    );
    let x = be.upload(&vals(r.h, 1)).unwrap();
    let mut s = r.scratch(&be);
    let mut out = be.zeros(r.h).unwrap();
    be.moe_experts(&[e0, r.routed(1, 0.5)], &x, &mut s, &mut out)
        .unwrap();
    be.sync().unwrap();
    let st = be.stats().ring;
    assert_eq!(
        (
            st.staged_uploads,
            st.staged_hits,
            st.demand_uploads,
            st.resident_hits
        ),
        (1, 1, 1, 1),
        "{st:?}"
    );
    assert_eq!(
        st.upload_bytes,
        2 * r.recs[0].iter().map(Vec::len).sum::<usize>() as u64
    );
}

#[test]
fn refusals_are_errors_not_panics() {
    let r = Records::new(3, 128, 64);
    let Some(be) = gpu::backend_with(&WgpuConfig {
        expert_ring_bytes: Some(2 * r.slot_bytes()),
        ..WgpuConfig::default()
    }) else {
        return;
    };
    let x = be.upload(&vals(r.h, 1)).unwrap();
    let mut s = r.scratch(&be);
    let mut out = be.zeros(r.h).unwrap();
    let three = [r.routed(0, 0.4), r.routed(1, 0.3), r.routed(2, 0.3)];
    let err = be.moe_experts(&three, &x, &mut s, &mut out).unwrap_err();
    assert!(err.to_string().contains("slots"), "{err}");
    // Q4 rows must be whole 16-byte chunks (32 columns) on the GPU.
    let f = WeightFormat::Q4 { group: 16 };
    let bytes = quantize(&vals(4 * 48, 1), 4, 48, f).unwrap();
    let Err(err) = be.load_weight(&bytes, 4, 48, f) else {
        panic!("a Q4 matrix of 48 columns was accepted");
    };
    assert!(err.to_string().contains("16-byte chunks"), "{err}");
    // A wrong-length output is a shape error.
    assert!(
        be.moe_experts(&three[..1], &x, &mut s, &mut be.zeros(3).unwrap())
            .is_err()
    );
}
