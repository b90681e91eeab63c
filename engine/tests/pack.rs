//! `pack_model` and `PackedModel::open`: atomic output, refusal to overwrite, deterministic
//! bytes (the committed default model included), and clear errors on bad packed input.

mod common;

use common::{fixture, pack_fixture};
use flashmoe_backends::CpuBackend;
use flashmoe_engine::{PackedModel, pack_model};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let p = e.expect("entry").path();
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read"))
        })
        .collect();
    out.sort();
    out
}

fn open_err(dir: &Path) -> String {
    match PackedModel::open(dir) {
        Ok(_) => panic!("{} opened despite bad input", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn refuses_to_overwrite_without_force_and_leaves_nothing_on_error() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (tmp, out) = pack_fixture(&dir, 4);
    let before = files(&out);
    let err = pack_model(&dir, &out, 8, false, &mut |_, _| {})
        .expect_err("existing output")
        .to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(files(&out), before, "a refused pack changed the output");
    pack_model(&dir, &out, 8, true, &mut |_, _| {}).expect("pack --force");
    assert!(
        std::fs::read_to_string(out.join("flashmoe-pack.json"))
            .expect("info")
            .contains("q8g64")
    );

    // A checkpoint whose expert tensors disagree with its config fails mid-way: no output
    // directory, and no temporary left beside it.
    let bad = tmp.path().join("bad-src");
    std::fs::create_dir(&bad).expect("mkdir");
    for e in std::fs::read_dir(&dir).expect("fixture") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("name").to_owned();
        if name != "config.json" {
            std::os::unix::fs::symlink(&p, bad.join(&name)).expect("symlink");
        }
    }
    let cfg = std::fs::read_to_string(dir.join("config.json")).expect("config");
    let cfg = cfg.replace(
        "\"moe_intermediate_size\": 128",
        "\"moe_intermediate_size\": 192",
    );
    std::fs::write(bad.join("config.json"), cfg).expect("write config");
    let target = tmp.path().join("never");
    let err = pack_model(&bad, &target, 4, false, &mut |_, _| {})
        .expect_err("shape mismatch")
        .to_string();
    assert!(err.contains("experts.0.gate_proj"), "{err}");
    let left: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(!target.exists(), "partial output left: {left:?}");
    assert!(
        left.iter()
            .all(|p| !p.to_string_lossy().contains(".never.")),
        "temporary left behind: {left:?}"
    );
}

#[test]
fn packing_is_deterministic_and_matches_the_committed_model() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_a, first) = pack_fixture(&dir, 4);
    let (_b, second) = pack_fixture(&dir, 4);
    let one = files(&first);
    assert_eq!(one, files(&second), "two packs of the same input differ");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4");
    if !committed.join("manifest.json").exists() {
        println!("SKIP: {} not found", committed.display());
        return;
    }
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    let theirs = files(&committed);
    assert_eq!(
        names(&one),
        names(&theirs),
        "file set differs from the committed model"
    );
    for ((name, a), (_, b)) in one.iter().zip(&theirs) {
        assert!(
            a == b,
            "{name} differs from the committed model: re-run `flashmoe pack`"
        );
    }
}

#[test]
fn truncated_expert_file_is_named() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_tmp, out) = pack_fixture(&dir, 4);
    let f = out.join("experts-layer-0003.fmoe");
    let len = std::fs::metadata(&f).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open")
        .set_len(len - 4096)
        .expect("truncate");
    let err = open_err(&out);
    assert!(err.contains("experts-layer-0003.fmoe"), "{err}");
}

#[test]
fn meta_that_disagrees_with_config_is_named() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_tmp, out) = pack_fixture(&dir, 4);
    let manifest = out.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, text.replace("\"inter\": 128", "\"inter\": 64")).expect("write");
    let err = open_err(&out);
    assert!(
        err.contains("manifest.json")
            && err.contains("meta.inter")
            && err.contains("moe_intermediate_size"),
        "{err}"
    );
    std::fs::write(&manifest, &text).expect("restore");
    PackedModel::open(&out).expect("restored manifest opens");

    let cfg_path = out.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).expect("config");
    std::fs::write(
        &cfg_path,
        cfg.replace("\"num_hidden_layers\": 8", "\"num_hidden_layers\": 6"),
    )
    .expect("write");
    let err = open_err(&out);
    assert!(err.contains("num_hidden_layers"), "{err}");
}

#[test]
fn missing_dense_tensor_is_named() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_tmp, out) = pack_fixture(&dir, 4);
    let dense = out.join("dense.safetensors");
    let bytes = std::fs::read(&dense).expect("dense");
    let st = SafeTensors::deserialize(&bytes).expect("parse dense");
    let gone = "model.layers.3.self_attn.k_proj.weight";
    let kept: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != gone)
        .collect();
    assert_eq!(kept.len() + 1, st.len());
    std::fs::write(
        &dense,
        safetensors::serialize(kept, None).expect("serialize"),
    )
    .expect("write");
    let m = PackedModel::open(&out).expect("open (dense tensors are checked at load)");
    let err = match m.load_model(CpuBackend::new(), 16) {
        Ok(_) => panic!("loaded without {gone}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(gone) && err.contains("dense.safetensors"),
        "{err}"
    );
}
