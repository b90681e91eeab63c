//! The `flashmoe` command line.

mod cmd;
mod runtime_dir;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "flashmoe", version, about = "Stream MoE experts from SSD", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a packed model, streaming its experts from disk through io-sched
    /// under a memory budget (default model: the tiny Qwen3-MoE committed in models/).
    Generate(cmd::generate::GenerateArgs),
    /// Pack a Hugging Face or MLX quantized MoE checkpoint for streaming: experts in io-sched's
    /// packed format (16, 8 or 4 bits; MLX codes as stored), the rest as stored or `--dense-bits`.
    Pack(cmd::pack::PackArgs),
    /// Measure this machine's disk for expert-sized reads: serial pread, pread pool, io_uring
    /// at several queue depths, mmap, and the scheduler itself, cold, as GB/s and ratios.
    IoBench(cmd::io_bench::IoBenchArgs),
    /// Simulate model M on device D with policy P in virtual time, through the real scheduler
    /// (`--reproduce` places every published flash-moe and iPhone point, `--sensitivity` moves
    /// each unidentified parameter, `--ttft` prefill token by token vs chunked, `--costs`
    /// energy, battery, heat and flash wear).
    Sim(Box<flashmoe_sim::cli::SimArgs>),
    /// Write a packed model of a real geometry with deterministic pseudo-random expert bytes.
    Synth(cmd::synth::SynthArgs),
    /// Routing statistics of traces side by side: next-token reuse, top-10% share and
    /// pre-gate recall (`generate --trace T --trace-far F`, or a fixture's trace).
    TraceStats(cmd::trace_stats::TraceStatsArgs),
    /// Replay a routing trace on the real disk through the real scheduler (`--compare`: mmap,
    /// sync pread, io-sched, each predictor and the oracle side by side).
    Replay(Box<cmd::replay::ReplayArgs>),
    /// Serve the model over an OpenAI-compatible HTTP API (chat and text completions,
    /// streaming), on 127.0.0.1 by default.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Chat with the model in the terminal, on its own chat template (streamed answers,
    /// /reset, /stats; Ctrl-C stops an answer).
    Chat(Box<cmd::chat::ChatArgs>),
}

fn main() {
    runtime_dir::ensure();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => cmd::generate::run(&args),
        Command::Pack(args) => cmd::pack::run(&args),
        Command::IoBench(args) => cmd::io_bench::run(&args),
        Command::Synth(args) => cmd::synth::run(&args),
        Command::TraceStats(args) => cmd::trace_stats::run(&args),
        Command::Replay(args) => cmd::replay::run(&args),
        Command::Serve(args) => cmd::serve::run(&args),
        Command::Chat(args) => cmd::chat::run(&args),
        Command::Sim(args) => flashmoe_sim::cli::run(&args)
            .map(|out| print!("{out}"))
            .map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
