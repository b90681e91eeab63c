//! The decode pool: fork/join over task indices in about a microsecond, for ops too small for
//! rayon's.
//!
//! A decode step is a few hundred small ops (a 256 x 512 projection is ~2 us of work on one
//! core). Rayon, called from a thread outside its pool, injects each op as a job and blocks the
//! caller on a latch until a worker has woken and run it: ~10-20 us an op, so small ops ran on
//! one thread and the second core idled. Here the caller takes part: it publishes the job,
//! runs its own contiguous range of the tasks (each thread has one, taken from its front;
//! a thread done with its own takes from the backs of the others', [`Ranges`]), and polls
//! until the helpers' tasks are done.
//! Helpers poll for the next job (a decode step's ops come microseconds apart): without
//! yielding for [`HOT_SPIN`], then yielding their core at each poll, and after [`SPIN`] they
//! park until a job wakes them. A helper done with its share of a job backs off the same way
//! and the caller yields while it waits, so on a machine with no spare core a helper that was
//! preempted on a task gets a core back (with every helper spinning hot, 16 threads on 16
//! cores ran decode at 0.4x rayon's).
//!
//! The pool has `FLASHMOE_THREADS` threads (else `RAYON_NUM_THREADS`, else the machine's
//! available parallelism); [`with_cpu_threads`] runs a closure on fewer. One job runs at a
//! time. A caller that finds the pool busy (another thread's op, or a task of
//! this pool calling in again) runs its tasks on its own thread: results never depend on which
//! thread ran a task, only the time does.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper polls before it parks.
const SPIN: Duration = Duration::from_micros(100);
/// How long of that it polls without yielding its core (past it, each poll yields first, so a
/// runnable thread such as io-sched's readers gets the core while the decode thread waits).
const HOT_SPIN: Duration = Duration::from_micros(5);

/// One op's tasks: `0..tasks`, split into one contiguous range per thread ([`Ranges`]).
struct Job<'a> {
    run: &'a (dyn Fn(usize) + Sync),
    /// Helpers `0..helpers` take part (the caller's [`with_cpu_threads`] cap, less itself).
    helpers: usize,
    ranges: &'a Ranges,
    done: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Runs worker `w`'s range from its front (the caller is worker 0, helper `i` worker
    /// `i + 1`), then takes tasks from the backs of the others' until none is left.
    fn work(&self, w: usize) {
        let workers = self.helpers + 1;
        let mut ran = 0;
        let mut run = |i: usize| {
            if catch_unwind(AssertUnwindSafe(|| (self.run)(i))).is_err() {
                self.panicked.store(true, SeqCst);
            }
            ran += 1;
        };
        while let Some(i) = self.ranges.take_front(w) {
            run(i);
        }
        for v in (1..workers).map(|d| (w + d) % workers) {
            while let Some(i) = self.ranges.take_back(v) {
                run(i);
            }
        }
        if ran > 0 {
            self.done.fetch_add(ran, SeqCst);
        }
    }
}

/// Each worker's range of a job's tasks, `front..back` packed in one word: its owner takes
/// tasks from the front, the others (once their own range is done) from the back. A matvec's
/// tasks are consecutive row chunks, so each thread reads one contiguous run of the matrix
/// that the hardware prefetchers follow; chunks claimed in turn from one shared counter (the
/// two threads' runs interleaved) read 0.85x as fast from DRAM (a C replica of the kernel:
/// 25.4-25.9 vs 29.2-30.2 GB/s on 2 threads, the rows split in halves).
struct Ranges(Box<[AtomicU64]>);

impl Ranges {
    fn new(workers: usize) -> Self {
        Ranges((0..workers).map(|_| AtomicU64::new(0)).collect())
    }

    fn pack(front: usize, back: usize) -> u64 {
        ((front as u64) << 32) | back as u64
    }

    fn unpack(v: u64) -> (usize, usize) {
        ((v >> 32) as usize, (v & u32::MAX as u64) as usize)
    }

    /// Splits `tasks` (below 2^32) evenly over the first `workers` ranges.
    fn reset(&self, tasks: usize, workers: usize) {
        for (w, r) in self.0.iter().take(workers).enumerate() {
            r.store(
                Self::pack(w * tasks / workers, (w + 1) * tasks / workers),
                SeqCst,
            );
        }
    }

