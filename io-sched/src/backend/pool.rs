//! A small pool of worker threads performing blocking reads, shared by [`super::pread`] and
//! [`super::mmap`].
//!
//! Jobs go to the workers over one channel; completions come back over another that also
//! carries `Wake` messages, so a blocked [`WorkerPool::reap`] returns when the waker is called.
//! Dropping the pool closes the job channel and joins the workers after every queued job ran,
//! so no worker writes into a buffer after the drop returns.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use super::{BackendWaker, Completion, ReadOp};

/// What a pool worker does with one op: a blocking read into `op.buf`.
pub(crate) trait BlockingRead: Send + Sync + 'static {
    /// Checks an op before it is queued (file index, bounds that are known up front).
    fn check(&self, op: &ReadOp) -> io::Result<()>;

    /// Reads `op`. Called on a worker thread.
    ///
    /// # Safety
    /// `op.buf` must be valid for writes of `op.len` bytes and not accessed by anyone else.
    unsafe fn read(&self, op: &ReadOp) -> io::Result<usize>;
}

enum Msg {
    Done(Completion),
    Wake,
}

/// Worker threads, a job queue and a completion queue.
pub(crate) struct WorkerPool {
    jobs: Option<Sender<ReadOp>>,
    done: Receiver<Msg>,
    done_tx: Sender<Msg>,
    wake_pending: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    reader: Arc<dyn BlockingRead>,
    in_flight: usize,
    max_in_flight: usize,
}

impl WorkerPool {
    /// Starts `threads` workers named `{name}-{i}`, accepting up to `threads` reads in flight
    /// (so every accepted read has a worker and none waits behind another in a hidden queue).
    pub(crate) fn new(
        name: &str,
        threads: usize,
        reader: Arc<dyn BlockingRead>,
    ) -> io::Result<Self> {
        if threads == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a worker pool needs at least one thread",
            ));
        }
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<ReadOp>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<Msg>();
        let mut pool = WorkerPool {
            jobs: Some(jobs_tx),
            done: done_rx,
            done_tx: done_tx.clone(),
            wake_pending: Arc::new(AtomicBool::new(false)),
            workers: Vec::with_capacity(threads),
            reader: reader.clone(),
            in_flight: 0,
            max_in_flight: threads,
        };
        for i in 0..threads {
            let jobs = jobs_rx.clone();
            let done = done_tx.clone();
            let reader = reader.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(jobs, done, reader))?;
            // On a spawn error, `pool` drops here: the job channel closes and the workers
            // already started are joined.
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    pub(crate) fn threads(&self) -> usize {
        self.workers.len()
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `op` for a worker.
    ///
    /// # Safety
    /// As [`super::ReadBackend::submit`].
    pub(crate) unsafe fn submit(&mut self, op: ReadOp) -> io::Result<()> {
        if self.in_flight >= self.max_in_flight {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} reads in flight: reap before submitting more",
                    self.in_flight
                ),
            ));
        }
        self.reader.check(&op)?;
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("worker pool is shut down"))?;
        jobs.send(op)
            .map_err(|_| io::Error::other("worker pool threads have exited"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// As [`super::ReadBackend::reap`].
    pub(crate) fn reap(
        &mut self,
        out: &mut Vec<Completion>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let before = out.len();
        let mut woken = false;
        // Drain whatever is ready without blocking.
        loop {
            match self.done.try_recv() {
                Ok(msg) => woken |= self.take(msg, out),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(disconnected()),
            }
        }
        if out.len() > before || woken || timeout == Some(Duration::ZERO) {
            return Ok(());
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let msg = match deadline {
            None => self.done.recv().map_err(|_| disconnected())?,
            Some(deadline) => match self.done.recv_deadline(deadline) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => return Ok(()),
                Err(RecvTimeoutError::Disconnected) => return Err(disconnected()),
            },
        };
        self.take(msg, out);
        // Pick up anything that finished meanwhile.
        while let Ok(msg) = self.done.try_recv() {
            self.take(msg, out);
        }
        Ok(())
    }

    /// Appends a completion or notes a wake; returns whether it was a wake.
    fn take(&mut self, msg: Msg, out: &mut Vec<Completion>) -> bool {
        match msg {
            Msg::Done(c) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                out.push(c);
                false
            }
            Msg::Wake => {
                self.wake_pending.store(false, Ordering::Release);
                true
            }
        }
    }

    /// A waker that sends one `Wake` (coalesced while one is pending).
    pub(crate) fn waker(&self) -> BackendWaker {
        let tx = self.done_tx.clone();
        let pending = self.wake_pending.clone();
        Arc::new(move || {
            if !pending.swap(true, Ordering::AcqRel) {
                // The pool may be gone; then there is nobody to wake.
                let _ = tx.send(Msg::Wake);
            }
        })
    }
}

fn disconnected() -> io::Error {
    io::Error::other("worker pool completion channel closed")
}

fn worker(jobs: Receiver<ReadOp>, done: Sender<Msg>, reader: Arc<dyn BlockingRead>) {
    // `recv` keeps returning queued jobs after the sender is dropped, so every accepted job runs.
    while let Ok(op) = jobs.recv() {
        // SAFETY: `op` was accepted by `WorkerPool::submit`, whose contract makes the submitter
        // keep `op.buf` valid and unaliased until its completion is reaped or the pool dropped;
        // the pool's drop joins this thread, so the read ends before either.
        let result = unsafe { reader.read(&op) };
        let _ = done.send(Msg::Done(Completion {
            tag: op.tag,
            result,
        }));
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Closing the job channel lets each worker finish the queued jobs, then exit.
        self.jobs = None;
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a read worker panicked");
            }
        }
    }
}
