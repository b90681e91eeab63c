//! Test models: random expert records in memory or on disk, with their layout.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use io_sched::backend::memory::MemoryBackend;
use io_sched::checksum::checksum;
use io_sched::layout::{ExpertKey, ExpertLayout, LayoutBuilder};

/// Deterministic bytes of one expert record.
pub fn record_bytes(key: ExpertKey, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ ((key.layer as u64) << 32 | key.expert as u64);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One file image holding `layers × experts` records of `len` bytes, 4096-aligned.
pub fn model_image(layers: u32, experts: u32, len: usize) -> (ExpertLayout, Vec<u8>) {
    model_image_at("model.bin", layers, experts, len)
}

pub fn model_image_at(
    path: impl AsRef<Path>,
    layers: u32,
    experts: u32,
    len: usize,
) -> (ExpertLayout, Vec<u8>) {
    let stride = len.div_ceil(4096) * 4096;
    let mut image = vec![0u8; stride * (layers * experts) as usize];
    let mut b = LayoutBuilder::new(layers, experts);
    let f = b.add_file(path.as_ref());
    for l in 0..layers {
        for e in 0..experts {
            let key = ExpertKey::new(l, e);
            let bytes = record_bytes(key, len);
            let off = ((l * experts + e) as usize) * stride;
            image[off..off + len].copy_from_slice(&bytes);
            b.set(key, f, off as u64, len as u64, checksum(&bytes));
        }
    }
    (b.build().unwrap(), image)
}

pub fn memory_backend(image: Vec<u8>, qd: usize) -> Box<MemoryBackend> {
    Box::new(MemoryBackend::new(vec![Arc::from(image)], qd))
}
