//! Input of the `packfile` target: a mode byte, then one or two packed-experts files whose
//! checksums the target recomputes before parsing.
//!
//! Mutated bytes almost never keep the header's or the record table's xxh3 checksum right, so
//! without help nearly every mutant stops at the first checksum check and the record table,
//! the layout join and the record checksums are never reached. The mode byte says which
//! checksums to recompute over the mutated bytes:
//!
//! | bit | meaning |
//! |---|---|
//! | [`FIX_RECORDS`] | each table entry's record checksum (entries whose range lies in the file) |
//! | [`FIX_TABLE`] | the header's record-table checksum (when the table lies in the file) |
//! | [`FIX_HEADER`] | the header checksum |
//! | [`TWO_FILES`] | the rest is a u32 LE length `n`, `n` bytes of a first file, then a second |
//!
//! A bit left clear keeps the stored value, so the checksum mismatch paths stay reachable.

use io_sched::checksum::checksum;

/// Recompute every record's checksum in the table.
pub const FIX_RECORDS: u8 = 1;
/// Recompute the record table's checksum in the header.
pub const FIX_TABLE: u8 = 2;
/// Recompute the header checksum.
pub const FIX_HEADER: u8 = 4;
/// The input holds two files.
pub const TWO_FILES: u8 = 8;

const HEADER_LEN: usize = 4096;
const HEADER_CHECKSUM_AT: usize = 4088;
const ENTRY_LEN: usize = 32;

/// Splits `data` into the mode byte and the file images it holds.
pub fn split(data: &[u8]) -> Option<(u8, Vec<Vec<u8>>)> {
    let (&mode, rest) = data.split_first()?;
    if mode & TWO_FILES == 0 {
        return Some((mode, vec![rest.to_vec()]));
    }
    let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let rest = &rest[4..];
    let n = n.min(rest.len());
    Some((mode, vec![rest[..n].to_vec(), rest[n..].to_vec()]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The `[start, start + len)` range of `file` if it lies inside it.
fn range(file: &[u8], start: u64, len: u64) -> Option<std::ops::Range<usize>> {
    let end = start.checked_add(len)?;
    (end <= file.len() as u64).then_some(start as usize..end as usize)
}

/// Recomputes the checksums `mode` names, in place (records, then table, then header, as
/// each covers the one before). Files shorter than the header are left as they are.
pub fn fix_checksums(file: &mut [u8], mode: u8) {
    if file.len() < HEADER_LEN {
        return;
    }
    let table = range(file, u64_at(file, 40), u64_at(file, 48));
    if let Some(t) = table.clone().filter(|_| mode & FIX_RECORDS != 0) {
        for at in t.step_by(ENTRY_LEN) {
            if at + ENTRY_LEN > file.len() {
                break;
            }
            if let Some(r) = range(file, u64_at(file, at + 8), u64_at(file, at + 16)) {
                let sum = checksum(&file[r]);
                file[at + 24..at + 32].copy_from_slice(&sum.to_le_bytes());
            }
        }
    }
    if let Some(t) = table.filter(|_| mode & FIX_TABLE != 0) {
        let sum = checksum(&file[t]);
        file[56..64].copy_from_slice(&sum.to_le_bytes());
    }
    if mode & FIX_HEADER != 0 {
        let sum = checksum(&file[..HEADER_CHECKSUM_AT]);
        file[HEADER_CHECKSUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    }
}
