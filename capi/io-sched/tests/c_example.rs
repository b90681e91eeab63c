//! `io-sched/examples/c/read_experts.c`, compiled with `cc` against the committed header and
//! this crate's static library, reads every expert of the default model through a session and
//! checks every checksum.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

use flashmoe_capi_common::testing::{compile_c as compile, static_lib};

#[test]
fn read_experts_c_example_checks_every_checksum() {
    let root = repo();
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = tmp.path().join("read_experts");
    compile(
        &root.join("io-sched/examples/c/read_experts.c"),
        &root.join("capi/io-sched/include"),
        &static_lib("libflashmoe_io_sched_capi.a"),
        &exe,
    );
    let manifest = root.join("models/tiny-qwen3-moe-q4/manifest.json");
    for backend in ["auto", "pread", "mmap"] {
        let o = Command::new(&exe)
            .arg(&manifest)
            .arg(backend)
            .output()
            .expect("run read_experts");
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "read_experts {backend} failed:\n{stdout}{stderr}"
        );
        // 8 layers x 32 experts, every one read and its checksum matched.
        assert!(
            stdout.contains("checked 256 experts") && stdout.contains(": 0 mismatched"),
            "{stdout}"
        );
        assert!(stdout.contains("demanded 256,"), "{stdout}");
        assert!(
            stdout.contains(
                "expected error: fmio_session_acquire: no expert record for layer 0 expert 32"
            ),
            "{stdout}"
        );
        if backend != "auto" {
            assert!(stdout.contains(&format!("backend: {backend}")), "{stdout}");
        }
    }
}

#[test]
fn a_missing_manifest_is_reported_with_its_path() {
    let root = repo();
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = tmp.path().join("read_experts");
    compile(
        &root.join("io-sched/examples/c/read_experts.c"),
        &root.join("capi/io-sched/include"),
        &static_lib("libflashmoe_io_sched_capi.a"),
        &exe,
    );
    let missing = tmp.path().join("nowhere/manifest.json");
    let o = Command::new(&exe)
        .arg(&missing)
        .output()
        .expect("run read_experts");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("FMIO_STATUS_FILE") && stderr.contains(&*missing.to_string_lossy()),
        "{stderr}"
    );
}
