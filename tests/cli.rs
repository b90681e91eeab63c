//! The `flashmoe` binary end to end on the committed default model (no fixtures needed):
//! the README's main command works, streaming choices never change the text, sampling is
//! seeded, and errors are one clear line with a non-zero exit.

use std::process::Command;

fn flashmoe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flashmoe"))
        .args(args)
        .output()
        .expect("run flashmoe")
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["generate", "--json", "--ignore-eos"];
    all.extend_from_slice(args);
    let out = flashmoe(&all);
    assert!(
        out.status.success(),
        "flashmoe {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn main_command_streams_text_from_the_default_model() {
    let out = flashmoe(&[
        "generate",
        "--prompt",
        "The Rust programming language",
        "--max-tokens",
        "12",
        "--stats",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("The Rust programming language"), "{text}");
    assert!(
        text.trim().len() > "The Rust programming language".len(),
        "{text}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hit rate") && err.contains("tok/s"), "{err}");
}

#[test]
fn text_does_not_depend_on_budget_backend_or_predictor() {
    let base = json(&[
        "--max-tokens",
        "16",
        "--predictor",
        "none",
        "--budget",
        "100%",
    ]);
    let want = base["text"].as_str().expect("text").to_string();
    assert_eq!(base["tokens"].as_array().expect("tokens").len(), 16);
    for (budget, backend, predictor) in [
        ("25%", "auto", "pregate"),
        ("10%", "pread", "transition"),
        ("1M", "mmap", "pregate"),
        ("50%", "pread", "temporal"),
    ] {
        let r = json(&[
            "--max-tokens",
            "16",
            "--budget",
            budget,
            "--io-backend",
            backend,
            "--predictor",
            predictor,
        ]);
        assert_eq!(
            r["text"].as_str(),
            Some(want.as_str()),
            "{budget} {backend} {predictor}"
        );
    }
    let pregate = json(&["--max-tokens", "16", "--budget", "25%"]);
    assert!(
        pregate["stats"]["prefetch_used"].as_u64() > Some(0),
        "{pregate}"
    );
}

#[test]
fn sampling_is_seeded() {
    let a = json(&[
        "--max-tokens",
        "16",
        "--temperature",
        "0.9",
        "--top-p",
        "0.9",
        "--seed",
        "7",
    ]);
    let b = json(&[
        "--max-tokens",
        "16",
        "--temperature",
        "0.9",
        "--top-p",
        "0.9",
        "--seed",
        "7",
    ]);
    assert_eq!(a["tokens"], b["tokens"]);
}

#[test]
fn errors_are_one_line_and_fail() {
    for args in [
        &["generate", "--model", "/nonexistent/model"][..],
        &["generate", "--budget", "lots"][..],
        &["generate", "--budget", "100K"][..],
        &["generate", "--predictor", "psychic"][..],
    ] {
        let out = flashmoe(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
    }
}
