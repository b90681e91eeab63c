//! The flashmoe engine: model configs, HF checkpoint and tokenizer loading, expert packing and
//! the MoE decode loop.
//!
//! - [`ModelConfig`]: `config.json` of Qwen3-MoE or Mixtral, validated (unsupported features refused).
//! - [`Checkpoint`]: memory-mapped, sharded safetensors with shape and dtype checks.
//! - [`MoeModel`]: the decoder on any [`flashmoe_backends::ComputeBackend`]; its MoE blocks take
//!   expert weights from an [`ExpertSource`] in the [expert record layout](experts).
//! - [`RoutingObserver`]: actual routing and pre-gate scores, for traces and prefetching.
//! - [`pack_model`] / [`PackedModel`]: an HF checkpoint packed for streaming (experts in
//!   io-sched's packed format, the rest in `dense.safetensors`), and opened again.
//! - [`SchedExperts`] / [`Prefetcher`]: experts streamed through io-sched, with pre-gate or
//!   predictor hints.
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

pub mod config;
mod error;
pub mod experts;
mod generate;
pub mod hooks;
pub mod mixtral;
pub mod model;
pub mod pack;
mod pack_check;
pub mod packed_model;
pub mod qwen3_moe;
mod read_retry;
mod safe_replace;
pub mod sampler;
pub mod streaming;
mod tokenizer;
pub mod trace_sink;
pub mod weights;

pub use config::{Family, ModelConfig};
pub use error::{EngineError, Result};
pub use experts::{ExpertBatch, ExpertLayout, ExpertSource, HeldRecords, InMemoryExperts};
pub use generate::{Generation, generate, generate_greedy};
pub use hooks::{NoObserver, RoutingObserver, RoutingRecord, TraceRecorder};
pub use model::{FamilyNames, MoeModel};
pub use pack::{PackSummary, pack_model};
pub use packed_model::{PackMeta, PackedModel};
pub use sampler::Sampler;
pub use streaming::{Prediction, Prefetcher, SchedExperts, Tee, open_scheduler};
pub use tokenizer::Tokenizer;
pub use trace_sink::TraceSink;
pub use weights::{Checkpoint, RawTensor, TensorRef};
