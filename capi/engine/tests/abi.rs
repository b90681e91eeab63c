//! The engine's C functions called from Rust: cancel from another thread, BUSY while
//! generating, reset, and bad arguments.

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::Path;
use std::ptr;
use std::sync::mpsc;

use flashmoe_engine_capi::error::fme_last_error;
use flashmoe_engine_capi::generate::{fme_generate, fme_generate_params_default};
use flashmoe_engine_capi::model::*;
use flashmoe_engine_capi::options::*;
use flashmoe_engine_capi::{FmeGeneration, FmeModel, FmeStatus};

fn last_error() -> String {
    let p = fme_last_error();
    assert!(!p.is_null());
    // SAFETY: non-NULL and valid until the next failing call on this thread.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn open_default() -> *mut FmeModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-qwen3-moe-q4");
    let dir = CString::new(dir.to_str().unwrap()).unwrap();
    let mut m = ptr::null_mut();
    // SAFETY: valid string and out pointer.
    let st = unsafe { fme_model_open(dir.as_ptr(), ptr::null(), &mut m) };
    assert_eq!(st, FmeStatus::Ok, "{}", last_error());
    m
}

/// The model pointer, to hand to another thread (the header documents it thread-safe).
#[derive(Clone, Copy)]
struct Shared(*const FmeModel);
// SAFETY: `FmeModel` is Send + Sync (checked in lib.rs); the pointer outlives the threads.
unsafe impl Send for Shared {}

/// Callback state: at the first token, tell the test and wait for its go-ahead.
struct Gate {
    started: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
    tokens: u32,
}

unsafe extern "C" fn gated(
    user: *mut c_void,
    _token: u32,
    _piece: *const c_char,
    _len: usize,
) -> i32 {
    // SAFETY: `user` is the `Gate` the test passed, alive for the whole generate call.
    let gate = unsafe { &mut *(user as *mut Gate) };
    gate.tokens += 1;
    if gate.tokens == 1 {
        gate.started.send(()).unwrap();
        gate.go.recv().unwrap();
    }
    0
}

#[test]
fn cancel_from_another_thread_stops_generation_and_busy_calls_are_refused() {
    let m = open_default();
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let shared = Shared(m);
    let generating = std::thread::spawn(move || {
        let shared = shared;
        let mut gate = Gate {
            started: started_tx,
            go: go_rx,
            tokens: 0,
        };
        let mut params = fme_generate_params_default();
        params.max_tokens = 200;
        params.stop_at_eos = 0;
        let prompt = CString::new("fn main() {").unwrap();
        let mut g = FmeGeneration::default();
        // SAFETY: live model, valid prompt/params/out; `gate` outlives the call.
        let st = unsafe {
            fme_generate(
                shared.0,
                prompt.as_ptr(),
                &params,
                Some(gated),
                (&mut gate as *mut Gate).cast(),
                &mut g,
            )
        };
        (st, g, gate.tokens)
    });
    started_rx.recv().unwrap();
    // SAFETY: live model; these calls are documented safe while another thread generates.
    unsafe {
        let prompt = CString::new("x").unwrap();
        let st = fme_generate(
            m,
            prompt.as_ptr(),
            ptr::null(),
            None,
            ptr::null_mut(),
            ptr::null_mut(),
        );
        assert_eq!(st, FmeStatus::Busy);
        assert!(
            last_error().contains("another thread is generating"),
            "{}",
            last_error()
        );
        assert_eq!(fme_model_reset(m), FmeStatus::Busy);
        assert_eq!(fme_model_cancel(m), FmeStatus::Ok);
    }
    go_tx.send(()).unwrap();
    let (st, g, tokens) = generating.join().unwrap();
    assert_eq!(st, FmeStatus::Cancelled);
    assert_eq!((g.generated_tokens, g.cancelled, tokens), (1, 1, 1));
    // SAFETY: live model, no other thread uses it now.
    unsafe {
        let prompt = CString::new("fn main() {").unwrap();
        let mut g = FmeGeneration::default();
        let st = fme_generate(
            m,
            prompt.as_ptr(),
            ptr::null(),
            None,
            ptr::null_mut(),
            &mut g,
        );
        assert_eq!((st, g.generated_tokens), (FmeStatus::Cancelled, 0));
        assert_eq!(fme_model_reset(m), FmeStatus::Ok);
        let mut params = fme_generate_params_default();
        params.max_tokens = 4;
        let st = fme_generate(m, prompt.as_ptr(), &params, None, ptr::null_mut(), &mut g);
        assert_eq!(st, FmeStatus::Ok, "{}", last_error());
        assert_eq!((g.generated_tokens, g.cancelled), (4, 0));
        // A second call continues the conversation: the last token and the new prompt are fed.
        let more = CString::new(" let").unwrap();
        let before = g.positions;
        let st = fme_generate(m, more.as_ptr(), &params, None, ptr::null_mut(), &mut g);
        assert_eq!(st, FmeStatus::Ok, "{}", last_error());
        assert!(g.positions > before && g.prompt_tokens >= 2, "{g:?}");
        fme_model_free(m);
    }
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    // SAFETY: NULL and bad values are what is under test; other pointers are live.
    unsafe {
        let mut m = ptr::null_mut();
        assert_eq!(
            fme_model_open(ptr::null(), ptr::null(), &mut m),
            FmeStatus::Null
        );
        assert_eq!(last_error(), "fme_model_open: `dir` is NULL");
        assert_eq!(fme_model_cancel(ptr::null()), FmeStatus::Null);
        let mut o = ptr::null_mut();
        assert_eq!(fme_options_new(&mut o), FmeStatus::Ok);
        let bad = CString::new("telepathy").unwrap();
        assert_eq!(fme_options_set_predictor(o, bad.as_ptr()), FmeStatus::Ok);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-qwen3-moe-q4");
        let dir = CString::new(dir.to_str().unwrap()).unwrap();
        assert_eq!(
            fme_model_open(dir.as_ptr(), o, &mut m),
            FmeStatus::InvalidArgument
        );
        assert!(last_error().contains("telepathy"), "{}", last_error());
        let pread = CString::new("pread").unwrap();
        assert_eq!(fme_options_set_predictor(o, pread.as_ptr()), FmeStatus::Ok);
        assert_eq!(
            fme_model_open(dir.as_ptr(), o, &mut m),
            FmeStatus::InvalidArgument
        );
        // A budget below one layer's top-k experts.
        let none = CString::new("none").unwrap();
        assert_eq!(fme_options_set_predictor(o, none.as_ptr()), FmeStatus::Ok);
        assert_eq!(fme_options_set_budget_bytes(o, 4096), FmeStatus::Ok);
        assert_eq!(fme_model_open(dir.as_ptr(), o, &mut m), FmeStatus::Io);
        assert!(last_error().contains("top_k"), "{}", last_error());
        assert_eq!(
            fme_options_set_budget_share(o, 0.0),
            FmeStatus::InvalidArgument
        );
        fme_options_free(o);
    }
}
