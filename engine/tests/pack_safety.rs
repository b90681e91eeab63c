//! `pack_model` never loses data and never writes a model `generate` would refuse: it refuses
//! to pack a checkpoint over itself, to `--force` over a folder that is not a packed model,
//! dense tensors of the wrong shape or dtype, and tensors of layers beyond the config.
//! Runs on the committed tiny Mixtral (no fixtures needed).

use flashmoe_engine::{PackedModel, pack_model};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// A writable copy of the committed tiny Mixtral with a tokenizer (the default model's).
fn checkpoint() -> (tempfile::TempDir, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ckpt");
    std::fs::create_dir(&dir).expect("mkdir");
    for entry in std::fs::read_dir(root.join("tests/data/tiny-mixtral")).expect("fixture dir") {
        let p = entry.expect("entry").path();
        std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
    }
    std::fs::copy(
        root.join("../models/tiny-qwen3-moe-q4/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("copy tokenizer");
    (tmp, dir)
}

fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let p = e.expect("entry").path();
            let n = p.file_name().expect("name").to_string_lossy().into_owned();
            (n, std::fs::read(&p).expect("read"))
        })
        .collect();
    v.sort();
    v
}

fn pack(src: &Path, out: &Path, force: bool) -> Result<(), String> {
    pack_model(src, out, 8, force, &mut |_, _| {})
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Rewrites the shard holding `name` with `f` applied to that tensor's (dtype, shape).
fn retype(dir: &Path, name: &str, f: impl Fn(Dtype, Vec<usize>) -> (Dtype, Vec<usize>)) {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).expect("index"),
    )
    .expect("json");
    let shard = dir.join(index["weight_map"][name].as_str().expect("in index"));
    let bytes = std::fs::read(&shard).expect("read shard");
    let st = SafeTensors::deserialize(&bytes).expect("parse shard");
    let views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            if n == name {
                let (d, s) = f(t.dtype(), t.shape().to_vec());
                (n, TensorView::new(d, s, t.data()).expect("view"))
            } else {
                (n, t)
            }
        })
        .collect();
    std::fs::write(&shard, safetensors::serialize(views, None).expect("ser")).expect("write");
}

/// A change of one tensor's (dtype, shape).
type Retype = fn(Dtype, Vec<usize>) -> (Dtype, Vec<usize>);

/// Only the expected entries are left in `parent` (no temporary or moved-aside directory).
fn no_leftovers(parent: &Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(parent)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, expected, "left in {}", parent.display());
}

#[test]
fn packing_a_checkpoint_over_itself_or_its_parent_keeps_it() {
    let (tmp, src) = checkpoint();
    let before = tree(&src);
    for out in [src.clone(), tmp.path().to_path_buf(), src.join(".")] {
        let err = pack(&src, &out, true).expect_err("packing over the source");
        assert!(err.contains("checkpoint being packed"), "{err}");
        assert_eq!(tree(&src), before, "the checkpoint changed");
    }
    no_leftovers(tmp.path(), &["ckpt"]);
}

#[test]
fn force_replaces_only_a_packed_model() {
    let (tmp, src) = checkpoint();
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).expect("mkdir");
    std::fs::write(mine.join("thesis.tex"), b"years of work").expect("write");
    let err = pack(&src, &mine, true).expect_err("a folder of user files");
    assert!(err.contains("not a packed model"), "{err}");
    assert_eq!(
        std::fs::read(mine.join("thesis.tex")).expect("kept"),
        b"years of work"
    );
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, b"x").expect("write");
    let err = pack(&src, &file, true).expect_err("a plain file");
    assert!(err.contains("not a directory"), "{err}");

    // A packed model is replaced, and the result opens.
    let out = tmp.path().join("packed");
    pack(&src, &out, false).expect("first pack");
    pack(&src, &out, true).expect("--force over a packed model");
    PackedModel::open(&out).expect("replaced model opens");
    no_leftovers(tmp.path(), &["ckpt", "mine", "notes.txt", "packed"]);
}

#[test]
fn dense_tensor_of_wrong_shape_or_dtype_is_refused_at_pack_time() {
    let cases: [(&str, Retype, &str); 2] = [
        ("model.norm.weight", |d, _| (d, vec![32, 2]), "shape"),
        (
            "model.layers.1.self_attn.o_proj.weight",
            |_, s| (Dtype::F16, s),
            "dtype",
        ),
    ];
    for (name, f, what) in cases {
        let (tmp, src) = checkpoint();
        retype(&src, name, f);
        let out = tmp.path().join("out");
        let err = pack(&src, &out, false).expect_err("bad dense tensor");
        assert!(err.contains(name) && err.contains(what), "{err}");
        // The checkpoint is named, not only the temporary directory (gone by now).
        let src_named = format!("pack {}: the checkpoint does not match", src.display());
        assert!(err.contains(&src_named), "{err}");
        assert!(!out.exists(), "a model with a bad dense tensor was written");
        no_leftovers(tmp.path(), &["ckpt"]);
    }
}

#[test]
fn layers_beyond_num_hidden_layers_are_refused() {
    let (tmp, src) = checkpoint();
    let cfg = std::fs::read_to_string(src.join("config.json")).expect("config");
    let cfg = cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    std::fs::write(src.join("config.json"), cfg).expect("write config");
    let out = tmp.path().join("out");
    let err = pack(&src, &out, false).expect_err("extra layer");
    assert!(
        err.contains("model.layers.1.") && err.contains("num_hidden_layers = 1"),
        "{err}"
    );
    assert!(!out.exists());
}
