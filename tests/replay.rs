//! `flashmoe synth` and `flashmoe replay` end to end on small models in a temporary
//! directory: the model verifies, every compared row is present, bytes read match the misses,
//! deterministic rows repeat exactly, bad input names its field or file. Never asserts on time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RECORD: u64 = 100_000; // read length: 102,400 (rounded up to 4096)

fn flashmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashmoe"))
        .args(args)
        .output()
        .expect("run flashmoe")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "flashmoe-replay-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
    fn s(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn synth(dir: &TempDir, extra: &[&str]) -> Output {
    let mut args = vec![
        "synth",
        "--layers",
        "4",
        "--experts",
        "16",
        "--k",
        "4",
        "--expert-bytes",
        "100000",
        "--quiet",
        "--out",
        dir.s(),
    ];
    args.extend_from_slice(extra);
    flashmoe(&args)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err_line(out: &Output) -> String {
    assert!(!out.status.success(), "should fail");
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    e
}

fn replay_json(model: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "replay",
        "--model",
        model,
        "--trace",
        "synthetic",
        "--budget",
        "25%",
        "--compute-us",
        "20",
        "--tokens",
        "24",
        "--warmup",
        "4",
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&flashmoe(&args))).expect("one JSON object")
}

fn row<'a>(v: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["label"] == label)
        .unwrap_or_else(|| panic!("row {label} missing in {v}"))
}

#[test]
fn synth_writes_a_model_whose_records_verify_and_refuses_to_overwrite() {
    let dir = TempDir::new("synth");
    ok(&synth(&dir, &[]));
    let (layout, meta) =
        io_sched::Manifest::load(Path::new(dir.s()).join("manifest.json")).expect("manifest");
    assert_eq!((layout.num_layers(), layout.num_experts()), (4, 16));
    assert!(layout.iter().all(|(_, l)| l.len == RECORD));
    assert_eq!(meta.expect("meta")["synth"]["k"], 4);
    io_sched::packfile::verify(&layout, |_| {}).expect("every record's checksum verifies");

    let again = err_line(&synth(&dir, &[]));
    assert!(
        again.contains("--force") && again.contains(dir.s()),
        "{again}"
    );
    ok(&synth(&dir, &["--force"]));
}

#[test]
fn compare_has_every_row_and_bytes_match_misses() {
    let dir = TempDir::new("compare");
    ok(&synth(&dir, &[]));
    let v = replay_json(dir.s(), &["--compare"]);
    let rec = v["record_bytes"].as_u64().expect("record_bytes");
    assert_eq!(rec, RECORD.div_ceil(4096) * 4096);
    let labels = [
        "a mmap+page-cache",
        "b sync pread",
        "c io-sched",
        "d io-sched+temporal",
        "d io-sched+transition",
        "d io-sched+scores",
        "d scores+2",
        "d scores+4 tie50 idle",
        "e io-sched+oracle",
    ];
    for l in labels {
        let r = row(&v, l);
        assert_eq!(r["tokens"], 24);
        assert!(
            r["demanded"].as_u64().expect("demanded") == 24 * 4 * 4,
            "{r}"
        );
    }
    // Without prefetch, every byte read is a demand read of a missed record.
    for l in ["a mmap+page-cache", "b sync pread", "c io-sched"] {
        let r = row(&v, l);
        let misses = r["misses"].as_u64().expect("misses");
        assert_eq!(r["bytes_read"].as_u64(), Some(misses * rec), "{l}: {r}");
    }
}

#[test]
fn same_trace_gives_same_hits_for_deterministic_rows() {
    let dir = TempDir::new("determinism");
    ok(&synth(&dir, &[]));
    let a = replay_json(dir.s(), &["--compare"]);
    let b = replay_json(dir.s(), &["--compare"]);
    for l in ["a mmap+page-cache", "b sync pread", "c io-sched"] {
        for f in ["hits", "misses", "bytes_read"] {
            assert_eq!(row(&a, l)[f], row(&b, l)[f], "{l} {f}");
        }
    }
}

