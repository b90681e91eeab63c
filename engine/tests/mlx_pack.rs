//! `flashmoe pack` on MLX quantized checkpoints: expert records and dense modules are the MLX
//! tensors re-laid, byte for byte (codes) and value for value (scales, biases); the config's
//! per-module overrides (mlx-lm's 8-bit routers) are honoured and checked; bad input is refused
//! naming the file and the tensor or field.

mod mlx_common;

use flashmoe_engine::{PackOptions, PackedModel, pack_model_with};
use half::{bf16, f16};
use io_sched::ExpertKey;
use mlx_common::{mlx_dir, pack_mlx};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// 16-bit float values of a BF16 or F16 tensor's bytes.
fn values(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| match dtype {
            Dtype::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
            other => panic!("unexpected dtype {other:?}"),
        })
        .collect()
}

/// Checks every tensor of the MLX checkpoint `dir` against the model packed from it; returns
/// the number of scale/bias values that differ (each by at most 2^-25).
fn check_relaid(dir: &Path) -> usize {
    let (_tmp, packed) = pack_mlx(dir);
    let m = PackedModel::open(&packed).expect("open packed");
    let src_bytes = std::fs::read(dir.join("model.safetensors")).expect("read MLX weights");
    let src = SafeTensors::deserialize(&src_bytes).expect("parse MLX weights");
    let dense_bytes = std::fs::read(packed.join("dense.safetensors")).expect("read dense");
    let dense = SafeTensors::deserialize(&dense_bytes).expect("parse dense");
    let moe = match m.config.family {
        flashmoe_engine::Family::Qwen3Moe | flashmoe_engine::Family::Qwen35Moe => "mlp",
        flashmoe_engine::Family::Mixtral => "block_sparse_moe",
        other => panic!("no MLX test data for the {other:?} family"),
    };
    let rec = m.record;
    let mut records = Vec::new();
    for l in 0..m.config.num_layers as u32 {
        for e in 0..m.config.num_experts as u32 {
            let loc = m
                .experts
                .get(ExpertKey::new(l, e))
                .expect("record location");
            let file = std::fs::read(&m.experts.files()[loc.file as usize]).expect("expert file");
            records.push(file[loc.offset as usize..(loc.offset + loc.len) as usize].to_vec());
        }
    }
    let (mut changed, mut checked, mut norms) = (0usize, 0usize, 0usize);
    let multimodal = flashmoe_engine::is_multimodal(src.names().into_iter());
    for (name, t) in src.tensors() {
        // Multimodal conversions (Qwen3.5: `language_model.model.*`) pack under text names.
        let name = flashmoe_engine::text_model_name(&name, multimodal).expect("a text tensor");
        let switch = format!(".{moe}.switch_mlp.");
        if let Some(pos) = name.find(&switch) {
            // model.layers.L.{moe}.switch_mlp.{proj}.{part}
            let l: usize = name["model.layers.".len()..pos].parse().expect("layer");
            let (proj, part) = name[pos + switch.len()..]
                .split_once('.')
                .expect("proj.part");
            let (ml, off) = match proj {
                "gate_proj" => (rec.gate, 0),
                "up_proj" => (rec.up, rec.up_offset),
                "down_proj" => (rec.down, rec.down_offset),
                other => panic!("unexpected projection {other}"),
            };
            let experts = t.shape()[0];
            let per = t.data().len() / experts;
            for e in 0..experts {
                let r = &records[l * experts + e][off..off + ml.total];
                let want = &t.data()[e * per..(e + 1) * per];
                match part {
                    "weight" => assert_eq!(&r[..ml.data_len], want, "{name} expert {e}: codes"),
                    "scales" | "biases" => {
                        let at = if part == "scales" {
                            ml.scales_offset
                        } else {
                            ml.biases_offset
                        };
                        let got = values(Dtype::F16, &r[at..at + want.len()]);
                        assert_eq!(got, values(t.dtype(), want), "{name} expert {e}");
                    }
                    other => panic!("unexpected part {other}"),
                }
                checked += 1;
            }
            continue;
        }
        let d = dense
            .tensor(&name)
            .unwrap_or_else(|e| panic!("dense lacks {name}: {e}"));
        if name.ends_with(".conv1d.weight") && t.shape()[2] == 1 {
            // mlx-lm's [C, K, 1] back in transformers' [C, 1, K]: the same bytes.
            assert_eq!(d.shape(), [t.shape()[0], 1, t.shape()[1]], "{name}: shape");
            assert_eq!(d.data(), t.data(), "{name}: bytes");
            checked += 1;
            continue;
        }
        assert_eq!(d.shape(), t.shape(), "{name}: shape");
        if d.dtype() == Dtype::F32 && t.dtype() != Dtype::F32 {
            // An RMSNorm weight mlx-lm stores as 1 + w, back as the offset w, exactly.
            let offsets: Vec<f32> = d
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) + 1.0)
                .collect();
            assert_eq!(offsets, values(t.dtype(), t.data()), "{name}: 1 + w");
            norms += 1;
            checked += 1;
            continue;
        }
        if name.ends_with(".scales") || name.ends_with(".biases") {
            assert_eq!(d.dtype(), Dtype::F16, "{name}: dtype");
            let (a, b) = (values(Dtype::F16, d.data()), values(t.dtype(), t.data()));
            for (x, y) in a.iter().zip(&b) {
                if x != y {
                    assert!(
                        (x - y).abs() <= 1.0 / (1u64 << 25) as f32,
                        "{name}: {x} vs {y}"
                    );
                    changed += 1;
                }
            }
        } else {
            assert_eq!(d.dtype(), t.dtype(), "{name}: dtype");
            assert_eq!(d.data(), t.data(), "{name}: bytes");
        }
        checked += 1;
    }
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(packed.join("flashmoe-pack.json")).expect("pack info"),
    )
    .expect("parse pack info");
    assert_eq!(info["source"], "mlx");
    assert_eq!(
        info["scales_rounded"].as_u64(),
        Some(changed as u64),
        "reported rounding"
    );
    println!(
        "{}: {checked} tensors (per expert) checked, {changed} values rounded, {norms} norm \
         weights back from 1 + w",
        dir.display()
    );
    // Hybrid models as mlx-lm writes them: every layer's two norms, q/k norms of the
    // attention layers and the final norm; no other family has any.
    let c = &m.config;
    let want_norms = c.hybrid.as_ref().map_or(0, |hy| {
        let attention = hy
            .layer_types
            .iter()
            .filter(|t| **t == flashmoe_engine::qwen35_moe::LayerType::FullAttention)
            .count();
        2 * c.num_layers + 2 * attention + 1
    });
    assert_eq!(norms, want_norms, "norm weights converted");
    changed
}

