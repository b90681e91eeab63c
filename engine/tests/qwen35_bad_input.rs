//! Bad Qwen3.5 inputs give clear errors naming the file and the field or tensor: an unknown
//! `layer_types` entry, a wrong number of them, a multimodal config without `text_config`, a
//! missing Gated DeltaNet tensor.

mod common;
mod qwen35_common;

use flashmoe_backends::CpuBackend;
use flashmoe_engine::{Checkpoint, ModelConfig, MoeModel};
use qwen35_common::fixture;
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use std::path::Path;

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config")).expect("json")
}

fn config_error(cfg: &serde_json::Value) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).expect("write");
    let err = ModelConfig::from_file(&path).expect_err("bad config must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error names the file: {msg}"
    );
    msg
}

#[test]
fn unsupported_layer_type_names_config_and_index() {
    let Some(dir) = fixture() else { return };
    let mut cfg = config(&dir);
    cfg["layer_types"][5] = "sliding_attention".into();
    let msg = config_error(&cfg);
    assert!(
        msg.contains("layer_types[5]") && msg.contains("sliding_attention"),
        "{msg}"
    );

    let mut cfg = config(&dir);
    cfg["layer_types"].as_array_mut().expect("array").pop();
    let msg = config_error(&cfg);
    assert!(
        msg.contains("layer_types") && msg.contains("7 entries for 8 layers"),
        "{msg}"
    );

    let wrapped = serde_json::json!({"model_type": "qwen3_5_moe", "vision_config": {}});
    let msg = config_error(&wrapped);
    assert!(msg.contains("text_config"), "{msg}");
}

#[test]
fn missing_deltanet_tensor_names_tensor_and_file() {
    let Some(dir) = fixture() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).expect("config");
    let mut shards: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("model-0000"))
        .collect();
    shards.sort();
    let blobs: Vec<Vec<u8>> = shards
        .iter()
        .map(|p| std::fs::read(p).expect("shard"))
        .collect();
    let missing = "model.layers.1.linear_attn.dt_bias";
    let mut views = Vec::new();
    for b in &blobs {
        for (name, t) in SafeTensors::deserialize(b).expect("shard").tensors() {
            if name != missing {
                let v = TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).expect("view");
                views.push((name, v));
            }
        }
    }
    let file = tmp.path().join("model.safetensors");
    std::fs::write(
        &file,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
    let cfg = ModelConfig::from_file(&tmp.path().join("config.json")).expect("config");
    let ckpt = Checkpoint::open(tmp.path(), cfg.dtype).expect("checkpoint");
    let err = match MoeModel::load(CpuBackend::new(), cfg, &ckpt, 16) {
        Ok(_) => panic!("a checkpoint without {missing} must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(missing), "error names the tensor: {err}");
    assert!(
        err.contains(&file.display().to_string()),
        "error names the file: {err}"
    );
}
