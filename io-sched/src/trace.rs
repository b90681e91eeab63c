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

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

fn ensure(ok: bool, path: &str, offset: u64, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(malformed(path, offset, reason()))
    }
}

/// Streams a trace out, one (token, layer) record at a time, layers in order.
pub struct TraceWriter<W: Write + Seek> {
    out: W,
    header: TraceHeader,
    tokens: u64,
    next_layer: u32,
    buf: Vec<u8>,
}

impl TraceWriter<BufWriter<File>> {
    /// Creates `path` and writes the header.
    pub fn create(path: &Path, header: TraceHeader) -> Result<Self> {
        let f = File::create(path).map_err(io_error("create", &path.display().to_string()))?;
        Self::new(BufWriter::new(f), header)
    }
}

impl<W: Write + Seek> TraceWriter<W> {
    /// Writes the header to `out` (token count patched by [`Self::finish`]).
    pub fn new(mut out: W, mut header: TraceHeader) -> Result<Self> {
        header
            .check("trace writer")
            .map_err(|e| TraceError::Usage(e.to_string()))?;
        header.tokens = TOKENS_UNKNOWN;
        out.write_all(&header.encode()).map_err(wio)?;
        Ok(Self {
            out,
            header,
            tokens: 0,
            next_layer: 0,
            buf: Vec::new(),
        })
    }

    /// Appends the record of `layer` for the current token; layers must come 0, 1, 2, ...
    /// `weights` and `scores` must be given exactly when the header says so.
    pub fn write_layer(
        &mut self,
        layer: u32,
        experts: &[u32],
        weights: Option<&[f32]>,
        scores: Option<&[f32]>,
    ) -> Result<()> {
        let (h, tok, next) = (self.header, self.tokens, self.next_layer);
        let usage = |m: String| Err(TraceError::Usage(m));
        if layer != next {
            return usage(format!("token {tok}: expected layer {next}, got {layer}"));
        }
        let bad = experts
            .iter()
            .enumerate()
            .find(|(i, e)| **e >= h.experts || experts[..*i].contains(e));
        if experts.len() != h.k as usize || bad.is_some() {
            return usage(format!(
                "layer {layer}: {experts:?} is not k = {} distinct ids < {}",
                h.k, h.experts
            ));
        }
        self.buf.clear();
        for &e in experts {
            let le = e.to_le_bytes();
            self.buf.extend_from_slice(&le[..h.id_bytes() as usize]);
        }
        match (h.weights, weights) {
            (Some(r), Some(w)) if w.len() == h.k as usize => put_reals(&mut self.buf, r, w),
            (None, None) => {}
            _ => return usage(format!("layer {layer}: weights do not match the header")),
        }
        match (h.scores, scores) {
            (Some(r), Some(s)) if s.len() == h.experts as usize => put_reals(&mut self.buf, r, s),
            (None, None) => {}
            _ => return usage(format!("layer {layer}: scores do not match the header")),
        }
        self.out.write_all(&self.buf).map_err(wio)?;
        self.next_layer += 1;
        if self.next_layer == h.layers {
            self.next_layer = 0;
            self.tokens += 1;
        }
        Ok(())
    }

    /// Tokens completely written.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Patches the token count into the header and returns the sink. A token left half
    /// written is an error.
    pub fn finish(mut self) -> Result<W> {
        if self.next_layer != 0 {
            return Err(TraceError::Usage(format!(
                "token {} stopped after layer {} of {}",
                self.tokens, self.next_layer, self.header.layers
            )));
        }
        self.out.seek(SeekFrom::Start(32)).map_err(wio)?;
        self.out
            .write_all(&self.tokens.to_le_bytes())
            .map_err(wio)?;
        self.out.seek(SeekFrom::End(0)).map_err(wio)?;
        self.out.flush().map_err(wio)?;
        Ok(self.out)
    }
}

fn wio(source: io::Error) -> TraceError {
    io_error("write", "trace writer")(source)
}

fn io_error(op: &'static str, path: &str) -> impl FnOnce(io::Error) -> TraceError {
    let path = path.to_string();
    move |source| TraceError::Io { op, path, source }
}