#[test]
fn mixtral_records_and_dense_modules_are_the_mlx_tensors() {
    let Some(dir) = mlx_dir("tiny-mixtral-4bit") else {
        return;
    };
    assert_eq!(check_relaid(&dir), 0);
}

#[test]
fn qwen3_records_and_dense_modules_are_the_mlx_tensors() {
    for name in ["tiny-qwen3-moe-4bit", "tiny-qwen3-moe-8bit"] {
        let Some(dir) = mlx_dir(name) else { return };
        // The only inexact values: 4 embedding scales of ~1e-7, below f16's normal range.
        assert_eq!(check_relaid(&dir), 4, "{name}");
    }
}

#[test]
fn qwen35_records_and_dense_modules_are_the_mlx_tensors() {
    let Some(dir) = mlx_dir("tiny-qwen35-moe-4bit") else {
        return;
    };
    check_relaid(&dir);
}

/// A copy of `dir` (weights linked, `config.json` rewritten by `edit`).
fn with_config(
    dir: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path().join("mlx");
    std::fs::create_dir(&copy).expect("mkdir");
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let p = entry.expect("entry").path();
        let name = p.file_name().expect("name").to_owned();
        if name != "config.json" {
            std::os::unix::fs::symlink(&p, copy.join(name)).expect("symlink");
        }
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("parse config");
    edit(&mut cfg);
    std::fs::write(copy.join("config.json"), cfg.to_string()).expect("write config");
    (tmp, copy)
}

