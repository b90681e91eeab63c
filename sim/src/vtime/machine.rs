//! The simulated machine a virtual-time run drives: the real [`SchedCore`], a simulated SSD
//! and a clock — and, as a [`SessionIo`], what io-sched's [`io_sched::Session`] calls, so the
//! simulator runs the same per-layer protocol as `generate` and `replay`.

use std::collections::HashMap;

use io_sched::backend::Completion;
use io_sched::core::{SchedCore, SlotId};
use io_sched::predictor::Candidate;
use io_sched::{ExpertKey, SessionIo};

use super::{RunSpec, Span, SpanKind};
use crate::ssd::{Done, SsdSim};

struct OpInfo {
    layer: u32,
    demand: bool,
    sim_len: usize,
}

pub(crate) struct Sim {
    pub(crate) core: SchedCore,
    pub(crate) ssd: SsdSim,
    pub(crate) spec: RunSpec,
    pub(crate) scale: f64,
    pub(crate) rec: u64,
    ops: HashMap<u64, OpInfo>,
    pub(crate) waiting: Vec<ExpertKey>,
    done: Vec<Done>,
    pub(crate) record: bool,
    pub(crate) spans: Vec<Span>,
    /// Next tag for reads the core does not know of (page faults of non-expert weights).
    fault_tag: u64,
}

/// Bytes per page-fault read of non-expert weights (a read-ahead cluster).
const FAULT_READ: f64 = 1_048_576.0;

impl Sim {
    pub(crate) fn new(core: SchedCore, ssd: SsdSim, spec: RunSpec, scale: f64, rec: u64) -> Self {
        Self {
            core,
            ssd,
            spec,
            scale,
            rec,
            ops: HashMap::new(),
            waiting: Vec::new(),
            done: Vec::new(),
            record: false,
            spans: Vec::new(),
            fault_tag: u64::MAX / 2,
        }
    }

    /// Reads `bytes` of non-expert weights back from flash (page faults: the compute that
    /// touches them waits), in read-ahead-sized requests, and waits for them.
    pub(crate) fn fault_in(&mut self, bytes: f64) {
        let first = self.fault_tag;
        let mut left = bytes;
        while left > 0.0 {
            self.ssd.submit(self.fault_tag, left.min(FAULT_READ));
            self.fault_tag += 1;
            left -= FAULT_READ;
        }
        let (t0, end_tag) = (self.now(), self.fault_tag);
        let mut pending: std::collections::HashSet<u64> = (first..end_tag).collect();
        let mut done = Vec::new();
        while !pending.is_empty() {
            let Some(next) = self.ssd.next_event() else {
                break;
            };
            done.clear();
            self.ssd.advance(next, true, &mut done);
            for d in &done {
                if !pending.remove(&d.tag)
                    && let Some(info) = self.ops.remove(&d.tag)
                {
                    let _ = self.core.complete(Completion {
                        tag: d.tag,
                        result: Ok(info.sim_len),
                    });
                }
            }
        }
        if self.record && self.now() > t0 {
            self.spans.push(Span {
                start_ns: t0,
                end_ns: self.now(),
                layer: 0,
                kind: SpanKind::Stall,
            });
        }
    }

    pub(crate) fn now(&self) -> f64 {
        self.ssd.now()
    }

    /// Hands the device what the core wants issued, up to the queue depth.
    pub(crate) fn pump(&mut self) {
        while self.ssd.in_flight() < self.spec.queue_depth {
            let free = self.spec.queue_depth - self.ssd.in_flight();
            let Some(op) = self.core.next_op(free) else {
                break;
            };
            let idx = op.offset / self.rec;
            let layer = (idx / self.spec.experts as u64) as u32;
            let expert = (idx % self.spec.experts as u64) as u32;
            let demand = self.waiting.contains(&ExpertKey::new(layer, expert));
            self.ops.insert(
                op.tag,
                OpInfo {
                    layer,
                    demand,
                    sim_len: op.len,
                },
            );
            self.ssd.submit(op.tag, op.len as f64 * self.scale);
        }
    }

    /// Advances the device to its next event (or `to`), feeding completions to the core.
    pub(crate) fn step(&mut self, to: f64) {
        self.done.clear();
        let mut done = std::mem::take(&mut self.done);
        self.ssd.advance(to, true, &mut done);
        for d in &done {
            let Some(info) = self.ops.remove(&d.tag) else {
                continue;
            };
            if self.record {
                let kind = if info.demand {
                    SpanKind::DemandRead
                } else {
                    SpanKind::PrefetchRead
                };
                self.spans.push(Span {
                    start_ns: d.issued_at,
                    end_ns: d.done_at,
                    layer: info.layer,
                    kind,
                });
            }
            let _ = self.core.complete(Completion {
                tag: d.tag,
                result: Ok(info.sim_len),
            });
        }
        self.done = done;
        self.pump();
    }

