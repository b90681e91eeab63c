//! Greedy generation from an HF model directory on the CPU, printing the text and tokens/s.
//!
//! `cargo run --release -p flashmoe-engine --example generate -- MODEL_DIR [16|8|4] [N] [PROMPT]`

use flashmoe_backends::CpuBackend;
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::{
    Checkpoint, ExpertSource, FamilyNames, InMemoryExperts, ModelConfig, MoeModel, NoObserver,
    Tokenizer, generate_greedy,
};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .ok_or("usage: generate MODEL_DIR [16|8|4] [N] [PROMPT]")?,
    );
    let format = match args.get(1).map(String::as_str).unwrap_or("16") {
        "16" => WeightFormat::Bf16,
        "8" => WeightFormat::Q8_64,
        "4" => WeightFormat::Q4_64,
        other => return Err(format!("bits must be 16, 8 or 4, not {other}").into()),
    };
    let n: usize = args.get(2).map_or(Ok(40), |s| s.parse())?;
    let prompt = args
        .get(3)
        .map_or("The Rust programming language", String::as_str);

    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(&dir, cfg.dtype)?;
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut experts = InMemoryExperts::pack(&ckpt, &cfg, FamilyNames::of(cfg.family), format)?;
    let per_token = cfg.num_layers * cfg.top_k * experts.layout().record_len;
    let mut model = MoeModel::load(CpuBackend::new(), cfg, &ckpt, 1024)?;
    let ids = tok.encode(prompt)?;
    let t = Instant::now();
    let out = generate_greedy(&mut model, &ids, n, &mut experts, &mut NoObserver)?;
    let secs = t.elapsed().as_secs_f64();
    println!("{prompt}{}", tok.decode(&out)?);
    let steps = ids.len() + n - 1;
    println!(
        "{format:?} experts: {steps} decode steps in {secs:.3} s = {:.1} tokens/s; {:.2} MB of expert records used per token",
        steps as f64 / secs,
        per_token as f64 / 1e6
    );
    Ok(())
}
