//! `model.safetensors.index.json` beside the committed tiny Mixtral's shards.
#![no_main]
use flashmoe_engine::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = flashmoe_fuzz::scratch_dir().join("index");
    if !dir.exists() {
        std::fs::create_dir_all(&dir).expect("dir");
        let src = flashmoe_fuzz::repo().join("engine/tests/data/tiny-mixtral");
        for e in std::fs::read_dir(src).expect("tiny-mixtral") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
            }
        }
    }
    std::fs::write(dir.join("model.safetensors.index.json"), data).expect("write");
    let _ = Checkpoint::open(&dir, None);
});
