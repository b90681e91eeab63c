//! A model opened from a packed directory: its weights on the CPU backend, its experts streamed
//! through io-sched under a budget, and the conversation so far, all in the engine's `ModelSession`.

use std::ffi::c_char;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use flashmoe_backends::CpuBackend;
use flashmoe_engine::{ExpertBudget, ModelConfig, ModelSession, Prediction, SessionOptions};
use io_sched::backend::BackendKind;
use io_sched::backend::select::BackendConfig;
use io_sched::predictor::{self, PredictorKind};
use parking_lot::Mutex;

use crate::error::{CallError, EngineErrorExt, FmeStatus, ffi};
use crate::options::{Budget, FmeOptions, ModelSettings};
use flashmoe_capi_common::args::{handle, need_out, str_arg, write_out};

/// An open model. Opaque.
///
/// Thread-safety: `fme_model_cancel` may be called from any thread at any time (also from
/// inside the token callback). `fme_generate` and `fme_model_reset` may be called from any
/// thread, one at a time: a second concurrent call gets `FME_STATUS_BUSY`. `fme_model_free`
/// must not race any other call.
pub struct FmeModel {
    pub(crate) state: Mutex<State>,
    pub(crate) cancel: AtomicBool,
}

/// The engine's session (model, experts, prompt cache) and the conversation so far.
pub(crate) struct State {
    pub session: ModelSession<CpuBackend>,
    /// Every token since the last reset, prompts and generated ones, in order: each call's
    /// prompt extends it, so the session prefills only what its context does not hold yet.
    pub conversation: Vec<u32>,
}

impl State {
    fn open(dir: &Path, s: &ModelSettings, func: &str) -> Result<Self, CallError> {
        let budget = match s.budget {
            Budget::Bytes(b) => ExpertBudget::Bytes(b),
            Budget::Share(share) => ExpertBudget::Share(share),
        };
        let kind = match s.io_backend.as_str() {
            "auto" => None,
            other => Some(other.parse::<BackendKind>().map_err(|e| {
                CallError::invalid(func, "io_backend option", format_args!("{e} (or auto)"))
            })?),
        };
        let cfg = ModelConfig::from_file(&dir.join("config.json"))
            .map_err(|e| CallError::engine(func, &e))?;
        let mode = prediction(
            &s.predictor,
            cfg.num_layers as u32,
            cfg.num_experts as u32,
            func,
        )?;
        let max_seq = match s.max_seq {
            0 => 4096,
            n => n,
        };
        let options = SessionOptions::new()
            .budget(budget)
            .io(BackendConfig::default().kind(kind))
            .prediction(mode)
            .max_seq(max_seq);
        let session = ModelSession::open(dir, CpuBackend::new(), options)
            .map_err(|e| CallError::engine(func, &e))?;
        Ok(Self {
            session,
            conversation: Vec::new(),
        })
    }
}

fn prediction(name: &str, layers: u32, experts: u32, func: &str) -> Result<Prediction, CallError> {
    match name {
        "pregate" => return Ok(Prediction::Pregate),
        "blend" => return Ok(Prediction::Blend),
        _ => {}
    }
    let bad = |why: String| CallError::invalid(func, "predictor option", why);
    let kind: PredictorKind = name.parse().map_err(|e| bad(format!("{e} (or pregate)")))?;
    match kind {
        PredictorKind::None => Ok(Prediction::None),
        PredictorKind::Oracle | PredictorKind::Scores => Err(bad(format!(
            "{kind} is not available here (use blend, pregate, none, temporal, transition or frequency)"
        ))),
        _ => Ok(Prediction::Predictor(
            predictor::build(kind, layers, experts)
                .ok_or_else(|| bad(format!("{kind} cannot be built")))?,
        )),
    }
}

/// Opens the packed model in `dir` (from `flashmoe pack`) with `options` (NULL: defaults).
/// `*out` is freed with `fme_model_free`. Any thread.
///
/// # Safety
/// `dir` must be a NUL-terminated string; `options` NULL or live options; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_model_open(
    dir: *const c_char,
    options: *const FmeOptions,
    out: *mut *mut FmeModel,
) -> FmeStatus {
    const F: &str = "fme_model_open";
    ffi(F, || {
        need_out(F, "out", out)?;
        // SAFETY: forwarded from this function's contract.
        let dir = unsafe { str_arg(F, "dir", dir) }?;
        let settings = if options.is_null() {
            ModelSettings::default()
        } else {
            // SAFETY: non-NULL, live by the caller's promise.
            unsafe { handle(F, "options", options) }?.settings.clone()
        };
        let state = State::open(Path::new(dir), &settings, F)?;
        let m = FmeModel {
            state: Mutex::new(state),
            cancel: AtomicBool::new(false),
        };
        // SAFETY: checked non-NULL; writable by the caller's promise.
        unsafe { write_out(F, "out", out, Box::into_raw(Box::new(m))) }
    })
}

/// Frees a model (NULL is ignored).
///
/// # Safety
/// `model` must come from `fme_model_open`, not be freed already, and no other thread may be
/// using it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_model_free(model: *mut FmeModel) {
    // SAFETY: forwarded from this function's contract.
    unsafe { flashmoe_capi_common::args::free_handle(model) }
}

/// Asks a generation in progress to stop before its next token; every `fme_generate` then
/// returns `FME_STATUS_CANCELLED` until `fme_model_reset`. Any thread, any time, also from
/// the token callback.
///
/// # Safety
/// `model` must be a live model.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_model_cancel(model: *const FmeModel) -> FmeStatus {
    const F: &str = "fme_model_cancel";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let m = unsafe { handle(F, "model", model) }?;
        m.cancel.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Forgets the conversation (the KV cache: the next prompt starts at position 0) and clears a
/// cancel. The expert cache stays warm. Any thread; `FME_STATUS_BUSY` while generating.
///
/// # Safety
/// `model` must be a live model.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_model_reset(model: *const FmeModel) -> FmeStatus {
    const F: &str = "fme_model_reset";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let m = unsafe { handle(F, "model", model) }?;
        let mut st = m.state.try_lock().ok_or_else(|| {
            CallError::new(FmeStatus::Busy, format!("{F}: the model is generating"))
        })?;
        st.session.reset();
        st.conversation.clear();
        m.cancel.store(false, Ordering::SeqCst);
        Ok(())
    })
}
