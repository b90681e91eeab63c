//! Routing traces: flashmoe's binary format, and a fixture's `routing_trace.safetensors`
//! (the same bytes tried as both).
#![no_main]
use io_sched::trace::Trace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Trace::from_bytes(data, "fuzz.trace") {
        for tok in 0..t.tokens().min(64) {
            for l in 0..t.header.layers {
                let _ = t.experts_at(tok, l);
            }
        }
    }
    let path = flashmoe_fuzz::scratch_file("routing_trace.safetensors", data);
    let _ = flashmoe_sim::fixture::load_safetensors_trace(&path, None);
});
