//! `ModelSession` on the committed default model: the tokens and text of a request equal a
//! plain greedy generation's; a request that extends the conversation reuses the context and
//! still gives a fresh session's tokens; stop strings, cancellation and bad requests.

use flashmoe_backends::CpuBackend;
use flashmoe_engine::{
    EngineError, ExpertBudget, Finish, GenerationRequest, ModelSession, NoObserver, PackedModel,
    SchedExperts, SessionOptions, generate_greedy, open_scheduler,
};
use io_sched::SchedulerConfig;
use io_sched::backend::select::BackendConfig;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4")
}

fn session() -> ModelSession<CpuBackend> {
    let opts = SessionOptions::new()
        .budget(ExpertBudget::Share(0.5))
        .max_seq(256);
    ModelSession::open(&dir(), CpuBackend::new(), opts).unwrap()
}

/// Greedy tokens of `prompt` by the plain decode loop (no session, no prompt cache).
fn reference(prompt: &[u32], n: usize) -> Vec<u32> {
    let m = PackedModel::open(&dir()).unwrap();
    let (sched, _) = open_scheduler(
        &m,
        SchedulerConfig::with_budget(64 << 20),
        &BackendConfig::default(),
    )
    .unwrap();
    let mut experts = SchedExperts::new(sched, m.record).unwrap();
    let mut model = m.load_model(CpuBackend::new(), 256).unwrap();
    generate_greedy(&mut model, prompt, n, &mut experts, &mut NoObserver).unwrap()
}

fn run(
    s: &mut ModelSession<CpuBackend>,
    req: &GenerationRequest,
) -> (flashmoe_engine::Outcome, String) {
    let mut streamed = String::new();
    let o = s
        .generate(req, &mut |_, t| {
            streamed.push_str(t);
            ControlFlow::Continue(())
        })
        .unwrap();
    (o, streamed)
}

#[test]
fn a_request_gives_the_plain_greedy_tokens_and_text() {
    let mut s = session();
    let prompt = s
        .model()
        .tokenizer
        .encode("The Rust programming language")
        .unwrap();
    let req = GenerationRequest::greedy(prompt.clone(), 16).ignore_eos(true);
    let (o, streamed) = run(&mut s, &req);
    let want = reference(&prompt, 16);
    assert_eq!(o.tokens, want);
    assert_eq!(o.finish, Finish::Length);
    assert_eq!(
        (o.prompt_tokens, o.cached_tokens, o.completion_tokens),
        (prompt.len(), 0, 16)
    );
    assert_eq!(o.text, s.model().tokenizer.decode(&want).unwrap());
    assert_eq!(streamed, o.text, "streamed pieces add up to the text");
}

#[test]
fn a_continued_conversation_reuses_the_context_and_matches_a_fresh_session() {
    let mut s = session();
    let turn1 = s.model().tokenizer.encode("fn main() {").unwrap();
    let (o1, _) = run(
        &mut s,
        &GenerationRequest::greedy(turn1.clone(), 8).ignore_eos(true),
    );
    let mut turn2 = turn1.clone();
    turn2.extend(&o1.tokens);
    turn2.extend(s.model().tokenizer.encode(" The borrow checker").unwrap());
    let (o2, _) = run(
        &mut s,
        &GenerationRequest::greedy(turn2.clone(), 8).ignore_eos(true),
    );
    // Everything but the last answer token (never fed back) is reused.
    assert_eq!(o2.cached_tokens, turn1.len() + o1.tokens.len() - 1);
    let mut fresh = session();
    let (o3, _) = run(
        &mut fresh,
        &GenerationRequest::greedy(turn2, 8).ignore_eos(true),
    );
    assert_eq!(o3.cached_tokens, 0);
    assert_eq!(o2.tokens, o3.tokens);
}

