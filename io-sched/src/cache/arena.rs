//! One aligned allocation that every cache slot lives in.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// Alignment of the arena and of every slot: what direct I/O needs on any device.
pub const ARENA_ALIGN: usize = 4096;

/// `slots × slot_size` bytes, 4096-aligned, zeroed once at creation.
///
/// The arena hands out raw pointers; who may touch which slot when is the business of the
/// scheduler core's slot states and pins.
pub struct Arena {
    ptr: NonNull<u8>,
    layout: Layout,
    slot_size: usize,
    slots: usize,
}

// SAFETY: the arena is a plain heap allocation with no thread affinity; access to slot bytes is
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
        let layout = Layout::from_size_align(bytes, ARENA_ALIGN)
            .map_err(|e| Error::Budget(format!("arena of {bytes} bytes: {e}")))?;
        // SAFETY: `layout` has a non-zero size (slots > 0 and slot_size > 0).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            Error::Budget(format!("could not allocate a cache arena of {bytes} bytes"))
        })?;
        Ok(Self {
            ptr,
            layout,
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
        self.layout.size()
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

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout; the scheduler drops its arena
        // only after its backend (which waits for in-flight reads) is gone.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
