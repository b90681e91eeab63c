//! `flashmoe synth --hf`: a runnable model of real geometry with deterministic random weights,
//! written as a Hugging Face checkpoint ([`flashmoe_engine::synth_checkpoint`]).

use std::path::Path;

use clap::Args;
use flashmoe_engine::synth_checkpoint::{Preset, Scales, SynthSpec};
use indicatif::{ProgressBar, ProgressStyle};

use super::CliResult;

/// Options of `synth --hf` beyond the shared ones (preset, layers, experts, k, seed, out).
#[derive(Args, Debug, Clone)]
pub struct HfArgs {
    /// Write a Hugging Face checkpoint (config, sharded bf16 safetensors, tokenizer) instead of
    /// a packed model of random expert bytes.
    #[arg(long)]
    pub hf: bool,
    /// Override a config.json key (JSON value), e.g. `--set hidden_size=256`; repeatable.
    #[arg(long = "set", value_name = "KEY=JSON")]
    pub set: Vec<String>,
    /// Largest shard in MB (at least 1).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_mb: u64,
    /// Std of each token's own part of its embedding row.
    #[arg(long)]
    pub embed_std: Option<f32>,
    /// Std of the offset all embedding rows share (popularity skew, temporal reuse).
    #[arg(long)]
    pub embed_shared_std: Option<f32>,
    /// Total RMS gain of all residual branches (o_proj, down_proj) together.
    #[arg(long)]
    pub residual_gain: Option<f32>,
    /// Std of the router's logits.
    #[arg(long)]
    pub router_gain: Option<f32>,
    /// Gain of q_proj and k_proj.
    #[arg(long)]
    pub qkv_gain: Option<f32>,
    /// Std of the output logits.
    #[arg(long)]
    pub lm_head_gain: Option<f32>,
}

/// The error `e` with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The spec the arguments describe.
pub fn spec(a: &super::synth::SynthArgs) -> CliResult<SynthSpec> {
    let names = || {
        Preset::ALL
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = a
        .preset
        .as_deref()
        .ok_or_else(|| format!("--hf needs --preset ({})", names()))?;
    let preset = Preset::from_name(name).ok_or_else(|| {
        format!(
            "--preset {name}: no HF preset of that name (known: {})",
            names()
        )
    })?;
    let h = &a.hf;
    let mut s = Scales::default();
    for (v, set) in [
        (h.embed_std, Scales::embed_std as fn(Scales, f32) -> Scales),
        (h.embed_shared_std, Scales::embed_shared_std),
        (h.residual_gain, Scales::residual_gain),
        (h.router_gain, Scales::router_gain),
        (h.qkv_gain, Scales::qkv_gain),
        (h.lm_head_gain, Scales::lm_head_gain),
    ] {
        if let Some(v) = v {
            s = set(s, v);
        }
    }
    let mut spec = SynthSpec::new(preset)
        .seed(a.seed)
        .scales(s)
        .shard_bytes(h.shard_mb.saturating_mul(1_000_000))
        .force(a.force);
    if let Some(l) = a.layers {
        spec = spec.layers(l as usize);
    }
    let experts_key = match preset {
        Preset::Mixtral8x7b => "num_local_experts",
        _ => "num_experts",
    };
    if let Some(e) = a.experts {
        spec = spec.set(experts_key, e.into());
    }
    if let Some(k) = a.k {
        spec = spec.set("num_experts_per_tok", k.into());
    }
    for kv in &h.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--set {kv}: expected KEY=JSON"))?;
        let v: serde_json::Value = serde_json::from_str(v)
            .map_err(|e| format!("--set {kv}: the value is not JSON: {e}"))?;
        spec = spec.set(k, v);
    }
    Ok(spec)
}

/// Runs `synth --hf`.
pub fn run(a: &super::synth::SynthArgs) -> CliResult<()> {
    let spec = spec(a)?;
    let out: &Path = &a.out;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "synth {msg} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(spec.preset.name());
    let summary = spec
        .write(out, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .map_err(|e| chain(&e))?;
    bar.finish_and_clear();
    let c = &summary.config;
    println!(
        "wrote {}: {} (geometry of {}), {} layers x {} experts (top-{}), hidden {}, vocab {} \
         (tokenizer: {} tokens), {} tensors, {:.2} GB in {} shards, seed {}",
        out.display(),
        spec.preset.name(),
        spec.preset.hub_id(),
        c.num_layers,
        c.num_experts,
        c.top_k,
        c.hidden_size,
        summary.vocab_size,
        summary.tokenizer_len,
        summary.tensors,
        summary.bytes as f64 / 1e9,
        summary.shards,
        a.seed
    );
    Ok(())
}
