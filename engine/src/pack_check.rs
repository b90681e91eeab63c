//! Checks the packer runs so that it never writes a model `generate` would refuse or
//! misread.
//!
//! - Before packing, [`check_checkpoint`] refuses tensors of layers or experts beyond the
//!   config's counts: they would otherwise be copied into `dense.safetensors` as if they were
//!   dense weights, and the model would silently run with fewer layers than trained.
//! - After packing, [`check_packed`] opens the temporary directory as `generate` does and
//!   loads its resident weights on the CPU backend, so every dense tensor's shape and dtype is
//!   checked by the same code that will use it (whatever the family). This costs one copy of
//!   the dense weights in memory for the duration of the check.

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::packed_model::PackedModel;
use crate::weights::Checkpoint;
use std::path::Path;

/// The number following the path segment `seg` in a dotted tensor name
/// (`model.layers.7.mlp` with `layers` gives 7).
fn index_after(name: &str, seg: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == seg {
            return parts.next().and_then(|n| n.parse().ok());
        }
    }
    None
}

/// Refuses a checkpoint holding tensors of a layer `>= num_hidden_layers` or an expert
/// `>= num_experts`: `src` is the checkpoint directory (named in the error).
pub(crate) fn check_checkpoint(src: &Path, cfg: &ModelConfig, ckpt: &Checkpoint) -> Result<()> {
    let mut names: Vec<&str> = ckpt.names().collect();
    names.sort_unstable();
    for name in names {
        let (field, limit, index) =
            match (index_after(name, "layers"), index_after(name, "experts")) {
                (Some(l), _) if l >= cfg.num_layers => ("num_hidden_layers", cfg.num_layers, l),
                (_, Some(e)) if e >= cfg.num_experts => ("num_experts", cfg.num_experts, e),
                _ => continue,
            };
        return Err(EngineError::Pack {
            path: src.to_path_buf(),
            reason: format!(
                "tensor `{name}` is of index {index}, but config.json says {field} = {limit}: \
                 the checkpoint and its config disagree"
            ),
        });
    }
    Ok(())
}

/// Opens the packed model in `dir` and loads its resident weights as `generate` would,
/// returning the first error (wrong shape or dtype of a dense tensor, bad manifest).
pub(crate) fn check_packed(dir: &Path) -> Result<()> {
    let model = PackedModel::open(dir)?;
    model.load_model(flashmoe_backends::CpuBackend::new(), 1)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::index_after;

    #[test]
    fn finds_layer_and_expert_indices() {
        let n = "model.layers.12.mlp.experts.3.up_proj.weight";
        assert_eq!(index_after(n, "layers"), Some(12));
        assert_eq!(index_after(n, "experts"), Some(3));
        assert_eq!(index_after("model.norm.weight", "layers"), None);
        assert_eq!(index_after("model.layers.x.y", "layers"), None);
    }
}
