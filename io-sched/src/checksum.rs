//! The checksum of flashmoe's formats: a two-level xxh3-64.
//!
//! The payload is cut into blocks of [`CHECKSUM_BLOCK`] bytes (the last one may be shorter);
//! each block gets its xxh3-64, and the checksum is the xxh3-64 of those block hashes as
//! little-endian u64s, in block order:
//!
//! ```text
//! checksum(p) = xxh3_64( le64(xxh3_64(p[0..B])) ‖ le64(xxh3_64(p[B..2B])) ‖ … )
//! ```
//!
//! Why not plain xxh3 of the payload: a record arrives as several reads that complete in any
//! order. Block hashes can be computed as soon as each block is in, so checking a record costs
//! almost nothing once its last read lands, instead of a full pass over megabytes then.

use std::hash::Hasher as _;
use twox_hash::XxHash3_64;

/// Bytes per checksum block (a multiple of 4096, so blocks line up with aligned reads).
pub const CHECKSUM_BLOCK: usize = 256 * 1024;

/// The checksum of `bytes` (see the module docs).
///
/// ```
/// use io_sched::checksum::{checksum, block_hash, combine, CHECKSUM_BLOCK};
/// let data = vec![7u8; CHECKSUM_BLOCK + 10];
/// let by_blocks = combine(data.chunks(CHECKSUM_BLOCK).map(block_hash));
/// assert_eq!(checksum(&data), by_blocks);
/// ```
pub fn checksum(bytes: &[u8]) -> u64 {
    combine(bytes.chunks(CHECKSUM_BLOCK).map(block_hash))
}

/// The hash of one block (xxh3-64; `twox-hash` picks its AVX2 or NEON code at run time, ~1.7x
/// the SSE2 code a portable build compiles otherwise, measured on data from DRAM).
pub fn block_hash(block: &[u8]) -> u64 {
    XxHash3_64::oneshot(block)
}

/// Folds block hashes, in block order, into the checksum.
pub fn combine(block_hashes: impl IntoIterator<Item = u64>) -> u64 {
    let mut h = XxHash3_64::new();
    for b in block_hashes {
        h.write(&b.to_le_bytes());
    }
    h.finish()
}

/// Number of blocks of a payload of `len` bytes (0 for an empty payload).
pub fn block_count(len: usize) -> usize {
    len.div_ceil(CHECKSUM_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_order_matters_and_empty_is_defined() {
        let a = vec![1u8; CHECKSUM_BLOCK];
        let b = vec![2u8; CHECKSUM_BLOCK];
        let ab = [a.clone(), b.clone()].concat();
        let ba = [b, a].concat();
        assert_ne!(checksum(&ab), checksum(&ba));
        assert_eq!(checksum(&[]), combine([]));
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(CHECKSUM_BLOCK + 1), 2);
    }

    /// The format's values, computed with another xxh3 implementation (`xxhash-rust` 0.8):
    /// files packed before the hash crate changed still verify.
    #[test]
    fn checksums_match_the_recorded_values() {
        let data: Vec<u8> = (0..2 * CHECKSUM_BLOCK + 1000)
            .map(|i| ((i * 31 + 7) % 251) as u8)
            .collect();
        assert_eq!(checksum(&data), 0x926281c4841fef5f);
        assert_eq!(checksum(&[]), 0x2d06800538d394c2);
    }
}
