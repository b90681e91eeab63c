//! One more attempt at a layer's experts when a read failed: a transient fault (an EIO that
//! does not repeat, a record whose checksum failed once) then costs one re-read instead of
//! the whole generation, and a persistent one still ends it with the scheduler's error
//! (layer, expert, file, offset). Wrong bytes are never used: io-sched verifies every
//! record's checksum before handing it out.

use crate::error::{EngineError, Result};

/// Acquires of a layer's experts attempted at most, when each fails on a read or checksum.
pub const READ_ATTEMPTS: u32 = 2;

/// `attempt(n)` (n = 1, 2, …), retried up to [`READ_ATTEMPTS`] times in all on read and checksum
/// errors (io-sched does not keep a failed load: the next acquire reads again). The first
/// attempt is the session's demand; a retry is a plain [`io_sched::Scheduler::acquire`], so the
/// session's predictor sees the layer's routing once.
pub(crate) fn acquire<T>(
    layer: u32,
    ids: &[u32],
    mut attempt_fn: impl FnMut(u32) -> io_sched::Result<T>,
) -> Result<T> {
    let mut attempt = 1;
    loop {
        match attempt_fn(attempt) {
            Ok(g) => return Ok(g),
            Err(e @ (io_sched::Error::Read { .. } | io_sched::Error::Checksum { .. }))
                if attempt < READ_ATTEMPTS =>
            {
                tracing::warn!("retrying layer {layer} experts {ids:?} after: {e}");
                attempt += 1;
            }
            Err(source) => {
                return Err(EngineError::IoSched {
                    context: format!(
                        "acquiring layer {layer} experts {ids:?} (attempt {attempt} of {READ_ATTEMPTS})"
                    ),
                    source,
                });
            }
        }
    }
}
