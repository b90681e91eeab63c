//! One page-aligned anonymous mapping that every cache slot lives in.

use std::ptr::NonNull;

use memmap2::MmapMut;

use crate::error::{Error, Result};

/// Alignment of the arena and of every slot: what direct I/O needs on any device.
pub const ARENA_ALIGN: usize = 4096;

/// `slots × slot_size` bytes, page-aligned, zeroed and faulted in once at creation (so the
/// budget is resident from the start and no read pays a page fault): an anonymous mapping,
/// on Linux backed by transparent huge pages where the system allows them.
///
/// The arena hands out raw pointers; who may touch which slot when is the business of the
/// scheduler core's slot states and pins.
pub struct Arena {
    /// Owns the mapping (unmapped on drop); `ptr` is its start.
    _map: MmapMut,
    ptr: NonNull<u8>,
    bytes: usize,
    slot_size: usize,
    slots: usize,
}

// SAFETY: the arena is a plain memory mapping with no thread affinity; access to slot bytes is
// coordinated by the scheduler (a slot is written only while Loading by the one in-flight
// read, and read only while Ready and pinned).
unsafe impl Send for Arena {}
// SAFETY: as above; `&Arena` only exposes raw pointers and sizes.
unsafe impl Sync for Arena {}

impl Arena {
    /// Allocates `slots` slots of `slot_size` bytes (`slot_size` a multiple of 4096).
    pub fn new(slots: usize, slot_size: usize) -> Result<Self> {
        if slots == 0 || slot_size == 0 || !slot_size.is_multiple_of(ARENA_ALIGN) {
            return Err(Error::Budget(format!(
                "arena of {slots} slots x {slot_size} bytes: need at least one slot of a non-zero multiple of {ARENA_ALIGN} bytes"
            )));
        }
        let bytes = slots.checked_mul(slot_size).ok_or_else(|| {
            Error::Budget(format!("arena of {slots} x {slot_size} bytes overflows"))
        })?;
        let mut map = MmapMut::map_anon(bytes).map_err(|e| {
            Error::Budget(format!("could not map a cache arena of {bytes} bytes: {e}"))
        })?;
        advise_huge_pages(&map);
        prefault(&mut map);
        let ptr = NonNull::new(map.as_mut_ptr())
            .ok_or_else(|| Error::Budget(format!("cache arena of {bytes} bytes mapped at 0")))?;
        debug_assert!((ptr.as_ptr() as usize).is_multiple_of(ARENA_ALIGN));
        Ok(Self {
            _map: map,
            ptr,
            bytes,
            slot_size,
            slots,
        })
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }
    pub fn slots(&self) -> usize {
        self.slots
    }
    pub fn len(&self) -> usize {
        self.bytes
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Start of slot `slot` (panics if out of range: slot ids come from the core, never input).
    pub fn slot_ptr(&self, slot: usize) -> *mut u8 {
        assert!(slot < self.slots, "slot {slot} out of range");
        // SAFETY: slot < slots, so the offset stays inside the allocation.
        unsafe { self.ptr.as_ptr().add(slot * self.slot_size) }
    }
}

/// Asks the kernel to back the arena with transparent huge pages where it allows them
/// (`madvise` mode): compute reads the experts back at memory bandwidth, and with 4 KiB pages
/// every 4 KiB of a record costs a TLB walk. Only a hint: an error leaves 4 KiB pages.
fn advise_huge_pages(map: &MmapMut) {
    #[cfg(target_os = "linux")]
    // Ignored on purpose: a kernel without THP (or with it off) refuses, and 4 KiB pages work.
    let _ = map.advise(memmap2::Advice::HugePage);
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// Faults every page in now (zero-filled), in one `MADV_POPULATE_WRITE` where the kernel has
/// it (Linux 5.14), else by writing a zero into each 4 KiB page.
fn prefault(map: &mut MmapMut) {
    #[cfg(target_os = "linux")]
    if map.advise(memmap2::Advice::PopulateWrite).is_ok() {
        return;
    }
    map.iter_mut().step_by(ARENA_ALIGN).for_each(|b| *b = 0);
}
