//! Opening a packed model directory (see [`crate::pack`]): config, tokenizer, dense weights,
//! and the expert layout from io-sched's manifest, with the manifest's `meta` checked against
//! `config.json`.

use crate::config::{Family, ModelConfig};
use crate::error::{EngineError, Result};
use crate::experts::ExpertLayout;
use crate::model::MoeModel;
use crate::pack::DENSE_FILE;
use crate::tokenizer::Tokenizer;
use crate::weights::Checkpoint;
use flashmoe_backends::ComputeBackend;
use flashmoe_backends::quant::WeightFormat;
use io_sched::Manifest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the packed model directory (the `meta` and file set), independent of io-sched's
/// packed-file and manifest versions.
pub const PACK_VERSION: u32 = 1;

/// What the packer puts in the manifest's `meta`: enough to check the records against the
/// config before reading any of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackMeta {
    /// Always `"flashmoe-packed-model"`.
    pub format: String,
    /// [`PACK_VERSION`].
    pub pack_version: u32,
    /// `model_type` of the config (`qwen3_moe`, `mixtral`).
    pub model_type: String,
    /// Bits per weight code (16, 8 or 4).
    pub bits: u32,
    /// The record format (`bf16`, `f16`, `f32`, `q8g64`, `q4g64`, ...).
    pub weight_format: String,
    /// `hidden_size`.
    pub hidden: usize,
    /// Expert intermediate size.
    pub inter: usize,
    /// Bytes of one expert record (payload, before 4096 padding).
    pub record_len: usize,
}

impl PackMeta {
    /// The meta of `cfg`'s experts packed in `layout`.
    pub fn new(cfg: &ModelConfig, layout: &ExpertLayout) -> Self {
        Self {
            format: "flashmoe-packed-model".into(),
            pack_version: PACK_VERSION,
            model_type: model_type(cfg.family).into(),
            bits: layout.format.bits(),
            weight_format: format_name(layout.format),
            hidden: layout.hidden,
            inter: layout.inter,
            record_len: layout.record_len,
        }
    }
}

/// The HF `model_type` of a family.
pub fn model_type(family: Family) -> &'static str {
    match family {
        Family::Qwen3Moe => "qwen3_moe",
        Family::Mixtral => "mixtral",
        Family::Qwen35Moe => "qwen3_5_moe",
        Family::Qwen3Next => "qwen3_next",
    }
}

/// A stable name of a record format (`q4g64` = 4-bit, groups of 64).
pub fn format_name(f: WeightFormat) -> String {
    match f {
        WeightFormat::F32 => "f32".into(),
        WeightFormat::Bf16 => "bf16".into(),
        WeightFormat::F16 => "f16".into(),
        WeightFormat::Q8 { group } => format!("q8g{group}"),
        WeightFormat::Q4 { group } => format!("q4g{group}"),
    }
}

/// Parses [`format_name`]'s output.
pub fn parse_format(s: &str) -> Option<WeightFormat> {
    match s {
        "f32" => Some(WeightFormat::F32),
        "bf16" => Some(WeightFormat::Bf16),
        "f16" => Some(WeightFormat::F16),
        _ => {
            let group = |p: &str| s.strip_prefix(p).and_then(|g| g.parse::<u32>().ok());
            group("q8g")
                .map(|group| WeightFormat::Q8 { group })
                .or_else(|| group("q4g").map(|group| WeightFormat::Q4 { group }))
        }
    }
}

/// A packed model directory, opened and checked.
///
/// ```no_run
/// let m = flashmoe_engine::PackedModel::open("models/tiny-qwen3-moe-q4".as_ref())?;
/// println!("{} layers, {:?} experts", m.config.num_layers, m.record.format);
/// # Ok::<(), flashmoe_engine::EngineError>(())
/// ```
pub struct PackedModel {
    /// The directory.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: ModelConfig,
    /// `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// `dense.safetensors`.
    pub dense: Checkpoint,
    /// Where each expert record lies (io-sched's layout from `manifest.json`).
    pub experts: io_sched::ExpertLayout,
    /// The layout inside each record.
    pub record: ExpertLayout,
    /// End-of-sequence token ids (`generation_config.json`, else `config.json`).
    pub eos: Vec<u32>,
}