    /// Claims one end of range `w`: the front (its owner) or the back (another worker).
    fn take(&self, w: usize, front_end: bool) -> Option<usize> {
        let r = &self.0[w];
        let mut cur = r.load(SeqCst);
        loop {
            let (f, b) = Self::unpack(cur);
            if f >= b {
                return None;
            }
            let (next, i) = if front_end {
                (Self::pack(f + 1, b), f)
            } else {
                (Self::pack(f, b - 1), b - 1)
            };
            match r.compare_exchange_weak(cur, next, SeqCst, SeqCst) {
                Ok(_) => return Some(i),
                Err(now) => cur = now,
            }
        }
    }

    fn take_front(&self, w: usize) -> Option<usize> {
        self.take(w, true)
    }

    fn take_back(&self, w: usize) -> Option<usize> {
        self.take(w, false)
    }
}

/// The pool's shared state (one per process).
struct Pool {
    /// The job being run, or null. Erased lifetime: see [`Pool::run`].
    job: AtomicPtr<Job<'static>>,
    /// Bumped after each job is published: helpers take part in each job once.
    epoch: AtomicU64,
    /// Helpers that have loaded `job` and may still touch it.
    active: AtomicUsize,
    /// Held by the caller whose job is published.
    owner: Mutex<()>,
    /// Helpers' handles, with whether each is parked (or about to park).
    helpers: OnceLock<Vec<(Thread, &'static AtomicBool)>>,
    /// The threads a job runs on: the caller and `threads - 1` helpers.
    threads: usize,
    /// The running job's ranges, one per thread (reset by the owner of each job).
    ranges: Ranges,
}

thread_local! {
    /// Whether this thread is one of the pool's helpers.
    static IS_HELPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The most threads this thread's ops run on ([`with_cpu_threads`]).
    static CAP: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// The threads the CPU backend splits an op over: `FLASHMOE_THREADS` when set, else
/// `RAYON_NUM_THREADS`, else the machine's available parallelism (read once, at the first op).
pub fn cpu_threads() -> usize {
    pool().threads
}

/// Runs `f` with the CPU backend's ops on this thread limited to `threads` threads (1: on this
/// thread alone), for measurements and tests.
pub fn with_cpu_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            CAP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CAP.with(|c| c.replace(threads.max(1))));
    f()
}

/// [`cpu_threads`] under this thread's [`with_cpu_threads`] cap.
pub(crate) fn threads() -> usize {
    pool().threads.min(CAP.with(|c| c.get()))
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let from_env = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n > 0)
        };
        let threads = from_env("FLASHMOE_THREADS")
            .or_else(|| from_env("RAYON_NUM_THREADS"))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Pool {
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            owner: Mutex::new(()),
            helpers: OnceLock::new(),
            threads,
            ranges: Ranges::new(threads),
        }
    });
    pool.helpers.get_or_init(|| {
        (1..pool.threads)
            .filter_map(|i| {
                let parked: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
                std::thread::Builder::new()
                    .name(format!("flashmoe-cpu-{i}"))
                    .spawn(move || helper(pool, i - 1, parked))
                    .ok()
                    .map(|h| (h.thread().clone(), parked))
            })
            .collect()
    });
    pool
}

/// Helper `index`'s loop: take part in each job published after the last one it saw; between
/// jobs (including while the rest of a job it is done with still runs) poll, yield, then park
/// ([`HOT_SPIN`], [`SPIN`]), so a thread it would crowd out, a helper still on a task among
/// them, gets a core.
fn helper(pool: &'static Pool, index: usize, parked: &'static AtomicBool) {
    IS_HELPER.with(|h| h.set(true));
    let mut seen = pool.epoch.load(SeqCst);
    let mut idle = Idle::new();
    loop {
        // Poll with plain loads (no write to a shared line while idle).
        let epoch = pool.epoch.load(SeqCst);
        if epoch != seen {
            seen = epoch;
            // Count this helper in `active`, then load the job: see `run` for why that order
            // keeps it alive.
            pool.active.fetch_add(1, SeqCst);
            let job = pool.job.load(SeqCst);
            if !job.is_null() {
                // SAFETY: a non-null `job` was loaded after `active` counted this helper, so
                // its caller, which nulls `job` and then waits for `active` to reach 0 before
                // its frame (where the job lives) ends, cannot have returned yet.
                let job = unsafe { &*job };
                if index < job.helpers {
                    job.work(index + 1);
                }
            }
            pool.active.fetch_sub(1, SeqCst);
            idle = Idle::new();
            continue;
        }
        if idle.wait() {
            parked.store(true, SeqCst);
            // A job published after the flag was set unparks this thread (the token makes a
            // wake-up before `park` count); one published before it is seen here.
            if pool.epoch.load(SeqCst) == seen {
                std::thread::park();
            }
            parked.store(false, SeqCst);
            idle = Idle::new();
        }
    }
}

