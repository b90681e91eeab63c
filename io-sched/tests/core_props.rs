//! Property tests of the scheduler core (`SchedCore`): random interleavings of hint, acquire,
//! pin-if-ready, drop, read issue, completion (whole, short, failed, or with corrupted bytes)
//! never hand out a slot that is still `Loading` (bytes handed out are the record's, and no
//! read in flight writes into them), never hand out corrupted bytes (a checksum failure only
//! where bytes were corrupted), never leak a pin (once everything is dropped and drained,
//! every slot can be pinned again), and never exceed the budget (slot ids below the slot
//! count, every read inside the arena).

use std::collections::HashSet;
use std::io;
use std::sync::Arc;

use io_sched::backend::{Completion, ReadOp};
use io_sched::cache::EvictionKind;
use io_sched::core::{CoreConfig, SchedCore, SlotId, VerifyJob};
use io_sched::{Candidate, ExpertKey, ExpertLayout, LayoutBuilder};
use proptest::prelude::*;

const LAYERS: u32 = 3;
const EXPERTS: u32 = 6;

/// One step of a random interleaving.
#[derive(Debug, Clone)]
enum Step {
    Hint {
        layer: u32,
        experts: Vec<u32>,
    },
    Acquire {
        layer: u32,
        experts: Vec<u32>,
    },
    /// Pin a record only if it is cached and ready (the GPU staging path).
    PinIfReady {
        layer: u32,
        expert: u32,
    },
    Drop(usize),
    Issue(usize),
    Complete {
        pick: usize,
        how: How,
    },
    /// Finish one pending checksum job (the driver computes them outside the lock).
    Verify(usize),
}

#[derive(Debug, Clone, Copy)]
enum How {
    Whole,
    Short,
    Eio,
    /// All bytes delivered, one of them flipped.
    Corrupt,
}

fn step() -> impl Strategy<Value = Step> {
    let experts = prop::collection::vec(0..EXPERTS, 1..4);
    prop_oneof![
        (0..LAYERS, experts.clone()).prop_map(|(layer, experts)| Step::Hint { layer, experts }),
        (0..LAYERS, experts).prop_map(|(layer, experts)| Step::Acquire { layer, experts }),
        (0..LAYERS, 0..EXPERTS).prop_map(|(layer, expert)| Step::PinIfReady { layer, expert }),
        any::<usize>().prop_map(Step::Drop),
        (1usize..4).prop_map(Step::Issue),
        (
            any::<usize>(),
            prop_oneof![
                6 => Just(How::Whole),
                2 => Just(How::Short),
                1 => Just(How::Eio),
                1 => Just(How::Corrupt),
            ]
        )
            .prop_map(|(pick, how)| Step::Complete { pick, how }),
        any::<usize>().prop_map(Step::Verify),
    ]
}

/// The file image: record (l, e) is filled with a byte pattern of its own.
fn layout_and_image(lens: &[u64]) -> (ExpertLayout, Vec<u8>) {
    let mut b = LayoutBuilder::new(LAYERS, EXPERTS);
    let f = b.add_file("mem://experts");
    let mut image = Vec::new();
    for l in 0..LAYERS {
        for e in 0..EXPERTS {
            let i = (l * EXPERTS + e) as usize;
            let len = lens[i % lens.len()];
            let off = image.len() as u64;
            let bytes: Vec<u8> = (0..len).map(|j| (i as u64 * 31 + j * 7) as u8).collect();
            b.set(
                ExpertKey::new(l, e),
                f,
                off,
                len,
                io_sched::checksum::checksum(&bytes),
            );
            image.extend(bytes);
            image.resize(image.len().next_multiple_of(4096), 0xEE);
        }
    }
    image.resize(image.len() + 4096, 0xEE);
    (b.build().expect("layout"), image)
}

struct Held {
    keys: Vec<ExpertKey>,
    slots: Vec<SlotId>,
}

struct Harness {
    core: SchedCore,
    layout: ExpertLayout,
    image: Vec<u8>,
    in_flight: Vec<ReadOp>,
    verifying: Vec<VerifyJob>,
    held: Vec<Held>,
    budget: u64,
    /// Records some read of which delivered corrupted bytes.
    corrupted: HashSet<ExpertKey>,
}

