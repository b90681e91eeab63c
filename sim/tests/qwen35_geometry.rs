//! The Qwen3.5 geometries the simulator and `synth` place published figures with: native K
//! (10 for the 397B, 8 for the 35B) from the presets, and 4-bit expert sizes from the dims.

use flashmoe_sim::geometry::model_preset;

#[test]
fn qwen35_presets_carry_native_k_and_expert_sizes() {
    for (name, layers, experts, k, bytes) in [
        ("qwen3.5-397b-a17b", 60, 512, 10, 7_077_888),
        ("qwen3.5-35b-a3b", 40, 256, 8, 1_769_472),
    ] {
        let p = model_preset(name).expect("preset");
        assert_eq!(p.k_native.value as u32, k, "{name}: native K");
        let g = p.at_bits(4).expect("4-bit geometry");
        assert_eq!((g.layers, g.experts), (layers, experts), "{name}");
        assert_eq!(g.expert_bytes, bytes, "{name}: 4-bit expert record");
    }
}
