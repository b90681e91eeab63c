//! The routed experts on the GPU: the expert ring's placement and uploads, staging ahead,
//! and the batched expert dispatches.

use super::kernels::{Fmt, Kernel, check_gpu_dims};
use super::record::{Bind, grown, to_u32, words};
use super::ring::ExpertRing;
use super::tensor::{GpuTensor, tensor_bytes};
use super::{DOWN_ROWS_PER_GROUP, GATE_UP_ROWS_PER_GROUP, State, WG, WgpuBackend};
use crate::backend::{ComputeBackend, ExpertId, RoutedExpert, WeightView};
use crate::error::{BackendError, Result, check_len};
use crate::quant::WeightFormat;
use std::time::Instant;

impl WgpuBackend {
    /// The expert ring, created on first use with slots shaped like `views`; records of
    /// another shape (another model, another format) replace it, forgetting what it held.
    fn ring<'s>(
        &self,
        st: &'s mut State,
        views: &[WeightView<'_>; 3],
    ) -> Result<&'s mut ExpertRing> {
        let fits = st.ring.as_ref().map(|r| r.check_shape(views).is_ok());
        if fits != Some(true) {
            let mut ring = ExpertRing::new(
                &self.gpu.device,
                views,
                self.ring_bytes,
                self.gpu.info.max_binding,
            )?;
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
        let buf = ring.buffer(ring.buffer_of(placed.slot)).clone();
        let t = Instant::now();
        for ((offset, len), v) in writes.iter().zip(views) {
            let bytes = v.bytes();
            debug_assert_eq!(bytes.len(), *len);
            if bytes.len().is_multiple_of(4) {
                self.gpu.queue.write_buffer(&buf, *offset, bytes);
            } else {
                let mut padded = bytes.to_vec();
                padded.resize(bytes.len().div_ceil(4) * 4, 0);
                self.gpu.queue.write_buffer(&buf, *offset, &padded);
            }
            ring.stats.upload_bytes += bytes.len() as u64;
        }
        ring.stats.upload_ns += t.elapsed().as_nanos() as u64;
        Ok((placed.slot, true))
    }
    /// `out = sum_i combine_i * expert_i(x)`: places every routed record in the ring
    /// (uploading those not resident) and records gate_up, down_combine and combine.
    pub(super) fn run_experts(
        &self,
        experts: &[RoutedExpert<'_>],
        x: &GpuTensor,
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
        // One table per ring buffer the experts lie in (in routing order within each); an
        // entry's `gate.w` is the expert's index `e`, which places its rows in `h` and `parts`,
        // so the sum below runs in routing order whatever the buffers.
        let mut groups: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, (e, &slot)) in experts.iter().zip(&slots).enumerate() {
            ring.mark_read(slot, generation);
            let b = ring.buffer_of(slot);
            let at = match groups.iter().position(|(g, _)| *g == b) {
                Some(at) => at,
                None => {
                    groups.push((b, Vec::with_capacity(16 * experts.len())));
                    groups.len() - 1
                }
            };
            let table = &mut groups[at].1;
            let [gate, up, down] = ring.mats(slot)?;
            table.extend([gate.data, gate.scales, gate.biases, i as u32]);
            for m in [up, down] {
                table.extend([m.data, m.scales, m.biases, 0]);
            }
            table.extend([e.combine.to_bits(), 0, 0, 0]);
        }
        let groups: Vec<(::wgpu::Buffer, Vec<u32>)> = groups
            .into_iter()
            .map(|(b, t)| (ring.buffer(b).clone(), t))
            .collect();
        let n = to_u32("moe_experts", "experts", experts.len())?;
        let h = grown(
            &mut st.moe_h,
            &self.gpu.device,
            tensor_bytes(experts.len() * inter),
            ::wgpu::BufferUsages::STORAGE,
            "expert activations",
        );
        let parts = grown(
            &mut st.moe_parts,
            &self.gpu.device,
            tensor_bytes(experts.len() * hidden),
            ::wgpu::BufferUsages::STORAGE,
            "expert outputs",
        );
        let fmt = Fmt::of(format);
        let (group, shift) = (format.group().unwrap_or(0) as u32, fmt.group_shift(format));
        let (inter32, hidden32) = (inter as u32, hidden as u32);
        for (ring_buf, table) in &groups {
            let in_group = to_u32("moe_experts", "experts", table.len() / 16)?;
            let table = self.arena_item(&mut st, bytemuck::cast_slice(table));
            let p_up = self.arena_item(
                &mut st,
                &words(&[inter32, hidden32, group, shift, in_group, 0, 0, 0]),
            );
            let p_down = self.arena_item(
                &mut st,
                &words(&[hidden32, inter32, group, shift, in_group, 0, 0, 0]),
            );
            let ring = Bind::Buf(ring_buf);
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
                (2, Bind::Buf(&parts)),
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
                (inter32.div_ceil(GATE_UP_ROWS_PER_GROUP), in_group, 1),
            );
            self.dispatch(
                &mut st,
                Kernel::DownCombine(fmt),
                &down,
                (hidden32.div_ceil(DOWN_ROWS_PER_GROUP), in_group, 1),
            );
        }
        let p_sum = self.arena_item(&mut st, &words(&[hidden32, 0, n, 0]));
        self.dispatch(
            &mut st,
            Kernel::Combine,
            &[(0, Bind::Buf(&out.buf)), (1, Bind::Buf(&parts)), (2, p_sum)],
            (hidden32.div_ceil(WG), 1, 1),
        );
        Ok(())
    }

    /// Uploads `id`'s record ahead of use; whether it was uploaded (not already resident).
    pub(super) fn stage(&self, id: ExpertId, weights: [WeightView<'_>; 3]) -> Result<bool> {
        let hidden = weights[0].layout().cols;
        check_expert(&weights, hidden)?;
        let mut st = self.state.lock();
        // Hand the GPU what is recorded (the previous layer's experts, this layer's attention)
        // so that it computes while the host copies the record.
        self.flush(&mut st);
        Ok(self.place_expert(&mut st, id, &weights, &[], true)?.1)
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
