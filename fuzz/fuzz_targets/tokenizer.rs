//! `tokenizer.json`, then an encode of a fixed text with what it built.
//!
//! The `tokenizers` crate panics on some malformed files (`expect`s in its deserializers);
//! `Tokenizer::from_file` catches those and returns an error. libFuzzer's panic hook aborts on
//! every panic, caught or not, so this target puts back a hook that only prints: a panic that
//! escapes `from_file` or `encode` still unwinds out of the target and aborts (a crash), one
//! the engine turns into an error does not.
#![no_main]
use flashmoe_engine::Tokenizer;
use libfuzzer_sys::fuzz_target;
use std::sync::Once;

static HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let path = flashmoe_fuzz::scratch_file("tokenizer.json", data);
    if let Ok(t) = Tokenizer::from_file(&path) {
        let _ = t.encode("fn main() { println!(\"héllo\"); }");
    }
});
