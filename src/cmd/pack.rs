//! `flashmoe pack`: an HF or MLX checkpoint directory → a packed model directory that `generate`
//! streams (experts in io-sched's packed format, one file per layer; the rest as stored, or
//! quantized with `--dense-bits`, by default in the experts' bits), with memory bounded
//! whatever the checkpoint's size, a progress bar over bytes and the peak RSS in the summary.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::CliResult;

#[derive(Args, Debug)]
pub struct PackArgs {
    /// Hugging Face or MLX model directory (config.json, *.safetensors, tokenizer.json).
    pub hf_dir: PathBuf,
    /// Output directory (written under a temporary name, renamed when complete).
    pub out_dir: PathBuf,
    /// Bits per expert weight: 16 (the checkpoint's float type), 8 or 4 (MLX-style affine,
    /// groups of 64); default 4. An MLX quantized checkpoint is packed as stored (omit it).
    #[arg(long)]
    pub bits: Option<u32>,
    /// Bits per non-expert weight (attention, routers, embeddings, lm_head): 16 keeps the
    /// checkpoint's float type, 8 or 4 quantize them (routers stay at 8 at least, norms as
    /// stored); default: the experts' bits (4 or 8; 16 for `--bits 16`). Hugging Face
    /// checkpoints only (an MLX one keeps its own).
    #[arg(long)]
    pub dense_bits: Option<u32>,
    /// Replace `out_dir` if it exists (only once the new one is complete).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &PackArgs) -> CliResult<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "packing {bar:40} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let mut opts = flashmoe_engine::PackOptions::new().force(args.force);
    if let Some(bits) = args.bits {
        opts = opts.bits(bits);
    }
    if let Some(bits) = args.dense_bits {
        opts = opts.dense_bits(bits);
    }
    let summary =
        flashmoe_engine::pack_model_with(&args.hf_dir, &args.out_dir, &opts, &mut progress);
    bar.finish_and_clear();
    let s = summary?;
    let dense = match s.dense_bits {
        16 => String::new(),
        bits => format!(" ({bits}-bit)"),
    };
    let peak = s
        .peak_rss_bytes
        .map(|b| format!(", peak RSS {:.1} MB", b as f64 / 1e6))
        .unwrap_or_default();
    println!(
        "packed {} expert records ({}) into {}: experts {:.1} MB, dense weights {:.1} MB{dense}{peak}",
        s.records,
        flashmoe_engine::packed_model::format_name(s.format),
        s.out_dir.display(),
        s.expert_file_bytes as f64 / 1e6,
        s.dense_bytes as f64 / 1e6
    );
    if s.scales_rounded.0 > 0 {
        println!(
            "note: {} MLX scale/bias values below f16's normal range were rounded to f16 (largest \
             change {:.1e}; codes and all other values are byte-exact; see flashmoe-pack.json)",
            s.scales_rounded.0, s.scales_rounded.1
        );
    }
    Ok(())
}
