//! Routing traces: which experts each token routed to at each layer, in a small versioned
//! binary format the engine records and the simulator replays.
//!
//! # Format, version 1 (all integers little-endian)
//!
//! ```text
//! offset size  field
//!      0    8  magic            b"FMOETRC\0"
//!      8    2  version          1
//!     10    2  flags            bit 0: weights present   bit 1: weights are f32 (else f16)
//!                               bit 2: scores present    bit 3: scores are f32 (else f16)
//!     12    4  header_len       bytes before the first record (40 in v1; readers skip the rest)
//!     16    4  layers           > 0
//!     20    4  experts          > 0; ids are u16 when experts <= 65536, else u32
//!     24    4  k                experts routed per (token, layer), 0 < k <= experts
//!     28    4  scores_per_layer 0 without scores, else = experts (dense vectors only in v1)
//!     32    8  tokens           u64::MAX while a writer is still streaming
//! then, for each token, for each layer in order, one record:
//!     k expert ids (u16 or u32), distinct, each < experts
//!     k routing weights (f16 or f32)                  if flag bit 0
//!     scores_per_layer pre-gate scores (f16 or f32)   if flag bit 2
//! ```
//!
//! The scores of record (t, L) are the engine's pre-gate scores *for layer L+1*, computed from
//! layer L's hidden state (the next layer's router applied early); for the last layer they
//! are whatever the engine wrote (usually zeros). Files are untrusted input: every count and
//! size is checked against the file length before anything is allocated.
//!
//! ```
//! use io_sched::trace::{Trace, TraceHeader, TraceWriter};
//! let header = TraceHeader::new(2, 8, 2);
//! let mut w = TraceWriter::new(std::io::Cursor::new(Vec::new()), header).unwrap();
//! w.write_layer(0, &[1, 5], None, None).unwrap();
//! w.write_layer(1, &[0, 7], None, None).unwrap();
//! let bytes = w.finish().unwrap().into_inner();
//! let t = Trace::from_bytes(&bytes, "mem").unwrap();
//! assert_eq!(t.experts_at(0, 1), &[0, 7]);
//! ```

use std::io;

mod reader;
mod writer;

pub use reader::Trace;
pub use writer::TraceWriter;

/// File magic of a routing trace.
pub const MAGIC: [u8; 8] = *b"FMOETRC\0";
/// The version this code writes and reads.
pub const VERSION: u16 = 1;
/// Header bytes in version 1.
pub const HEADER_LEN: u32 = 40;
/// `tokens` value while a writer has not finished.
pub const TOKENS_UNKNOWN: u64 = u64::MAX;

const F_WEIGHTS: u16 = 1;
const F_WEIGHTS_F32: u16 = 2;
const F_SCORES: u16 = 4;
const F_SCORES_F32: u16 = 8;

/// Errors reading or writing a trace: what went wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{path}: malformed trace at byte {offset}: {reason}")]
    Malformed {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("trace writer: {0}")]
    Usage(String),
}

type Result<T> = std::result::Result<T, TraceError>;

fn malformed(path: &str, offset: u64, reason: impl Into<String>) -> TraceError {
    TraceError::Malformed {
        path: path.to_string(),
        offset,
        reason: reason.into(),
    }
}

/// Numeric type of stored weights or scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Real {
    F16,
    F32,
}

impl Real {
    fn bytes(self) -> u64 {
        if self == Real::F16 { 2 } else { 4 }
    }
}

/// What a trace holds besides expert ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceHeader {
    pub layers: u32,
    pub experts: u32,
    pub k: u32,
    /// Routing weights, and their type.
    pub weights: Option<Real>,
    /// Dense pre-gate score vectors (length `experts`), and their type.
    pub scores: Option<Real>,
    /// Tokens in the file (`TOKENS_UNKNOWN` while streaming).
    pub tokens: u64,
}

impl TraceHeader {
    /// Ids only.
    pub fn new(layers: u32, experts: u32, k: u32) -> Self {
        Self {
            layers,
            experts,
            k,
            weights: None,
            scores: None,
            tokens: TOKENS_UNKNOWN,
        }
    }

    /// Bytes of one expert id.
    pub fn id_bytes(&self) -> u64 {
        if self.experts <= 1 << 16 { 2 } else { 4 }
    }

