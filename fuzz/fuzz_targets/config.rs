//! `config.json` of a Hugging Face checkpoint (every family the engine accepts).
#![no_main]
use flashmoe_engine::ModelConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ModelConfig::from_json(text, "config.json".as_ref());
    }
});