/// A polling thread's back-off: spin for [`HOT_SPIN`], then yield the core at each poll until
/// [`SPIN`], then (for a helper) park.
struct Idle {
    since: Instant,
    polls: u32,
}

impl Idle {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            polls: 0,
        }
    }

    /// One poll's wait; true once the thread has polled for [`SPIN`].
    fn wait(&mut self) -> bool {
        self.polls = self.polls.wrapping_add(1);
        if !self.polls.is_multiple_of(16) {
            std::hint::spin_loop();
            return false;
        }
        let idle = self.since.elapsed();
        if idle > HOT_SPIN {
            std::thread::yield_now();
        }
        idle > SPIN
    }
}

/// Runs `task(i)` for every `i` in `0..tasks`, split over the pool's threads (the caller
/// included); returns when all have run. A task's panic panics the caller (once the other
/// threads are done with the job).
pub(crate) fn run(tasks: usize, task: impl Fn(usize) + Sync) {
    let pool = pool();
    let inline = || (0..tasks).for_each(&task);
    let threads = threads();
    if tasks <= 1 || threads <= 1 || IS_HELPER.with(|h| h.get()) {
        return inline();
    }
    if tasks >= u32::MAX as usize {
        return inline();
    }
    let Ok(_owner) = pool.owner.try_lock() else {
        return inline();
    };
    // Only the owner of the job slot writes the ranges, and no helper of the previous job is
    // still inside it (its caller waited for `active` to reach 0).
    pool.ranges.reset(tasks, threads);
    let job = Job {
        run: &task,
        helpers: threads - 1,
        ranges: &pool.ranges,
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    // The lifetime is erased for the slot; the wait below keeps `job` alive while any helper
    // can reach it.
    let ptr = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
    pool.job.store(ptr, SeqCst);
    pool.epoch.fetch_add(1, SeqCst);
    for (thread, parked) in pool.helpers.get().into_iter().flatten().take(threads - 1) {
        if parked.load(SeqCst) {
            thread.unpark();
        }
    }
    job.work(0);
    // The helpers' last tasks, then the helpers themselves (a preempted one gets the core
    // back sooner when this thread yields).
    let mut idle = Idle::new();
    while job.done.load(SeqCst) < tasks {
        idle.wait();
    }
    pool.job.store(std::ptr::null_mut(), SeqCst);
    while pool.active.load(SeqCst) > 0 {
        idle.wait();
    }
    if job.panicked.load(SeqCst) {
        panic!("a task of the CPU backend's decode pool panicked");
    }
}

/// Splits `out` into chunks of `chunk` items (the last may be shorter) and runs
/// `task(index, chunk)` for each on the pool.
pub(crate) fn for_chunks<T: Send>(
    out: &mut [T],
    chunk: usize,
    task: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let len = out.len();
    let parts = Disjoint::new(out);
    run(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        // SAFETY: task `i` alone takes chunk `i`; the chunks are disjoint.
        task(i, unsafe { parts.range(start..(start + chunk).min(len)) })
    });
}

