//! A fault-injecting wrapper around any backend, for tests.
//!
//! Rules match reads by expert (the record containing the read's `(file, offset)`, so a retry
//! of the rest of a short read still matches), by layer, or any read. The first rule that
//! matches and is not used up applies:
//! - [`Fault::Eio`] completes the read with `EIO` without reading;
//! - [`Fault::ShortRead`] lets the inner read run whole (so direct I/O keeps its alignment) and
//!   reports at most `max_bytes` of it, as a device returning a short count would — any
//!   `max_bytes`, aligned or not;
//! - [`Fault::Delay`] holds the read's completion until `submit time + delay`;
//! - [`Fault::Corrupt`] lets the read run whole and flips one bit of the bytes it delivered
//!   (as a bad cable or DRAM on the way would), so only the record's checksum can tell.
//!
//! Every submitted op is logged, in order, in a shared [`SubmitLog`].
//!
//! ```no_run
//! # use std::time::Duration;
//! # use io_sched::ExpertKey;
//! # use io_sched::backend::faulty::{FaultyBackend, Target, Fault};
//! # fn f(inner: Box<dyn io_sched::backend::ReadBackend>, layout: &io_sched::ExpertLayout) {
//! let faulty = FaultyBackend::new(inner, layout)
//!     .with_rule(Target::Expert(ExpertKey::new(3, 7)), Fault::Eio { times: 1 })
//!     .with_rule(Target::Layer(5), Fault::Delay(Duration::from_millis(20)));
//! let log = faulty.log();
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{BackendKind, BackendWaker, Completion, ReadBackend, ReadOp};
use crate::layout::{ExpertKey, ExpertLayout};

/// Which reads a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Reads inside this expert's record.
    Expert(ExpertKey),
    /// Reads inside any record of this layer.
    Layer(u32),
    /// Every read.
    Any,
}

/// What happens to a matching read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Complete with `EIO` without reading, for the next `times` matching reads.
    Eio { times: u32 },
    /// Report at most `max_bytes` read, for the next `times` matching reads.
    ShortRead { max_bytes: usize, times: u32 },
    /// Hold every matching read's completion until `delay` after its submission.
    Delay(Duration),
    /// Flip one bit in the middle of the bytes read, for the next `times` matching reads.
    Corrupt { times: u32 },
}

