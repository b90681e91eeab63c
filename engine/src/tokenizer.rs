//! HF `tokenizer.json` through the `tokenizers` crate.

use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};

/// A loaded tokenizer. Encoding adds no special tokens (no BOS), as the fixtures expect.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads `tokenizer.json`. The file is first checked to be strict JSON, and a panic of the
    /// `tokenizers` crate on malformed content (fuzzing found one: a control character in a
    /// decoder's string) is turned into [`EngineError::Tokenizer`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
            op: "read tokenizer",
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|source| {
            EngineError::Json {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let fail = |reason: String| EngineError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|p| {
                fail(format!(
                    "the tokenizers library panicked on it: {}",
                    panic_text(&p)
                ))
            })?
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }
}

/// The message of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
