//! One module per subcommand.

pub mod chat;
pub mod generate;
pub mod io_bench;
pub mod pack;
pub mod prefill_report;
pub mod replay;
pub mod serve;
pub mod session;
pub mod synth;
pub mod synth_hf;
pub mod testfile;
pub mod trace_stats;
pub mod values;

/// Errors of the CLI: a message with its context, printed as one line.
pub type CliResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
