//! A packed-experts file: header, record table, and the layout built from it.
#![no_main]
use io_sched::packfile::PackReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = flashmoe_fuzz::scratch_file("experts.fmoe", data);
    if let Ok(r) = PackReader::open(&path) {
        let _ = r.layout();
    }
});
