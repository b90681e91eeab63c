//! `tokenizer.json`, then an encode of a fixed text with what it built.
#![no_main]
use flashmoe_engine::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = flashmoe_fuzz::scratch_file("tokenizer.json", data);
    if let Ok(t) = Tokenizer::from_file(&path) {
        let _ = t.encode("fn main() { println!(\"héllo\"); }");
    }
});
