//! Errors of the engine: each names the file, tensor, layer or field concerned.

use std::path::PathBuf;

/// Everything loading or running a model can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An I/O operation on a model file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "read", "mmap").
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file (config, index) could not be parsed.
    #[error("{path}: cannot parse: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser error.
        source: serde_json::Error,
    },
    /// A config field that this engine does not implement is present.
    #[error("{path}: unsupported config field `{field}`: {reason}")]
    UnsupportedField {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// Why it is refused.
        reason: String,
    },
    /// A config field has a value this engine does not implement, or an inconsistent one.
    #[error("{path}: unsupported value for `{field}` = {value}: {reason}")]
    UnsupportedValue {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// The value as JSON.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A required config field is missing.
    #[error("{path}: missing config field `{field}`")]
    MissingField {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
    },
    /// A safetensors file is malformed.
    #[error("{path}: bad safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The index names a shard that cannot be opened.
    #[error("{index}: shard {shard} is missing ({source})")]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard path.
        shard: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor `{name}` not found (looked in {file})")]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// Where it was expected (shard file, or the index).
        file: PathBuf,
    },
    /// A tensor has the wrong shape for the config.
    #[error("{file}: tensor `{name}` has shape {got:?}, config expects {expected:?}")]
    TensorShape {
        /// The shard file.
        file: PathBuf,
        /// The tensor.
        name: String,
        /// Shape from the config.
        expected: Vec<usize>,
        /// Shape in the file.
        got: Vec<usize>,
    },
    /// A tensor has a dtype the config does not announce or the engine cannot read.
    #[error("{file}: tensor `{name}` has dtype {got}, expected {expected}")]
    TensorDtype {
        /// The shard file.
        file: PathBuf,
        /// The tensor.
        name: String,
        /// Expected dtype.
        expected: String,
        /// Dtype in the file.
        got: String,
    },
    /// The tokenizer could not be loaded or used.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// tokenizer.json path.
        path: PathBuf,
        /// The library's message.
        reason: String,
    },
    /// An expert source could not supply an expert, or supplied a malformed record.
    #[error("expert source: layer {layer}, expert {expert}: {reason}")]
    Expert {
        /// Layer.
        layer: u32,
        /// Expert id.
        expert: u32,
        /// What went wrong.
        reason: String,
    },
    /// A decode input is out of range (token id, position).
    #[error("{what} {value} out of range (limit {limit})")]
    OutOfRange {
        /// What.
        what: &'static str,
        /// Given value.
        value: usize,
        /// The limit.
        limit: usize,
    },
    /// The I/O scheduler failed (opening a manifest, starting a backend, reading an expert).
    #[error("{context}: {source}")]
    IoSched {
        /// What was being done, and where.
        context: String,
        /// The scheduler's error (it names file, offset, layer and expert where it has them).
        source: io_sched::Error,
    },
    /// A packed model's metadata disagrees with its config or is malformed.
    #[error("{path}: `{field}`: {reason}")]
    PackMeta {
        /// The file holding the field (`manifest.json`, `flashmoe-pack.json`).
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Packing could not proceed (output exists, bad input directory).
    #[error("pack {path}: {reason}")]
    Pack {
        /// The directory concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The packed result failed the load check: the checkpoint's tensors do not fit its
    /// config. `source` names the tensor (in the temporary directory, already removed).
    #[error(
        "pack {src}: the checkpoint does not match its config.json (found by loading the \
         packed result; nothing was written): {source}"
    )]
    PackCheck {
        /// The checkpoint directory.
        src: PathBuf,
        /// What loading the packed result refused.
        #[source]
        source: Box<EngineError>,
    },
    /// A routing trace could not be written.
    #[error("trace {path}: {source}")]
    Trace {
        /// The trace file.
        path: PathBuf,
        /// The trace writer's error (its I/O error kept as the source).
        source: io_sched::trace::TraceError,
    },
    /// A quantized tensor (MLX checkpoint or packed dense weights) cannot be used as stored.
    #[error("{file}: tensor `{name}`: {reason}")]
    QuantTensor {
        /// The file holding the tensor.
        file: PathBuf,
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A generation request cannot be run as given (empty prompt, prompt longer than the
    /// context, budget out of range).
    #[error("{reason}")]
    Request {
        /// What is wrong.
        reason: String,
    },
    /// A backend op failed.
    #[error("{context}: {source}")]
    Backend {
        /// Where in the model.
        context: String,
        /// The backend error.
        source: flashmoe_backends::BackendError,
    },
}

/// Result alias of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Adds a model-side context to backend errors.
pub(crate) trait BackendContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> BackendContext<T> for std::result::Result<T, flashmoe_backends::BackendError> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| EngineError::Backend {
            context: context(),
            source,
        })
    }
}
