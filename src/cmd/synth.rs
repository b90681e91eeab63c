//! `flashmoe synth`: a packed model of real geometry with deterministic pseudo-random expert
//! bytes (per-layer files + manifest), for replaying routing traces on the real disk; with
//! `--hf`, a runnable Hugging Face checkpoint of that geometry instead ([`super::synth_hf`]).

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use io_sched::bench::Rng;
use io_sched::packfile::{PackSplit, write_pack_set};

use super::CliResult;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Geometry preset (qwen3-30b-a3b, qwen3.5-397b-a17b, ...): experts and expert bytes.
    #[arg(long)]
    pub preset: Option<String>,
    /// Layers to write (default: the preset's; required without a preset).
    #[arg(long)]
    pub layers: Option<u32>,
    /// Bits per expert weight for a preset's expert size.
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Experts per layer (overrides the preset's).
    #[arg(long)]
    pub experts: Option<u32>,
    /// Experts routed per token and layer (recorded in the manifest; default: the preset's).
    #[arg(long)]
    pub k: Option<u32>,
    /// Bytes of one expert record (overrides the preset's).
    #[arg(long)]
    pub expert_bytes: Option<u64>,
    /// Output directory (per-layer .fmoe files and manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite an existing model in --out.
    #[arg(long)]
    pub force: bool,
    /// Seed of the pseudo-random bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Hugging Face checkpoint options (`--hf`).
    #[command(flatten)]
    pub hf: super::synth_hf::HfArgs,
}

/// The geometry a synth run writes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SynthGeometry {
    pub name: String,
    pub layers: u32,
    pub experts: u32,
    pub k: u32,
    pub bits: u32,
    pub expert_bytes: u64,
}

fn resolve(a: &SynthArgs) -> CliResult<SynthGeometry> {
    let mut g = match &a.preset {
        Some(name) => {
            let p = flashmoe_sim::geometry::model_preset(name)?;
            let geo = p.at_bits(a.bits)?;
            SynthGeometry {
                name: name.clone(),
                layers: geo.layers,
                experts: geo.experts,
                k: p.k_native.value as u32,
                bits: a.bits,
                expert_bytes: geo.expert_bytes,
            }
        }
        None => SynthGeometry {
            name: "explicit".into(),
            layers: a.layers.ok_or("--layers is required without --preset")?,
            experts: a.experts.ok_or("--experts is required without --preset")?,
            k: a.k.ok_or("--k is required without --preset")?,
            bits: a.bits,
            expert_bytes: a
                .expert_bytes
                .ok_or("--expert-bytes is required without --preset")?,
        },
    };
    if let Some(l) = a.layers {
        g.layers = l;
    }
    if let Some(e) = a.experts {
        g.experts = e;
    }
    if let Some(k) = a.k {
        g.k = k;
    }
    if let Some(b) = a.expert_bytes {
        g.expert_bytes = b;
    }
    if g.layers == 0 || g.experts == 0 || g.expert_bytes == 0 {
        return Err("--layers, --experts and --expert-bytes must be > 0".into());
    }
    if g.k == 0 || g.k > g.experts {
        return Err(format!("--k {} must be in 1..={}", g.k, g.experts).into());
    }
    let records = g.layers as u64 * g.experts as u64;
    if records > io_sched::packfile::MAX_RECORDS {
        return Err(format!(
            "--layers {} x --experts {} = {records} expert records: at most {} (checked before \
             anything is allocated or written)",
            g.layers,
            g.experts,
            io_sched::packfile::MAX_RECORDS
        )
        .into());
    }
    if g.expert_bytes > 1 << 32 {
        return Err(format!("--expert-bytes {} is over 4 GiB", g.expert_bytes).into());
    }
    Ok(g)
}

/// Fills `buf` with the deterministic bytes of record `index` under `seed`.
pub fn fill_record(seed: u64, index: u64, len: usize, buf: &mut Vec<u8>) {
    buf.resize(len, 0);
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
    // Incompressible bytes, so no layer of the storage stack can shortcut the reads.
    for chunk in buf.chunks_mut(8) {
        let x = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
}

pub fn run(a: &SynthArgs) -> CliResult<()> {
    if a.hf.hf {
        return super::synth_hf::run(a);
    }
    let g = resolve(a)?;
    let manifest = a.out.join("manifest.json");
    if manifest.exists() && !a.force {
        return Err(format!(
            "{} already holds a model (pass --force to overwrite)",
            a.out.display()
        )
        .into());
    }
    std::fs::create_dir_all(&a.out).map_err(|e| format!("create {}: {e}", a.out.display()))?;
    let total = g.layers as u64 * g.experts as u64 * g.expert_bytes;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "synth {msg} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(g.name.clone());
    let meta = serde_json::json!({ "synth": &g, "seed": a.seed });
    let experts = g.experts as u64;
    let layout = write_pack_set(
        &a.out,
        g.layers,
        g.experts,
        PackSplit::PerLayer,
        Some(&meta),
        |key, buf| {
            let index = key.layer as u64 * experts + key.expert as u64;
            fill_record(a.seed, index, g.expert_bytes as usize, buf);
            bar.inc(g.expert_bytes);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    println!(
        "wrote {}: {} layers x {} experts x {} B (k {}) = {:.2} GB in {} files",
        a.out.display(),
        g.layers,
        g.experts,
        g.expert_bytes,
        g.k,
        layout.total_expert_bytes() as f64 / 1e9,
        layout.files().len()
    );
    Ok(())
}
