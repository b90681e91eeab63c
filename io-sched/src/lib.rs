//! # io-sched: the expert-fetch I/O scheduler of flashmoe
//!
//! io-sched moves byte ranges named `(layer, expert)` from files into a budgeted memory cache,
//! ahead of need when it can. It knows nothing about transformers, so any runtime that
//! stores its experts as aligned records can use it alone.
//!
//! Design, in short:
//! - **Layout** ([`layout`], [`manifest`], [`packfile`]): `(layer, expert) → (file, offset, len,
//!   checksum)`, 4096-aligned records so direct I/O works, validated against the files on open.
//! - **Read backends** ([`backend`]): io_uring, a pread pool (O_DIRECT / F_NOCACHE), mmap as the
//!   "trust the OS" baseline, and a fault injector for tests — one trait, chosen automatically
//!   with a logged reason for every fallback.
//! - **Cache** ([`cache`]): one aligned arena cut into slots, refcounted pins (a pinned slot is never
//!   evicted or overwritten), pluggable eviction (LRU, frequency+recency).
//! - **Scheduler** ([`scheduler`]): `hint` starts prefetches, `acquire` returns a guard over ready
//!   bytes (blocking or async). Demand reads never queue behind speculative ones; prefetches are
//!   issued in chunks under a byte bound, promoted when demanded, dropped when stale; duplicate
//!   requests coalesce; short reads are retried; a dropped acquire never frees memory the kernel
//!   may still write into.
//! - **Predictors** ([`predictor`]): none, temporal, frequency, cross-layer transitions, score
//!   passthrough (pre-gate), oracle.
//! - **Metrics** ([`metrics`]): bytes by purpose, hits, misses, stalls, prefetch precision and
//!   recall, queue depth — per layer, always on.
//!
//! # Using it from your own runtime
//!
//! Describe where your experts live, pick a backend, then per layer `hint` what you expect
//! next and `acquire` what the router chose; compute on the guard's bytes; drop the guard.
//! (`examples/standalone_runtime.rs` does the same with packed files on disk and a predictor.)
//!
//! ```
//! use std::sync::Arc;
//! use io_sched::{backend::memory::MemoryBackend, checksum::checksum};
//! use io_sched::{Candidate, ExpertKey, LayoutBuilder, Scheduler, SchedulerConfig};
//!
//! // 2 layers x 4 experts of 4096 bytes, back to back in one "file".
//! let mut image = vec![0u8; 8 * 4096];
//! let mut layout = LayoutBuilder::new(2, 4);
//! let file = layout.add_file("experts.bin");
//! for i in 0..8u32 {
//!     let bytes = &mut image[i as usize * 4096..][..4096];
//!     bytes.fill(i as u8);
//!     layout.set(ExpertKey::new(i / 4, i % 4), file, i as u64 * 4096, 4096, checksum(bytes));
//! }
//! let backend = Box::new(MemoryBackend::new(vec![Arc::from(image)], 8));
//! let sched = Scheduler::with_backend(layout.build()?, SchedulerConfig::with_budget(4 * 4096), backend)?;
//!
//! sched.hint(1, &[Candidate { expert: 2, confidence: 0.9 }]); // prefetch starts now
//! let guard = sched.acquire(0, &[1, 3])?;                      // demand: waits for the bytes
//! assert!(guard.bytes(0).iter().all(|&b| b == 1));
//! assert!(guard.get(3).unwrap().iter().all(|&b| b == 3));
//! drop(guard);                                                 // unpins: slots may be reused
//! let m = sched.metrics().total();
//! assert_eq!((m.demanded, m.misses), (2, 2));
//! # Ok::<(), io_sched::Error>(())
//! ```

pub mod backend;
#[doc(hidden)]
pub mod bench;
pub mod checksum;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod mapped;
pub mod packfile;
pub mod predictor;

pub use error::{Error, ErrorKind, Result};
pub use layout::{ExpertKey, ExpertLayout, ExpertLocation, LayoutBuilder};
pub mod cache;
#[doc(hidden)]
pub mod core;
pub mod guard;
pub mod metrics;
pub mod pending;
pub mod scheduler;
pub mod session;
pub mod trace;

pub use guard::{AcquireFuture, ExpertGuard};
pub use manifest::Manifest;
pub use pending::PendingAcquire;
pub use predictor::{Candidate, LayerPrediction, Predictor, PredictorKind};
pub use scheduler::{Preloaded, Scheduler, SchedulerConfig};
pub use session::{Call, Session, SessionConfig, SessionIo, SessionStats, UnionDemand};
