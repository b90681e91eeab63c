//! `pack` of a checkpoint larger than the memory it may use: a generated Qwen3-MoE checkpoint
//! of ~300 MB (small dims, many experts) is packed by a child process whose address space is
//! capped below the checkpoint's size (`RLIMIT_AS`, which counts every mapping and every
//! allocation, so a packer that maps or holds the checkpoint fails), and the result must be
//! byte for byte what an unlimited pack in this process writes. Runs anywhere (no root, no
//! fixtures); Linux only (the limit and `/proc/self/status`).

#![cfg(target_os = "linux")]

use flashmoe_engine::{PackOptions, pack_model_with};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Set in the child: the checkpoint to pack and where.
const CHILD_SRC: &str = "FLASHMOE_TEST_PACK_CHILD_SRC";
const CHILD_OUT: &str = "FLASHMOE_TEST_PACK_CHILD_OUT";
/// How long the child may run before it is killed (a correct run takes seconds).
const CHILD_TIMEOUT_MS: u64 = 300_000;
/// The child's address-space limit.
const LIMIT_BYTES: u64 = 224 << 20;

const HIDDEN: usize = 256;
const INTER: usize = 128;
const LAYERS: usize = 4;
const EXPERTS: usize = 384;
const VOCAB: usize = 4096;

/// Deterministic bf16 values in about [-0.06, 0.06] (an LCG; no NaN or infinity).
fn values(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.12;
        out.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
    }
    out
}

/// Writes `tensors` as one shard `file` of `dir`, naming them in `index`.
fn shard(
    dir: &Path,
    file: &str,
    tensors: Vec<(String, Vec<usize>)>,
    index: &mut BTreeMap<String, String>,
) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            let seed = (file.len() * 1_000_003 + i) as u64 ^ name.len() as u64;
            (name, shape, values(seed, n))
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            index.insert(name.clone(), file.to_string());
            let view = TensorView::new(Dtype::BF16, shape.clone(), bytes).expect("view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join(file)).expect("write shard");
}

/// A Qwen3-MoE checkpoint of `LAYERS` x `EXPERTS` experts, one shard per layer; returns its
/// bytes.
fn checkpoint(dir: &Path) -> u64 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4");
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::copy(root.join("tokenizer.json"), dir.join("tokenizer.json")).expect("tokenizer");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("config.json")).expect("config"))
            .expect("parse config");
    cfg["num_experts"] = EXPERTS.into();
    cfg["num_local_experts"] = EXPERTS.into();
    cfg["num_hidden_layers"] = LAYERS.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("write config");
    let mut index = BTreeMap::new();
    let (q, kv) = (4 * 64, 2 * 64);
    shard(
        dir,
        "model-top.safetensors",
        vec![
            ("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
            ("lm_head.weight".into(), vec![VOCAB, HIDDEN]),
            ("model.norm.weight".into(), vec![HIDDEN]),
        ],
        &mut index,
    );
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        let mut t: Vec<(String, Vec<usize>)> = vec![
            (format!("{p}.input_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, HIDDEN]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, HIDDEN]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, HIDDEN]),
            (format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, q]),
            (format!("{p}.self_attn.q_norm.weight"), vec![64]),
            (format!("{p}.self_attn.k_norm.weight"), vec![64]),
            (format!("{p}.mlp.gate.weight"), vec![EXPERTS, HIDDEN]),
        ];
        for e in 0..EXPERTS {
            let x = format!("{p}.mlp.experts.{e}");
            t.push((format!("{x}.gate_proj.weight"), vec![INTER, HIDDEN]));
            t.push((format!("{x}.up_proj.weight"), vec![INTER, HIDDEN]));
            t.push((format!("{x}.down_proj.weight"), vec![HIDDEN, INTER]));
        }
        shard(dir, &format!("model-layer-{l}.safetensors"), t, &mut index);
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": index });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .sum()
}

/// Every file of `dir`, sorted by name.
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

/// The `key` line of `/proc/self/status`, in bytes.
fn status_bytes(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = s.lines().find(|l| l.starts_with(key)).expect("status line");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .expect("kB")
        * 1024
}

#[test]
fn pack_of_a_checkpoint_larger_than_the_address_space_limit() {
    if let (Some(src), Some(out)) = (std::env::var_os(CHILD_SRC), std::env::var_os(CHILD_OUT)) {
        // The child, under the limit: the CLI's defaults (4-bit experts and dense weights).
        let s = pack_model_with(
            Path::new(&src),
            Path::new(&out),
            &PackOptions::new(),
            &mut |_, _| {},
        )
        .expect("pack under the limit");
        println!(
            "child: packed {} records; VmPeak {} MB, VmHWM {} MB",
            s.records,
            status_bytes("VmPeak:") >> 20,
            status_bytes("VmHWM:") >> 20
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("ckpt");
    let ckpt_bytes = checkpoint(&src);
    assert!(
        ckpt_bytes > LIMIT_BYTES * 5 / 4,
        "the checkpoint ({ckpt_bytes} B) must be well over the limit ({LIMIT_BYTES} B)"
    );
    let limited = tmp.path().join("limited");
    let mut child = Command::new(std::env::current_exe().expect("test binary"));
    child
        .args([
            "--exact",
            "pack_of_a_checkpoint_larger_than_the_address_space_limit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SRC, &src)
        .env(CHILD_OUT, &limited)
        // A backtrace needs memory the limit may not leave: keep a failure a plain message.
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which
    // is async-signal-safe; it touches no memory of the parent's other threads.
    unsafe {
        child.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: LIMIT_BYTES,
                rlim_max: LIMIT_BYTES,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut running = child.spawn().expect("run the child");
    // A process that runs out of address space can hang instead of exiting (a failed
    // allocation in a panic): give up after a bound no correct run comes near.
    let mut waited = 0;
    while running.try_wait().expect("wait for the child").is_none() {
        if waited >= CHILD_TIMEOUT_MS {
            let _ = running.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        waited += 100;
    }
    let output = running.wait_with_output().expect("child output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "checkpoint {} MB, limit {} MB\n{text}",
        ckpt_bytes >> 20,
        LIMIT_BYTES >> 20
    );
    assert!(
        output.status.success() && text.contains("child: packed"),
        "pack under a {} MB address-space limit failed:\n{text}",
        LIMIT_BYTES >> 20
    );
    let unlimited: PathBuf = tmp.path().join("unlimited");
    let s = pack_model_with(&src, &unlimited, &PackOptions::new(), &mut |_, _| {}).expect("pack");
    assert_eq!(s.records, (LAYERS * EXPERTS) as u64);
    assert_eq!(s.dense_bits, 4, "the default dense bits follow --bits 4");
    let (a, b) = (tree(&limited), tree(&unlimited));
    assert_eq!(
        a.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{name} differs between the limited and the unlimited pack"
        );
    }
}
