//! Bad arguments and device profiles: each gives one clear error naming the argument or field
//! (with its unit), exit status 1 or 2 — never a hang, a panic, an abort or a silent default.
//! Also: logs carry no ANSI colours when stderr is not a terminal, and a private
//! `XDG_RUNTIME_DIR` is made when the environment has none.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs flashmoe with `args`; a run still going after 120 s is killed and fails the test
/// (the cases here used to spin forever).
fn run_env(args: &[&str], env: &[(&str, &str)], unset: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashmoe"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().expect("run flashmoe");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("flashmoe {args:?} hung (killed after 120 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    (status.code().unwrap_or(-1), out, err)
}

fn run(args: &[&str]) -> (i32, String, String) {
    run_env(args, &[], &[])
}

/// `args` fail with exit 1 (our error) or 2 (clap's), and stderr holds every one of `want`.
fn refused(args: &[&str], want: &[&str]) {
    let (code, _, err) = run(args);
    assert!(
        code == 1 || code == 2,
        "flashmoe {args:?}: exit {code} (want 1 or 2: no panic, no success): {err}"
    );
    for w in want {
        assert!(err.contains(w), "flashmoe {args:?}: {w:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn generate_refuses_bad_sampling_and_budget() {
    refused(
        &["generate", "--temperature", "nan"],
        &["--temperature", ">= 0"],
    );
    refused(&["generate", "--top-p", "2"], &["--top-p", "(0, 1]"]);
    refused(&["generate", "--top-p", "nan"], &["--top-p", "(0, 1]"]);
    refused(&["generate", "--budget", "0"], &["more than 0 bytes"]);
    refused(
        &["generate", "--max-tokens", "18446744073709551615"],
        &["--max-tokens 18446744073709551615", "positions"],
    );
    // A policy the predictor cannot feed names the flags and the predictor.
    refused(
        &[
            "generate",
            "--predictor",
            "pregate",
            "--eviction",
            "next-use",
        ],
        &["--eviction", "next-use eviction needs", "not pregate"],
    );
    refused(
        &[
            "generate",
            "--predictor",
            "temporal",
            "--cost-aware",
            "true",
        ],
        &["--cost-aware", "calibrated predictor", "not temporal"],
    );
    let (code, _, err) = run(&["generate", "--predictor", "bogus"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("pregate, blend, none, temporal, transition or frequency")
            && !err.contains("oracle"),
        "{err}"
    );
}

#[test]
fn io_bench_and_synth_refuse_zero_and_huge_counts() {
    refused(
        &["io-bench", "--experts", "0"],
        &["--experts", "at least 1"],
    );
    refused(&["io-bench", "--k", "0"], &["--k", "at least 1"]);
    refused(&["io-bench", "--experts", "2", "--k", "4"], &["--k 4"]);
    // These panicked on a capacity overflow, read for ever, or ran with a silent 1.
    let big = "18446744073709551615";
    refused(
        &["io-bench", "--expert-bytes", big],
        &["--expert-bytes", "bytes"],
    );
    refused(
        &["io-bench", "--expert-bytes", "0"],
        &["--expert-bytes", "bytes"],
    );
    refused(
        &["io-bench", "--mib-per-row", big],
        &["--mib-per-row", "MiB"],
    );
    refused(&["io-bench", "--file-mib", "0"], &["--file-mib", "MiB"]);
    refused(&["io-bench", "--repeat", "0"], &["--repeat", "at least 1"]);
    refused(
        &["io-bench", "--file-mib", "1", "--expert-bytes", "1048576"],
        &["--file-mib 1 holds no layer", "--experts 64"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m");
    let out = out.to_str().expect("utf-8");
    refused(
        &[
            "synth",
            "--layers",
            "100000",
            "--experts",
            "100000",
            "--k",
            "4",
            "--expert-bytes",
            "4096",
            "--out",
            out,
        ],
        &["expert records", "at most"],
    );
    // A shard size of 0 wrote one shard per tensor.
    refused(
        &[
            "synth",
            "--hf",
            "--preset",
            "qwen3-30b-a3b",
            "--shard-mb",
            "0",
            "--out",
            out,
        ],
        &["--shard-mb"],
    );
}

#[test]
fn sim_refuses_bandwidth_compute_and_counts_out_of_range() {
    for (flag, value, want) in [
        ("--ssd-peak-gbps", "0", "GB/s"),
        ("--ssd-peak-gbps", "nan", "GB/s"),
        ("--ssd-single-gbps", "0", "GB/s"),
        ("--contention", "-1", "--contention"),
        ("--pregate-recall", "1.5", "between 0 and 1"),
        ("--tokens", "100000000000", "--tokens"),
        ("--warmup", "18446744073709551615", "--warmup"),
        ("--budget-gb", "nan", "GB"),
        ("--queue-depth", "0", "--queue-depth"),
    ] {
        let arg = format!("{flag}={value}");
        refused(&["sim", "--mode", "flashmoe", &arg], &[flag, want]);
    }
    // `--ttft` walked all 2^64 prompt tokens (a hang); a chunk or prompt of 0 was made 1.
    for (flag, value, want) in [
        ("--prompt-tokens", "18446744073709551615", "1..=1048576"),
        ("--prompt-tokens", "0", "1..=1048576"),
        ("--chunk", "0", ">= 1"),
    ] {
        let arg = format!("{flag}={value}");
        refused(&["sim", "--ttft", &arg], &[flag, want]);
    }
}

#[test]
fn sim_refuses_a_profile_with_a_field_out_of_range() {
    let (code, json, err) = run(&["sim", "--show-device"]);
    assert_eq!(code, 0, "{err}");
    let base: serde_json::Value = serde_json::from_str(&json).expect("profile JSON");
    let dir = tempfile::tempdir().expect("tempdir");
    for (ptr, value, want) in [
        (
            "/ssd_direct/peak_gbps/value",
            0.0,
            "ssd_direct.peak_gbps = 0 GB/s",
        ),
        ("/ssd_buffered/single_request_gbps/value", 0.0, "GB/s"),
        (
            "/ssd_direct/channels/value",
            0.0,
            "ssd_direct.channels = 0 requests",
        ),
        ("/ssd_direct/latency_us/value", -1.0, "latency_us = -1 µs"),
        ("/contention/value", -0.5, "contention"),
        ("/compute/mem_bw_gbps/value", 0.0, "compute.mem_bw_gbps"),
        (
            "/compute/calibration/ms_per_layer/value",
            0.0,
            "ms_per_layer = 0 ms",
        ),
        ("/os_reserved_bytes/value", 1e30, "less than ram_bytes"),
    ] {
        let mut p = base.clone();
        *p.pointer_mut(ptr)
            .unwrap_or_else(|| panic!("{ptr} in profile")) = value.into();
        let path = dir.path().join("dev.json");
        std::fs::write(&path, p.to_string()).expect("write profile");
        let path = path.to_str().expect("utf-8");
        refused(
            &["sim", "--mode", "flashmoe", "--device", path],
            &["profile", want],
        );
    }
}

#[test]
fn logs_have_no_colours_off_a_terminal_and_a_runtime_dir_is_made() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tmpdir = tmp.path().to_str().expect("utf-8");
    let (code, _, err) = run_env(
        &["generate", "--max-tokens", "2"],
        &[("RUST_LOG", "debug"), ("TMPDIR", tmpdir)],
        &["XDG_RUNTIME_DIR"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("DEBUG"), "no log line to check: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in a log file: {err:?}"
    );
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let dir = tmp.path().join(format!("flashmoe-runtime-{uid}"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
}

/// These ran with a silent 1 (`--repeat`, `--queue-depth`), an error that named neither flag
/// (`--tokens-per-trace 0`), one message for two flags, or a recall above 1.
#[test]
fn replay_refuses_counts_shares_and_rates_out_of_range() {
    for (flag, value, want) in [
        ("--repeat", "0", "at least 1"),
        ("--queue-depth", "0", "at least 1"),
        ("--k", "0", "at least 1"),
        ("--tokens-per-trace", "0", "1.."),
        ("--pregate-recall", "2", "[0, 1]"),
        ("--pre-share", "nan", "[0, 1]"),
        ("--compute-us", "nan", "µs"),
        ("--compute-us", "-1", "µs"),
        ("--sim-gbps", "0", "GB/s"),
        ("--calibrate-mb", "0", "MiB"),
    ] {
        let arg = format!("{flag}={value}");
        refused(&["replay", "--model", "m", &arg], &[flag, want]);
    }
}

#[test]
fn replay_names_the_far_trace_geometry_and_the_reference_switch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| tmp.path().join(n).to_str().expect("utf-8").to_string();
    let (model, trace, far) = (p("model"), p("s.trace"), p("f.trace"));
    let synth = |layers: &str, experts: &str, bytes: &str| {
        let (code, _, err) = run(&[
            "synth",
            "--layers",
            layers,
            "--experts",
            experts,
            "--k",
            "2",
            "--expert-bytes",
            bytes,
            "--out",
            &model,
            "--quiet",
            "--force",
        ]);
        assert_eq!(code, 0, "{err}");
    };
    // A model smaller than one reference request: refused, naming the switch that skips it.
    synth("2", "8", "4096");
    refused(
        &[
            "replay",
            "--model",
            &model,
            "--trace",
            "synthetic",
            "--compute-us",
            "0",
        ],
        &["smaller than one", "--reference-mib 0"],
    );
    refused(
        &[
            "replay",
            "--model",
            &model,
            "--trace",
            "synthetic",
            "--warmup",
            "18446744073709551615",
        ],
        &["--warmup", "--tokens"],
    );
    // Traces of the 8 x 32 default model on a 2 x 8 model: the far trace's geometry is named.
    let (code, _, err) = run(&[
        "generate",
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--trace",
        &trace,
        "--trace-far",
        &far,
    ]);
    assert_eq!(code, 0, "{err}");
    refused(
        &[
            "replay",
            "--model",
            &model,
            "--trace",
            &trace,
            "--far-trace",
            &far,
            "--reference-mib",
            "0",
        ],
        &["recorded on 8 layers x 32 experts", "2 x 8"],
    );
}
