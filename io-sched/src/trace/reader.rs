//! [`Trace`]: a whole trace read into memory and validated against the file length.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::*;

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
