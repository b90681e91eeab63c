//! `pack --dense-bits 4|8` on a Hugging Face checkpoint: the non-expert weights (attention,
//! routers, embeddings, lm_head) are stored quantized by our quantizer (routers at 8 bits at
//! least) and run quantized, on the CPU and on wgpu.

mod mlx_common;

use flashmoe_backends::CpuBackend;
use flashmoe_backends::quant::{WeightFormat, dequantize, quantize};
use flashmoe_backends::wgpu::{WgpuBackend, WgpuConfig};
use flashmoe_engine::sampler::argmax;
use flashmoe_engine::{PackOptions, PackedModel, pack_model_with};
use mlx_common::{Running, max_abs_diff, shared_fixture};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

fn pack(dir: &Path, bits: u32, dense_bits: u32) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("packed");
    let opts = PackOptions::new().bits(bits).dense_bits(dense_bits);
    pack_model_with(dir, &out, &opts, &mut |_, _| {}).expect("pack");
    (tmp, out)
}

/// One golden prompt of the fixture: (ids, HF top-5 ids per position, HF greedy ids).
type Golden = (Vec<u32>, Vec<Vec<u32>>, Vec<u32>);

/// The golden prompts of the fixture.
fn golden(dir: &Path) -> Vec<Golden> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).expect("golden"))
            .expect("parse golden");
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .expect("array")
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect()
    };
    v["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| {
            let top5 = p["top5_ids"]
                .as_array()
                .expect("top5")
                .iter()
                .map(ids)
                .collect();
            (ids(&p["input_ids"]), top5, ids(&p["greedy_ids"]))
        })
        .collect()
}

#[test]
fn dense_weights_are_stored_as_our_quantizer_gives() {
    let Some(dir) = shared_fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_t16, p16) = pack(&dir, 4, 16);
    let (_t4, p4) = pack(&dir, 4, 4);
    let read = |p: &Path| std::fs::read(p.join("dense.safetensors")).expect("dense");
    let (b16, b4) = (read(&p16), read(&p4));
    let (d16, d4) = (
        SafeTensors::deserialize(&b16).expect("parse"),
        SafeTensors::deserialize(&b4).expect("parse"),
    );
    println!("dense bytes: 16-bit {}, 4-bit {}", b16.len(), b4.len());
    assert!(
        b4.len() * 3 < b16.len(),
        "4-bit dense weights are under a third of bf16's"
    );
    let cases = [
        (
            "model.layers.3.self_attn.q_proj",
            256,
            256,
            WeightFormat::Q4_64,
        ),
        (
            "model.layers.3.self_attn.o_proj",
            256,
            256,
            WeightFormat::Q4_64,
        ),
        ("model.layers.3.mlp.gate", 32, 256, WeightFormat::Q8_64),
        ("model.embed_tokens", 4096, 256, WeightFormat::Q4_64),
        ("lm_head", 4096, 256, WeightFormat::Q4_64),
    ];
    for (module, rows, cols, format) in cases {
        let src = d16
            .tensor(&format!("{module}.weight"))
            .expect("bf16 weight");
        let values = dequantize(src.data(), rows, cols, WeightFormat::Bf16).expect("values");
        let want = quantize(&values, rows, cols, format).expect("quantize");
        let l = format.layout(rows, cols).expect("layout");
        let groups = rows * cols / 64;
        let codes = d4.tensor(&format!("{module}.weight")).expect("codes");
        let words = cols * format.bits() as usize / 32;
        assert_eq!(
            (codes.dtype(), codes.shape()),
            (Dtype::U32, &[rows, words][..]),
            "{module}"
        );
        assert_eq!(codes.data(), &want[..l.data_len], "{module}: codes");
        for (part, at) in [("scales", l.scales_offset), ("biases", l.biases_offset)] {
            let t = d4.tensor(&format!("{module}.{part}")).expect("part");
            assert_eq!(
                (t.dtype(), t.shape()),
                (Dtype::F16, &[rows, cols / 64][..]),
                "{module}"
            );
            assert_eq!(t.data(), &want[at..at + 2 * groups], "{module}.{part}");
        }
    }
    let norm = d4
        .tensor("model.layers.3.input_layernorm.weight")
        .expect("norm");
    assert_eq!(
        norm.data(),
        d16.tensor("model.layers.3.input_layernorm.weight")
            .expect("norm")
            .data()
    );
}

