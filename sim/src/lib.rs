//! # flashmoe-sim: the expert scheduler in virtual time
//!
//! Answers "how fast would model M run on device D with policy P?" for devices we don't have,
//! by driving the **real** [`io_sched::core::SchedCore`] (the same state machine the threaded
//! scheduler runs) against a queueing model of an SSD and a virtual clock — nothing sleeps.
//!
//! - [`device`]: device profiles as data (`presets/devices/*.json`), every figure with its source.
//! - [`geometry`]: model presets; expert bytes derived from dims and quantization.
//! - [`ssd`]: the SSD model (latency, per-request and peak bandwidth, internal parallelism).
//! - [`latent`]: synthetic routing as the top k of latent router scores (the default; k is a
//!   parameter of the mechanism), [`synth`]: the older per-slot mixture, both calibrated to
//!   measured LRU hit rates, [`routing_check`]: both checked at other k; [`fixture`] loads the
//!   recorded fixture traces.
//! - [`vtime`]: per token, per layer: compute windows during which prefetches proceed, demand
//!   stalls, unified-memory contention. [`belady`]: the MIN bound for the same trace and budget.
//! - [`prefill`], [`ttft`]: time to first token, token by token vs chunked; [`costs`]:
//!   energy per token, battery, thermal envelope, flash wear; [`sensitivity`]: how every
//!   published point moves over each unidentified parameter's range.
//! - [`report`], [`timeline`]: tables, JSON and SVG; [`cli`]: `flashmoe sim`.

pub mod belady;
pub mod calibrate;
pub mod cli;
pub mod costs;
pub mod device;
pub mod error;
pub mod figure;
pub mod figures;
pub mod fixture;
pub mod geometry;
mod hit_rate_fit;
pub mod latent;
pub mod policy;
pub mod policy_text;
pub mod predict;
pub mod prediction_quality;
pub mod prefill;
pub mod pregate;
pub mod replay;
pub mod report;
pub mod reproduce;
pub mod rng;
pub mod routing_check;
pub mod routing_stats;
pub mod sensitivity;
pub mod ssd;
pub mod synth;
pub mod throttle;
pub mod timeline;
pub mod ttft;
pub mod validate;
pub mod vtime;

pub use error::{Result, SimError};