/// The chunk (a multiple of `unit` items, within `min_chunk..=max_chunk` where they allow)
/// that splits `len` items into about [`TASKS_PER_THREAD`] tasks per thread: enough to even
/// out the threads, few enough that claiming a task (an atomic on a shared line) stays a small
/// share of the work; `max_chunk` keeps a large op's tasks short, so a thread that loses its
/// core for a while leaves little for the others to wait on at the end.
pub(crate) fn chunk_for(len: usize, min_chunk: usize, max_chunk: usize, unit: usize) -> usize {
    let unit = unit.max(1);
    let target = len.div_ceil(threads() * TASKS_PER_THREAD);
    target.min(max_chunk).max(min_chunk).div_ceil(unit) * unit
}

/// Tasks per thread that [`chunk_for`] aims at.
const TASKS_PER_THREAD: usize = 8;

/// A slice the pool's tasks share, each taking its own disjoint ranges of it.
pub(crate) struct Disjoint<'a, T> {
    base: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

impl<'a, T: Send> Disjoint<'a, T> {
    /// Shares `items` (borrowed mutably for as long as this lives).
    pub(crate) fn new(items: &'a mut [T]) -> Self {
        Self {
            base: items.as_mut_ptr(),
            len: items.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// Items `range` (checked against the slice's length).
    ///
    /// # Safety
    /// No other live reference (from another call or another task) overlaps `range`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, range: std::ops::Range<usize>) -> &'a mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted) of a slice borrowed mutably for `'a`; the caller
        // guarantees no other reference overlaps it.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(range.start), range.len()) }
    }
}

// SAFETY: the tasks that share it only reach disjoint ranges (the contract of `range`) of
// items that may be sent between threads.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for tasks in [0usize, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            run(tasks, |i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{tasks} tasks");
        }
    }

    /// Each worker's range is contiguous and taken from its front; the others take from its
    /// back; every task is handed out exactly once, also when four threads race for them.
    #[test]
    fn ranges_hand_out_contiguous_fronts_and_steal_from_the_back() {
        let r = Ranges::new(3);
        r.reset(10, 3);
        assert_eq!(
            std::iter::from_fn(|| r.take_front(0)).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(r.take_back(2), Some(9));
        assert_eq!(r.take_front(2), Some(6));
        assert_eq!(
            std::iter::from_fn(|| r.take_back(2)).collect::<Vec<_>>(),
            [8, 7]
        );
        assert_eq!(r.take_front(2), None);
        assert_eq!(r.take_front(1), Some(3));

        let tasks = 10_000;
        let r = Ranges::new(4);
        r.reset(tasks, 4);
        let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
        std::thread::scope(|sc| {
            for w in 0..4 {
                let (r, hits) = (&r, &hits);
                sc.spawn(move || {
                    let mut last = None;
                    while let Some(i) = r.take_front(w) {
                        assert!(
                            last.is_none_or(|l| i == l + 1),
                            "the front moves one by one"
                        );
                        last = Some(i);
                        hits[i].fetch_add(1, SeqCst);
                    }
                    for v in (1..4).map(|d| (w + d) % 4) {
                        while let Some(i) = r.take_back(v) {
                            hits[i].fetch_add(1, SeqCst);
                        }
                    }
                });
            }
        });
        assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
    }

    #[test]
    fn one_thread_runs_every_task_on_the_caller() {
        let me = std::thread::current().id();
        let elsewhere = AtomicUsize::new(0);
        with_cpu_threads(1, || {
            assert_eq!(threads(), 1);
            run(64, |_| {
                if std::thread::current().id() != me {
                    elsewhere.fetch_add(1, SeqCst);
                }
            })
        });
        assert_eq!(elsewhere.load(SeqCst), 0);
        assert_eq!(threads(), cpu_threads());
    }

    #[test]
    fn chunks_cover_the_slice_in_order() {
        let mut out = vec![0usize; 103];
        for_chunks(&mut out, 10, |i, part| {
            for (j, o) in part.iter_mut().enumerate() {
                *o = i * 10 + j;
            }
        });
        assert_eq!(out, (0..103).collect::<Vec<_>>());
    }

    #[test]
    fn nested_and_concurrent_calls_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        run(8, |_| {
                            run(4, |_| {
                                total.fetch_add(1, SeqCst);
                            })
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 4 * 200 * 8 * 4);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_still_works() {
        let r = catch_unwind(AssertUnwindSafe(|| run(16, |i| assert!(i != 5, "task 5"))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        run(9, |_| {
            n.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 9);
    }
}