#[test]
fn bad_input_names_the_field_or_file() {
    let dir = TempDir::new("errors");
    ok(&synth(&dir, &[]));
    let e = err_line(&flashmoe(&["replay", "--model", "/nonexistent/model"]));
    assert!(e.contains("/nonexistent/model"), "{e}");
    let e = err_line(&flashmoe(&[
        "replay",
        "--model",
        dir.s(),
        "--budget",
        "lots",
    ]));
    assert!(e.contains("--budget") && e.contains("lots"), "{e}");
    let e = err_line(&flashmoe(&[
        "replay",
        "--model",
        dir.s(),
        "--trace",
        "/nonexistent/trace.bin",
    ]));
    assert!(e.contains("/nonexistent/trace.bin"), "{e}");
    let e = err_line(&flashmoe(&[
        "replay",
        "--model",
        dir.s(),
        "--budget",
        "1%",
        "--trace",
        "synthetic",
    ]));
    assert!(e.contains("budget") && e.contains("k = 4"), "{e}");
    let e = err_line(&flashmoe(&["synth", "--layers", "2", "--out", dir.s()]));
    assert!(e.contains("--experts"), "{e}");
}

#[test]
fn predict_adds_the_simulators_figures_to_every_row() {
    let dir = TempDir::new("predict");
    ok(&synth(&dir, &[]));
    let v = replay_json(
        dir.s(),
        &[
            "--compare",
            "--predict",
            "--device",
            "linux-nvme-gen4",
            "--calibrate-on-model",
            "--calibrate-on-row-c",
            "--repeat",
            "2",
        ],
    );
    for r in v["rows"].as_array().expect("rows") {
        let p = &r["predicted"];
        assert!(p["tok_per_s"].as_f64().is_some_and(|t| t > 0.0), "{r}");
        assert!(p["hit_rate"].as_f64().is_some(), "{r}");
    }
}

#[test]
fn fixture_trace_maps_onto_a_smaller_model() {
    if flashmoe_test_support::fixture("tiny-qwen3-moe/routing_trace.safetensors").is_none() {
        return;
    }
    let dir = TempDir::new("fixture");
    ok(&synth(&dir, &[]));
    // The fixture routes 32 experts over 8 layers, top-4; the model has 16 x 4 layers.
    let mut args = vec![
        "replay",
        "--model",
        dir.s(),
        "--trace",
        "fixture",
        "--predictor",
        "oracle",
        "--tokens",
        "8",
        "--warmup",
        "2",
        "--compute-us",
        "0",
        "--json",
    ];
    args.push("--budget");
    args.push("50%");
    let v: serde_json::Value = serde_json::from_str(&ok(&flashmoe(&args))).expect("JSON");
    assert_eq!(v["k"], 4);
    assert_eq!(row(&v, "e io-sched+oracle")["demanded"], 8 * 4 * 4);
}

#[test]
fn over_fetch_rows_hint_past_k_only_within_the_devices_idle_time() {
    let dir = TempDir::new("overfetch");
    ok(&synth(&dir, &[]));
    // 20 us of compute per layer: the window holds no extra 100 KB record at any bandwidth
    // this disk has, so the idle-bounded row hints exactly k; the fixed row always k + 2.
    let v = replay_json(dir.s(), &["--compare", "--tie-pct", "0"]);
    assert_eq!(row(&v, "d io-sched+scores")["hinted_per_layer"], 4.0);
    assert_eq!(row(&v, "d scores+2")["hinted_per_layer"], 6.0);
    assert_eq!(row(&v, "d scores+4 idle")["hinted_per_layer"], 4.0);
    // 100 ms of compute per layer leaves room for every extra: k + 4.
    let args = [
        "replay",
        "--model",
        dir.s(),
        "--trace",
        "synthetic",
        "--compare",
        "--tie-pct",
        "0",
        "--compute-us",
        "100000",
        "--tokens",
        "1",
        "--warmup",
        "0",
        "--reference-mib",
        "0",
        "--json",
    ];
    let v: serde_json::Value = serde_json::from_str(&ok(&flashmoe(&args))).expect("JSON");
    assert_eq!(row(&v, "d scores+4 idle")["hinted_per_layer"], 8.0);
}

#[test]
fn device_time_and_reference_bursts_are_reported() {
    let dir = TempDir::new("busy");
    ok(&synth(&dir, &[]));
    let v = replay_json(dir.s(), &["--compare", "--reference-mib", "4"]);
    assert!(
        v["reference_best_gbps"].as_f64().is_some_and(|g| g > 0.0),
        "{v}"
    );
    // Two patterns x two depths plus row (b)'s own request, before the one round and after.
    assert_eq!(v["reference"].as_array().map(Vec::len), Some(10));
    for r in v["rows"].as_array().expect("rows") {
        let busy = r["device_busy_s"].as_f64().expect("device_busy_s");
        if r["bytes_read"].as_u64() > Some(0) {
            assert!(busy > 0.0, "{r}");
        }
    }
}
