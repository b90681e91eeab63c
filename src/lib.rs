//! flashmoe: run Mixture-of-Experts models larger than memory by streaming the routed experts
//! from SSD. This facade re-exports the workspace crates; the `flashmoe` binary is the CLI.
//!
//! - [`io_sched`]: the expert-fetch I/O scheduler (usable alone by other runtimes).
//! - [`flashmoe_sim`]: the SSD simulator (the real scheduler in virtual time).
//! - [`http_api`]: the OpenAI-compatible HTTP API of `flashmoe serve` (bodies, validation,
//!   errors), public so that its fuzz target runs the same code.

pub use flashmoe_sim;
pub use io_sched;

pub mod http_api;