    /// Values in a score vector (0 without scores).
    pub fn scores_per_layer(&self) -> u32 {
        self.scores.map_or(0, |_| self.experts)
    }

    /// Bytes of one (token, layer) record.
    pub fn record_bytes(&self) -> u64 {
        let k = self.k as u64;
        k * self.id_bytes()
            + self.weights.map_or(0, |r| k * r.bytes())
            + self.scores.map_or(0, |r| self.experts as u64 * r.bytes())
    }

    fn check(&self, path: &str) -> Result<()> {
        let (l, e, k) = (self.layers, self.experts, self.k);
        ensure(l > 0 && e > 0 && k > 0 && k <= e, path, 16, || {
            format!(
                "need layers > 0, experts > 0 and 0 < k <= experts (layers {l}, experts {e}, k {k})"
            )
        })
    }

    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut flags = 0u16;
        if let Some(r) = self.weights {
            flags |= F_WEIGHTS | if r == Real::F32 { F_WEIGHTS_F32 } else { 0 };
        }
        if let Some(r) = self.scores {
            flags |= F_SCORES | if r == Real::F32 { F_SCORES_F32 } else { 0 };
        }
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&flags.to_le_bytes());
        b[12..16].copy_from_slice(&HEADER_LEN.to_le_bytes());
        b[16..20].copy_from_slice(&self.layers.to_le_bytes());
        b[20..24].copy_from_slice(&self.experts.to_le_bytes());
        b[24..28].copy_from_slice(&self.k.to_le_bytes());
        b[28..32].copy_from_slice(&self.scores_per_layer().to_le_bytes());
        b[32..40].copy_from_slice(&self.tokens.to_le_bytes());
        b
    }

    /// Parses and checks a header; returns it and the byte offset of the first record.
    fn decode(b: &[u8], path: &str) -> Result<(Self, u64)> {
        let n = b.len();
        ensure(n >= HEADER_LEN as usize, path, 0, || {
            format!("{n} bytes is shorter than a trace header")
        })?;
        ensure(b[0..8] == MAGIC, path, 0, || {
            "not a flashmoe routing trace (bad magic)".into()
        })?;
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let (version, flags, header_len) = (u16_at(8), u16_at(10), u32_at(12));
        ensure(version == VERSION, path, 8, || {
            format!("version {version} is not supported (this build reads {VERSION})")
        })?;
        ensure(flags & !0xF == 0, path, 10, || {
            format!("unknown flags {flags:#06x}")
        })?;
        ensure(header_len >= HEADER_LEN, path, 12, || {
            format!("header_len {header_len} < {HEADER_LEN}")
        })?;
        let real = |on: u16, f32bit: u16| {
            let r = if flags & f32bit != 0 {
                Real::F32
            } else {
                Real::F16
            };
            (flags & on != 0).then_some(r)
        };
        let h = TraceHeader {
            layers: u32_at(16),
            experts: u32_at(20),
            k: u32_at(24),
            weights: real(F_WEIGHTS, F_WEIGHTS_F32),
            scores: real(F_SCORES, F_SCORES_F32),
            tokens: u32_at(32) as u64 | (u32_at(36) as u64) << 32,
        };
        h.check(path)?;
        let (spl, want) = (u32_at(28), h.scores_per_layer());
        ensure(spl == want, path, 28, || {
            format!(
                "scores_per_layer {spl} must be {want} (dense vectors, only with the scores flag)"
            )
        })?;
        Ok((h, header_len as u64))
    }
}

/// Maps an I/O error of `op` on `path` into a [`TraceError`].
fn io_error(op: &'static str, path: &str) -> impl FnOnce(io::Error) -> TraceError {
    let path = path.to_string();
    move |source| TraceError::Io { op, path, source }
}

fn ensure(ok: bool, path: &str, offset: u64, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(malformed(path, offset, reason()))
    }
}

/// IEEE half to single precision.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24.
            let v = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Single to half precision, rounding to nearest even.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 255 {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rounded = (m + half - 1 + ((m >> shift) & 1)) >> shift;
        return sign | rounded as u16;
    }
    // Exponent and mantissa side by side: a rounding carry moves into the exponent, and
    // past the largest finite value gives infinity (0x7c00).
    let v = ((e as u32) << 23) | man;
    sign | ((v + 0xfff + ((v >> 13) & 1)) >> 13).min(0x7c00) as u16
}
