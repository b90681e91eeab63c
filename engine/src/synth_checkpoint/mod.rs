//! A runnable model of real geometry with deterministic random weights, written as a Hugging
//! Face checkpoint (`config.json`, sharded bf16 safetensors with their index,
//! `generation_config.json`, a synthetic byte-level BPE `tokenizer.json` and
//! `tokenizer_config.json`), so it goes through the same `pack` a user runs.
//!
//! - Geometry: the real model's `config.json` ([`Preset`]) with `num_hidden_layers` and any
//!   other key overridden ([`SynthSpec::set`]), validated by the engine's own [`ModelConfig`];
//!   tensor names and shapes come from the same config ([`tensors::plan`]).
//! - Values: [`Scales`] (per-fan-in gains, so routing depends on the token), drawn by
//!   [`random_view`]; the same seed gives the same bytes.
//! - Memory: each tensor is generated when safetensors writes it and dropped after, so at
//!   most one tensor (the embedding, at most) is in memory.
//!
//! ```no_run
//! use flashmoe_engine::synth_checkpoint::{Preset, SynthSpec};
//! let spec = SynthSpec::new(Preset::Qwen3_30bA3b).layers(8).seed(1);
//! let summary = spec.write("/tmp/qwen3-8l".as_ref(), &|_done, _total| {})?;
//! println!("{} bytes in {} shards", summary.bytes, summary.shards);
//! # Ok::<(), flashmoe_engine::synth_checkpoint::SynthError>(())
//! ```

pub mod bpe;
pub mod presets;
pub mod random_view;
pub mod scales;
pub mod tensors;

pub use presets::{Preset, SpecialTokens};
pub use scales::Scales;

use crate::config::ModelConfig;
use random_view::RandomView;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What writing a synthetic checkpoint can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SynthError {
    /// The spec is not usable (an override, a scale, a family this generator does not write).
    #[error("synthetic checkpoint: {what}: {reason}")]
    Spec {
        /// The setting at fault.
        what: String,
        /// Why.
        reason: String,
    },
    /// The config the spec gives is refused by the engine.
    #[error("synthetic checkpoint: the config is refused by the engine")]
    Config(#[source] crate::EngineError),
    /// A file could not be written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// safetensors refused to write a shard.
    #[error("write shard {path}")]
    Safetensors {
        /// The shard.
        path: PathBuf,
        /// safetensors' error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// The output directory already holds a checkpoint.
    #[error("{0} already holds a checkpoint (config.json); pass force to overwrite")]
    Exists(PathBuf),
}

/// A synthetic checkpoint to write: a preset, overrides, seed and scales.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SynthSpec {
    /// The real model whose config is the starting point.
    pub preset: Preset,
    /// `num_hidden_layers` (default: the preset's).
    pub layers: Option<usize>,
    /// Other config keys overridden (e.g. `hidden_size` for a tiny test geometry).
    pub overrides: BTreeMap<String, Value>,
    /// Seed of every random value (and of the tokenizer's merges).
    pub seed: u64,
    /// Weight scales.
    pub scales: Scales,
    /// Largest shard, in bytes (a tensor larger than this gets a shard of its own).
    pub shard_bytes: u64,
    /// Threads generating values (the bytes do not depend on it).
    pub threads: usize,
    /// Overwrite an existing checkpoint in the output directory.
    pub force: bool,
}

/// What [`SynthSpec::write`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct SynthSummary {
    /// Bytes of all shards' tensor data.
    pub bytes: u64,
    /// Tensors written.
    pub tensors: usize,
    /// Shard files.
    pub shards: usize,
    /// Tokens in `tokenizer.json` (ids `0..tokenizer_len`).
    pub tokenizer_len: usize,
    /// The config's `vocab_size`.
    pub vocab_size: usize,
    /// The config as written.
    #[serde(skip)]
    pub config: ModelConfig,
}

