//! Options of [`crate::pack::pack_model_with`].

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::mlx::MlxQuantization;
use crate::pack::format_for_bits;
use crate::weights::Checkpoint;
use flashmoe_backends::quant::WeightFormat;
use std::path::Path;

/// What `flashmoe pack` should write.
///
/// ```
/// let o = flashmoe_engine::PackOptions::new().bits(4).dense_bits(8).force(true);
/// assert_eq!((o.expert_bits(), o.dense()), (Some(4), Some(8)));
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackOptions {
    bits: Option<u32>,
    dense_bits: Option<u32>,
    force: bool,
}

impl PackOptions {
    /// The defaults: experts in 4 bits from a Hugging Face checkpoint (as stored from an MLX
    /// one), dense weights in the experts' bits (see [`PackOptions::dense_bits`]), refuse an
    /// existing output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bits per expert weight (16, 8 or 4). An MLX checkpoint is never re-quantized: it must
    /// be unset or equal to the checkpoint's bits.
    pub fn bits(mut self, bits: u32) -> Self {
        self.bits = Some(bits);
        self
    }

    /// Bits per non-expert weight (16 keeps the checkpoint's float type, 8 or 4 quantize the
    /// 2-D weights; routers stay at 8 at least, norms and other 1-D tensors as stored).
    /// Hugging Face checkpoints only. Unset, it follows the experts' bits, as MLX's and
    /// llama.cpp's 4- and 8-bit models do (attention, embeddings and lm_head quantized too):
    /// 4 for `--bits 4`, 8 for `--bits 8`, 16 (as stored) for `--bits 16`.
    pub fn dense_bits(mut self, bits: u32) -> Self {
        self.dense_bits = Some(bits);
        self
    }

    /// Replace an existing output directory (only once the new one is complete).
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// The expert bits asked for, if any.
    pub fn expert_bits(&self) -> Option<u32> {
        self.bits
    }

    /// The dense bits asked for, if any.
    pub fn dense(&self) -> Option<u32> {
        self.dense_bits
    }

    /// Whether an existing output is replaced.
    pub fn forced(&self) -> bool {
        self.force
    }
}

impl PackOptions {
    /// The expert record format and the dense bits for `cfg` (from an MLX checkpoint when
    /// `mlx` is its quantization), refusing what cannot be honoured; `out` names errors.
    pub(crate) fn resolve(
        &self,
        cfg: &ModelConfig,
        ckpt: &Checkpoint,
        mlx: Option<&MlxQuantization>,
        out: &Path,
    ) -> Result<(WeightFormat, u32)> {
        let fail = |reason: String| EngineError::Pack {
            path: out.to_path_buf(),
            reason,
        };
        match mlx {
            Some(q) => {
                let format = q.expert_format(ckpt, cfg)?;
                if let Some(bits) = self.bits.filter(|&b| b != format.bits()) {
                    return Err(fail(format!(
                        "the input is an MLX {}-bit checkpoint, packed as stored (no \
                         re-quantization): --bits {bits} cannot be honoured (omit it)",
                        format.bits()
                    )));
                }
                if let Some(bits) = self.dense_bits {
                    return Err(fail(format!(
                        "the input is an MLX quantized checkpoint, whose non-expert weights are \
                         packed as stored: --dense-bits {bits} cannot be honoured (omit it)"
                    )));
                }
                Ok((format, 16))
            }
            None => {
                let bits = self.bits.unwrap_or(4);
                let format = format_for_bits(bits, cfg)
                    .ok_or_else(|| fail(format!("--bits must be 16, 8 or 4, not {bits}")))?;
                let dense = self.dense_bits.unwrap_or(default_dense_bits(bits));
                if !matches!(dense, 4 | 8 | 16) {
                    return Err(fail(format!(
                        "--dense-bits must be 16, 8 or 4, not {dense}"
                    )));
                }
                Ok((format, dense))
            }
        }
    }
}

/// The dense bits when `--dense-bits` is not given: those of the experts (4 or 8), else 16.
pub fn default_dense_bits(expert_bits: u32) -> u32 {
    match expert_bits {
        4 | 8 => expert_bits,
        _ => 16,
    }
}