fn put_reals(buf: &mut Vec<u8>, r: Real, v: &[f32]) {
    for &x in v {
        match r {
            Real::F16 => buf.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
            Real::F32 => buf.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

/// A whole trace in memory, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub header: TraceHeader,
    /// tokens × layers × k expert ids.
    pub ids: Vec<u32>,
    /// tokens × layers × k weights, if recorded.
    pub weights: Option<Vec<f32>>,
    /// tokens × layers × experts pre-gate scores, if recorded.
    pub scores: Option<Vec<f32>>,
}

impl Trace {
    /// A trace of ids only (synthetic traces, fixture loaders).
    pub fn from_ids(layers: u32, experts: u32, k: u32, ids: Vec<u32>) -> Result<Self> {
        let mut header = TraceHeader::new(layers, experts, k);
        header
            .check("ids")
            .map_err(|e| TraceError::Usage(e.to_string()))?;
        let per_token = layers as usize * k as usize;
        if !ids.len().is_multiple_of(per_token) {
            return Err(TraceError::Usage(format!(
                "{} ids is not a whole number of tokens of {per_token}",
                ids.len()
            )));
        }
        header.tokens = (ids.len() / per_token) as u64;
        let t = Self {
            header,
            ids,
            weights: None,
            scores: None,
        };
        t.check_ids("ids", 0)?;
        Ok(t)
    }

    /// Reads and validates a trace file.
    pub fn read(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let mut bytes = Vec::new();
        File::open(path)
            .map_err(io_error("open", &name))?
            .read_to_end(&mut bytes)
            .map_err(io_error("read", &name))?;
        Self::from_bytes(&bytes, &name)
    }

    /// Parses a trace held in memory; `name` is used in errors.
    pub fn from_bytes(b: &[u8], name: &str) -> Result<Self> {
        let (mut header, start) = TraceHeader::decode(b, name)?;
        let len = b.len() as u64;
        if start > len {
            return Err(malformed(
                name,
                12,
                format!("header_len {start} is past the end ({len} bytes)"),
            ));
        }
        let rec = header.record_bytes();
        let per_token = rec
            .checked_mul(header.layers as u64)
            .ok_or_else(|| malformed(name, 16, "record size overflows"))?;
        let body = len - start;
        let tokens = if header.tokens == TOKENS_UNKNOWN {
            if !body.is_multiple_of(per_token) {
                return Err(malformed(
                    name,
                    start + body / per_token * per_token,
                    "unfinished trace ends inside a token",
                ));
            }
            body / per_token
        } else {
            let need = header
                .tokens
                .checked_mul(per_token)
                .ok_or_else(|| malformed(name, 32, "token count overflows"))?;
            if need != body {
                return Err(malformed(
                    name,
                    32,
                    format!(
                        "{} tokens need {need} bytes of records, the file has {body}",
                        header.tokens
                    ),
                ));
            }
            header.tokens
        };
        header.tokens = tokens;
        let (l, k, e) = (
            header.layers as usize,
            header.k as usize,
            header.experts as usize,
        );
        let n = tokens as usize * l;
        let mut ids = Vec::with_capacity(n * k);
        let mut weights = header.weights.map(|_| Vec::with_capacity(n * k));
        let mut scores = header.scores.map(|_| Vec::with_capacity(n * e));
        let mut at = start as usize;
        for _ in 0..n {
            for _ in 0..k {
                ids.push(if header.id_bytes() == 2 {
                    u16::from_le_bytes([b[at], b[at + 1]]) as u32
                } else {
                    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
                });
                at += header.id_bytes() as usize;
            }
            if let (Some(r), Some(w)) = (header.weights, weights.as_mut()) {
                at = get_reals(b, at, r, k, w);
            }
            if let (Some(r), Some(s)) = (header.scores, scores.as_mut()) {
                at = get_reals(b, at, r, e, s);
            }
        }
        let t = Self {
            header,
            ids,
            weights,
            scores,
        };
        t.check_ids(name, start)?;
        Ok(t)
    }

    fn check_ids(&self, name: &str, start: u64) -> Result<()> {
        let (k, e) = (self.header.k as usize, self.header.experts);
        for (r, rec) in self.ids.chunks(k).enumerate() {
            for (i, &x) in rec.iter().enumerate() {
                if x >= e || rec[..i].contains(&x) {
                    let (t, l) = (
                        r as u64 / self.header.layers as u64,
                        r as u64 % self.header.layers as u64,
                    );
                    return Err(malformed(
                        name,
                        start + r as u64 * self.header.record_bytes(),
                        format!(
                            "token {t} layer {l}: expert id {x} is out of range (< {e}) or repeated"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the trace to `path` in the binary format.
    pub fn write(&self, path: &Path) -> Result<PathBuf> {
        let mut w = TraceWriter::create(path, self.header)?;
        let (l, k, e) = (
            self.header.layers as usize,
            self.header.k as usize,
            self.header.experts as usize,
        );
        for r in 0..self.tokens() as usize * l {
            w.write_layer(
                (r % l) as u32,
                &self.ids[r * k..(r + 1) * k],
                self.weights.as_ref().map(|v| &v[r * k..(r + 1) * k]),
                self.scores.as_ref().map(|v| &v[r * e..(r + 1) * e]),
            )?;
        }
        w.finish()?;
        Ok(path.to_path_buf())
    }

    pub fn tokens(&self) -> u64 {
        self.header.tokens
    }

    /// Keeps the first `tokens` tokens (all of them if there are fewer).
    pub fn truncate(&mut self, tokens: u64) {
        let t = tokens.min(self.tokens());
        let rows = t as usize * self.header.layers as usize;
        self.ids.truncate(rows * self.header.k as usize);
        if let Some(w) = self.weights.as_mut() {
            w.truncate(rows * self.header.k as usize);
        }
        if let Some(s) = self.scores.as_mut() {
            s.truncate(rows * self.header.experts as usize);
        }
        self.header.tokens = t;
    }

    /// Appends `other`'s tokens (e.g. several recorded generations made into one long trace).
    /// Both must have the same geometry and carry the same extras (weights, scores); a value
    /// type may differ (values are held as f32).
    ///
    /// ```
    /// use io_sched::trace::Trace;
    /// let mut a = Trace::from_ids(1, 8, 2, vec![0, 1]).unwrap();
    /// a.append(&Trace::from_ids(1, 8, 2, vec![2, 3]).unwrap()).unwrap();
    /// assert_eq!((a.tokens(), a.experts_at(1, 0)), (2, &[2u32, 3][..]));
    /// assert!(a.append(&Trace::from_ids(1, 4, 2, vec![0, 1]).unwrap()).is_err());
    /// a.truncate(1);
    /// assert_eq!((a.tokens(), a.ids.len()), (1, 2));
    /// ```
    pub fn append(&mut self, other: &Trace) -> Result<()> {
        let (a, b) = (self.header, other.header);
        if (a.layers, a.experts, a.k) != (b.layers, b.experts, b.k) {
            return Err(TraceError::Usage(format!(
                "cannot append a {} x {} top-{} trace to a {} x {} top-{} one",
                b.layers, b.experts, b.k, a.layers, a.experts, a.k
            )));
        }
        if self.weights.is_some() != other.weights.is_some()
            || self.scores.is_some() != other.scores.is_some()
        {
            return Err(TraceError::Usage(
                "cannot append traces that differ in recorded weights or scores".into(),
            ));
        }
        self.ids.extend_from_slice(&other.ids);
        if let (Some(w), Some(o)) = (self.weights.as_mut(), other.weights.as_ref()) {
            w.extend_from_slice(o);
        }
        if let (Some(s), Some(o)) = (self.scores.as_mut(), other.scores.as_ref()) {
            s.extend_from_slice(o);
        }
        self.header.tokens += other.header.tokens;
        Ok(())
    }

    /// The experts `token` routed to at `layer`.
    pub fn experts_at(&self, token: u64, layer: u32) -> &[u32] {
        let k = self.header.k as usize;
        let r = token as usize * self.header.layers as usize + layer as usize;
        &self.ids[r * k..(r + 1) * k]
    }

    /// The pre-gate scores recorded at (`token`, `layer`) (for layer + 1), if any.
    pub fn scores_at(&self, token: u64, layer: u32) -> Option<&[f32]> {
        let e = self.header.experts as usize;
        let r = token as usize * self.header.layers as usize + layer as usize;
        self.scores.as_ref().map(|s| &s[r * e..(r + 1) * e])
    }
}

fn get_reals(b: &[u8], mut at: usize, r: Real, n: usize, out: &mut Vec<f32>) -> usize {
    for _ in 0..n {
        out.push(match r {
            Real::F16 => f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]])),
            Real::F32 => f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]),
        });
        at += r.bytes() as usize;
    }
    at
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
