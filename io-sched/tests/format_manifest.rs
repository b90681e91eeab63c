//! The JSON manifest v1: round trip, and each malformed case named clearly.

use std::path::Path;

use io_sched::{Error, ExpertKey, ExpertLayout, LayoutBuilder, Manifest};
use serde_json::{Value, json};

/// A 2 x 2 layout over two real files in `dir` (one given relative, one absolute in the
/// manifest), saved as `dir/manifest.json`.
fn setup(dir: &Path) -> (ExpertLayout, Value) {
    std::fs::write(dir.join("a.bin"), vec![1u8; 3 * 4096]).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/b.bin"), vec![2u8; 2 * 4096]).unwrap();
    let mut b = LayoutBuilder::new(2, 2);
    let a = b.add_file(dir.join("a.bin"));
    let s = b.add_file(dir.join("sub/b.bin"));
    b.set(ExpertKey::new(0, 0), a, 0, 4096, 0xdead_beef);
    b.set(ExpertKey::new(0, 1), a, 4096, 100, u64::MAX);
    b.set(ExpertKey::new(1, 0), a, 8192, 4000, 0);
    b.set(ExpertKey::new(1, 1), s, 4096, 1, 0x0123_4567_89ab_cdef);
    let layout = b.build().unwrap();
    let meta = json!({"dtype": "bf16", "dims": {"hidden": 256}, "bits": 16});
    Manifest::save(dir.join("manifest.json"), &layout, Some(&meta)).unwrap();
    (layout, meta)
}

#[test]
fn round_trip_with_meta_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, meta) = setup(dir.path());
    let text = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], "flashmoe-experts-manifest");
    assert_eq!(v["version"], 1);
    assert_eq!(
        v["files"],
        json!(["a.bin", "sub/b.bin"]),
        "paths under the manifest's dir are relative"
    );
    assert_eq!(v["records"][1]["checksum"], "ffffffffffffffff");
    let (loaded, loaded_meta) = Manifest::load(dir.path().join("manifest.json")).unwrap();
    assert_eq!(loaded, layout);
    assert_eq!(loaded_meta, Some(meta));

    // Move the whole directory: relative paths follow it.
    let moved = tempfile::tempdir().unwrap();
    let to = moved.path().join("model");
    std::fs::rename(dir.path(), &to).unwrap();
    let (loaded, _) = Manifest::load(to.join("manifest.json")).unwrap();
    assert_eq!(loaded.file_path(1), to.join("sub/b.bin"));
}

#[test]
fn manifest_without_meta_and_records_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, _) = setup(dir.path());
    let path = dir.path().join("manifest.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("meta");
    v["records"].as_array_mut().unwrap().reverse();
    std::fs::write(&path, v.to_string()).unwrap();
    let (loaded, meta) = Manifest::load(&path).unwrap();
    assert_eq!((loaded, meta), (layout, None));
}

/// Applies `edit` to a valid manifest, loads it, and returns the error text (checking that it
/// names the manifest).
fn broken(edit: impl FnOnce(&mut Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let path = dir.path().join("manifest.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    let e = Manifest::load(&path).unwrap_err();
    assert!(matches!(e, Error::Layout(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(&path.display().to_string()),
        "error must name the manifest: {e}"
    );
    e
}

fn has(e: &str, needles: &[&str]) {
    for n in needles {
        assert!(e.contains(n), "expected {n:?} in: {e}");
    }
}

#[test]
fn malformed_manifests_are_named_precisely() {
    has(
        &broken(|v| v["format"] = json!("gguf")),
        &["\"format\"", "gguf"],
    );
    has(
        &broken(|v| drop(v.as_object_mut().unwrap().remove("format"))),
        &["\"format\" is missing"],
    );
    has(
        &broken(|v| v["version"] = json!(2)),
        &["unsupported \"version\" 2"],
    );
    has(
        &broken(|v| v["version"] = json!("1")),
        &["unsupported \"version\""],
    );
    has(
        &broken(|v| v["records"][3] = v["records"][2].clone()),
        &["record 3 (layer 1 expert 0)", "duplicate of record 2"],
    );
    has(
        &broken(|v| drop(v["records"].as_array_mut().unwrap().pop())),
        &[
            "has 3 records, expected 2 layers x 2 experts = 4",
            "first without a record: layer 1 expert 1",
        ],
    );
    has(
        &broken(|v| v["records"][2]["layer"] = json!(7)),
        &["record 2 (layer 7 expert 0)", "out of range"],
    );
    has(
        &broken(|v| v["records"][1]["expert"] = json!(2)),
        &["record 1 (layer 0 expert 2)", "out of range"],
    );
    has(
        &broken(|v| v["records"][1]["layer"] = json!(1u64 << 40)),
        &["record 1 (layer 1099511627776 expert 1)", "out of range"],
    );
    has(
        &broken(|v| v["records"][0]["file"] = json!(2)),
        &["record 0 (layer 0 expert 0)", "file index 2"],
    );
    for bad in [
        "deadbeef",
        "0xdeadbeefdeadbe",
        "zzzzzzzzzzzzzzzz",
        "-000000000000001",
    ] {
        has(
            &broken(|v| v["records"][3]["checksum"] = json!(bad)),
            &[
                "record 3 (layer 1 expert 1)",
                "not 16 hexadecimal digits",
                bad,
            ],
        );
    }
    has(
        &broken(|v| v["records"][3]["checksum"] = json!(12)),
        &["malformed version-1 manifest"],
    );
    has(
        &broken(|v| v["records"][0]["offest"] = json!(0)),
        &["unknown field `offest`"],
    );
    has(&broken(|v| v["layers"] = json!(0)), &["\"layers\" 0"]);
    has(
        &broken(|v| v["experts"] = json!(1u64 << 33)),
        &["\"experts\" 8589934592"],
    );
    has(&broken(|v| v["files"] = json!([])), &["\"files\" is empty"]);
    has(
        &broken(|v| v["records"][1]["offset"] = json!(4097)),
        &["layer 0 expert 1", "4097"],
    );
    has(
        &broken(|v| v["records"][1]["offset"] = json!(0)),
        &["overlaps"],
    );
    has(
        &broken(|v| v["records"][3]["len"] = json!(4097)),
        &["layer 1 expert 1", "past the end"],
    );
    has(&broken(|v| *v = json!([1, 2])), &["\"format\" is missing"]);
    // Huge claimed counts with few records: refused without allocating per claimed record.
    has(
        &broken(|v| {
            v["layers"] = json!(u32::MAX);
            v["experts"] = json!(u32::MAX);
        }),
        &["has 4 records, expected 4294967295 layers x 4294967295 experts"],
    );
}

#[test]
fn not_json_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    std::fs::write(&path, "{\"format\": ").unwrap();
    let e = Manifest::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("not valid JSON") && e.contains("manifest.json"),
        "{e}"
    );
    let e = Manifest::load(dir.path().join("nope.json")).unwrap_err();
    assert!(matches!(e, Error::File { .. }), "{e:?}");

    setup(dir.path());
    std::fs::remove_file(dir.path().join("sub/b.bin")).unwrap();
    let e = Manifest::load(&path).unwrap_err().to_string();
    assert!(e.contains("b.bin"), "{e}");
}
