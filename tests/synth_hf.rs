//! `synth --hf` → `pack` → `generate --trace --trace-far` → `trace-stats`, end to end through
//! the binary on a tiny geometry, and the arguments' errors.

use std::path::Path;
use std::process::Command;

fn flashmoe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flashmoe"))
        .args(args)
        .output()
        .expect("run flashmoe")
}

fn ok(args: &[&str]) -> String {
    let out = flashmoe(args);
    assert!(
        out.status.success(),
        "flashmoe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const TINY: &[&str] = &[
    "--set",
    "hidden_size=64",
    "--set",
    "num_attention_heads=2",
    "--set",
    "num_key_value_heads=1",
    "--set",
    "head_dim=32",
    "--experts",
    "8",
    "--k",
    "2",
    "--set",
    "moe_intermediate_size=32",
    "--set",
    "vocab_size=700",
    "--layers",
    "3",
    "--quiet",
];

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn a_synthetic_checkpoint_runs_and_its_trace_has_statistics() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (hf, packed) = (tmp.path().join("hf"), tmp.path().join("packed"));
    let (trace, far) = (tmp.path().join("t.trace"), tmp.path().join("f.trace"));
    let mut args = vec![
        "synth",
        "--hf",
        "--preset",
        "qwen3-30b-a3b",
        "--out",
        s(&hf),
    ];
    args.extend_from_slice(TINY);
    let said = ok(&args);
    assert!(said.contains("3 layers x 8 experts (top-2)"), "{said}");
    ok(&["pack", s(&hf), s(&packed), "--bits", "8"]);
    ok(&[
        "generate",
        "--model",
        s(&packed),
        "--prompt",
        "Hello there, general reader",
        "--max-tokens",
        "16",
        "--ignore-eos",
        "--trace",
        s(&trace),
        "--trace-far",
        s(&far),
    ]);
    let table = ok(&["trace-stats", s(&trace), "--far", s(&far)]);
    for row in [
        "next-token reuse, mean",
        "top-10% share, mean",
        "pre-gate recall (L+1 from L)",
    ] {
        assert!(table.contains(row), "{table}");
    }
    assert!(table.contains("3x8 (2)"), "{table}");
    assert!(!table.contains("n/a"), "every figure is measured: {table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["trace-stats", s(&trace), "--json"])).expect("json");
    let st = &json[0]["stats"];
    assert_eq!(st["layers"], 3);
    let recall = st["pregate_recall"].as_f64().expect("recall");
    assert!((0.0..=1.0).contains(&recall), "{recall}");
    assert_eq!(st["reuse"].as_array().map(Vec::len), Some(3));
}

#[test]
fn bad_synth_and_trace_stats_arguments_are_one_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("x");
    for (args, says) in [
        (
            vec!["synth", "--hf", "--out", s(&out)],
            "--hf needs --preset",
        ),
        (
            vec!["synth", "--hf", "--preset", "gpt-5", "--out", s(&out)],
            "no HF preset",
        ),
        (
            vec![
                "synth",
                "--hf",
                "--preset",
                "qwen3-30b-a3b",
                "--set",
                "hidden_size",
                "--out",
                s(&out),
            ],
            "expected KEY=JSON",
        ),
        (
            vec![
                "synth",
                "--hf",
                "--preset",
                "qwen3-30b-a3b",
                "--set",
                "hidden_act=\"gelu\"",
                "--out",
                s(&out),
            ],
            "refused by the engine",
        ),
        (
            vec!["trace-stats", "/nonexistent/t.trace"],
            "/nonexistent/t.trace",
        ),
    ] {
        let o = flashmoe(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} must fail");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
