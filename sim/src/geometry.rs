//! Model geometry presets and expert sizes derived from dims and quantization.
//!
//! An expert is three matrices (gate, up: `moe_intermediate × hidden`; down: `hidden ×
//! moe_intermediate`). Quantized as flash-moe and MLX do — `bits`-bit affine groups of 64 with
//! an f16/bf16 scale and bias per group — it takes `params·bits/8 + params/64·2·2` bytes:
//!
//! ```
//! use flashmoe_sim::geometry::expert_bytes;
//! assert_eq!(expert_bytes(4096, 1024, 4), 7_077_888); // Qwen3.5-397B, flash-moe's figure
//! assert_eq!(expert_bytes(4096, 1024, 2), 3_932_160);
//! ```

use serde::Deserialize;

use crate::error::{Result, SimError};
use crate::figure::Fig;

/// Parameters per quantization group.
pub const GROUP: u64 = 64;
/// Bytes of scale + bias per group (two f16/bf16).
pub const GROUP_OVERHEAD: u64 = 4;

/// Bytes of one expert (3 matrices) at `bits` bits with group-64 affine quantization.
pub fn expert_bytes(hidden: u64, moe_intermediate: u64, bits: u32) -> u64 {
    let params = 3 * hidden * moe_intermediate;
    params * bits as u64 / 8 + params / GROUP * GROUP_OVERHEAD
}

/// One model's geometry, as in `presets/models.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelPreset {
    pub name: String,
    pub layers: Fig,
    pub experts: Fig,
    pub k_native: Fig,
    pub hidden: Fig,
    pub moe_intermediate: Fig,
    pub total_params: Fig,
    /// Published size of the non-expert weights at 4 bits, where known.
    #[serde(default)]
    pub non_expert_bytes_4bit: Option<Fig>,
}

#[derive(Deserialize)]
struct ModelFile {
    models: Vec<ModelPreset>,
}

const MODELS_JSON: &str = include_str!("../presets/models.json");

/// All model presets.
pub fn model_presets() -> Result<Vec<ModelPreset>> {
    serde_json::from_str::<ModelFile>(MODELS_JSON)
        .map(|f| f.models)
        .map_err(|e| SimError::Profile {
            name: "presets/models.json".into(),
            reason: e.to_string(),
        })
}

/// The preset called `name`.
pub fn model_preset(name: &str) -> Result<ModelPreset> {
    let all = model_presets()?;
    let known = all
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    all.iter()
        .find(|m| m.name == name)
        .cloned()
        .ok_or_else(|| SimError::Unknown {
            what: "model",
            name: name.into(),
            known,
        })
}

/// A model at a quantization, with the sizes the simulator needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub name: String,
    pub layers: u32,
    pub experts: u32,
    pub bits: u32,
    /// Bytes of one expert record.
    pub expert_bytes: u64,
    /// Bytes of all non-expert weights (attention, shared experts, embeddings, router).
    pub non_expert_bytes: u64,
}

impl ModelPreset {
    /// Params of one expert.
    pub fn expert_params(&self) -> u64 {
        3 * self.hidden.value as u64 * self.moe_intermediate.value as u64
    }

    /// Sizes at `bits` bits per expert weight (non-expert weights stay at 4 bits, as flash-moe
    /// does for its 2-bit build).
    pub fn at_bits(&self, bits: u32) -> Result<Geometry> {
        if !(1..=16).contains(&bits) {
            return Err(SimError::Setup(format!(
                "{bits} bits per weight is not supported"
            )));
        }
        let (layers, experts) = (self.layers.value as u32, self.experts.value as u32);
        let expert = expert_bytes(
            self.hidden.value as u64,
            self.moe_intermediate.value as u64,
            bits,
        );
        let non_expert = match &self.non_expert_bytes_4bit {
            Some(f) => f.value as u64,
            None => {
                let all_experts = layers as u64 * experts as u64 * self.expert_params();
                let rest = (self.total_params.value as u64).saturating_sub(all_experts);
                rest / 2 + rest / GROUP * GROUP_OVERHEAD
            }
        };
        Ok(Geometry {
            name: self.name.clone(),
            layers,
            experts,
            bits,
            expert_bytes: expert,
            non_expert_bytes: non_expert,
        })
    }
}
