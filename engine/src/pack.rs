//! The packer: an HF checkpoint directory → a packed model directory that io-sched streams.
//!
//! # Packed model directory
//!
//! | file | what |
//! |---|---|
//! | `experts-layer-NNNN.fmoe` | the expert records of layer N in io-sched's packed-experts format v1 ([`io_sched::packfile`]), each record in the [expert record layout](crate::experts) |
//! | `manifest.json` | io-sched's manifest of those files; its `meta` is a [`PackMeta`] |
//! | `dense.safetensors` | every non-expert tensor: unchanged (original names, dtype and bytes), or quantized with `--dense-bits` / from an MLX checkpoint as [`crate::quant_tensors`] describes |
//! | `config.json`, `tokenizer.json` | copied from the checkpoint |
//! | `tokenizer_config.json`, `generation_config.json`, `chat_template.jinja` | copied when present (chat needs the template and the stop tokens) |
//! | `flashmoe-pack.json` | what was packed: format, sizes and the files, for people and tools |
//!
//! Everything is written into a hidden temporary sibling of the output directory, which is
//! renamed to its final name only once complete: a directory under the final name is always
//! whole. Packing is deterministic: the same checkpoint and options give the same bytes.
//!
//! The input is a Hugging Face checkpoint, or an MLX quantized one (its `config.json` has a
//! `quantization`): see [`crate::mlx`], which re-lays its codes without re-quantizing.

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::experts::{ExpertLayout, pack_record};
use crate::mlx::MlxQuantization;
use crate::model::FamilyNames;
use crate::pack_options::PackOptions;
use crate::packed_model::{PACK_VERSION, PackMeta, format_name};
use crate::quant_tensors::RoundLog;
use crate::weights::Checkpoint;
use crate::write_back::WriteBack;
use flashmoe_backends::quant::WeightFormat;
use io_sched::packfile::{PackSplit, write_pack_set};
use std::path::{Path, PathBuf};

/// Files copied from the checkpoint: (name, required).
const COPIED: [(&str, bool); 5] = [
    ("config.json", true),
    ("tokenizer.json", true),
    ("tokenizer_config.json", false),
    ("generation_config.json", false),
    ("chat_template.jinja", false),
];

/// Name of the packer's description file.
pub const PACK_INFO_FILE: &str = "flashmoe-pack.json";
/// Name of the non-expert weights file.
pub const DENSE_FILE: &str = "dense.safetensors";

