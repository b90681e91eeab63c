//! Expert weights from outside the model: the expert record layout, the [`ExpertSource`] trait,
//! and [`InMemoryExperts`], a source packed from a checkpoint.
//!
//! # Expert record layout
//!
//! One expert of one layer is one contiguous byte record, all three tensors in one
//! [`WeightFormat`], each starting at a 64-byte aligned offset from the record start:
//!
//! | offset | tensor | shape |
//! |---|---|---|
//! | 0 | `gate_proj` (Mixtral `w1`) | `[inter x hidden]` |
//! | `align64(gate)` | `up_proj` (`w3`) | `[inter x hidden]` |
//! | `align64(up_offset + up)` | `down_proj` (`w2`) | `[hidden x inter]` |
//!
//! and the record length is rounded up to 64. Each tensor is laid out as in
//! [`flashmoe_backends::quant`] (row-major floats, or codes / f16 scales / f16 biases with
//! 64-byte aligned sections). `hidden` and `inter` come from the config; [`ExpertLayout::new`]
//! computes every offset, so a reader and a writer agree from the dims and format alone.

use crate::config::ModelConfig;
use crate::error::{BackendContext, EngineError, Result};
use crate::model::FamilyNames;
use crate::weights::Checkpoint;
use flashmoe_backends::WeightView;
use flashmoe_backends::quant::{MatrixLayout, WeightFormat, align_up, quantize};

/// Offsets of the three tensors inside one expert record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertLayout {
    /// Format of all three tensors.
    pub format: WeightFormat,
    /// Model width (`hidden_size`).
    pub hidden: usize,
    /// Expert intermediate size.
    pub inter: usize,
    /// `gate_proj` `[inter x hidden]`, at offset 0.
    pub gate: MatrixLayout,
    /// `up_proj` `[inter x hidden]`.
    pub up: MatrixLayout,
    /// `down_proj` `[hidden x inter]`.
    pub down: MatrixLayout,
    /// Offset of `up_proj`.
    pub up_offset: usize,
    /// Offset of `down_proj`.
    pub down_offset: usize,
    /// Bytes of one record (multiple of 64).
    pub record_len: usize,
}

impl ExpertLayout {
    /// The layout for `hidden`/`inter` dims in `format`.
    ///
    /// ```
    /// use flashmoe_engine::ExpertLayout;
    /// use flashmoe_backends::quant::WeightFormat;
    /// let l = ExpertLayout::new(256, 128, WeightFormat::Bf16).unwrap();
    /// assert_eq!((l.up_offset, l.down_offset, l.record_len), (65536, 131072, 196608));
    /// ```
    pub fn new(hidden: usize, inter: usize, format: WeightFormat) -> Result<Self> {
        let ctx = || format!("expert record layout [{hidden} x {inter}] in {format:?}");
        let gate = format.layout(inter, hidden).ctx(ctx)?;
        let up = gate;
        let down = format.layout(hidden, inter).ctx(ctx)?;
        let up_offset = align_up(gate.total);
        let down_offset = align_up(up_offset + up.total);
        let record_len = align_up(down_offset + down.total);
        Ok(Self {
            format,
            hidden,
            inter,
            gate,
            up,
            down,
            up_offset,
            down_offset,
            record_len,
        })
    }

    /// The layout of `cfg`'s experts in `format`.
    pub fn for_config(cfg: &ModelConfig, format: WeightFormat) -> Result<Self> {
        Self::new(cfg.hidden_size, cfg.expert_intermediate, format)
    }

    /// Views of (gate, up, down) inside `record`, checking its length.
    pub fn views<'a>(&self, record: &'a [u8]) -> flashmoe_backends::Result<[WeightView<'a>; 3]> {
        if record.len() != self.record_len {
            return Err(flashmoe_backends::BackendError::Shape {
                op: "expert record",
                what: "record bytes",
                expected: self.record_len,
                got: record.len(),
            });
        }
        let (g, u, d) = (&self.gate, &self.up, &self.down);
        Ok([
            WeightView::new(&record[..g.total], g.rows, g.cols, self.format)?,
            WeightView::new(
                &record[self.up_offset..self.up_offset + u.total],
                u.rows,
                u.cols,
                self.format,
            )?,
            WeightView::new(
                &record[self.down_offset..self.down_offset + d.total],
                d.rows,
                d.cols,
                self.format,
            )?,
        ])
    }

    /// Packs one expert from row-major f32 tensors into a record.
    pub fn pack(
        &self,
        gate: &[f32],
        up: &[f32],
        down: &[f32],
    ) -> flashmoe_backends::Result<Vec<u8>> {
        let mut rec = vec![0u8; self.record_len];
        let parts = [
            (gate, &self.gate, 0),
            (up, &self.up, self.up_offset),
            (down, &self.down, self.down_offset),
        ];
        for (w, l, off) in parts {
            let bytes = quantize(w, l.rows, l.cols, self.format)?;
            rec[off..off + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(rec)
    }
}

/// Records held by something that must stay alive while they are read (e.g. an io-sched
/// [`io_sched::ExpertGuard`], whose pins keep the cache slots from being reused).
pub trait HeldRecords: Send {
    /// Number of records.
    fn count(&self) -> usize;
    /// Record `i` (`i < count()`).
    fn record(&self, i: usize) -> &[u8];
}

impl HeldRecords for io_sched::ExpertGuard {
    fn count(&self) -> usize {
        self.len()
    }
    fn record(&self, i: usize) -> &[u8] {
        self.bytes(i)
    }
}

/// The records of the experts asked for, in the order asked.
///
/// Either plain borrowed slices, or records owned by a holder (such as an io-sched guard)
/// that lives exactly as long as the batch: the records can only be reached through the
/// batch, so no record outlives the pins that protect it.
pub struct ExpertBatch<'a> {
    inner: Records<'a>,
}