    /// Computes `work` ns of work at full speed; returns (elapsed, device-busy) ns.
    pub(crate) fn compute(&mut self, mut work: f64, layer: u32) -> (f64, f64) {
        let (t0, busy0) = (self.now(), self.ssd.busy_ns);
        while work > 1e-9 {
            self.pump();
            let rate = 1.0 / (1.0 + self.spec.contention * self.ssd.utilisation());
            let finish = self.now() + work / rate;
            let next = self.ssd.next_event().unwrap_or(f64::INFINITY);
            let to = next.min(finish);
            let before = self.now();
            self.step(to);
            let moved = self.now() - before;
            work -= moved * rate;
            if moved <= 0.0 && next >= finish {
                break;
            }
        }
        if self.record {
            self.spans.push(Span {
                start_ns: t0,
                end_ns: self.now(),
                layer,
                kind: SpanKind::Compute,
            });
        }
        (self.now() - t0, self.ssd.busy_ns - busy0)
    }

    fn pin(&mut self, key: ExpertKey) -> io_sched::Result<SlotId> {
        loop {
            if let Some(s) = self.core.pin_or_load(key)? {
                return Ok(s);
            }
            self.pump();
            let Some(next) = self.ssd.next_event() else {
                return Err(io_sched::Error::Budget(format!(
                    "simulated: no cache slot for {key:?} and no read in flight"
                )));
            };
            self.step(next);
        }
    }

    fn wait_ready(&mut self, slots: &[SlotId]) -> io_sched::Result<()> {
        loop {
            match self.core.check_ready(slots) {
                Some(r) => return r,
                None => {
                    self.pump();
                    let Some(next) = self.ssd.next_event() else {
                        return Err(io_sched::Error::Budget(
                            "simulated: waiting for expert bytes with no read in flight".into(),
                        ));
                    };
                    self.step(next);
                }
            }
        }
    }
}

impl SessionIo for Sim {
    type Pending = Vec<SlotId>;
    type Guard = Vec<SlotId>;

    fn begin(&mut self, layer: u32, experts: &[u32]) -> io_sched::Result<Vec<SlotId>> {
        self.core.note_routing(layer, experts)?;
        self.waiting = experts.iter().map(|&e| ExpertKey::new(layer, e)).collect();
        let mut pins = Vec::with_capacity(experts.len());
        for &e in experts {
            match self.pin(ExpertKey::new(layer, e)) {
                Ok(s) => pins.push(s),
                Err(err) => {
                    self.core.unpin(&pins);
                    return Err(err);
                }
            }
        }
        Ok(pins)
    }

    fn hint(&mut self, layer: u32, candidates: &[Candidate]) {
        self.core.hint(layer, candidates);
    }

    fn wait(&mut self, pins: Vec<SlotId>) -> io_sched::Result<Vec<SlotId>> {
        self.pump();
        match self.wait_ready(&pins) {
            Ok(()) => Ok(pins),
            Err(e) => {
                self.core.unpin(&pins);
                Err(e)
            }
        }
    }

    fn ready(&mut self, _layer: u32, _experts: &[u32]) -> (Vec<u32>, Vec<SlotId>) {
        // Nothing is staged onward in the simulator.
        (Vec::new(), Vec::new())
    }

    fn is_cached(&self, key: ExpertKey) -> bool {
        self.core.is_ready(key)
    }

    fn bytes_per_ns(&self) -> f64 {
        if self.ssd.busy_ns > 0.0 {
            // The core's records are `scale` times smaller than the device's.
            self.ssd.bytes_done / self.scale / self.ssd.busy_ns
        } else {
            0.0
        }
    }

    fn slots(&self) -> usize {
        self.core.slot_count()
    }

    fn record_bytes(&self) -> u64 {
        self.rec
    }

    fn layers(&self) -> u32 {
        self.spec.layers
    }

    fn experts(&self) -> u32 {
        self.spec.experts
    }

    fn backlog_bytes(&self) -> u64 {
        self.core.backlog_bytes()
    }

    fn wants_next_use(&self) -> bool {
        self.core.wants_next_use()
    }

    fn note_next_use(&mut self, layer: u32, waits: &[f32]) {
        self.core.note_next_use(layer, waits);
    }
}