fn pack_err(dir: &Path, opts: &PackOptions) -> String {
    let out = dir.with_file_name("packed");
    let err = pack_model_with(dir, &out, opts, &mut |_, _| {}).expect_err("pack must fail");
    assert!(!out.exists(), "nothing is left under the output name");
    err.to_string()
}

#[test]
fn qwen3_without_its_8bit_router_override_is_refused() {
    let Some(dir) = mlx_dir("tiny-qwen3-moe-4bit") else {
        return;
    };
    // The routers are stored 8-bit, as the overrides say; read as the 4-bit default they
    // would be [32 x 512] matrices in groups of 128: the packer refuses, naming the router.
    let (_tmp, copy) = with_config(&dir, |c| {
        for key in ["quantization", "quantization_config"] {
            let q = c[key].as_object_mut().expect("quantization");
            q.retain(|k, _| !k.ends_with("mlp.gate"));
        }
    });
    let msg = pack_err(&copy, &PackOptions::new());
    for want in [
        "model.safetensors",
        "`model.layers.0.mlp.gate.weight`",
        "config.json",
        "no override",
    ] {
        assert!(msg.contains(want), "{want:?} not in: {msg}");
    }
    // With the overrides, the dense routers are 8-bit.
    let (_t, packed) = pack_mlx(&dir);
    let bytes = std::fs::read(packed.join("dense.safetensors")).expect("dense");
    let st = SafeTensors::deserialize(&bytes).expect("parse");
    let router = st.tensor("model.layers.0.mlp.gate.weight").expect("router");
    assert_eq!(
        (router.dtype(), router.shape()),
        (Dtype::U32, &[32usize, 64][..])
    );
}

#[test]
fn an_override_the_tensors_do_not_follow_is_refused() {
    let Some(dir) = mlx_dir("tiny-mixtral-4bit") else {
        return;
    };
    let (_tmp, copy) = with_config(&dir, |c| {
        c["quantization"]["model.layers.1.block_sparse_moe.gate"] =
            serde_json::json!({"group_size": 64, "bits": 8});
    });
    let msg = pack_err(&copy, &PackOptions::new());
    assert!(
        msg.contains("`model.layers.1.block_sparse_moe.gate.weight`")
            && msg.contains("its override"),
        "{msg}"
    );
    let (_tmp, copy) = with_config(&dir, |c| {
        c["quantization"]["model.layers.0.self_attn.q_proj"] = serde_json::json!(false);
    });
    let msg = pack_err(&copy, &PackOptions::new());
    assert!(
        msg.contains("`model.layers.0.self_attn.q_proj.weight`") && msg.contains("unquantized"),
        "{msg}"
    );
}

#[test]
fn quantization_configs_this_code_cannot_honour_are_refused() {
    let Some(dir) = mlx_dir("tiny-mixtral-4bit") else {
        return;
    };
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("bits", serde_json::json!(3), "`quantization.bits` = 3"),
        (
            "mode",
            serde_json::json!("mxfp4"),
            "`quantization.mode` = \"mxfp4\"",
        ),
        (
            "group_size",
            serde_json::json!(10),
            "`quantization.group_size` = 10",
        ),
        (
            "model.layers.0.block_sparse_moe.gate",
            serde_json::json!({"group_size": 64, "bits": 2}),
            "`quantization.model.layers.0.block_sparse_moe.gate.bits` = 2",
        ),
        (
            "quant_method",
            serde_json::json!("gptq"),
            "`quantization.quant_method`",
        ),
    ];
    for (key, value, want) in cases {
        let (_tmp, copy) = with_config(&dir, |c| c["quantization"][key] = value.clone());
        let msg = pack_err(&copy, &PackOptions::new());
        assert!(
            msg.contains("config.json") && msg.contains(want),
            "{key}: {want:?} not in: {msg}"
        );
    }
    let msg = pack_err(&dir, &PackOptions::new().bits(8));
    assert!(
        msg.contains("MLX 4-bit") && msg.contains("--bits 8"),
        "{msg}"
    );
    let msg = pack_err(&dir, &PackOptions::new().dense_bits(8));
    assert!(msg.contains("--dense-bits 8"), "{msg}");
}

