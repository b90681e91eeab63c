//! MLX quantized checkpoints (`mlx_lm.convert -q`, the Hub's `mlx-community/...-4bit`) as input
//! to [`crate::pack_model`]: no re-quantization, every code, scale and bias kept.
//!
//! - `config.json` `quantization` (MLX also writes the same as `quantization_config`):
//!   `group_size`, `bits`, `mode` (only `affine`), and per-module overrides keyed by module path,
//!   an object of their own (`"model.layers.0.mlp.gate": {"group_size": 64, "bits": 8}`: mlx-lm
//!   keeps MoE routers at 8 bits) or `false` (left in float). [`MlxQuantization`] parses it and
//!   every quantized tensor is checked against what it says for its module: a checkpoint whose
//!   config and tensors disagree is refused, naming the tensor.
//! - Routed experts are stacked per layer: `{layers}.N.{moe}.switch_mlp.{gate,up,down}_proj`
//!   `.weight` (`U32` `[experts, out, in * bits / 32]`) with `.scales` / `.biases`
//!   (`[experts, out, in / group]`). [`relay_record`] copies expert `e`'s slice of each into one
//!   io-sched record ([`crate::experts`] layout): codes byte for byte, scales and biases
//!   converted to f16, exactly except below f16's normal range ([`crate::quant_tensors::to_f16`]:
//!   rounded by at most 2^-25, counted and reported).
//! - Everything else goes to `dense.safetensors` (`MlxQuantization::plan_dense`): quantized
//!   modules as codes + f16 scales + f16 biases (run quantized by both backends), the rest as is.
//!
//! Tensor names differ per family only in [`MlxNames`]: a family is one table entry.

use crate::config::{Family, ModelConfig};
use crate::dense_writer::{Planned, Produce};
use crate::error::{BackendContext, EngineError, Result};
use crate::experts::ExpertLayout;
use crate::quant_tensors::{QuantParts, RoundLog, is_quantized, module_of, parts};
use crate::weights::Checkpoint;
use flashmoe_backends::quant::WeightFormat;
use safetensors::Dtype;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The bits and group size of one quantized module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantSpec {
    /// Bits per code (4 or 8).
    pub bits: u32,
    /// Weights per group along a row.
    pub group: u32,
}

impl QuantSpec {
    /// The matching record format.
    pub fn format(self) -> WeightFormat {
        if self.bits == 4 {
            WeightFormat::Q4 { group: self.group }
        } else {
            WeightFormat::Q8 { group: self.group }
        }
    }
}

/// How a family's MLX checkpoint names its stacked experts.
#[derive(Clone, Copy, Debug)]
pub struct MlxNames {
    /// Prefix of the decoder layers (`model.layers`).
    pub layers: &'static str,
    /// The MoE block inside a layer (`mlp`, `block_sparse_moe`).
    pub moe: &'static str,
    /// The gate, up and down projections inside `switch_mlp`.
    pub projections: [&'static str; 3],
}

const QWEN3_MOE: MlxNames = MlxNames {
    layers: "model.layers",
    moe: "mlp",
    projections: ["gate_proj", "up_proj", "down_proj"],
};

/// mlx-lm's `mixtral.py` renames `experts.E.{w1,w3,w2}` to `switch_mlp.{gate,up,down}_proj`.
const MIXTRAL: MlxNames = MlxNames {
    moe: "block_sparse_moe",
    ..QWEN3_MOE
};

impl MlxNames {
    /// The names used by `family`, or `None` for a family whose MLX conversion is not read
    /// yet. Qwen3.5's (multimodal, under `language_model.`) reads through the text model's
    /// names ([`crate::text_model_name`]), and its conv1d and norm re-layout is undone by
    /// `MlxQuantization::plan_dense`. Qwen3-Next's is not read: mlx-lm re-lays its fused
    /// `in_proj_qkvz` / `in_proj_ba` projections, which flashmoe reads in the Hugging Face order.
    pub fn of(family: Family) -> Option<&'static MlxNames> {
        match family {
            Family::Qwen3Moe | Family::Qwen35Moe => Some(&QWEN3_MOE),
            Family::Mixtral => Some(&MIXTRAL),
            Family::Qwen3Next => None,
        }
    }