impl Harness {
    fn new(lens: &[u64], slots: u64) -> Self {
        let (layout, image) = layout_and_image(lens);
        let cfg = CoreConfig {
            demand_chunk: 4096,
            prefetch_chunk: 4096,
            verify_checksums: true,
            align_retries: false,
            ..CoreConfig::default()
        };
        let budget = slots * layout.max_read_len();
        let core =
            SchedCore::new(Arc::new(layout.clone()), budget, EvictionKind::Lru, cfg).expect("core");
        Self {
            core,
            layout,
            image,
            in_flight: Vec::new(),
            verifying: Vec::new(),
            held: Vec::new(),
            budget,
            corrupted: HashSet::new(),
        }
    }

    fn issue(&mut self, n: usize) {
        for _ in 0..n {
            match self
                .core
                .next_op(8usize.saturating_sub(self.in_flight.len()))
            {
                Some(op) => self.in_flight.push(op),
                None => break,
            }
        }
    }

    fn complete(&mut self, pick: usize, how: How) {
        if self.in_flight.is_empty() {
            return;
        }
        let op = self.in_flight.swap_remove(pick % self.in_flight.len());
        let n = match how {
            How::Whole | How::Corrupt => op.len,
            How::Short => op.len / 2,
            How::Eio => 0,
        };
        let result = match how {
            How::Eio => Err(io::Error::from_raw_os_error(libc::EIO)),
            _ => {
                let src = &self.image[op.offset as usize..op.offset as usize + n];
                // SAFETY: the op was issued by the core into its arena (checked by
                // `check_invariants` to lie inside it) and is completed exactly once, here.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), op.buf, n) };
                if matches!(how, How::Corrupt) && n > 0 {
                    // SAFETY: as above: `n` bytes of the op's buffer were just written here.
                    unsafe { *op.buf.add(n / 2) ^= 0x20 };
                    self.corrupted.extend(self.key_at(op.offset + n as u64 / 2));
                }
                Ok(n)
            }
        };
        let out = self.core.complete(Completion {
            tag: op.tag,
            result,
        });
        self.verifying.extend(out.verify);
    }

    fn verify(&mut self, pick: usize) {
        if self.verifying.is_empty() {
            return;
        }
        let job = self.verifying.swap_remove(pick % self.verifying.len());
        // SAFETY: a checksum job names a `Loading` slot whose bytes are all in; no read writes
        // it until `finish_verify`.
        let bytes = unsafe { std::slice::from_raw_parts(job.ptr, job.len) };
        self.core
            .finish_verify(job, io_sched::checksum::checksum(bytes));
    }

    /// The record whose aligned span holds file offset `at`.
    fn key_at(&self, at: u64) -> Option<ExpertKey> {
        self.layout
            .iter()
            .find(|(_, l)| (l.offset..l.offset + l.read_len()).contains(&at))
            .map(|(k, _)| k)
    }

    fn pin_if_ready(&mut self, layer: u32, expert: u32) {
        let key = ExpertKey::new(layer, expert);
        if let Some(s) = self.core.pin_if_ready(key) {
            self.held.push(Held {
                keys: vec![key],
                slots: vec![s],
            });
        }
    }

    fn acquire(&mut self, layer: u32, experts: &[u32]) {
        let mut ids: Vec<u32> = experts.to_vec();
        ids.sort_unstable();
        ids.dedup();
        self.core.note_routing(layer, &ids).expect("routing");
        let mut held = Held {
            keys: Vec::new(),
            slots: Vec::new(),
        };
        for &e in &ids {
            let key = ExpertKey::new(layer, e);
            match self.core.pin_or_load(key) {
                Ok(Some(s)) => {
                    held.keys.push(key);
                    held.slots.push(s);
                }
                // No free slot (the scheduler would wait), or every slot pinned by guards
                // (it would fail): here the acquire gives up either way.
                Ok(None) | Err(io_sched::Error::Budget(_)) => {
                    self.core.unpin(&held.slots);
                    return;
                }
                Err(e) => panic!("pin_or_load({key:?}): {e}"),
            }
        }
        self.held.push(held);
    }

    fn drop_held(&mut self, pick: usize) {
        if self.held.is_empty() {
            return;
        }
        let h = self.held.swap_remove(pick % self.held.len());
        self.core.unpin(&h.slots);
    }

