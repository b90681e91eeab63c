//! Decode-step time against context length: one model on the CPU, experts in memory (bf16),
//! stepped alternately at positions around POS_A and around POS_B (two copies), median of 20. Shows that Gated
//! DeltaNet layers cost the same at any position (fixed-size state), while attention layers
//! grow with the KV cache. The context may exceed `max_position_embeddings` here (a cost
//! measurement, not a quality one).
//!
//! `cargo run --release -p flashmoe-engine --example context_cost -- MODEL_DIR [POS_A] [POS_B]`

use flashmoe_backends::CpuBackend;
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::{
    Checkpoint, FamilyNames, InMemoryExperts, ModelConfig, MoeModel, NoObserver,
};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: context_cost MODEL_DIR [POS_A] [POS_B]")?,
    );
    let a: usize = args.next().map_or(Ok(100), |s| s.parse())?;
    let b: usize = args.next().map_or(Ok(2000), |s| s.parse())?;
    let n = b + 10;
    let mut cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    cfg.max_position_embeddings = cfg.max_position_embeddings.max(n);
    let ckpt = Checkpoint::open(&dir, cfg.dtype)?;
    let mut experts =
        InMemoryExperts::pack(&ckpt, &cfg, FamilyNames::of(cfg.family), WeightFormat::Bf16)?;
    let vocab = cfg.vocab_size as u32;
    let token = |pos: usize| ((pos as u32).wrapping_mul(2_654_435_761) >> 7) % vocab;
    // Two copies: one brought to POS_A, one to POS_B, then stepped alternately so that both
    // windows see the same machine load (this machine is shared).
    let mut near = MoeModel::load(CpuBackend::new(), cfg.clone(), &ckpt, n)?;
    let mut far = MoeModel::load(CpuBackend::new(), cfg, &ckpt, n)?;
    let (start_a, start_b) = (a.saturating_sub(10), b.saturating_sub(10));
    for pos in 0..start_a {
        near.forward(token(pos), pos, &mut experts, &mut NoObserver)?;
    }
    for pos in 0..start_b {
        far.forward(token(pos), pos, &mut experts, &mut NoObserver)?;
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let t0 = Instant::now();
        near.forward(
            token(start_a + i),
            start_a + i,
            &mut experts,
            &mut NoObserver,
        )?;
        ta.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        far.forward(
            token(start_b + i),
            start_b + i,
            &mut experts,
            &mut NoObserver,
        )?;
        tb.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (ma, mb) = (median(&mut ta), median(&mut tb));
    println!(
        "{}: median step around pos {a}: {ma:.3} ms, around pos {b}: {mb:.3} ms, ratio {:.3}",
        dir.display(),
        mb / ma
    );
    Ok(())
}
