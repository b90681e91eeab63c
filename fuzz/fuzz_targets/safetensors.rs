//! A safetensors file (a shard, or a packed model's dense.safetensors): header, offsets, and
//! every tensor handed out and decoded.
#![no_main]
use flashmoe_engine::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = flashmoe_fuzz::scratch_file("model.safetensors", data);
    let Ok(ckpt) = Checkpoint::open_file(&path, None) else {
        return;
    };
    let names: Vec<String> = ckpt.names().map(str::to_string).collect();
    for name in names {
        if let Ok(raw) = ckpt.raw(&name) {
            let shape = raw.shape.to_vec();
            if let Ok(t) = ckpt.tensor(&name, &shape) {
                let _ = t.to_f32();
            }
        }
    }
});