enum Records<'a> {
    Slices(Vec<&'a [u8]>),
    Held(Box<dyn HeldRecords + 'a>),
}

impl<'a> ExpertBatch<'a> {
    /// A batch of borrowed records.
    pub fn slices(records: Vec<&'a [u8]>) -> Self {
        Self {
            inner: Records::Slices(records),
        }
    }

    /// A batch whose records live in `holder` (dropped with the batch).
    pub fn held(holder: impl HeldRecords + 'a) -> Self {
        Self {
            inner: Records::Held(Box::new(holder)),
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        match &self.inner {
            Records::Slices(v) => v.len(),
            Records::Held(h) => h.count(),
        }
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record `i`, or `None` past the end.
    pub fn record(&self, i: usize) -> Option<&[u8]> {
        match &self.inner {
            Records::Slices(v) => v.get(i).copied(),
            Records::Held(h) => (i < h.count()).then(|| h.record(i)),
        }
    }
}

/// Where the MoE block gets expert weights: memory, or the I/O scheduler reading from SSD.
///
/// The model calls [`ExpertSource::experts`] once per layer per token with the routed ids and
/// computes with the returned records before asking for the next layer.
pub trait ExpertSource {
    /// The layout of the records this source returns.
    fn layout(&self) -> &ExpertLayout;
    /// The records of experts `ids` of `layer` (one per id, same order).
    fn experts(&mut self, layer: u32, ids: &[u32]) -> Result<ExpertBatch<'_>>;
    /// A prompt chunk's experts of `layer`: the records of `union` (distinct ids), handed to
    /// `compute` in groups of `(ids, records)` — any order, every id once — each group
    /// released when its call returns, so the union need not fit in memory at once. `next`
    /// is the next layer's pre-gate union (most probable first), a hint to read ahead.
    ///
    /// The default asks [`Self::experts`] for one expert at a time (right for any source; an
    /// in-memory one hands records out at no cost); a streaming source overrides it to read
    /// groups ahead of compute ([`crate::SchedExperts`]).
    fn experts_union(
        &mut self,
        layer: u32,
        union: &[u32],
        next: Option<(u32, &[u32])>,
        compute: &mut dyn FnMut(&[u32], &ExpertBatch<'_>) -> Result<()>,
    ) -> Result<()> {
        let _ = next;
        for id in union {
            let one = std::slice::from_ref(id);
            let batch = self.experts(layer, one)?;
            compute(one, &batch)?;
        }
        Ok(())
    }

    /// Those of `ids` whose records are at hand now (no waiting, no reads, not a demand), and
    /// their records: a GPU backend copies them ahead of use. The default offers none.
    fn ready(&mut self, _layer: u32, _ids: &[u32]) -> Result<(Vec<u32>, ExpertBatch<'_>)> {
        Ok((Vec::new(), ExpertBatch::slices(Vec::new())))
    }
}

/// The record of expert `e` of layer `l` packed from `ckpt` in `layout.format` (`Bf16` from a
/// bf16 checkpoint copies the bytes as they are; other formats convert from the values). Only
/// that expert's bytes are read (with `pread`, whether `ckpt` is mapped or not).
pub fn pack_record(
    ckpt: &Checkpoint,
    names: &FamilyNames,
    layout: &ExpertLayout,
    l: usize,
    e: usize,
) -> Result<Vec<u8>> {
    let (h, i) = (layout.hidden, layout.inter);
    let shapes = [[i, h], [i, h], [h, i]];
    let fused = names.fused_experts(l);
    let mut bufs = [Vec::new(), Vec::new(), Vec::new()];
    let mut formats = [layout.format; 3];
    let mut file = None;
    if !ckpt.contains(&names.expert(l, e, 0)) && ckpt.contains(&fused[0]) {
        formats = fused_expert(ckpt, &fused, e, h, i, &mut bufs)?;
        file = Some(ckpt.meta(&fused[0])?.file.to_path_buf());
    } else {
        for (k, shape) in shapes.iter().enumerate() {
            let t = ckpt.read_tensor(&names.expert(l, e, k), shape, &mut bufs[k])?;
            formats[k] = t.format;
            file.get_or_insert_with(|| t.file.to_path_buf());
        }
    }
    if formats.iter().all(|f| *f == layout.format) {
        let mut rec = vec![0u8; layout.record_len];
        for (b, off) in bufs.iter().zip([0, layout.up_offset, layout.down_offset]) {
            rec[off..off + b.len()].copy_from_slice(b);
        }
        Ok(rec)
    } else {
        let file = file.unwrap_or_default();
        let mut vals = Vec::with_capacity(3);
        for (b, f) in bufs.iter().zip(formats) {
            let t = crate::weights::TensorRef {
                bytes: b,
                format: f,
                file: &file,
            };
            vals.push(t.to_f32()?);
        }
        layout
            .pack(&vals[0], &vals[1], &vals[2])
            .ctx(|| format!("packing layer {l} expert {e}"))
    }
}

/// Reads expert `e`'s `[gate, up, down]` into `bufs` from fused tensors:
/// `experts.gate_up_proj` `[E, 2 inter, hidden]` (gate rows first, as HF's `chunk(2)`) and
/// `experts.down_proj` `[E, hidden, inter]`; returns their formats.
fn fused_expert(
    ckpt: &Checkpoint,
    fused: &[String; 2],
    e: usize,
    h: usize,
    i: usize,
    bufs: &mut [Vec<u8>; 3],
) -> Result<[WeightFormat; 3]> {
    let meta = ckpt.meta(&fused[0])?;
    let experts = meta.shape.first().copied().unwrap_or(0);
    if e >= experts {
        return Err(EngineError::TensorShape {
            file: meta.file.to_path_buf(),
            name: fused[0].clone(),
            expected: vec![e + 1, 2 * i, h],
            got: meta.shape.to_vec(),
        });
    }
    let format = ckpt.check(&fused[0], &[experts, 2 * i, h])?;
    let down_format = ckpt.check(&fused[1], &[experts, h, i])?;
    let size = format.bits() as usize / 8;
    let one = 2 * i * h * size;
    let mut gu = Vec::new();
    ckpt.read_range(&fused[0], e * one, one, &mut gu)?;
    bufs[0] = gu[..one / 2].to_vec();
    bufs[1] = gu[one / 2..].to_vec();
    let d_one = h * i * down_format.bits() as usize / 8;
    ckpt.read_range(&fused[1], e * d_one, d_one, &mut bufs[2])?;
    Ok([format, format, down_format])
}

/// All experts packed in memory in the record layout (one buffer per layer).
pub struct InMemoryExperts {
    layout: ExpertLayout,
    num_experts: usize,
    layers: Vec<Vec<u8>>,
}

impl InMemoryExperts {
    /// Packs every expert of `ckpt` into records in `format` (`Bf16` copies bf16 bytes as they are;
    /// quantized formats quantize from the checkpoint values).
    pub fn pack(
        ckpt: &Checkpoint,
        cfg: &ModelConfig,
        names: &FamilyNames,
        format: WeightFormat,
    ) -> Result<Self> {
        let layout = ExpertLayout::for_config(cfg, format)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let mut buf = Vec::with_capacity(layout.record_len * cfg.num_experts);
            for e in 0..cfg.num_experts {
                buf.extend_from_slice(&pack_record(ckpt, names, &layout, l, e)?);
            }
            layers.push(buf);
        }
        Ok(Self {
            layout,
            num_experts: cfg.num_experts,
            layers,
        })
    }

    /// The record of one expert.
    pub fn record(&self, layer: u32, expert: u32) -> Result<&[u8]> {
        let bad = |reason: &str| EngineError::Expert {
            layer,
            expert,
            reason: reason.into(),
        };
        let buf = self
            .layers
            .get(layer as usize)
            .ok_or_else(|| bad("no such layer"))?;
        if expert as usize >= self.num_experts {
            return Err(bad("no such expert"));
        }
        let n = self.layout.record_len;
        Ok(&buf[expert as usize * n..(expert as usize + 1) * n])
    }

    /// Layers held.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Experts per layer.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    /// Total bytes of all records.
    pub fn total_bytes(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }
}

impl ExpertSource for InMemoryExperts {
    fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    fn experts(&mut self, layer: u32, ids: &[u32]) -> Result<ExpertBatch<'_>> {
        let records = ids
            .iter()
            .map(|&e| self.record(layer, e))
            .collect::<Result<_>>()?;
        Ok(ExpertBatch::slices(records))
    }

    fn ready(&mut self, layer: u32, ids: &[u32]) -> Result<(Vec<u32>, ExpertBatch<'_>)> {
        let batch = self.experts(layer, ids)?;
        Ok((ids.to_vec(), batch))
    }

    /// Every record is in memory: the whole union is one group.
    fn experts_union(
        &mut self,
        layer: u32,
        union: &[u32],
        _next: Option<(u32, &[u32])>,
        compute: &mut dyn FnMut(&[u32], &ExpertBatch<'_>) -> Result<()>,
    ) -> Result<()> {
        let batch = self.experts(layer, union)?;
        compute(union, &batch)
    }
}
