//! A backend over in-memory file images: for tests, examples and models that fit in RAM.
//! Reads complete at the next `reap`, in submission order.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{BackendKind, BackendWaker, Completion, ReadBackend, ReadOp};

/// Serves reads from byte images of the layout's files.
pub struct MemoryBackend {
    files: Vec<Arc<[u8]>>,
    done: VecDeque<Completion>,
    max_in_flight: usize,
    wake: Arc<(Mutex<bool>, Condvar)>,
}

impl MemoryBackend {
    /// `files[i]` is the content of the layout's file `i`.
    pub fn new(files: Vec<Arc<[u8]>>, max_in_flight: usize) -> Self {
        Self {
            files,
            done: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
            wake: Arc::new((Mutex::new(false), Condvar::new())),
        }
    }
}

impl ReadBackend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Mmap
    }
    fn describe(&self) -> String {
        format!("memory ({} files)", self.files.len())
    }
    fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
    fn direct(&self) -> bool {
        false
    }

    unsafe fn submit(&mut self, op: ReadOp) -> io::Result<()> {
        let file = self.files.get(op.file as usize).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("no file {}", op.file))
        })?;
        let start = (op.offset as usize).min(file.len());
        let n = op.len.min(file.len() - start);
        // SAFETY: the caller guarantees `op.buf` is valid for `op.len` writes and unaliased;
        // `n <= op.len` and `start + n <= file.len()`.
        unsafe { std::ptr::copy_nonoverlapping(file.as_ptr().add(start), op.buf, n) };
        self.done.push_back(Completion {
            tag: op.tag,
            result: Ok(n),
        });
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>, timeout: Option<Duration>) -> io::Result<()> {
        if !self.done.is_empty() {
            out.extend(self.done.drain(..));
            return Ok(());
        }
        if timeout == Some(Duration::ZERO) {
            return Ok(());
        }
        let (flag, cv) = &*self.wake;
        let mut woken = flag.lock();
        let deadline = timeout.map(|t| Instant::now() + t);
        while !*woken {
            match deadline {
                Some(d) => {
                    if cv.wait_until(&mut woken, d).timed_out() {
                        break;
                    }
                }
                None => cv.wait(&mut woken),
            }
        }
        *woken = false;
        Ok(())
    }

    fn waker(&self) -> BackendWaker {
        let wake = self.wake.clone();
        Arc::new(move || {
            let (flag, cv) = &*wake;
            *flag.lock() = true;
            cv.notify_one();
        })
    }
}
