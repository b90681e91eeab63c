//! Broken checkpoints and inputs give errors that name the file and tensor, never panics.

mod common;

use flashmoe_backends::CpuBackend;
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::{
    Checkpoint, EngineError, ExpertBatch, ExpertLayout, ExpertSource, ModelConfig, MoeModel,
    NoObserver,
};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};

/// A writable copy of the committed tiny Mixtral.
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-mixtral");
    let tmp = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&src).expect("fixture dir") {
        let p = entry.expect("entry").path();
        std::fs::copy(&p, tmp.path().join(p.file_name().expect("name"))).expect("copy");
    }
    let dir = tmp.path().to_path_buf();
    (tmp, dir)
}

fn open(dir: &Path) -> Result<(ModelConfig, Checkpoint), EngineError> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir, cfg.dtype)?;
    Ok((cfg, ckpt))
}

fn load(dir: &Path) -> Result<MoeModel<CpuBackend>, EngineError> {
    let (cfg, ckpt) = open(dir)?;
    MoeModel::load(CpuBackend::new(), cfg, &ckpt, 64)
}

fn index(dir: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).expect("index"),
    )
    .expect("json")
}

fn shard_of(dir: &Path, tensor: &str) -> String {
    index(dir)["weight_map"][tensor]
        .as_str()
        .expect("tensor in index")
        .to_string()
}

#[test]
fn missing_shard_is_named() {
    let (_tmp, dir) = copy_fixture();
    let shard = shard_of(&dir, "model.layers.1.self_attn.q_proj.weight");
    std::fs::remove_file(dir.join(&shard)).expect("remove shard");
    let msg = load(&dir)
        .err()
        .expect("missing shard must fail")
        .to_string();
    assert!(msg.contains(&shard) && msg.contains("missing"), "{msg}");
}

#[test]
fn wrong_tensor_shape_names_file_and_tensor() {
    let (_tmp, dir) = copy_fixture();
    let name = "model.layers.1.self_attn.q_proj.weight";
    let shard = shard_of(&dir, name);
    let bytes = std::fs::read(dir.join(&shard)).expect("read shard");
    let st = SafeTensors::deserialize(&bytes).expect("parse shard");
    // Same bytes, transposed-looking shape [32 x 128] instead of [64 x 64].
    let tensors: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            if n == name {
                let v = TensorView::new(t.dtype(), vec![32, 128], t.data()).expect("view");
                (n, v)
            } else {
                (n, t)
            }
        })
        .collect();
    std::fs::write(
        dir.join(&shard),
        safetensors::serialize(tensors, None).expect("serialize"),
    )
    .expect("write");
    let err = load(&dir).err().expect("wrong shape must fail");
    assert!(matches!(err, EngineError::TensorShape { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&shard)
            && msg.contains(name)
            && msg.contains("[32, 128]")
            && msg.contains("[64, 64]"),
        "{msg}"
    );
}

#[test]
fn tensor_missing_from_its_shard_is_named() {
    let (_tmp, dir) = copy_fixture();
    let name = "model.layers.0.input_layernorm.weight";
    let mut idx = index(&dir);
    let right = shard_of(&dir, name);
    let wrong = idx["weight_map"]
        .as_object()
        .expect("map")
        .values()
        .find(|v| v.as_str() != Some(&right))
        .expect("other shard")
        .clone();
    idx["weight_map"][name] = wrong.clone();
    std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).expect("write index");
    let msg = load(&dir).err().expect("must fail").to_string();
    assert!(
        msg.contains(name) && msg.contains(wrong.as_str().expect("str")),
        "{msg}"
    );
}

#[test]
fn tensor_missing_from_index_is_named() {
    let (_tmp, dir) = copy_fixture();
    let mut idx = index(&dir);
    idx["weight_map"]
        .as_object_mut()
        .expect("map")
        .remove("model.norm.weight");
    std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).expect("write index");
    let msg = load(&dir).err().expect("must fail").to_string();
    assert!(
        msg.contains("model.norm.weight") && msg.contains("model.safetensors.index.json"),
        "{msg}"
    );
}

#[test]
fn shard_outside_model_dir_is_refused() {
    let (_tmp, dir) = copy_fixture();
    let mut idx = index(&dir);
    idx["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors".into();
    std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).expect("write index");
    let msg = load(&dir).err().expect("must fail").to_string();
    assert!(
        msg.contains("model.norm.weight") && msg.contains("plain file name"),
        "{msg}"
    );
}

#[test]
fn truncated_shard_is_refused() {
    let (_tmp, dir) = copy_fixture();
    let shard = shard_of(&dir, "lm_head.weight");
    let bytes = std::fs::read(dir.join(&shard)).expect("read");
    std::fs::write(dir.join(&shard), &bytes[..bytes.len() / 2]).expect("truncate");
    let msg = load(&dir).err().expect("must fail").to_string();
    assert!(msg.contains(&shard), "{msg}");
}

#[test]
fn dtype_other_than_config_says_is_refused() {
    let (_tmp, dir) = copy_fixture();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("cfg"))
            .expect("json");
    cfg["dtype"] = "float16".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("write cfg");
    let err = load(&dir).err().expect("must fail");
    assert!(matches!(err, EngineError::TensorDtype { .. }), "{err}");
}

/// A source whose records are one byte short.
struct ShortRecords {
    layout: ExpertLayout,
    buf: Vec<u8>,
}

impl ExpertSource for ShortRecords {
    fn layout(&self) -> &ExpertLayout {
        &self.layout
    }
    fn experts(&mut self, _layer: u32, ids: &[u32]) -> flashmoe_engine::Result<ExpertBatch<'_>> {
        Ok(ExpertBatch::slices(
            ids.iter()
                .map(|_| &self.buf[..self.buf.len() - 1])
                .collect(),
        ))
    }
}

#[test]
fn bad_decode_inputs_are_errors() {
    let (_tmp, dir) = copy_fixture();
    let mut model = load(&dir).expect("load");
    let layout = ExpertLayout::for_config(model.config(), WeightFormat::Bf16).expect("layout");
    let mut short = ShortRecords {
        layout,
        buf: vec![0; layout.record_len],
    };
    let err = model
        .forward(3, 0, &mut short, &mut NoObserver)
        .expect_err("short record");
    assert!(matches!(err, EngineError::Expert { layer: 0, .. }), "{err}");
    let (cfg, ckpt) = open(&dir).expect("open");
    let mut experts = flashmoe_engine::InMemoryExperts::pack(
        &ckpt,
        &cfg,
        flashmoe_engine::FamilyNames::of(cfg.family),
        WeightFormat::Bf16,
    )
    .expect("pack");
    model.reset();
    assert!(
        model
            .forward(256, 0, &mut experts, &mut NoObserver)
            .is_err(),
        "token id out of vocab"
    );
    assert!(
        model.forward(3, 1, &mut experts, &mut NoObserver).is_err(),
        "position gap"
    );
    model
        .forward(3, 0, &mut experts, &mut NoObserver)
        .expect("valid step");
    assert!(experts.experts(0, &[4]).is_err(), "expert id out of range");
    // An expert source built for other dims is refused before any compute.
    let mut other = ShortRecords {
        layout: ExpertLayout::new(128, 128, WeightFormat::Bf16).expect("layout"),
        buf: vec![0; 64],
    };
    assert!(model.forward(3, 1, &mut other, &mut NoObserver).is_err());
}