impl PackedModel {
    /// Opens `dir`: loads the config and tokenizer, validates the manifest against the expert
    /// files, checks its `meta` against the config, and maps the dense weights.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let manifest = dir.join("manifest.json");
        let (experts, meta) = Manifest::load(&manifest).map_err(|source| EngineError::IoSched {
            context: format!("loading expert manifest {}", manifest.display()),
            source,
        })?;
        let record = check_meta(&manifest, meta, &config, &experts)?;
        let dense = Checkpoint::open_file(&dir.join(DENSE_FILE), config.dtype)?;
        let eos = eos_ids(dir);
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            dense,
            experts,
            record,
            eos,
        })
    }

    /// Loads the resident weights onto `be` with a KV cache of `max_seq` positions.
    pub fn load_model<B: ComputeBackend>(&self, be: B, max_seq: usize) -> Result<MoeModel<B>> {
        MoeModel::load(be, self.config.clone(), &self.dense, max_seq)
    }

    /// Bytes of all expert records (payloads).
    pub fn expert_bytes(&self) -> u64 {
        self.experts.iter().map(|(_, l)| l.len).sum()
    }
}

/// Checks the manifest's meta and records against the config; returns the record layout.
fn check_meta(
    manifest: &Path,
    meta: Option<serde_json::Value>,
    cfg: &ModelConfig,
    experts: &io_sched::ExpertLayout,
) -> Result<ExpertLayout> {
    let bad = |field: &str, reason: String| EngineError::PackMeta {
        path: manifest.to_path_buf(),
        field: field.into(),
        reason,
    };
    let meta =
        meta.ok_or_else(|| bad("meta", "missing (not written by `flashmoe pack`?)".into()))?;
    let meta: PackMeta =
        serde_json::from_value(meta).map_err(|e| bad("meta", format!("malformed: {e}")))?;
    if meta.format != "flashmoe-packed-model" {
        return Err(bad(
            "meta.format",
            format!("is {:?}, expected \"flashmoe-packed-model\"", meta.format),
        ));
    }
    if meta.pack_version != PACK_VERSION {
        return Err(bad(
            "meta.pack_version",
            format!(
                "is {}, this reader knows version {PACK_VERSION}",
                meta.pack_version
            ),
        ));
    }
    let disagree = |field: &str, got: String, cfg_field: &str, want: String| {
        bad(
            field,
            format!("is {got}, but config.json `{cfg_field}` says {want}"),
        )
    };
    let want_type = model_type(cfg.family);
    if meta.model_type != want_type {
        return Err(disagree(
            "meta.model_type",
            format!("{:?}", meta.model_type),
            "model_type",
            format!("{want_type:?}"),
        ));
    }
    if meta.hidden != cfg.hidden_size {
        return Err(disagree(
            "meta.hidden",
            meta.hidden.to_string(),
            "hidden_size",
            cfg.hidden_size.to_string(),
        ));
    }
    if meta.inter != cfg.expert_intermediate {
        return Err(disagree(
            "meta.inter",
            meta.inter.to_string(),
            "moe_intermediate_size",
            cfg.expert_intermediate.to_string(),
        ));
    }
    if experts.num_layers() as usize != cfg.num_layers {
        return Err(disagree(
            "layers",
            experts.num_layers().to_string(),
            "num_hidden_layers",
            cfg.num_layers.to_string(),
        ));
    }
    if experts.num_experts() as usize != cfg.num_experts {
        return Err(disagree(
            "experts",
            experts.num_experts().to_string(),
            "num_experts",
            cfg.num_experts.to_string(),
        ));
    }
    let format = parse_format(&meta.weight_format).ok_or_else(|| {
        bad(
            "meta.weight_format",
            format!("{:?} is not a known format", meta.weight_format),
        )
    })?;
    if format.bits() != meta.bits {
        return Err(bad(
            "meta.bits",
            format!(
                "is {}, but weight_format {:?} has {} bits",
                meta.bits,
                meta.weight_format,
                format.bits()
            ),
        ));
    }
    let record = ExpertLayout::new(meta.hidden, meta.inter, format)?;
    if record.record_len != meta.record_len {
        return Err(bad(
            "meta.record_len",
            format!(
                "is {}, but a [{} x {}] {} record is {} bytes",
                meta.record_len, meta.hidden, meta.inter, meta.weight_format, record.record_len
            ),
        ));
    }
    for (key, loc) in experts.iter() {
        if loc.len != record.record_len as u64 {
            return Err(bad(
                "records",
                format!(
                    "layer {} expert {} is {} bytes, meta.record_len says {}",
                    key.layer, key.expert, loc.len, record.record_len
                ),
            ));
        }
    }
    Ok(record)
}

/// `eos_token_id` from `generation_config.json`, else `config.json` (an int or a list).
fn eos_ids(dir: &Path) -> Vec<u32> {
    for file in ["generation_config.json", "config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match v.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => {
                if let Some(id) = n.as_u64() {
                    return vec![id as u32];
                }
            }
            Some(serde_json::Value::Array(a)) => {
                return a
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect();
            }
            _ => {}
        }
    }
    Vec::new()
}
