//! The flashmoe engine: model configs, HF checkpoint and tokenizer loading, expert packing and
//! the MoE decode loop.
//!
//! - [`ModelConfig`]: `config.json` of Qwen3-MoE, Mixtral, Qwen3.5-MoE or Qwen3-Next, validated (unsupported features refused).
//! - [`Checkpoint`]: memory-mapped, sharded safetensors with shape and dtype checks.
//! - [`MoeModel`]: the decoder on any [`flashmoe_backends::ComputeBackend`]; its MoE blocks take
//!   expert weights from an [`ExpertSource`] in the [expert record layout](experts).
//! - [`RoutingObserver`]: actual routing and pre-gate scores, for traces and prefetching.
//! - [`pack_model`] / [`PackedModel`]: an HF checkpoint packed for streaming (experts in
//!   io-sched's packed format, the rest in `dense.safetensors`), and opened again; MLX
//!   quantized checkpoints are packed without re-quantizing ([`mlx`]).
//! - [`streamed`] ([`SchedExperts`] / [`Prefetcher`]): experts streamed through io-sched's `Session`, with pre-gate or
//!   predictor hints.
//! - [`ModelSession`]: a packed model answering one [`GenerationRequest`] after another, with
//!   the prompt cache, stop strings and cancellation (what `serve`, `chat` and the C ABI run).
//!
//! ```no_run
//! use flashmoe_engine::*;
//! use flashmoe_backends::{CpuBackend, quant::WeightFormat};
//! let dir = std::path::Path::new("tiny-qwen3-moe");
//! let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
//! let ckpt = Checkpoint::open(dir, cfg.dtype)?;
//! let mut experts = InMemoryExperts::pack(&ckpt, &cfg, FamilyNames::of(cfg.family), WeightFormat::Q4_64)?;
//! let mut model = MoeModel::load(CpuBackend::new(), cfg, &ckpt, 512)?;
//! let ids = generate_greedy(&mut model, &[10, 20, 30], 8, &mut experts, &mut NoObserver)?;
//! # Ok::<(), EngineError>(())
//! ```

mod attention;
pub mod chat_template;
pub mod config;
pub mod dense_pack;
mod dense_writer;
mod error;
pub mod experts;
mod generate;
pub mod hooks;
mod hybrid;
pub mod mixtral;
pub mod mlx;
pub mod model;
pub mod model_session;
pub mod pack;
mod pack_check;
mod pack_options;
pub mod packed_model;
pub mod prefetch_policy;
pub mod prompt_cache;
pub mod quant_tensors;
pub mod qwen35_moe;
pub mod qwen3_moe;
mod read_retry;
mod safe_replace;
pub mod sampler;
pub mod streamed_model;
pub mod streaming;
pub mod synth_checkpoint;
mod tensor_reader;
pub mod text_stream;
mod tokenizer;
pub mod trace_sink;
pub mod weights;
mod write_back;

pub use chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, RenderOptions};
pub use config::{Family, ModelConfig};
pub use error::{EngineError, Result};
pub use experts::{ExpertBatch, ExpertLayout, ExpertSource, HeldRecords, InMemoryExperts};
pub use generate::{Generation, generate, generate_from, generate_greedy};
pub use hooks::{NoObserver, RoutingObserver, RoutingRecord, TraceRecorder};
pub use model::{FamilyNames, MAX_DEFAULT_CHUNK, MoeModel, PREFILL_ACTIVATION_BYTES, PrefillStats};
pub use model_session::{
    ExpertBudget, Finish, GenerationRequest, ModelSession, Outcome, SessionOptions,
};
pub use pack::{PackSummary, pack_model, pack_model_with};
pub use pack_options::PackOptions;
pub use packed_model::{PackMeta, PackedModel};
pub use prefetch_policy::PrefetchPolicy;
pub use prompt_cache::{ContextState, PromptCache};
pub use sampler::Sampler;
pub use streamed_model::{Streamed, open_streamed};
pub use streaming::{
    Prediction, Prefetcher, SchedExperts, SharedSession, Tee, open_scheduler, streamed,
};
pub use text_stream::TextStream;
pub use tokenizer::Tokenizer;
pub use trace_sink::TraceSink;
pub use weights::{
    Checkpoint, RawTensor, TensorMeta, TensorReader, TensorRef, is_multimodal, text_model_name,
};