impl SynthSpec {
    /// The preset's full geometry, seed 1, default scales, 2 GB shards.
    pub fn new(preset: Preset) -> Self {
        Self {
            preset,
            layers: None,
            overrides: BTreeMap::new(),
            seed: 1,
            scales: Scales::default(),
            shard_bytes: 2_000_000_000,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            force: false,
        }
    }
    /// Takes the geometry of `preset` instead, keeping the other settings.
    pub fn with_preset(mut self, preset: Preset) -> Self {
        self.preset = preset;
        self
    }
    /// Sets `num_hidden_layers`.
    pub fn layers(mut self, layers: usize) -> Self {
        self.layers = Some(layers);
        self
    }
    /// Overrides config key `key` with `value`.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.overrides.insert(key.into(), value);
        self
    }
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets the scales.
    pub fn scales(mut self, scales: Scales) -> Self {
        self.scales = scales;
        self
    }
    /// Sets the largest shard size in bytes.
    pub fn shard_bytes(mut self, bytes: u64) -> Self {
        self.shard_bytes = bytes.max(1);
        self
    }
    /// Sets the generating threads.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }
    /// Overwrite an existing checkpoint.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// The `config.json` this spec writes, with the tokenizer's special-token layout, checked
    /// by the engine's [`ModelConfig`].
    pub fn config(&self) -> Result<(Value, ModelConfig, SpecialTokens), SynthError> {
        let mut v = self.preset.config();
        let map = v
            .as_object_mut()
            .ok_or_else(|| spec("preset", "config is not an object"))?;
        if let Some(l) = self.layers {
            map.insert("num_hidden_layers".into(), Value::from(l));
            if map.contains_key("max_window_layers") {
                map.insert("max_window_layers".into(), Value::from(l));
            }
            if let Some(every) = self.preset.full_attention_interval() {
                map.insert("layer_types".into(), presets::layer_types(l, every));
            }
        }
        for (k, val) in &self.overrides {
            map.insert(k.clone(), val.clone());
        }
        let vocab = map
            .get("vocab_size")
            .and_then(Value::as_u64)
            .ok_or_else(|| spec("vocab_size", "must be a positive integer"))?
            as usize;
        let specials = self.preset.specials(vocab);
        map.insert("bos_token_id".into(), Value::from(specials.bos));
        map.insert("eos_token_id".into(), Value::from(specials.eos));
        let text = serde_json::to_string_pretty(&v).map_err(|e| spec("config", &e.to_string()))?;
        let cfg =
            ModelConfig::from_json(&text, Path::new("config.json")).map_err(SynthError::Config)?;
        Ok((v, cfg, specials))
    }

    /// Writes the checkpoint into `out` (created if needed), calling `progress(done, total)`
    /// with tensor bytes as each tensor is written.
    pub fn write(
        &self,
        out: &Path,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<SynthSummary, SynthError> {
        if let Some((name, v)) = self.scales.invalid() {
            return Err(spec(name, &format!("{v} is not a finite scale ≥ 0")));
        }
        let (config, cfg, specials) = self.config()?;
        let plan = tensors::plan(&cfg, &self.scales).ok_or_else(|| {
            spec(
                "preset",
                &format!("family {:?} is not written by this generator", cfg.family),
            )
        })?;
        if out.join("config.json").exists() && !self.force {
            return Err(SynthError::Exists(out.to_path_buf()));
        }
        std::fs::create_dir_all(out).map_err(|source| io("create", out, source))?;
        let tok = bpe::tokenizer_json(specials.len, &specials.tokens, self.seed)
            .map_err(|r| spec("tokenizer", &r))?;
        let tok_cfg = bpe::tokenizer_config(
            &specials.tokens,
            specials.bos,
            specials.eos,
            cfg.max_position_embeddings,
        );
        let gen_cfg = json!({
            "bos_token_id": specials.bos,
            "eos_token_id": specials.eos,
            "do_sample": false,
            "transformers_version": "4.51.0",
        });
        let meta = json!({
            "generator": "flashmoe synth --hf",
            "preset": self.preset.name(),
            "geometry_of": self.preset.hub_id(),
            "seed": self.seed,
            "scales": self.scales,
            "overrides": self.overrides,
            "layers": cfg.num_layers,
        });
        for (name, value) in [
            ("config.json", &config),
            ("generation_config.json", &gen_cfg),
            ("tokenizer.json", &tok),
            ("tokenizer_config.json", &tok_cfg),
            ("synth.json", &meta),
        ] {
            write_json(&out.join(name), value)?;
        }
        let total: u64 = plan.iter().map(|t| t.bytes()).sum();
        let groups = tensors::shards(&plan, self.shard_bytes);
        let n = groups.len();
        let done = std::sync::atomic::AtomicU64::new(0);
        let tick = |b: u64| {
            let d = done.fetch_add(b, std::sync::atomic::Ordering::Relaxed) + b;
            progress(d, total);
        };
        let mut weight_map = BTreeMap::new();
        // One entry only: safetensors writes this map in HashMap order, so a second key would
        // make the header bytes differ from run to run (the spec is in synth.json).
        let st_meta: HashMap<String, String> =
            HashMap::from([("format".to_string(), "pt".to_string())]);
        for (i, range) in groups.iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            let path = out.join(&file);
            let views = plan[range.clone()].iter().map(|t| {
                weight_map.insert(t.name.clone(), file.clone());
                let v = RandomView::new(
                    &t.name,
                    t.shape.clone(),
                    t.init,
                    self.seed,
                    self.threads,
                    &tick,
                );
                (t.name.clone(), v)
            });
            let views: Vec<_> = views.collect();
            safetensors::serialize_to_file(views, Some(st_meta.clone()), &path).map_err(
                |source| SynthError::Safetensors {
                    path: path.clone(),
                    source,
                },
            )?;
        }
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&out.join("model.safetensors.index.json"), &index)?;
        Ok(SynthSummary {
            bytes: total,
            tensors: plan.len(),
            shards: n,
            tokenizer_len: specials.len,
            vocab_size: cfg.vocab_size,
            config: cfg,
        })
    }
}

fn spec(what: &str, reason: &str) -> SynthError {
    SynthError::Spec {
        what: what.into(),
        reason: reason.into(),
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> SynthError {
    SynthError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn write_json(path: &Path, v: &Value) -> Result<(), SynthError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| spec("json", &e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|source| io("write", path, source))
}
