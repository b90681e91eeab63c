//! [`TextStream`] on the default model's tokenizer: deltas add up to the decoded text, stop
//! strings cut it (also across token boundaries), and nothing after a stop is released.

use flashmoe_engine::{TextStream, Tokenizer};
use std::path::Path;

fn tok() -> Tokenizer {
    Tokenizer::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4/tokenizer.json"),
    )
    .unwrap()
}

fn run(t: &Tokenizer, ids: &[u32], stops: &[&str]) -> (Vec<String>, String, bool) {
    let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
    let mut deltas = Vec::new();
    for &id in ids {
        deltas.push(s.push(t, id).unwrap());
    }
    let rest = s.finish(t).unwrap();
    let mut all: String = deltas.concat();
    all.push_str(&rest);
    (deltas, all, s.stopped())
}

#[test]
fn deltas_add_up_to_the_decoded_text() {
    let t = tok();
    let text = "Ownership — «borrowing» in Rust: fn main() { let x = 5; }";
    let ids = t.encode(text).unwrap();
    let (deltas, all, stopped) = run(&t, &ids, &[]);
    assert_eq!(all, t.decode(&ids).unwrap());
    assert_eq!(all, text);
    assert!(!stopped);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
}

#[test]
fn stop_strings_cut_the_text_even_across_tokens() {
    let t = tok();
    let text = "The Rust programming language helps you write faster software.";
    let ids = t.encode(text).unwrap();
    for stop in ["language", "ming lang", "s you w", "."] {
        let (deltas, all, stopped) = run(&t, &ids, &["zzz-not-there", stop]);
        assert!(stopped, "{stop:?}");
        assert_eq!(all, &text[..text.find(stop).unwrap()], "{stop:?}");
        // Nothing of the stop string was ever released.
        assert!(!deltas.concat().contains(stop), "{stop:?}: {deltas:?}");
    }
    // A stop string that never completes holds back nothing at the end.
    let (_, all, stopped) = run(&t, &ids, &["software!"]);
    assert!(!stopped);
    assert_eq!(all, text);
}
