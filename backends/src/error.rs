//! Errors of the compute backends.

use crate::quant::WeightFormat;

/// Everything a backend op or a weight-format routine can refuse.
///
/// Each variant says what was wrong and where (`op` names the operation).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A tensor had the wrong number of elements for an op.
    #[error("{op}: {what} has {got} elements, expected {expected}")]
    Shape {
        /// The operation that checked the shape.
        op: &'static str,
        /// Which operand was wrong.
        what: &'static str,
        /// Elements expected.
        expected: usize,
        /// Elements found.
        got: usize,
    },
    /// A weight's byte buffer does not match the size its format and dims require.
    #[error("{op}: weight [{rows}x{cols}] in {format:?} needs {expected} bytes, got {got}")]
    WeightBytes {
        /// The operation that checked the buffer.
        op: &'static str,
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
        /// Its format.
        format: WeightFormat,
        /// Bytes required.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// The dims do not fit the format (e.g. columns not a multiple of the group size).
    #[error("weight format {format:?} cannot hold a [{rows}x{cols}] matrix: {reason}")]
    BadDims {
        /// The format.
        format: WeightFormat,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Why not.
        reason: &'static str,
    },
    /// An index (token id, layer, position, expert) was out of range.
    #[error("{op}: {what} {index} out of range (< {limit})")]
    OutOfRange {
        /// The operation.
        op: &'static str,
        /// What the index names.
        what: &'static str,
        /// The index given.
        index: usize,
        /// The exclusive bound.
        limit: usize,
    },
    /// A non-finite value appeared where the op cannot continue (e.g. router logits).
    #[error("{op}: non-finite value in {what}")]
    NonFinite {
        /// The operation.
        op: &'static str,
        /// Which operand.
        what: &'static str,
    },
    /// The GPU refused or failed an operation (no adapter, a validation error, out of memory).
    #[error("{op}: GPU error: {reason}")]
    Gpu {
        /// The operation.
        op: &'static str,
        /// What the GPU layer said.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// Returns a [`BackendError::Shape`] unless `got == expected`.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(BackendError::Shape {
            op,
            what,
            expected,
            got,
        })
    }
}
