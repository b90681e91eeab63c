//! Presets parse, sizes follow from dims, and the CLI entry point runs end to end.

use clap::Parser;
use flashmoe_sim::device::{device_names, device_profile};
use flashmoe_sim::geometry::{expert_bytes, model_presets};

#[test]
fn expert_sizes_follow_from_dims() {
    assert_eq!(expert_bytes(4096, 1024, 4), 7_077_888);
    assert_eq!(expert_bytes(4096, 1024, 2), 3_932_160);
    assert_eq!(expert_bytes(2048, 512, 4), 1_769_472);
    let m = model_presets().unwrap();
    assert_eq!(m.len(), 6);
    let q = m
        .iter()
        .find(|m| m.name == "qwen3.5-397b-a17b")
        .unwrap()
        .at_bits(4)
        .unwrap();
    assert_eq!(q.expert_bytes, 7_077_888);
}

#[test]
fn every_device_preset_parses_and_cites_sources() {
    for name in device_names() {
        let d = device_profile(name).unwrap();
        assert!(d.compute_efficiency().unwrap() > 0.0, "{name}");
        let text = serde_json::to_string(&d).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        fn walk(v: &serde_json::Value, name: &str) {
            if let Some(o) = v.as_object() {
                if o.contains_key("value") {
                    let src = o.get("source").and_then(|s| s.as_str()).unwrap_or("");
                    assert!(src.len() > 10, "{name}: a figure without a source: {v}");
                }
                o.values().for_each(|x| walk(x, name));
            }
        }
        walk(&v, name);
    }
    assert!(
        device_profile("no-such-device")
            .unwrap_err()
            .to_string()
            .contains("macbook-m3-max")
    );
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sim: flashmoe_sim::cli::SimArgs,
}

#[test]
fn cli_runs_a_small_model_and_prints_json() {
    let cli = Cli::parse_from([
        "sim",
        "--model",
        "qwen3-30b-a3b",
        "--device",
        "linux-nvme-gen4",
        "--tokens",
        "5",
        "--warmup",
        "5",
        "--budget-gb",
        "2",
        "--json",
    ]);
    let out = flashmoe_sim::cli::run(&cli.sim).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(v[1]["tok_per_s"].as_f64().unwrap() > 0.0);
}
