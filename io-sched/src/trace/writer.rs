//! [`TraceWriter`]: streams a trace out, record by record, and patches the token count.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::*;

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

fn put_reals(buf: &mut Vec<u8>, r: Real, v: &[f32]) {
    for &x in v {
        match r {
            Real::F16 => buf.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
            Real::F32 => buf.extend_from_slice(&x.to_le_bytes()),
        }
    }
}
