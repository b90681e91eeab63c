//! Packed-experts files: header, record table, the layout joined from one or two files, and
//! every record's checksum (`verify`). The input is a mode byte and the file bytes; the mode
//! says which checksums to recompute over the mutated bytes, so mutants get past the header
//! and table checksums to the checks behind them (see `flashmoe_fuzz::packfile`).
#![no_main]
use flashmoe_fuzz::packfile::{fix_checksums, split};
use io_sched::packfile::{PackReader, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, files)) = split(data) else {
        return;
    };
    let paths: Vec<_> = files
        .into_iter()
        .enumerate()
        .map(|(i, mut f)| {
            fix_checksums(&mut f, mode);
            flashmoe_fuzz::scratch_file(&format!("experts-{i}.fmoe"), &f)
        })
        .collect();
    let outcome = PackReader::open_set(&paths).and_then(|layout| verify(&layout, |_| {}));
    flashmoe_fuzz::report(&outcome);
});
