//! The checksum stored for every expert record: xxh3-64 of its payload bytes.

/// xxh3-64 of `bytes` (fast: tens of GB/s, so verifying every read is affordable).
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}