    /// [`MlxNames::of`], or an error naming `config` (the checkpoint's config.json).
    pub fn of_checked(family: Family, config: &Path) -> Result<&'static MlxNames> {
        Self::of(family).ok_or_else(|| EngineError::UnsupportedField {
            path: config.to_path_buf(),
            field: "quantization".into(),
            reason: format!(
                "MLX checkpoints of the {family:?} family are not read yet (mlx-lm re-lays its \
                 fused projections); pack the Hugging Face checkpoint instead"
            ),
        })
    }

    /// The module of projection `k` (0 gate, 1 up, 2 down) of `layer`'s stacked experts.
    pub fn switch(&self, layer: usize, k: usize) -> String {
        format!(
            "{}.{layer}.{}.switch_mlp.{}",
            self.layers, self.moe, self.projections[k]
        )
    }

    /// Whether tensor `name` belongs to some layer's stacked experts.
    pub fn is_expert_tensor(&self, name: &str) -> bool {
        name.starts_with(&format!("{}.", self.layers))
            && name.contains(&format!(".{}.switch_mlp.", self.moe))
    }
}

/// `config.json`'s MLX `quantization`, parsed and checked.
#[derive(Clone, Debug)]
pub struct MlxQuantization {
    path: PathBuf,
    default: QuantSpec,
    /// Module path → its own spec, or `None` where the module is left in float.
    overrides: BTreeMap<String, Option<QuantSpec>>,
}

