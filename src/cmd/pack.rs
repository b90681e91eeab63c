//! `flashmoe pack`: an HF checkpoint directory → a packed model directory that `generate`
//! streams (experts in io-sched's packed format, one file per layer; the rest unchanged).

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::CliResult;

#[derive(Args, Debug)]
pub struct PackArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    pub hf_dir: PathBuf,
    /// Output directory (written under a temporary name, renamed when complete).
    pub out_dir: PathBuf,
    /// Bits per expert weight: 16 (the checkpoint's float type), 8 or 4 (MLX-style affine,
    /// groups of 64).
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Replace `out_dir` if it exists (only once the new one is complete).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &PackArgs) -> CliResult<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("packing experts {bar:40} {pos}/{len} records ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let summary = flashmoe_engine::pack_model(
        &args.hf_dir,
        &args.out_dir,
        args.bits,
        args.force,
        &mut progress,
    );
    bar.finish_and_clear();
    let s = summary?;
    println!(
        "packed {} expert records ({}) into {}: experts {:.1} MB, dense weights {:.1} MB",
        s.records,
        flashmoe_engine::packed_model::format_name(s.format),
        s.out_dir.display(),
        s.expert_file_bytes as f64 / 1e6,
        s.dense_bytes as f64 / 1e6
    );
    Ok(())
}