#[test]
fn a_stop_string_ends_the_text_before_it() {
    let mut s = session();
    let prompt = s
        .model()
        .tokenizer
        .encode("The Rust programming language")
        .unwrap();
    let free = run(
        &mut s,
        &GenerationRequest::greedy(prompt.clone(), 24).ignore_eos(true),
    )
    .0;
    // Stop at the second word of the free-running answer.
    let word = free
        .text
        .split_whitespace()
        .nth(1)
        .expect("the answer has two words")
        .to_string();
    s.reset();
    let req = GenerationRequest::greedy(prompt, 24)
        .ignore_eos(true)
        .stop(vec![word.clone()]);
    let (o, streamed) = run(&mut s, &req);
    assert_eq!(o.finish, Finish::Stop);
    let cut = free.text.find(&word).unwrap();
    assert_eq!(o.text, free.text[..cut]);
    assert_eq!(streamed, o.text);
}

#[test]
fn a_callback_cancels_after_the_token_it_was_given() {
    let mut s = session();
    let prompt = s
        .model()
        .tokenizer
        .encode("The Rust programming language")
        .unwrap();
    let mut seen = 0;
    let o = s
        .generate(
            &GenerationRequest::greedy(prompt, 32).ignore_eos(true),
            &mut |id, _| {
                assert!(id.is_some());
                seen += 1;
                if seen == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .unwrap();
    assert_eq!(
        (o.finish, o.completion_tokens, seen),
        (Finish::Cancelled, 3, 3)
    );
}

#[test]
fn bad_requests_and_budgets_are_errors() {
    let mut s = session();
    let empty = s.generate(&GenerationRequest::greedy(Vec::new(), 4), &mut |_, _| {
        ControlFlow::Continue(())
    });
    assert!(
        matches!(empty, Err(EngineError::Request { .. })),
        "{empty:?}"
    );
    let long = s.generate(&GenerationRequest::greedy(vec![1; 256], 4), &mut |_, _| {
        ControlFlow::Continue(())
    });
    let msg = long.unwrap_err().to_string();
    assert!(
        msg.contains("256 tokens") && msg.contains("context holds 256"),
        "{msg}"
    );
    for share in [0.0, 1.5, f64::NAN] {
        let opts = SessionOptions::new().budget(ExpertBudget::Share(share));
        let r = ModelSession::open(&dir(), CpuBackend::new(), opts);
        assert!(
            matches!(r, Err(EngineError::Request { .. })),
            "share {share}"
        );
    }
    let r = ModelSession::open(
        &dir(),
        CpuBackend::new(),
        SessionOptions::new().budget(ExpertBudget::Bytes(0)),
    );
    assert!(matches!(r, Err(EngineError::OutOfRange { .. })));
}

/// `SessionOptions::prefill_chunk` reaches the model: token by token, in chunks of 3 and by
/// default (one chunk here) give the same tokens on the committed model (int8 activations,
/// 4-bit experts, streamed), and the chunked sessions count their unions.
#[test]
fn prefill_chunk_option_keeps_the_tokens() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4");
    let open = |chunk: Option<usize>| {
        let mut opts = SessionOptions::new()
            .budget(ExpertBudget::Share(0.25))
            .max_seq(256);
        if let Some(n) = chunk {
            opts = opts.prefill_chunk(n);
        }
        ModelSession::open(&dir, CpuBackend::new(), opts).expect("session")
    };
    let mut outs = Vec::new();
    for chunk in [Some(1), Some(3), None] {
        let mut s = open(chunk);
        let prompt = s
            .model()
            .tokenizer
            .encode("The Rust programming language is a systems language that")
            .expect("encode");
        let req = GenerationRequest::greedy(prompt.clone(), 12).ignore_eos(true);
        let o = s
            .generate(&req, &mut |_, _| ControlFlow::Continue(()))
            .expect("generate");
        let st = s.prefill_stats();
        match chunk {
            Some(1) => assert_eq!((s.prefill_chunk(), st.chunks), (1, 0)),
            Some(n) => assert_eq!(st.chunks as usize, prompt.len().div_ceil(n)),
            None => assert!(s.prefill_chunk() >= prompt.len() && st.chunks == 1),
        }
        outs.push(o.tokens);
    }
    assert_eq!(outs[1], outs[0], "chunks of 3 vs token by token");
    assert_eq!(outs[2], outs[0], "default chunk vs token by token");
}