impl MlxQuantization {
    /// Reads the `quantization` of the config at `path`; `None` for an unquantized checkpoint.
    pub fn from_config(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|source| EngineError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        match (v.get("quantization"), v.get("quantization_config")) {
            (Some(q), _) => Self::from_value(path, "quantization", q).map(Some),
            (None, Some(q)) => Self::from_value(path, "quantization_config", q).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Parses the quantization object `q`, found under `field` of the config at `path`.
    pub fn from_value(path: &Path, field: &str, q: &Value) -> Result<Self> {
        let unsupported =
            |field: String, value: &Value, reason: &str| EngineError::UnsupportedValue {
                path: path.to_path_buf(),
                field,
                value: value.to_string(),
                reason: reason.into(),
            };
        let obj = q
            .as_object()
            .ok_or_else(|| unsupported(field.into(), q, "expected an object (MLX quantization)"))?;
        let default = parse_spec(path, field, obj)?;
        let mut overrides = BTreeMap::new();
        // Module paths of a multimodal conversion (`language_model.model.layers.0.mlp.gate`)
        // are kept under the text model's names, as the checkpoint's tensors are.
        let multimodal = crate::weights::is_multimodal(obj.keys().map(String::as_str));
        for (key, value) in obj {
            if matches!(key.as_str(), "group_size" | "bits" | "mode") {
                continue;
            }
            let Some(module) = crate::weights::text_model_name(key, multimodal) else {
                continue; // a vision-tower module
            };
            let sub = format!("{field}.{key}");
            let spec = match value {
                Value::Bool(false) => None,
                Value::Bool(true) => Some(default),
                Value::Object(o) => Some(parse_spec(path, &sub, o)?),
                other => {
                    return Err(unsupported(
                        sub,
                        other,
                        "not an MLX quantization key (group_size, bits, mode) nor a module \
                         override (an object or a bool)",
                    ));
                }
            };
            overrides.insert(module, spec);
        }
        Ok(Self {
            path: path.to_path_buf(),
            default,
            overrides,
        })
    }

    /// What the config says for `module` (a path such as `model.layers.0.mlp.gate`): its
    /// override, else the default; `None` where it is left in float.
    pub fn spec(&self, module: &str) -> Option<QuantSpec> {
        match self.overrides.get(module) {
            Some(s) => *s,
            None => Some(self.default),
        }
    }

    /// The format of `module`'s stored matrices (`lead` stacked, each `[rows x ?]`), checked
    /// against the config: its bits give the columns from the code words, its group the
    /// columns from the scales, and the two must agree.
    pub fn check_module(
        &self,
        p: &QuantParts<'_>,
        module: &str,
        lead: &[usize],
        rows: usize,
    ) -> Result<(WeightFormat, usize)> {
        let spec = self.spec(module).ok_or_else(|| EngineError::QuantTensor {
            file: p.codes.file.to_path_buf(),
            name: format!("{module}.weight"),
            reason: format!(
                "is stored quantized, but {} `quantization` leaves `{module}` unquantized",
                self.path.display()
            ),
        })?;
        let n = lead.len();
        let words = p.codes.shape.get(n + 1).copied().unwrap_or(0);
        let groups = p.scales.shape.get(n + 1).copied().unwrap_or(0);
        let cols = words * 32 / spec.bits as usize;
        if groups * spec.group as usize != cols {
            let source = if self.overrides.contains_key(module) {
                "its override"
            } else {
                "the default (no override for this module)"
            };
            return Err(EngineError::QuantTensor {
                file: p.codes.file.to_path_buf(),
                name: format!("{module}.weight"),
                reason: format!(
                    "{} `quantization` gives {}-bit groups of {} ({source}), which would make \
                     {words} code words and {groups} scale groups per row disagree ({cols} vs {} \
                     columns): the config does not describe these tensors",
                    self.path.display(),
                    spec.bits,
                    spec.group,
                    groups * spec.group as usize
                ),
            });
        }
        let format = p.format(module, lead, rows, cols)?;
        Ok((format, cols))
    }

    /// The one format of every routed expert matrix of `cfg` (the record layout has one),
    /// each checked against the config and against the model's dims.
    pub fn expert_format(&self, ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<WeightFormat> {
        let names = MlxNames::of_checked(cfg.family, &self.path)?;
        let (h, i) = (cfg.hidden_size, cfg.expert_intermediate);
        let mut first: Option<(WeightFormat, String)> = None;
        for l in 0..cfg.num_layers {
            for (k, (rows, cols)) in [(i, h), (i, h), (h, i)].into_iter().enumerate() {
                let module = names.switch(l, k);
                let p = parts(ckpt, &module)?;
                let (format, got_cols) =
                    self.check_module(&p, &module, &[cfg.num_experts], rows)?;
                if got_cols != cols {
                    return Err(EngineError::TensorShape {
                        file: p.codes.file.to_path_buf(),
                        name: format!("{module}.weight"),
                        expected: vec![cfg.num_experts, rows, cols],
                        got: vec![cfg.num_experts, rows, got_cols],
                    });
                }
                match &first {
                    None => first = Some((format, module)),
                    Some((f, m)) if *f != format => {
                        return Err(EngineError::QuantTensor {
                            file: p.codes.file.to_path_buf(),
                            name: format!("{module}.weight"),
                            reason: format!(
                                "is {format:?} but `{m}` is {f:?}: flashmoe's expert records \
                                 hold one format for every expert"
                            ),
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        first.map(|(f, _)| f).ok_or_else(|| EngineError::Pack {
            path: self.path.clone(),
            reason: "the model has no MoE layers".into(),
        })
    }

    /// Plans `dense.safetensors` ([`crate::dense_writer`]): every tensor that is not a routed
    /// expert, quantized modules (checked against the config) as codes with f16 scales and
    /// biases, the others unchanged. No I/O.
    pub(crate) fn plan_dense(&self, ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<Vec<Planned>> {
        let names = MlxNames::of_checked(cfg.family, &self.path)?;
        let mut dense: Vec<&str> = ckpt
            .names()
            .filter(|n| !names.is_expert_tensor(n))
            .collect();
        dense.sort_unstable();
        let mut out = Vec::with_capacity(dense.len());
        let relaid = mlx_relaid_hybrid(ckpt, cfg)?;
        for name in dense {
            let module = module_of(name);
            let quantized_part = name.ends_with(".scales") || name.ends_with(".biases");
            let t = ckpt.meta(name)?;
            if quantized_part {
                let base = format!("{}.weight", &name[..name.len() - 7]);
                if !is_quantized(ckpt, &base) || !ckpt.contains(&base) {
                    return Err(EngineError::QuantTensor {
                        file: t.file.to_path_buf(),
                        name: name.into(),
                        reason: format!("has no `{base}` (codes) and `.scales` beside it"),
                    });
                }
                continue; // written with its module
            }
            if name.ends_with(".weight") && (t.dtype == Dtype::U32 || is_quantized(ckpt, name)) {
                let p = parts(ckpt, module)?;
                let rows = p.codes.shape.first().copied().unwrap_or(0);
                let (format, cols) = self.check_module(&p, module, &[], rows)?;
                let layout = format
                    .layout(rows, cols)
                    .ctx(|| format!("{}: `{name}`", t.file.display()))?;
                out.extend(Planned::quantized(module, &layout, |part| Produce::Mlx {
                    module: module.into(),
                    layout,
                    part,
                }));
                continue;
            }
            if relaid && t.shape.len() == 1 && is_offset_norm(name) {
                out.push(Planned {
                    name: name.into(),
                    dtype: Dtype::F32,
                    shape: t.shape.to_vec(),
                    len: t.shape[0] * 4,
                    how: Produce::MinusOne(name.into()),
                });
                continue;
            }
            let mut shape = t.shape.to_vec();
            if relaid && name.ends_with(".conv1d.weight") && shape.len() == 3 {
                // [C, K, 1] and [C, 1, K] hold the same bytes in the same order.
                shape.swap(1, 2);
            }
            out.push(Planned {
                name: name.into(),
                dtype: t.dtype,
                shape,
                len: t.len,
                how: Produce::Stored(name.into()),
            });
        }
        Ok(out)
    }
}

/// The RMSNorm weights that Qwen3.5 / Qwen3-Next store as offsets from 1 (transformers'
/// `Qwen3_5MoeRMSNorm`: `x * (1 + w)`); the DeltaNet's gated norm is not one of them.
fn is_offset_norm(name: &str) -> bool {
    [
        ".input_layernorm.weight",
        ".post_attention_layernorm.weight",
        ".q_norm.weight",
        ".k_norm.weight",
    ]
    .iter()
    .any(|s| name.ends_with(s))
        || name == "model.norm.weight"
}

/// Whether `ckpt` is a hybrid (Qwen3.5) model as mlx-lm's converter writes it: the conv1d
/// weights moved to `[C, K, 1]` and, in the same step (mlx-lm's `sanitize`), the RMSNorm
/// weights stored as `1 + w`. Mixed layouts are refused: mlx-lm itself decides from any one.
fn mlx_relaid_hybrid(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<bool> {
    if cfg.hybrid.is_none() {
        return Ok(false);
    }
    let mut seen: Option<(bool, String)> = None;
    let mut convs: Vec<&str> = ckpt
        .names()
        .filter(|n| n.ends_with(".conv1d.weight"))
        .collect();
    convs.sort_unstable(); // the same tensors named whatever the index order
    for name in convs {
        let t = ckpt.meta(name)?;
        let relaid = t.shape.len() == 3 && t.shape[2] == 1 && t.shape[1] != 1;
        match &seen {
            Some((r, first)) if *r != relaid => {
                return Err(EngineError::QuantTensor {
                    file: t.file.to_path_buf(),
                    name: name.into(),
                    reason: format!(
                        "is {:?} but `{first}` is in the other conv1d layout ([C, K, 1] is \
                         mlx-lm's, [C, 1, K] transformers'), so the norm weights' form is ambiguous",
                        t.shape
                    ),
                });
            }
            Some(_) => {}
            None => seen = Some((relaid, name.to_string())),
        }
    }
    Ok(seen.is_some_and(|(r, _)| r))
}

/// Parses one `{group_size, bits, mode}` object.
fn parse_spec(path: &Path, field: &str, o: &Map<String, Value>) -> Result<QuantSpec> {
    let bad = |key: &str, value: &Value, reason: &str| EngineError::UnsupportedValue {
        path: path.to_path_buf(),
        field: format!("{field}.{key}"),
        value: value.to_string(),
        reason: reason.into(),
    };
    let int = |key: &str| -> Result<u64> {
        let v = o.get(key).ok_or_else(|| EngineError::MissingField {
            path: path.to_path_buf(),
            field: format!("{field}.{key}"),
        })?;
        v.as_u64()
            .ok_or_else(|| bad(key, v, "expected a positive integer"))
    };
    if let Some(mode) = o.get("mode")
        && mode.as_str() != Some("affine")
    {
        return Err(bad(
            "mode",
            mode,
            "only MLX's `affine` mode (w = code * scale + bias) is supported",
        ));
    }
    for key in o.keys() {
        if !matches!(key.as_str(), "group_size" | "bits" | "mode") && field.contains('.') {
            return Err(bad(key, &o[key], "unknown key in a module's quantization"));
        }
    }
    let bits = int("bits")?;
    if bits != 4 && bits != 8 {
        return Err(bad(
            "bits",
            &o["bits"],
            "flashmoe runs 4- and 8-bit codes only (re-quantizing would change the model)",
        ));
    }
    let group = int("group_size")?;
    if group == 0 || group % 16 != 0 || group > 4096 {
        return Err(bad(
            "group_size",
            &o["group_size"],
            "the group size must be a positive multiple of 16",
        ));
    }
    Ok(QuantSpec {
        bits: bits as u32,
        group: group as u32,
    })
}

/// The record of expert `e` of layer `l`, re-laid from the stacked MLX tensors without
/// re-quantizing (the format was checked by [`MlxQuantization::expert_format`]).
pub fn relay_record(
    ckpt: &Checkpoint,
    family: Family,
    layout: &ExpertLayout,
    l: usize,
    e: usize,
    log: &mut RoundLog,
) -> Result<Vec<u8>> {
    let names = MlxNames::of(family).ok_or_else(|| EngineError::Expert {
        layer: l as u32,
        expert: e as u32,
        reason: format!("MLX experts of the {family:?} family are not read yet"),
    })?;
    let mut rec = vec![0u8; layout.record_len];
    let parts_of = [
        (&layout.gate, 0),
        (&layout.up, layout.up_offset),
        (&layout.down, layout.down_offset),
    ];
    for (k, (m, off)) in parts_of.into_iter().enumerate() {
        let module = names.switch(l, k);
        parts(ckpt, &module)?.write(ckpt, &module, e, m, &mut rec[off..off + m.total], log)?;
    }
    Ok(rec)
}
