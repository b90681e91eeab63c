//! The device/read model, prefill and cost invariants (never on time: on bytes, shares and
//! errors), and the published points' bookkeeping.

use std::sync::Arc;

use clap::Parser;
use flashmoe_sim::device::{device_profile, sweep_retention};
use flashmoe_sim::geometry::model_preset;
use flashmoe_sim::predict::PredictorKind;
use flashmoe_sim::reproduce::PUBLISHED;
use flashmoe_sim::ssd::SsdParams;
use flashmoe_sim::synth::{self, SynthParams};
use flashmoe_sim::vtime::{self, Mode, RunSpec};
use io_sched::cache::EvictionKind;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sim: flashmoe_sim::cli::SimArgs,
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["sim"];
    all.extend_from_slice(args);
    let cli = Cli::parse_from(all);
    let out = flashmoe_sim::cli::run(&cli.sim).unwrap();
    serde_json::from_str(&out).unwrap()
}

#[test]
fn every_published_point_has_a_source_and_resolves() {
    assert!(PUBLISHED.len() >= 5);
    for p in PUBLISHED {
        assert!(p.source.len() > 40, "{}: no source", p.case);
        assert!(p.tok_per_s > 0.0, "{}", p.case);
        // An untraced figure must say why it is shown at all.
        assert!(p.traced || p.reason.is_some(), "{}", p.case);
        device_profile(p.device).unwrap();
        let m = model_preset(p.model).unwrap();
        assert!(p.k >= 1 && p.k as f64 <= m.experts.value, "{}", p.case);
    }
    // Every device of the issue has a point.
    for d in ["macbook-m3-max", "iphone-17-pro", "iphone-17"] {
        assert!(PUBLISHED.iter().any(|p| p.device == d), "{d}");
    }
}

