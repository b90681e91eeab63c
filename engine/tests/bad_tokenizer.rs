//! Malformed `tokenizer.json` files give an error naming the file, never a panic. The first
//! input is what fuzzing found to panic inside the `tokenizers` crate (fuzz/ target
//! `tokenizer`).

use flashmoe_engine::Tokenizer;
use std::path::Path;

#[test]
fn fuzz_found_tokenizer_is_an_error_not_a_panic() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-tokenizer-panic.json");
    let e = Tokenizer::from_file(&path)
        .err()
        .expect("malformed tokenizer");
    assert!(e.to_string().contains("fuzz-tokenizer-panic.json"), "{e}");
}

#[test]
fn truncated_or_non_json_tokenizer_is_an_error() {
    let good =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4/tokenizer.json");
    let bytes = std::fs::read(&good).expect("committed tokenizer");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, data) in [
        ("half.json", &bytes[..bytes.len() / 2]),
        ("binary.json", &[0xff, 0x00, 0x12][..]),
        ("empty.json", &[][..]),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, data).expect("write");
        let e = Tokenizer::from_file(&p).err().expect(name);
        assert!(e.to_string().contains(name), "{e}");
    }
    Tokenizer::from_file(&good).expect("the committed tokenizer loads");
}