/// What [`pack_model`] wrote.
#[derive(Clone, Debug)]
pub struct PackSummary {
    /// The output directory.
    pub out_dir: PathBuf,
    /// Format of the expert records.
    pub format: WeightFormat,
    /// Expert records written.
    pub records: u64,
    /// Bytes of the expert files.
    pub expert_file_bytes: u64,
    /// Bytes of `dense.safetensors`.
    pub dense_bytes: u64,
    /// MLX scales and biases below f16's normal range that were rounded (see
    /// [`crate::quant_tensors`]), and the largest change; 0 from a Hugging Face checkpoint.
    pub scales_rounded: (u64, f32),
    /// Bits of the non-expert weights (16: as stored; 4 or 8: quantized; an MLX checkpoint's
    /// are as stored, whatever they are).
    pub dense_bits: u32,
    /// The process's peak resident memory so far (`VmHWM`), where the OS reports it (Linux):
    /// of the whole process, so it bounds what packing needed.
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set (`VmHWM` of `/proc/self/status`), where the OS has it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The record format for `--bits`: 16 keeps the checkpoint's 16-bit float type (bf16 for an
/// f32 checkpoint), 8 and 4 are MLX-style affine formats with groups of 64 (of 32 when an
/// expert dimension is a multiple of 32 but not of 64, e.g. an intermediate size of 32).
pub fn format_for_bits(bits: u32, cfg: &ModelConfig) -> Option<WeightFormat> {
    let (h, i) = (cfg.hidden_size, cfg.expert_intermediate);
    let group = if h.is_multiple_of(64) && i.is_multiple_of(64) {
        64
    } else if h.is_multiple_of(32) && i.is_multiple_of(32) {
        32
    } else {
        64
    };
    match bits {
        16 => Some(match cfg.dtype {
            Some(WeightFormat::F16) => WeightFormat::F16,
            _ => WeightFormat::Bf16,
        }),
        8 => Some(WeightFormat::Q8 { group }),
        4 => Some(WeightFormat::Q4 { group }),
        _ => None,
    }
}

/// Packs the HF checkpoint in `src` into `out` with expert records in `bits` (16, 8 or 4) and
/// the non-expert weights as stored (`--dense-bits 16`, exact: unlike `flashmoe pack`'s
/// default, see [`PackOptions`]). Refuses an existing `out` unless `force`.
/// `progress(done, total)` is called as bytes are written (see [`pack_model_with`]).
pub fn pack_model(
    src: &Path,
    out: &Path,
    bits: u32,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PackSummary> {
    let opts = PackOptions::new().bits(bits).dense_bits(16).force(force);
    pack_model_with(src, out, &opts, progress)
}

/// Packs the HF or MLX checkpoint in `src` into `out` as `opts` says.
///
/// Memory stays bounded whatever the checkpoint's size: the checkpoint is read tensor by
/// tensor ([`Checkpoint::open_unmapped`]), `dense.safetensors` is written one tensor at a
/// time (`dense_writer.rs`), and the page cache of what was read and written is dropped
/// as it goes (`write_back.rs`). The largest single non-expert tensor (e.g. the
/// embeddings) is held once in memory, and the final check loads the dense weights once.
/// `progress(done, total)` is called with bytes: records and tensors written so far, of all.
pub fn pack_model_with(
    src: &Path,
    out: &Path,
    opts: &PackOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PackSummary> {
    let fail = |reason: String| EngineError::Pack {
        path: out.to_path_buf(),
        reason,
    };
    crate::safe_replace::check_target(src, out, opts.forced())?;
    let cfg = ModelConfig::from_file(&src.join("config.json"))?;
    let mlx = MlxQuantization::from_config(&src.join("config.json"))?;
    // Multimodal checkpoints open as their text model (text names, no vision/MTP tensors).
    let ckpt = Checkpoint::open_unmapped(src, cfg.dtype)?;
    crate::pack_check::check_checkpoint(src, &cfg, &ckpt)?;
    let (format, dense_bits) = opts.resolve(&cfg, &ckpt, mlx.as_ref(), out)?;
    let name = out
        .file_name()
        .ok_or_else(|| fail("has no directory name".into()))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|source| EngineError::Io {
        op: "create directory",
        path: parent.clone(),
        source,
    })?;
    let tmp = parent.join(format!(".{name}.packing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|source| EngineError::Io {
        op: "create directory",
        path: tmp.clone(),
        source,
    })?;
    let source = Source {
        mlx: mlx.as_ref(),
        dense_bits,
    };
    let written = write_all(src, &tmp, &cfg, &ckpt, format, &source, progress).and_then(|s| {
        crate::pack_check::check_packed(&tmp)
            .map(|()| s)
            .map_err(|e| match e {
                EngineError::TensorShape { .. }
                | EngineError::TensorDtype { .. }
                | EngineError::QuantTensor { .. }
                | EngineError::MissingTensor { .. } => EngineError::PackCheck {
                    src: src.to_path_buf(),
                    source: Box::new(e),
                },
                e => e,
            })
    });
    let summary = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = crate::safe_replace::replace_dir(&tmp, out, &parent, &name) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(PackSummary {
        out_dir: out.to_path_buf(),
        peak_rss_bytes: peak_rss_bytes(),
        ..summary
    })
}

/// Where the records and dense weights come from: an MLX checkpoint (re-laid as stored) or an
/// HF one (`dense_bits` 16 keeps its dense weights as they are).
struct Source<'a> {
    mlx: Option<&'a MlxQuantization>,
    dense_bits: u32,
}

/// Writes every file of the packed model into `dir`.
fn write_all(
    src: &Path,
    dir: &Path,
    cfg: &ModelConfig,
    ckpt: &Checkpoint,
    format: WeightFormat,
    source: &Source<'_>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PackSummary> {
    let names = FamilyNames::of(cfg.family);
    let layout = ExpertLayout::for_config(cfg, format)?;
    let meta = PackMeta::new(cfg, &layout);
    let meta_json = serde_json::to_value(&meta).map_err(|source| EngineError::Json {
        path: dir.join("manifest.json"),
        source,
    })?;
    let records = (cfg.num_layers * cfg.num_experts) as u64;
    let planned = match (source.mlx, source.dense_bits) {
        (Some(q), _) => q.plan_dense(ckpt, cfg)?,
        (None, bits) => crate::dense_pack::plan_dense(ckpt, cfg, bits)?,
    };
    let total = records * layout.record_len as u64 + crate::dense_writer::planned_bytes(&planned);
    let mut done = 0u64;
    let mut write_back = WriteBack::new(dir);
    // The fill closure must return io-sched errors: keep the engine's own error aside.
    let mut inner: Option<EngineError> = None;
    let mut rounding = RoundLog::default();
    let packed = write_pack_set(
        dir,
        cfg.num_layers as u32,
        cfg.num_experts as u32,
        PackSplit::PerLayer,
        Some(&meta_json),
        |key, buf| {
            let (l, e) = (key.layer as usize, key.expert as usize);
            let record = match source.mlx {
                Some(_) => crate::mlx::relay_record(ckpt, cfg.family, &layout, l, e, &mut rounding),
                None => pack_record(ckpt, names, &layout, l, e),
            };
            let written = record.and_then(|rec| {
                buf.extend_from_slice(&rec);
                write_back.wrote(rec.len() as u64)
            });
            if let Err(e) = written {
                let msg = e.to_string();
                inner = Some(e);
                return Err(io_sched::Error::Layout(msg));
            }
            done += layout.record_len as u64;
            progress(done, total);
            Ok(())
        },
    );
    let expert_layout = match (packed, inner) {
        (_, Some(e)) => return Err(e),
        (Err(source), None) => {
            return Err(EngineError::IoSched {
                context: format!("writing packed experts into {}", dir.display()),
                source,
            });
        }
        (Ok(l), None) => l,
    };
    write_back.flush()?;
    let mut expert_file_bytes = 0;
    for f in expert_layout.files() {
        expert_file_bytes += file_len(f)?;
    }
    let dense_path = dir.join(DENSE_FILE);
    let dense_bytes =
        crate::dense_writer::write_planned(ckpt, &planned, &dense_path, &mut rounding, &mut |n| {
            done += n;
            progress(done, total);
        })?;
    let mut copied = Vec::new();
    for (file, required) in COPIED {
        let from = src.join(file);
        if !required && !from.exists() {
            continue;
        }
        // Read and write (not `fs::copy`) so the copy gets ordinary permissions.
        let bytes = std::fs::read(&from).map_err(|source| EngineError::Io {
            op: "read",
            path: from.clone(),
            source,
        })?;
        std::fs::write(dir.join(file), bytes).map_err(|source| EngineError::Io {
            op: "write",
            path: dir.join(file),
            source,
        })?;
        copied.push(file);
    }
    let mut expert_files: Vec<String> = expert_layout
        .files()
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    expert_files.sort();
    let mut info = serde_json::json!({
        "format": "flashmoe-packed-model",
        "version": PACK_VERSION,
        "model_type": meta.model_type,
        "weight_format": format_name(format),
        "bits": format.bits(),
        "layers": cfg.num_layers,
        "experts": cfg.num_experts,
        "top_k": cfg.top_k,
        "record_len": layout.record_len,
        "expert_file_bytes": expert_file_bytes,
        "dense_bytes": dense_bytes,
        "expert_files": expert_files,
        "dense_file": DENSE_FILE,
        "copied": copied,
    });
    // Only what differs from a plain HF pack, so that its description stays as it was.
    if let Some(obj) = info.as_object_mut() {
        if source.mlx.is_some() {
            obj.insert("source".into(), "mlx".into());
            obj.insert("scales_rounded".into(), rounding.rounded.into());
            obj.insert(
                "scales_rounded_max_change".into(),
                rounding.max_change.into(),
            );
            obj.insert(
                "scales_rounded_tensors".into(),
                serde_json::json!(rounding.tensors),
            );
        }
        if source.dense_bits != 16 {
            obj.insert("dense_bits".into(), source.dense_bits.into());
        }
    }
    let info_path = dir.join(PACK_INFO_FILE);
    let text = serde_json::to_string_pretty(&info).map_err(|source| EngineError::Json {
        path: info_path.clone(),
        source,
    })?;
    std::fs::write(&info_path, text + "\n").map_err(|source| EngineError::Io {
        op: "write",
        path: info_path,
        source,
    })?;
    Ok(PackSummary {
        out_dir: dir.to_path_buf(),
        format,
        records,
        expert_file_bytes,
        dense_bytes,
        scales_rounded: (rounding.rounded, rounding.max_change),
        dense_bits: source.dense_bits,
        peak_rss_bytes: None,
    })
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .map_err(|source| EngineError::Io {
            op: "stat",
            path: path.to_path_buf(),
            source,
        })?
        .len())
}
