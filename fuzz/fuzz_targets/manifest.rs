//! io-sched's expert manifest (`manifest.json`), parsed and checked against the committed
//! default model's expert files.
#![no_main]
use io_sched::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = flashmoe_fuzz::repo().join("models/tiny-qwen3-moe-q4");
    if let Ok((layout, _)) = Manifest::parse(text, &base, "manifest.json".as_ref()) {
        let _ = layout.validate_files();
    }
});
