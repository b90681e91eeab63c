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

pub mod backend;
pub mod checksum;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod packfile;

pub use error::{Error, Result};
pub use layout::{ExpertKey, ExpertLayout, ExpertLocation, LayoutBuilder};
pub mod cache;
pub mod core;
pub mod guard;
pub mod metrics;
pub mod predictor;
pub mod scheduler;
pub mod trace;

pub use guard::{AcquireFuture, ExpertGuard};
pub use scheduler::{Scheduler, SchedulerConfig};