    fn check_invariants(&mut self) {
        let arena = self.core.arena();
        let (base, len) = (arena.base() as usize, arena.len());
        assert!(
            len as u64 <= self.budget,
            "arena {len} over the budget {}",
            self.budget
        );
        let slot_size = self.core.slot_size();
        let mut handed: HashSet<SlotId> = HashSet::new();
        let mut failed = Vec::new();
        for (i, h) in self.held.iter().enumerate() {
            for &s in &h.slots {
                assert!(
                    (s as usize) < self.core.slot_count(),
                    "slot {s} past the budget"
                );
            }
            match self.core.check_ready(&h.slots) {
                Some(Ok(())) => {
                    for (&s, &key) in h.slots.iter().zip(&h.keys) {
                        assert_eq!(self.core.slot_key(s), key, "slot {s} holds another key");
                        let (ptr, n) = self.core.slot_payload(s);
                        let loc = self.layout.get(key).expect("key");
                        assert_eq!(n as u64, loc.len);
                        // SAFETY: a Ready, pinned slot of the arena: no one writes it.
                        let got = unsafe { std::slice::from_raw_parts(ptr, n) };
                        let want =
                            &self.image[loc.offset as usize..(loc.offset + loc.len) as usize];
                        assert!(got == want, "slot {s} handed out with bytes not {key:?}'s");
                        handed.insert(s);
                    }
                }
                Some(Err(e)) => {
                    // Only injected EIO or corrupted bytes may fail a load.
                    if let io_sched::Error::Checksum { site, .. } = &e {
                        let key = ExpertKey::new(site.layer, site.expert);
                        assert!(
                            self.corrupted.contains(&key),
                            "checksum failure on correct bytes: {e}"
                        );
                    }
                    failed.push(i);
                }
                None => {}
            }
        }
        for op in &self.in_flight {
            let start = op.buf as usize;
            assert!(
                start >= base && start + op.len <= base + len,
                "read outside the arena"
            );
            let s = ((start - base) / slot_size) as SlotId;
            assert!(
                !handed.contains(&s),
                "a read in flight writes into slot {s}, handed out as ready"
            );
        }
        // A failed acquire is dropped by its holder (as the scheduler does).
        for i in failed.into_iter().rev() {
            let h = self.held.swap_remove(i);
            self.core.unpin(&h.slots);
        }
    }

    /// Drains every read, drops everything, then pins `slot_count` distinct experts at once:
    /// a leaked pin would leave one of them without a slot.
    fn check_no_leak(&mut self) {
        for h in std::mem::take(&mut self.held) {
            self.core.unpin(&h.slots);
        }
        for _ in 0..10_000 {
            self.issue(8);
            if self.in_flight.is_empty() && self.verifying.is_empty() {
                break;
            }
            self.complete(0, How::Whole);
            self.verify(0);
        }
        assert!(self.in_flight.is_empty() && self.core.ops_in_flight() == 0);
        let n = self.core.slot_count();
        let keys: Vec<ExpertKey> = (0..LAYERS)
            .flat_map(|l| (0..EXPERTS).map(move |e| ExpertKey::new(l, e)))
            .take(n)
            .collect();
        let mut slots = Vec::new();
        for key in keys {
            let s = self.core.pin_or_load(key).expect("valid key");
            assert!(s.is_some(), "no slot for {key:?}: a pin leaked ({n} slots)");
            slots.extend(s);
        }
        let distinct: HashSet<_> = slots.iter().collect();
        assert_eq!(distinct.len(), slots.len(), "one slot handed out twice");
        self.core.unpin(&slots);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn interleavings_keep_the_core_invariants(
        lens in prop::collection::vec(1u64..12_000, 1..5),
        slots in 2u64..8,
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let mut h = Harness::new(&lens, slots);
        for s in steps {
            match s {
                Step::Hint { layer, experts } => {
                    let c: Vec<Candidate> = experts
                        .iter()
                        .map(|&expert| Candidate { expert, confidence: 0.9 })
                        .collect();
                    h.core.hint(layer, &c);
                }
                Step::Acquire { layer, experts } => h.acquire(layer, &experts),
                Step::PinIfReady { layer, expert } => h.pin_if_ready(layer, expert),
                Step::Drop(i) => h.drop_held(i),
                Step::Issue(n) => h.issue(n),
                Step::Complete { pick, how } => h.complete(pick, how),
                Step::Verify(i) => h.verify(i),
            }
            h.check_invariants();
        }
        h.check_no_leak();
    }
}

/// The case the property found: a prefetch cancelled (by routing that does not name it)
/// between two of its chunks, with nothing in flight, kept its slot `Loading` forever.
#[test]
fn prefetch_cancelled_between_chunks_frees_its_slot() {
    let mut h = Harness::new(&[4097], 2);
    h.core.hint(
        2,
        &[Candidate {
            expert: 0,
            confidence: 0.9,
        }],
    );
    h.issue(1);
    h.complete(0, How::Whole);
    h.acquire(2, &[1]);
    h.verify(0);
    h.check_invariants();
    h.check_no_leak();
}
