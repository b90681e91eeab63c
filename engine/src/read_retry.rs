//! One more attempt at a layer's experts when a read failed: a transient fault (an EIO that
//! does not repeat, a record whose checksum failed once) then costs one re-read instead of
//! the whole generation, and a persistent one still ends it with the scheduler's error
//! (layer, expert, file, offset). Wrong bytes are never used: io-sched verifies every
//! record's checksum before handing it out.

use crate::error::{EngineError, Result};
use io_sched::{ExpertGuard, Scheduler};

/// Acquires of a layer's experts attempted at most, when each fails on a read or checksum.
pub const READ_ATTEMPTS: u32 = 2;

/// [`Scheduler::acquire`], retried up to [`READ_ATTEMPTS`] times in all on read and checksum
/// errors (io-sched does not keep a failed load: the next acquire reads again).
pub(crate) fn acquire(sched: &Scheduler, layer: u32, ids: &[u32]) -> Result<ExpertGuard> {
    let mut attempt = 1;
    loop {
        match sched.acquire(layer, ids) {
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
