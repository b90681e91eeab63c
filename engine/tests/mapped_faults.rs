//! A checkpoint shard truncated while mapped: handing out a tensor past the cut is an error
//! naming the file (not `SIGBUS` when the bytes are read), tensors before it still load; and
//! `pack` of a truncated checkpoint fails cleanly with nothing left behind.

use flashmoe_engine::{Checkpoint, ModelConfig, pack_model};
use std::path::Path;

fn copy_mixtral(to: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-mixtral");
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(&src).expect("fixture dir") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4/tokenizer.json"),
        to.join("tokenizer.json"),
    )
    .expect("tokenizer");
}

/// Truncates `file` to half its length.
fn halve(file: &Path) {
    let len = std::fs::metadata(file).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
}

#[test]
fn tensor_of_a_shard_truncated_while_mapped_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ckpt");
    copy_mixtral(&dir);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let ckpt = Checkpoint::open(&dir, cfg.dtype).expect("open");
    let shard = dir.join("model-00001-of-00004.safetensors");
    halve(&shard);
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    // Whichever of these lies past the cut fails; reading the bytes of one that is handed out
    // must not fault.
    let mut failed = 0;
    for (name, shape) in [
        ("model.embed_tokens.weight", vec![v, h]),
        ("lm_head.weight", vec![v, h]),
    ] {
        match ckpt.tensor(name, &shape) {
            Ok(t) => assert!(t.bytes.iter().map(|&b| b as u64).sum::<u64>() > 0),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("model-00001-of-00004.safetensors") && e.contains("truncated"),
                    "{e}"
                );
                failed += 1;
            }
        }
    }
    assert!(failed >= 1, "no tensor of the truncated half was refused");
}

#[test]
fn pack_of_a_shard_truncated_while_packing_fails_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ckpt");
    copy_mixtral(&dir);
    let shard = dir.join("model-00002-of-00004.safetensors");
    let out = tmp.path().join("out");
    let mut cut = false;
    // After the first expert record, half the shard holding the experts' w1/w3 goes away.
    let err = pack_model(&dir, &out, 8, false, &mut |_, _| {
        if !cut {
            halve(&shard);
            cut = true;
        }
    })
    .expect_err("shard truncated mid-pack")
    .to_string();
    assert!(
        err.contains("model-00002-of-00004.safetensors") && err.contains("truncated"),
        "{err}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("dir").collect();
    assert_eq!(left.len(), 1, "temporary left behind");
}

#[test]
fn pack_of_a_truncated_shard_fails_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ckpt");
    copy_mixtral(&dir);
    // Truncated before pack opens it: caught when the header's offsets are checked.
    halve(&dir.join("model-00002-of-00004.safetensors"));
    let out = tmp.path().join("out");
    let err = pack_model(&dir, &out, 8, false, &mut |_, _| {})
        .expect_err("truncated shard")
        .to_string();
    assert!(err.contains("model-00002-of-00004.safetensors"), "{err}");
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("dir").collect();
    assert_eq!(left.len(), 1, "temporary left behind");
}
