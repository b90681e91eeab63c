//! Recording routing (and pre-gate scores) to a file in io-sched's routing-trace format
//! ([`io_sched::trace`]), which the simulator replays.
//!
//! Record `(t, L)` holds the experts and weights layer `L` chose for token `t` and, when
//! scores are recorded, the pre-gate scores for layer `L + 1` that the engine computed from
//! layer `L`'s hidden state (zeros for the last layer), exactly as the format defines them.
//! A sink made [`far`](TraceSink::far) records layer `L + 2`'s scores from the same hidden
//! state instead (zeros for the last two layers): the input of a two-layers-ahead pre-gate,
//! replayed beside the ordinary trace of the same run.

use crate::error::{EngineError, Result};
use crate::hooks::RoutingObserver;
use io_sched::trace::{Real, TraceError, TraceHeader, TraceWriter};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// A [`RoutingObserver`] that streams every (token, layer) record to a trace file.
///
/// ```no_run
/// let mut sink = flashmoe_engine::TraceSink::create("out.trace".as_ref(), 8, 32, 4, true)?;
/// // ... run the model with `&mut sink` as (part of) its observer ...
/// let tokens = sink.finish()?;
/// # Ok::<(), flashmoe_engine::EngineError>(())
/// ```
pub struct TraceSink {
    path: PathBuf,
    writer: Option<TraceWriter<BufWriter<File>>>,
    layers: u32,
    scores: bool,
    /// Layers ahead of the recorded scores: 1, or 2 for a far sink.
    ahead: u32,
    /// Routing of the layer whose pre-gate scores (for the next layer) are awaited.
    pending: Option<(u32, Vec<u32>, Vec<f32>)>,
    zeros: Vec<f32>,
    error: Option<TraceError>,
}

impl TraceSink {
    /// Creates `path` for a model of `layers x experts` routing `k` experts; `scores` also
    /// records the pre-gate scores (and makes the model compute them).
    pub fn create(path: &Path, layers: u32, experts: u32, k: u32, scores: bool) -> Result<Self> {
        let mut header = TraceHeader::new(layers, experts, k);
        header.weights = Some(Real::F16);
        header.scores = scores.then_some(Real::F16);
        let writer = TraceWriter::create(path, header).map_err(|e| trace_error(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Some(writer),
            layers,
            scores,
            ahead: 1,
            pending: None,
            zeros: vec![0.0; experts as usize],
            error: None,
        })
    }

    /// Records layer `L + 2`'s pre-gate scores at `(t, L)` instead of layer `L + 1`'s.
    pub fn far(mut self) -> Self {
        self.ahead = 2;
        self
    }

    fn write(&mut self, layer: u32, ids: &[u32], weights: &[f32], scores: Option<&[f32]>) {
        if self.error.is_some() {
            return;
        }
        if let Some(w) = self.writer.as_mut()
            && let Err(e) = w.write_layer(layer, ids, Some(weights), scores)
        {
            self.error = Some(e);
        }
    }

    /// Patches the token count and closes the file; returns the tokens written. The first
    /// error met while recording is returned here.
    pub fn finish(mut self) -> Result<u64> {
        if let Some(e) = self.error.take() {
            return Err(trace_error(&self.path, e));
        }
        let Some(w) = self.writer.take() else {
            return Ok(0);
        };
        let tokens = w.tokens();
        w.finish().map_err(|e| trace_error(&self.path, e))?;
        Ok(tokens)
    }
}

fn trace_error(path: &Path, e: TraceError) -> EngineError {
    EngineError::Trace {
        path: path.to_path_buf(),
        source: e,
    }
}

impl RoutingObserver for TraceSink {
    fn wants_pregate(&self) -> bool {
        self.scores && self.ahead == 1
    }

    fn on_pregate(&mut self, layer: u32, scores: &[f32]) {
        if self.ahead == 1 {
            self.scored(layer, scores);
        }
    }

    fn wants_pregate_far(&self) -> bool {
        self.scores && self.ahead == 2
    }

    fn on_pregate_far(&mut self, layer: u32, scores: &[f32]) {
        if self.ahead == 2 {
            self.scored(layer, scores);
        }
    }

    fn on_routing(&mut self, layer: u32, ids: &[u32], weights: &[f32]) {
        if !self.scores {
            self.write(layer, ids, weights, None);
        } else if layer + self.ahead >= self.layers {
            let zeros = std::mem::take(&mut self.zeros);
            self.write(layer, ids, weights, Some(&zeros));
            self.zeros = zeros;
        } else {
            self.pending = Some((layer, ids.to_vec(), weights.to_vec()));
        }
    }
}

impl TraceSink {
    /// Scores for `layer` arrived: they complete the pending record of `layer - ahead`.
    fn scored(&mut self, layer: u32, scores: &[f32]) {
        match self.pending.take() {
            Some((l, ids, w)) if l + self.ahead == layer => self.write(l, &ids, &w, Some(scores)),
            _ => {
                self.error.get_or_insert(TraceError::Usage(format!(
                    "pre-gate scores for layer {layer} without the routing of layer {}",
                    layer.wrapping_sub(self.ahead)
                )));
            }
        }
    }
}
