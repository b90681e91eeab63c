//! `fme_generate`: prompt in, tokens out through a callback, cancellable between tokens.

use std::ffi::{CString, c_char, c_void};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use flashmoe_engine::{Finish, GenerationRequest};

use crate::error::{CallError, EngineErrorExt, FmeStatus, ffi};
use crate::model::{FmeModel, State};
use flashmoe_capi_common::args::{handle, str_arg};

/// Called with every token as soon as it is chosen (but an end-of-sequence token that ends
/// generation, counted in `generated_tokens` only): its id and the text it adds (UTF-8,
/// `piece_len` bytes, NUL-terminated; empty while a multi-byte character is incomplete),
/// valid during the call only. Return 0 to go on, anything else to cancel (as
/// `fme_model_cancel`). Runs on the thread that called `fme_generate`.
pub type FmeTokenCallback = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        token: u32,
        piece: *const c_char,
        piece_len: usize,
    ) -> i32,
>;

/// How to generate. Start from `fme_generate_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FmeGenerateParams {
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1: all).
    pub top_p: f32,
    /// Seed of the sampler (same seed, same text).
    pub seed: u64,
    /// 1: stop after an end-of-sequence token; 0: go on to `max_tokens`.
    pub stop_at_eos: u8,
}

/// What one `fme_generate` did (also filled when it was cancelled).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FmeGeneration {
    /// Tokens of the prompt (plus the previous call's last token, fed first).
    pub prompt_tokens: u32,
    /// Tokens generated (each given to the callback).
    pub generated_tokens: u32,
    /// 1 if an end-of-sequence token ended generation.
    pub stopped_at_eos: u8,
    /// 1 if generation was cancelled.
    pub cancelled: u8,
    /// KV-cache positions in use after this call.
    pub positions: u32,
    /// Seconds spent on the prompt.
    pub prefill_secs: f64,
    /// Seconds spent on the generated tokens.
    pub decode_secs: f64,
    /// Share of demanded experts found in the cache, since the model was opened.
    pub hit_rate: f64,
    /// Expert bytes read from disk since the model was opened.
    pub bytes_read: u64,
}

/// Greedy, 64 tokens at most, stopping at end-of-sequence. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn fme_generate_params_default() -> FmeGenerateParams {
    FmeGenerateParams {
        max_tokens: 64,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop_at_eos: 1,
    }
}

/// Continues the conversation with `prompt` (after what earlier calls since the last reset
/// left in the KV cache) and generates up to `params->max_tokens` tokens, calling `callback`
/// (may be NULL) with each. `params` NULL: the defaults; `out` may be NULL. Returns
/// `FME_STATUS_CANCELLED` when cancelled (`*out` still filled), `FME_STATUS_BUSY` while another
/// thread generates with `model`. See `FmeModel` for thread-safety.
///
/// # Safety
/// `model` must be a live model; `prompt` a NUL-terminated string; `params` NULL or valid;
/// `out` NULL or writable; `callback`, if given, must be safe to call with `user`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fme_generate(
    model: *const FmeModel,
    prompt: *const c_char,
    params: *const FmeGenerateParams,
    callback: FmeTokenCallback,
    user: *mut c_void,
    out: *mut FmeGeneration,
) -> FmeStatus {
    const F: &str = "fme_generate";
    ffi(F, || {
        // SAFETY: forwarded from this function's contract.
        let m = unsafe { handle(F, "model", model) }?;
        // SAFETY: as above.
        let prompt = unsafe { str_arg(F, "prompt", prompt) }?;
        let params = if params.is_null() {
            fme_generate_params_default()
        } else {
            // SAFETY: non-NULL and readable by the caller's promise (alignment not assumed);
            // every bit pattern of its fields is a valid value.
            unsafe { params.read_unaligned() }
        };
        let mut st = m.state.try_lock().ok_or_else(|| {
            CallError::new(
                FmeStatus::Busy,
                format!("{F}: another thread is generating"),
            )
        })?;
        let mut g = FmeGeneration::default();
        let result = run(m, &mut st, prompt, &params, callback, user, &mut g);
        let total = st.session.scheduler().metrics().total();
        g.hit_rate = total.hit_rate();
        g.bytes_read = total.bytes_read();
        g.positions = st.session.cached_tokens() as u32;
        if !out.is_null() {
            // SAFETY: non-NULL and writable by the caller's promise.
            unsafe { out.write(g) };
        }
        result
    })
}

/// One call: the conversation so far plus `prompt` through the engine's session (which
/// prefills only what its context does not hold), each token to `callback`, a cancel checked
/// after every token.
fn run(
    m: &FmeModel,
    st: &mut State,
    prompt: &str,
    p: &FmeGenerateParams,
    callback: FmeTokenCallback,
    user: *mut c_void,
    g: &mut FmeGeneration,
) -> Result<(), CallError> {
    const F: &str = "fme_generate";
    let cancelled = |g: &mut FmeGeneration| {
        g.cancelled = 1;
        CallError::new(
            FmeStatus::Cancelled,
            format!("{F}: cancelled (call fme_model_reset to generate again)"),
        )
    };
    if m.cancel.load(Ordering::SeqCst) {
        return Err(cancelled(g));
    }
    let State {
        session,
        conversation,
    } = st;
    let new = session
        .model()
        .tokenizer
        .encode(prompt)
        .map_err(|e| CallError::engine(F, &e))?;
    if new.is_empty() {
        return Err(CallError::invalid(F, "prompt", "encodes to no tokens"));
    }
    let need = conversation.len() + new.len() + p.max_tokens as usize;
    if need > session.ctx() {
        return Err(CallError::invalid(
            F,
            "prompt",
            format_args!(
                "and max_tokens need {need} positions, the KV cache holds {} ({} in use): call fme_model_reset",
                session.ctx(),
                session.cached_tokens()
            ),
        ));
    }
    let mut whole = conversation.clone();
    whole.extend_from_slice(&new);
    let req = GenerationRequest::greedy(whole, p.max_tokens as usize)
        .sampling(p.temperature, p.top_p, p.seed)
        .ignore_eos(p.stop_at_eos == 0);
    let mut delivered = 0u32;
    let mut on_token = |id: Option<u32>, piece: &str| {
        // The tail held back at the end (an incomplete character) has no token of its own.
        let Some(id) = id else {
            return ControlFlow::Continue(());
        };
        delivered += 1;
        if let Some(cb) = callback {
            let c = CString::new(piece.replace('\0', " ")).unwrap_or_default();
            // SAFETY: the caller promises `callback` may be called with `user`; `c` outlives
            // the call.
            if unsafe { cb(user, id, c.as_ptr(), c.as_bytes().len()) } != 0 {
                m.cancel.store(true, Ordering::SeqCst);
            }
        }
        if m.cancel.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let out = session
        .generate(&req, &mut on_token)
        .map_err(|e| CallError::engine(F, &e))?;
    g.prompt_tokens = (out.prompt_tokens - out.cached_tokens) as u32;
    g.prefill_secs = out.prefill_secs;
    g.decode_secs = out.decode_secs;
    conversation.clone_from(&req.prompt);
    conversation.extend_from_slice(&out.tokens);
    if out.finish == Finish::Cancelled {
        g.generated_tokens = delivered;
        return Err(cancelled(g));
    }
    g.generated_tokens = out.completion_tokens as u32;
    g.stopped_at_eos = u8::from(out.finish == Finish::Stop);
    Ok(())
}