/// One submitted read, as logged by [`FaultyBackend`].
#[derive(Debug, Clone)]
pub struct SubmittedOp {
    pub tag: u64,
    pub file: u32,
    pub offset: u64,
    pub len: usize,
    pub at: Instant,
    /// The expert whose record contains `(file, offset)`, if any.
    pub key: Option<ExpertKey>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

/// The shared, ordered log of submitted reads.
pub type SubmitLog = Arc<Mutex<Vec<SubmittedOp>>>;

#[derive(Debug)]
struct Rule {
    target: Target,
    fault: Fault,
    /// Uses left, or `None` for unlimited ([`Fault::Delay`]).
    left: Option<u32>,
}

/// A handle to add or clear rules while the backend is owned by someone else.
#[derive(Debug, Clone, Default)]
pub struct FaultRules(Arc<Mutex<Vec<Rule>>>);

impl FaultRules {
    /// Adds a rule after the existing ones.
    pub fn add(&self, target: Target, fault: Fault) {
        let left = match fault {
            Fault::Eio { times } | Fault::ShortRead { times, .. } | Fault::Corrupt { times } => {
                Some(times)
            }
            Fault::Delay(_) => None,
        };
        self.0.lock().push(Rule {
            target,
            fault,
            left,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.0.lock().clear();
    }

    /// The fault for a read of `key`, using up one of its `times`.
    fn take(&self, key: Option<ExpertKey>) -> Option<Fault> {
        let mut rules = self.0.lock();
        let rule = rules.iter_mut().find(|r| {
            r.left != Some(0)
                && match r.target {
                    Target::Any => true,
                    Target::Layer(l) => key.is_some_and(|k| k.layer == l),
                    Target::Expert(e) => key == Some(e),
                }
        })?;
        if let Some(left) = rule.left.as_mut() {
            *left -= 1;
        }
        Some(rule.fault)
    }
}

/// Wraps a backend and injects faults. See the module docs.
pub struct FaultyBackend {
    inner: Box<dyn ReadBackend>,
    /// (file, record offset) → (expert, aligned record length).
    records: BTreeMap<(u32, u64), (ExpertKey, u64)>,
    rules: FaultRules,
    log: SubmitLog,
    /// Completions to hand out at the next reap (injected errors).
    ready: Vec<Completion>,
    /// Tags whose completion is held until a deadline.
    delayed: HashMap<u64, Instant>,
    /// Tags whose byte count is cut to a maximum when they complete.
    truncated: HashMap<u64, usize>,
    /// Tags whose delivered bytes get one bit flipped, with their buffer's address.
    corrupted: HashMap<u64, usize>,
    /// Completions held until their deadline.
    held: Vec<(Instant, Completion)>,
    woken: Arc<AtomicBool>,
}

impl FaultyBackend {
    /// Wraps `inner`; `layout` maps reads to experts for [`Target::Expert`] and [`Target::Layer`].
    pub fn new(inner: Box<dyn ReadBackend>, layout: &ExpertLayout) -> Self {
        let records = layout
            .iter()
            .map(|(key, loc)| ((loc.file, loc.offset), (key, loc.read_len())))
            .collect();
        Self {
            inner,
            records,
            rules: FaultRules::default(),
            log: Arc::default(),
            ready: Vec::new(),
            delayed: HashMap::new(),
            truncated: HashMap::new(),
            corrupted: HashMap::new(),
            held: Vec::new(),
            woken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Adds a rule (builder style).
    pub fn with_rule(self, target: Target, fault: Fault) -> Self {
        self.rules.add(target, fault);
        self
    }

    /// A handle to change rules later.
    pub fn rules(&self) -> FaultRules {
        self.rules.clone()
    }

    /// The shared log of every submitted read, in submission order.
    pub fn log(&self) -> SubmitLog {
        self.log.clone()
    }

    /// The expert whose record contains `offset` of `file`.
    fn key_of(&self, file: u32, offset: u64) -> Option<ExpertKey> {
        let (&(f, start), &(key, len)) = self.records.range(..=(file, offset)).next_back()?;
        (f == file && offset < start + len).then_some(key)
    }

    /// Moves held completions whose deadline passed to `out`; returns the next deadline.
    fn release_due(&mut self, out: &mut Vec<Completion>, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].0 <= now {
                out.push(self.held.swap_remove(i).1);
            } else {
                next = Some(next.map_or(self.held[i].0, |n| n.min(self.held[i].0)));
                i += 1;
            }
        }
        next
    }

    /// Sorts inner completions into `out` or `held`.
    fn sort_inner(&mut self, inner: &mut Vec<Completion>, out: &mut Vec<Completion>) {
        for mut c in inner.drain(..) {
            if let Some(max) = self.truncated.remove(&c.tag) {
                c.result = c.result.map(|n| n.min(max));
            }
            if let (Some(buf), Ok(n)) = (self.corrupted.remove(&c.tag), &c.result)
                && *n > 0
            {
                // SAFETY: `buf` is the buffer of this read, which the inner backend has just
                // completed with `n` bytes; it stays the submitter's until this completion is
                // handed back (below), so no one else reads or writes it now.
                unsafe { *(buf as *mut u8).add(n / 2) ^= 0x10 };
            }
            match self.delayed.remove(&c.tag) {
                Some(deadline) => self.held.push((deadline, c)),
                None => out.push(c),
            }
        }
    }
}

impl ReadBackend for FaultyBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.ready.len() + self.held.len()
    }