#[test]
fn bad_profile_fields_are_refused_by_name() {
    let mut v: serde_json::Value =
        serde_json::to_value(device_profile("iphone-17").unwrap()).unwrap();
    v["buffered_io_split"]["value"] = serde_json::json!(0.0);
    let path = std::env::temp_dir().join(format!("flashmoe-bad-{}.json", std::process::id()));
    std::fs::write(&path, v.to_string()).unwrap();
    let e = device_profile(path.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("buffered_io_split"), "{e}");
    v["buffered_io_split"]["value"] = serde_json::json!(4.0);
    v["costs"]["flash_read_nj_per_byte"]["value"] = serde_json::json!(-1.0);
    std::fs::write(&path, v.to_string()).unwrap();
    let e = device_profile(path.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("costs.flash_read_nj_per_byte"), "{e}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn sweep_retention_solves_its_equation_and_falls_with_the_sweep() {
    assert_eq!(sweep_retention(0.5), 1.0);
    assert_eq!(sweep_retention(1.0), 1.0);
    let mut last = 1.0;
    for r in [1.2, 1.5, 2.0, 3.0, 6.0] {
        let h = sweep_retention(r);
        assert!((h - (-r * (1.0 - h)).exp()).abs() < 1e-9, "ratio {r}");
        assert!(h < last && h >= 0.0, "ratio {r}: {h}");
        last = h;
    }
}

#[test]
fn page_cache_sweep_thrashes_only_when_the_working_set_does_not_fit() {
    let g397 = model_preset("qwen3.5-397b-a17b")
        .unwrap()
        .at_bits(2)
        .unwrap();
    let g35 = model_preset("qwen3.5-35b-a3b").unwrap().at_bits(4).unwrap();
    let m3 = device_profile("macbook-m3-max")
        .unwrap()
        .trust_os_cache(&g397, 4);
    assert!(!m3.thrashing && m3.dense_reread_bytes_per_layer == 0.0);
    let pro = device_profile("iphone-17-pro")
        .unwrap()
        .trust_os_cache(&g397, 4);
    assert!(pro.thrashing && pro.working_set_bytes > pro.file_cache_bytes);
    let expected = (1.0 - pro.retention) * g397.non_expert_bytes as f64 / g397.layers as f64;
    assert!((pro.dense_reread_bytes_per_layer - expected).abs() < 1.0);
    let small = device_profile("iphone-17").unwrap().trust_os_cache(&g35, 8);
    assert!(!small.thrashing);
}

fn spec(mode: Mode, reread: f64, split: usize) -> RunSpec {
    RunSpec {
        mode,
        layers: 4,
        experts: 32,
        expert_bytes: 16 * 4096,
        budget_bytes: 8 * 16 * 4096,
        ssd: SsdParams {
            peak_bps: 2e9,
            single_bps: 1e9,
            latency_ns: 50_000.0,
            channels: 16,
        },
        queue_depth: 4 * split,
        compute_pre_ns: 200_000.0,
        compute_post_ns: 50_000.0,
        contention: 0.0,
        copy_bps_per_thread: 4e9,
        trust_os_split: split,
        dense_reread_bytes_per_layer: reread,
        eviction: EvictionKind::Lru,
        predictor: PredictorKind::None,
        horizon: 1,
        max_per_layer: 4,
        pregate_recall: 0.9,
        far_recall: None,
        demand_chunk: 4 * 4096,
        prefetch_chunk: 4 * 4096,
        max_prefetch_bytes_in_flight: 16 * 4096,
        min_confidence: 0.0,
        warmup_tokens: 10,
        tokens: 40,
        timeline_tokens: 0,
        seed: 1,
    }
}

#[test]
fn faulted_weights_are_read_once_per_layer_and_token_and_chunks_read_the_same_bytes() {
    let t = Arc::new(synth::generate(4, 32, 4, 50, &SynthParams::default(), 5).unwrap());
    let base = vtime::run(&spec(Mode::TrustOs, 0.0, 1), &t).unwrap();
    let faulted = vtime::run(&spec(Mode::TrustOs, 3e6, 1), &t).unwrap();
    // 3 MB per layer x 4 layers x 40 measured tokens, on top of the same expert reads.
    let extra = faulted.device_bytes - base.device_bytes;
    assert!((extra - 3e6 * 4.0 * 40.0).abs() < 1.0, "extra {extra}");
    assert_eq!(base.total().demand_bytes, faulted.total().demand_bytes);
    let split = vtime::run(&spec(Mode::TrustOs, 0.0, 4), &t).unwrap();
    assert_eq!(split.total().misses, base.total().misses);
    assert!((split.device_bytes - base.device_bytes).abs() < 1.0);
    assert!(split.metrics.depth.mean_depth() > base.metrics.depth.mean_depth());
}

#[test]
fn energy_grows_with_the_bytes_a_run_reads() {
    let args = [
        "--device",
        "iphone-17",
        "--model",
        "qwen3.5-35b-a3b",
        "--k",
        "8",
        "--mode",
        "trust-os",
        "--tokens",
        "30",
        "--warmup",
        "60",
        "--json",
    ];
    let mut big = args.to_vec();
    big.extend(["--budget-gb", "6"]);
    let mut small = args.to_vec();
    small.extend(["--budget-gb", "0.5"]);
    let (b, s) = (run_json(&big), run_json(&small));
    let mb = |v: &serde_json::Value| v["device_mb_per_token"].as_f64().unwrap();
    let flash_j = |v: &serde_json::Value| v["costs"]["flash_j_per_token"].as_f64().unwrap();
    let j = |v: &serde_json::Value| v["costs"]["j_per_token"].as_f64().unwrap();
    assert!(mb(&s) > mb(&b), "a smaller cache reads more");
    assert!(flash_j(&s) > flash_j(&b));
    assert!(j(&s) > j(&b));
    let per_charge = |v: &serde_json::Value| v["costs"]["tokens_per_charge"].as_f64().unwrap();
    assert!(per_charge(&s) < per_charge(&b));
    // Reads wear nothing; the packer's write is a positive share of the rated endurance.
    assert_eq!(
        s["costs"]["read_wear_share_of_tbw_per_hour"].as_f64(),
        Some(0.0)
    );
    assert!(s["costs"]["model_write_share_of_tbw"].as_f64().unwrap() > 0.0);
}

#[test]
fn ttft_chunked_reads_at_most_token_by_token_on_every_ttft_preset() {
    let v = run_json(&[
        "--ttft",
        "--prompt-tokens",
        "256",
        "--chunk",
        "32",
        "--tokens",
        "20",
        "--warmup",
        "40",
        "--json",
    ]);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        let one = r["model_chunk_1"]["expert_read_bytes"].as_f64().unwrap();
        let chunked = r["model_chunked"]["expert_read_bytes"].as_f64().unwrap();
        assert!(chunked <= one, "{}", r["device"]);
        assert!((r["model_chunk_1"]["mean_union"].as_f64().unwrap() - 4.0).abs() < 1e-9);
        assert!(r["model_chunked"]["ttft_s"].as_f64().unwrap() > 0.0);
    }
}