/// A copy of `dir` whose single weights file is rewritten by `edit` (None drops a tensor).
fn with_weights(
    dir: &Path,
    edit: impl Fn(&str, Dtype, &[u8]) -> Option<Vec<u8>>,
) -> (tempfile::TempDir, PathBuf) {
    with_tensors(dir, |n, d, shape, b| {
        edit(n, d, b).map(|b| (shape.to_vec(), b))
    })
}

/// [`with_weights`] where `edit` may also change a tensor's shape.
fn with_tensors(
    dir: &Path,
    edit: impl Fn(&str, Dtype, &[usize], &[u8]) -> Option<(Vec<usize>, Vec<u8>)>,
) -> (tempfile::TempDir, PathBuf) {
    let (tmp, copy) = with_config(dir, |_| {});
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("parse");
    let kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, t)| {
            edit(&n, t.dtype(), t.shape(), t.data()).map(|(s, b)| (n.clone(), t.dtype(), s, b))
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = kept
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    for f in ["model.safetensors", "model.safetensors.index.json"] {
        let _ = std::fs::remove_file(copy.join(f));
    }
    safetensors::serialize_to_file(views, None, &copy.join("model.safetensors")).expect("write");
    (tmp, copy)
}

/// mlx-lm decides from the conv1d layout whether the norm weights are stored as `1 + w`; a
/// checkpoint with both layouts is ambiguous and refused, naming a tensor of each.
#[test]
fn qwen35_with_mixed_conv1d_layouts_is_refused() {
    let Some(dir) = mlx_dir("tiny-qwen35-moe-4bit") else {
        return;
    };
    let odd = "language_model.model.layers.1.linear_attn.conv1d.weight";
    let (_tmp, copy) = with_tensors(&dir, |n, _, shape, b| {
        let mut shape = shape.to_vec();
        if n == odd {
            shape.swap(1, 2); // transformers' [C, 1, K]
        }
        Some((shape, b.to_vec()))
    });
    let msg = pack_err(&copy, &PackOptions::new());
    assert!(
        msg.contains("`model.layers.1.linear_attn.conv1d.weight`: is [512, 1, 4]")
            && msg.contains("`model.layers.0.linear_attn.conv1d.weight` is in the other")
            && msg.contains("ambiguous"),
        "{msg}"
    );
}

#[test]
fn missing_scales_and_values_f16_cannot_hold_are_named() {
    let Some(dir) = mlx_dir("tiny-mixtral-4bit") else {
        return;
    };
    let gone = "model.layers.1.block_sparse_moe.switch_mlp.up_proj.scales";
    let (_tmp, copy) = with_weights(&dir, |n, _, b| (n != gone).then(|| b.to_vec()));
    let msg = pack_err(&copy, &PackOptions::new());
    assert!(
        msg.contains(&format!("`{gone}`")) && msg.contains("model.safetensors"),
        "{msg}"
    );
    let gone = "model.layers.0.self_attn.k_proj.biases";
    let (_tmp, copy) = with_weights(&dir, |n, _, b| (n != gone).then(|| b.to_vec()));
    let msg = pack_err(&copy, &PackOptions::new());
    assert!(msg.contains(&format!("`{gone}`")), "{msg}");
    // A bf16 scale of 70144 (beyond f16's 65504) at element 3 of a dense module.
    let bad = "model.layers.0.self_attn.o_proj.scales";
    let (_tmp, copy) = with_weights(&dir, |n, _, b| {
        let mut b = b.to_vec();
        if n == bad {
            b[6..8].copy_from_slice(&0x4789u16.to_le_bytes());
        }
        Some(b)
    });
    let msg = pack_err(&copy, &PackOptions::new());
    assert!(
        msg.contains(&format!("`{bad}`")) && msg.contains("element 3") && msg.contains("f16"),
        "{msg}"
    );
}