    fn direct(&self) -> bool {
        self.inner.direct()
    }

    unsafe fn register_memory(&mut self, ptr: *mut u8, len: usize) -> io::Result<bool> {
        // SAFETY: forwarded from this method's own contract.
        unsafe { self.inner.register_memory(ptr, len) }
    }

    unsafe fn submit(&mut self, op: ReadOp) -> io::Result<()> {
        let key = self.key_of(op.file, op.offset);
        let fault = self.rules.take(key);
        let mut entry = SubmittedOp {
            tag: op.tag,
            file: op.file,
            offset: op.offset,
            len: op.len,
            at: Instant::now(),
            key,
            fault,
        };
        let result = match fault {
            Some(Fault::Eio { .. }) => {
                self.ready.push(Completion {
                    tag: op.tag,
                    result: Err(io::Error::from_raw_os_error(libc::EIO)),
                });
                Ok(())
            }
            Some(Fault::ShortRead { max_bytes, .. }) => {
                // SAFETY: forwarded from this method's own contract.
                let r = unsafe { self.inner.submit(op) };
                if r.is_ok() {
                    self.truncated.insert(op.tag, max_bytes);
                }
                r
            }
            Some(Fault::Corrupt { .. }) => {
                // SAFETY: forwarded from this method's own contract.
                let r = unsafe { self.inner.submit(op) };
                if r.is_ok() {
                    self.corrupted.insert(op.tag, op.buf as usize);
                }
                r
            }
            Some(Fault::Delay(d)) => {
                // SAFETY: forwarded from this method's own contract.
                let r = unsafe { self.inner.submit(op) };
                if r.is_ok() {
                    self.delayed.insert(op.tag, entry.at + d);
                }
                r
            }
            None => {
                // SAFETY: forwarded from this method's own contract.
                unsafe { self.inner.submit(op) }
            }
        };
        if result.is_err() {
            entry.fault = None;
        }
        // Log what was accepted, in order; a refused submit is not a submitted read.
        if result.is_ok() {
            self.log.lock().push(entry);
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    fn reap(&mut self, out: &mut Vec<Completion>, timeout: Option<Duration>) -> io::Result<()> {
        let before = out.len();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut inner = Vec::new();
        loop {
            out.append(&mut self.ready);
            let next_held = self.release_due(out, Instant::now());
            if out.len() > before {
                // Pick up whatever else is done, without waiting.
                self.inner.reap(&mut inner, Some(Duration::ZERO))?;
                self.sort_inner(&mut inner, out);
                return Ok(());
            }
            if self.woken.swap(false, Ordering::AcqRel) {
                return Ok(());
            }
            let now = Instant::now();
            let wait = match (timeout, deadline) {
                (Some(Duration::ZERO), _) => Some(Duration::ZERO),
                (Some(_), Some(d)) if d <= now => Some(Duration::ZERO),
                (Some(_), Some(d)) => Some(d - now),
                _ => None,
            };
            let wait = match (wait, next_held) {
                (w, Some(h)) => {
                    let until_held = h.saturating_duration_since(now);
                    Some(w.map_or(until_held, |w| w.min(until_held)))
                }
                (w, None) => w,
            };
            self.inner.reap(&mut inner, wait)?;
            self.sort_inner(&mut inner, out);
            out.append(&mut self.ready);
            self.release_due(out, Instant::now());
            if out.len() > before {
                return Ok(());
            }
            let timed_out = match (timeout, deadline) {
                (Some(Duration::ZERO), _) => true,
                (Some(_), Some(d)) => Instant::now() >= d,
                _ => false,
            };
            if timed_out {
                return Ok(());
            }
        }
    }

    fn waker(&self) -> BackendWaker {
        let inner = self.inner.waker();
        let woken = self.woken.clone();
        Arc::new(move || {
            woken.store(true, Ordering::Release);
            inner();
        })
    }
}
