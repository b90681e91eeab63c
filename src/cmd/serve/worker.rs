//! The generation worker: one dedicated thread owns the model (it is not shared across
//! threads) and runs queued requests one at a time. A request carries the channel its text
//! goes to; when the client goes away that channel closes, and the worker stops the
//! generation at the next token.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use flashmoe_backends::wgpu::{WgpuBackend, WgpuConfig};
use flashmoe_backends::{ComputeBackend, CpuBackend};
use tokio::sync::mpsc;

use crate::cmd::CliResult;
use crate::cmd::session::{self, OpenOptions};
use flashmoe_engine::{Finish, GenerationRequest, ModelSession, Outcome};

/// What the worker sends back for one request.
#[derive(Debug)]
pub enum Event {
    /// Text that became final.
    Text(String),
    /// The generation ended.
    Done(Outcome),
    /// It failed.
    Failed(String),
}

/// A queued request.
#[derive(Debug)]
pub struct Request {
    /// What to generate.
    pub job: GenerationRequest,
    /// Where its text goes (dropped by the client side to cancel).
    pub events: mpsc::Sender<Event>,
}

/// Counters shown by `/health`.
#[derive(Debug, Default)]
pub struct Counters {
    /// A generation is running.
    pub busy: AtomicBool,
    /// Requests answered in full.
    pub completed: AtomicU64,
    /// Requests whose client went away (in the queue or mid-generation).
    pub cancelled: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Requests that failed in the engine.
    pub failed: AtomicU64,
}

/// What the HTTP side needs to know of the loaded model.
#[derive(Clone, Debug)]
pub struct Ready {
    /// Positions of the context.
    pub ctx: usize,
    /// Vocabulary size (token ids must be below).
    pub vocab: usize,
    /// The compute backend, in words.
    pub compute: String,
}

/// Starts the worker thread on `backend` (`cpu` or `wgpu`) with a queue of `queue`
/// requests; returns once the model is loaded (or failed to load).
pub fn spawn(
    dir: PathBuf,
    backend: String,
    opts: OpenOptions,
    queue: usize,
    counters: Arc<Counters>,
) -> CliResult<(mpsc::Sender<Request>, std::thread::JoinHandle<()>, Ready)> {
    let (tx, rx) = mpsc::channel::<Request>(queue.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready, String>>();
    let thread = std::thread::Builder::new()
        .name("flashmoe-generate".into())
        .spawn(move || {
            let started = match backend.as_str() {
                "cpu" => session::open(&dir, CpuBackend::new(), &opts)
                    .map(|s| run(s, "cpu".into(), rx, &ready_tx, &counters)),
                "wgpu" => WgpuBackend::new(&WgpuConfig::default())
                    .map_err(|e| format!("--backend wgpu: {e}").into())
                    .and_then(|be| {
                        let name = format!("wgpu ({})", be.info());
                        be.compile_all();
                        session::open(&dir, be, &opts)
                            .map(|s| run(s, name, rx, &ready_tx, &counters))
                    }),
                other => Err(format!("--backend {other:?}: expected cpu or wgpu").into()),
            };
            if let Err(e) = started {
                let _ = ready_tx.send(Err(e.to_string()));
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(ready)) => Ok((tx, thread, ready)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e.into())
        }
        Err(_) => {
            let _ = thread.join();
            Err("the generation worker stopped while loading the model".into())
        }
    }
}

/// The worker's loop: until every sender is gone (the server has drained).
fn run<B: ComputeBackend>(
    mut s: ModelSession<B>,
    compute: String,
    mut rx: mpsc::Receiver<Request>,
    ready: &std::sync::mpsc::Sender<Result<Ready, String>>,
    counters: &Counters,
) {
    let _ = ready.send(Ok(Ready {
        ctx: s.ctx(),
        vocab: s.model().config.vocab_size,
        compute,
    }));
    while let Some(req) = rx.blocking_recv() {
        if req.events.is_closed() {
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counters.busy.store(true, Ordering::Relaxed);
        let ev = &req.events;
        let mut on_text = |_id: Option<u32>, delta: &str| {
            if delta.is_empty() {
                return if ev.is_closed() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                };
            }
            match ev.blocking_send(Event::Text(delta.to_string())) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        };
        match s.generate(&req.job, &mut on_text) {
            Ok(o) if o.finish == Finish::Cancelled => {
                counters.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "client went away: generation stopped after {} tokens",
                    o.completion_tokens
                );
            }
            Ok(o) => {
                counters.completed.fetch_add(1, Ordering::Relaxed);
                let _ = ev.blocking_send(Event::Done(o));
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("generation failed: {e}");
                let _ = ev.blocking_send(Event::Failed(e.to_string()));
            }
        }
        counters.busy.store(false, Ordering::Relaxed);
    }
}
