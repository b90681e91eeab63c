//! A simulator device profile (`--device file.json`), then the compute figures derived from it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = flashmoe_fuzz::scratch_file("device.json", data);
    let Some(name) = path.to_str() else {
        return;
    };
    if let Ok(d) = flashmoe_sim::device::device_profile(name) {
        let _ = d.compute_efficiency();
    }
});
