//! What flashmoe's two C libraries (`capi/io-sched`, `capi/engine`) share, so that each keeps
//! only its own status codes and functions:
//!
//! - [`Status`]: the few codes every library's status enum has (ok, NULL, invalid, internal).
//! - [`CError`]: a status and a message naming the function, argument and cause.
//! - [`ffi`]: the wrapper every exported function runs its body in: errors and panics become a
//!   status and this thread's last error ([`last_error`]); nothing unwinds into C.
//! - [`args`]: checked views of C arguments (NULL, UTF-8, alignment) before anything reads them.
//! - `testing` (feature `testing`): the header check and static-library lookup of their tests.

pub mod args;
mod error;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{CError, Status, error_chain, ffi, ffi_value, last_error, set_last_error};
