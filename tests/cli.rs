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

/// At a budget that holds every expert, generate preloads them all (every demand then hits and
/// nothing is read during the run); `--preload false` reads each on first use; below it nothing
/// is preloaded unless asked. The text is the same in all.
#[test]
fn a_budget_that_holds_every_expert_is_preloaded() {
    let whole = json(&["--max-tokens", "12", "--budget", "100%"]);
    let records = whole["stats"]["expert_records"].as_u64().expect("records");
    let st = &whole["stats"];
    assert_eq!(st["preloaded_records"].as_u64(), Some(records), "{whole}");
    // Whole records, each read rounded up to 4 KiB for direct I/O.
    let (read, payload) = (st["preload_bytes"].as_u64(), st["expert_bytes"].as_u64());
    assert!(
        read >= payload && read < payload.map(|p| p + records * 4096),
        "{whole}"
    );
    assert_eq!(
        (st["hit_rate"].as_f64(), st["bytes_read"].as_u64()),
        (Some(1.0), Some(0))
    );
    let lazy = json(&[
        "--max-tokens",
        "12",
        "--budget",
        "100%",
        "--preload",
        "false",
    ]);
    assert_eq!(lazy["stats"]["preloaded_records"].as_u64(), Some(0));
    assert!(lazy["stats"]["bytes_read"].as_u64() > Some(0), "{lazy}");
    let quarter = json(&["--max-tokens", "12", "--budget", "25%"]);
    assert_eq!(quarter["stats"]["preloaded_records"].as_u64(), Some(0));
    let filled = json(&["--max-tokens", "12", "--budget", "25%", "--preload", "true"]);
    let slots = filled["stats"]["cache_slots"].as_u64().expect("slots");
    assert_eq!(filled["stats"]["preloaded_records"].as_u64(), Some(slots));
    for r in [&lazy, &quarter, &filled] {
        assert_eq!(r["text"], whole["text"]);
    }
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
        &["generate", "--backend", "tpu"][..],
    ] {
        let out = flashmoe(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
    }
}

/// The GPU backend gives the text the CPU gives, and reports the adapter it chose and its expert
/// traffic. Skips (printing why) where no wgpu adapter opens, unless CI asks for one.
#[test]
fn wgpu_backend_gives_the_cpu_text_and_reports_its_adapter() {
    let args = [
        "generate",
        "--json",
        "--ignore-eos",
        "--max-tokens",
        "16",
        "--budget",
        "25%",
    ];
    let mut gpu_args = args.to_vec();
    gpu_args.extend(["--backend", "wgpu"]);
    let out = flashmoe(&gpu_args);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::env::var_os("FLASHMOE_REQUIRE_GPU").is_none() && err.contains("adapter"),
            "flashmoe {gpu_args:?} failed: {err}"
        );
        println!("SKIP: no wgpu adapter: {err}");
        return;
    }
    let gpu: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    // The GPU computes with f32 activations: the CPU's same maths gives the same text.
    let cpu = json(&[&args[3..], &["--activations", "f32"]].concat());
    assert_eq!(gpu["tokens"], cpu["tokens"], "wgpu vs cpu tokens");
    let c = &gpu["stats"]["compute"];
    assert_eq!(c["backend"], "wgpu");
    assert!(c["adapter"].as_str().is_some_and(|a| !a.is_empty()), "{c}");
    let routed =
        c["gpu_resident_hits"].as_u64().unwrap() + c["gpu_demand_uploads"].as_u64().unwrap();
    assert!(routed > 0, "no expert reached the GPU: {c}");
    assert_eq!(cpu["stats"]["compute"]["backend"], "cpu");
}