/// Top-1 agreement with HF's golden at every prompt position, and along HF's greedy
/// continuations fed back (teacher-forced: the argmax after each golden token is the next
/// golden token), so one near-tie does not decide the rest of a sequence.
fn quality(dir: &Path, bits: u32, dense_bits: u32) -> (f64, f64) {
    let (_tmp, packed) = pack(dir, bits, dense_bits);
    let m = PackedModel::open(&packed).expect("open");
    let mut run = Running::open(&m, CpuBackend::new());
    let (mut agree, mut total, mut follow, mut steps) = (0, 0, 0, 0);
    for (ids, top5, greedy) in golden(dir) {
        let mut seq = ids.clone();
        seq.extend(&greedy[..greedy.len().saturating_sub(1)]);
        let logits = run.logits(&seq);
        for (l, t) in logits.iter().zip(&top5) {
            total += 1;
            agree += usize::from(argmax(l) == Some(t[0]));
        }
        for (l, &want) in logits[ids.len() - 1..].iter().zip(&greedy) {
            steps += 1;
            follow += usize::from(argmax(l) == Some(want));
        }
    }
    println!(
        "experts {bits}-bit, dense {dense_bits}-bit: top-1 {agree}/{total}, greedy followed at {follow}/{steps}"
    );
    (
        agree as f64 / total as f64,
        follow as f64 / steps.max(1) as f64,
    )
}

#[test]
fn quantized_dense_weights_keep_the_model() {
    let Some(dir) = shared_fixture("tiny-qwen3-moe") else {
        return;
    };
    let (top1, follow) = quality(&dir, 8, 8);
    assert!(
        top1 >= 0.97 && follow >= 0.95,
        "8-bit: top-1 {top1}, greedy followed {follow}"
    );
    let (top1, _) = quality(&dir, 4, 4);
    assert!(top1 >= 0.90, "4-bit: top-1 {top1}");
}

#[test]
fn quantized_dense_weights_on_wgpu_match_cpu() {
    let Some(dir) = shared_fixture("tiny-qwen3-moe") else {
        return;
    };
    let be = match WgpuBackend::new(&WgpuConfig::default()) {
        Ok(be) => be,
        Err(e) if std::env::var_os("FLASHMOE_REQUIRE_GPU").is_some() => {
            panic!("FLASHMOE_REQUIRE_GPU is set but no wgpu adapter opened: {e}")
        }
        Err(e) => {
            println!("SKIP: no wgpu adapter ({e})");
            return;
        }
    };
    let (_tmp, packed) = pack(&dir, 4, 8);
    let m = PackedModel::open(&packed).expect("open");
    // The GPU computes with f32 activations: compare the CPU's same maths (its default int8
    // activations are held to the golden top-1 agreement above).
    let cpu_be = CpuBackend::new().with_activations(flashmoe_backends::Activations::F32);
    let (mut gpu, mut cpu) = (Running::open(&m, be), Running::open(&m, cpu_be));
    for (ids, _, _) in golden(&dir) {
        let (g, c) = (gpu.logits(&ids), cpu.logits(&ids));
        for (pos, (a, b)) in g.iter().zip(&c).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(d < 2e-3, "position {pos}: |gpu - cpu| = {d}");
        }
        assert_eq!(gpu.greedy(&ids, 16), cpu.greedy(&ids, 16));
    }
}

#[test]
fn unsupported_dense_bits_are_refused() {
    let Some(dir) = shared_fixture("tiny-qwen3-moe") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("packed");
    let err = pack_model_with(
        &dir,
        &out,
        &PackOptions::new().dense_bits(5),
        &mut |_, _| {},
    )
    .expect_err("dense bits 5");
    assert!(
        err.to_string()
            .contains("--dense-bits must be 16, 8 or 4, not 5"),
        "{err}"
    );
    assert!(!out.exists());
}
