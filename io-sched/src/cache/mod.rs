//! The expert cache: an aligned arena cut into equal slots, and eviction policies.
//!
//! Slot states and pins live in the scheduler core ([`crate::core`]), which is the only place
//! that decides when a slot may be written, read or reused.

pub mod arena;
pub mod next_use;
pub mod policy;

pub use arena::{ARENA_ALIGN, Arena};
pub use policy::{EvictionKind, EvictionPolicy, Lfru, Lru, NextUse};
