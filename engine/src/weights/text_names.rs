//! The text model inside a checkpoint: multimodal checkpoints' language-model names mapped to
//! the text model's, and the tensors a text model does not use dropped.

use super::Checkpoint;

impl Checkpoint {
    /// The text model's tensors only, under text-model names ([`text_model_name`]): a
    /// multimodal checkpoint's language model is renamed to the text model's names and its
    /// vision tower dropped; multi-token-prediction heads (`mtp.*`) are dropped. A text-only
    /// checkpoint keeps every other name. [`Checkpoint::open`] and
    /// [`Checkpoint::open_unmapped`] apply it.
    pub fn text_only(mut self) -> Self {
        let multimodal = is_multimodal(self.index.keys().map(String::as_str));
        let rename = |k: &str| text_model_name(k, multimodal);
        self.index = std::mem::take(&mut self.index)
            .into_iter()
            .filter_map(|(k, s)| rename(&k).map(|n| (n, s)))
            .collect();
        for shard in &mut self.shards {
            shard.tensors = std::mem::take(&mut shard.tensors)
                .into_iter()
                .filter_map(|(k, v)| rename(&k).map(|n| (n, v)))
                .collect();
        }
        self
    }
}

/// Whether tensor names `names` are those of a multimodal checkpoint: the language model under
/// `model.language_model.` (transformers' `...ForConditionalGeneration`) or `language_model.`
/// (mlx-lm's conversions of them).
pub fn is_multimodal<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|k| k.starts_with("model.language_model.") || k.starts_with("language_model."))
}

/// The text model's name for the tensor (or module path) `name` of a checkpoint, or `None`
/// where the text model does not use it:
/// - `model.language_model.X` (transformers) and `language_model.model.X` (mlx-lm) are `model.X`;
///   mlx-lm's `language_model.lm_head.X` is `lm_head.X`;
/// - in a `multimodal` checkpoint the vision tower (`model.visual.*`, `vision_tower.*`, any
///   other `model.*`) is dropped; multi-token-prediction heads (`mtp.*`) always are.
///
/// ```
/// use flashmoe_engine::text_model_name;
/// assert_eq!(text_model_name("language_model.model.norm.weight", true).as_deref(), Some("model.norm.weight"));
/// assert_eq!(text_model_name("model.language_model.norm.weight", true).as_deref(), Some("model.norm.weight"));
/// assert_eq!(text_model_name("model.visual.blocks.0.attn.qkv.weight", true), None);
/// assert_eq!(text_model_name("model.norm.weight", false).as_deref(), Some("model.norm.weight"));
/// ```
pub fn text_model_name(name: &str, multimodal: bool) -> Option<String> {
    if name.starts_with("mtp.") {
        return None;
    }
    for (prefix, to) in [
        ("model.language_model.", "model."),
        ("language_model.model.", "model."),
        ("language_model.", ""),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return Some(format!("{to}{rest}"));
        }
    }
    if multimodal && (name.starts_with("model.") || name.starts_with("vision_tower.")) {
        return None;
    }
    Some(name.to_string())
}
