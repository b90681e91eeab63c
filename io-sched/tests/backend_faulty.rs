//! The fault injector (EIO, short reads, delays, the submit log) and drop semantics: dropping
//! a backend with reads in flight returns only after they completed.

mod backend_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backend_common::{AlignedBuf, Arena, Fixture, reap_n, submit_record};
use io_sched::ExpertKey;
use io_sched::backend::faulty::{Fault, FaultyBackend, Target};
use io_sched::backend::files::{DirectMode, OpenFiles};
use io_sched::backend::pread::PreadBackend;
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::backend::{Completion, ReadBackend};
use io_sched::checksum::checksum;

fn fixture() -> Fixture {
    Fixture::new(None, 3, 8, 200 << 10, 5)
}

fn pread(fx: &Fixture, threads: usize) -> Box<dyn ReadBackend> {
    let files = Arc::new(OpenFiles::open(&fx.layout, DirectMode::Auto).unwrap());
    Box::new(PreadBackend::new(files, threads).unwrap())
}

fn inner_kinds(fx: &Fixture) -> Vec<Box<dyn ReadBackend>> {
    let mut v = vec![pread(fx, 4)];
    if cfg!(target_os = "linux") {
        let cfg = BackendConfig::default().kind(Some(io_sched::backend::BackendKind::IoUring));
        v.push(open_backend(&fx.layout, &cfg).unwrap().backend);
    }
    v
}

#[test]
fn eio_completes_with_error_without_reading_then_is_used_up() {
    let fx = fixture();
    for inner in inner_kinds(&fx) {
        let key = ExpertKey::new(1, 3);
        let mut b = FaultyBackend::new(inner, &fx.layout)
            .with_rule(Target::Expert(key), Fault::Eio { times: 1 });
        let buf = AlignedBuf::new(fx.layout.max_read_len() as usize);
        // SAFETY: `buf` is big enough and outlives `b`; one read at a time.
        unsafe { submit_record(&mut b, &fx.layout, key, buf.ptr(), 1) };
        let c = reap_n(&mut b, 1).remove(0);
        assert_eq!(c.tag, 1);
        assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(
            buf.slice(0, 4096).iter().all(|&x| x == 0),
            "EIO read wrote bytes"
        );
        // Used up: the retry succeeds with the right bytes.
        // SAFETY: as above.
        unsafe { submit_record(&mut b, &fx.layout, key, buf.ptr(), 2) };
        b.flush().unwrap();
        let c = reap_n(&mut b, 1).remove(0);
        assert!(c.result.unwrap() >= fx.record(key).len());
        assert_eq!(buf.slice(0, fx.record(key).len()), fx.record(key));
        assert_eq!(b.in_flight(), 0);
    }
}

#[test]
fn short_reads_are_short_and_retries_of_the_rest_still_match_the_expert() {
    let fx = fixture();
    // Pick a record of layer 2 longer than 8 KiB.
    let key = (0..8)
        .map(|e| ExpertKey::new(2, e))
        .find(|&k| fx.layout.get(k).unwrap().read_len() > 8192)
        .expect("a record > 8 KiB");
    let loc = *fx.layout.get(key).unwrap();
    for inner in inner_kinds(&fx) {
        let mut b = FaultyBackend::new(inner, &fx.layout).with_rule(
            Target::Layer(2),
            Fault::ShortRead {
                max_bytes: 4096,
                times: 2,
            },
        );
        let log = b.log();
        let buf = AlignedBuf::new(loc.read_len() as usize);
        // SAFETY: `buf` holds the record and outlives `b`.
        unsafe { submit_record(&mut b, &fx.layout, key, buf.ptr(), 10) };
        b.flush().unwrap();
        let n = reap_n(&mut b, 1).remove(0).result.unwrap();
        assert_eq!(n, 4096);
        // The retry of the rest is inside the same record: the second use applies.
        let rest = io_sched::backend::ReadOp {
            tag: 11,
            file: loc.file,
            offset: loc.offset + 4096,
            len: loc.read_len() as usize - 4096,
            buf: buf.at(4096),
        };
        // SAFETY: the rest of `buf`, which outlives `b`.
        unsafe { b.submit(rest) }.unwrap();
        b.flush().unwrap();
        assert_eq!(reap_n(&mut b, 1).remove(0).result.unwrap(), 4096);
        let entries = log.lock().clone();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e.key == Some(key)));
        assert!(matches!(entries[1].fault, Some(Fault::ShortRead { .. })));
        // Used up: the final read of the rest is whole, and the bytes are right.
        let rest = io_sched::backend::ReadOp {
            tag: 12,
            offset: loc.offset + 8192,
            len: loc.read_len() as usize - 8192,
            buf: buf.at(8192),
            ..rest
        };
        // SAFETY: as above.
        unsafe { b.submit(rest) }.unwrap();
        b.flush().unwrap();
        assert_eq!(
            reap_n(&mut b, 1).remove(0).result.unwrap(),
            loc.read_len() as usize - 8192
        );
        assert_eq!(checksum(buf.slice(0, loc.len as usize)), loc.checksum);
    }
}

#[test]
fn delays_hold_completions_until_their_deadline_and_the_waker_still_works() {
    let fx = fixture();
    for inner in inner_kinds(&fx) {
        let slow = ExpertKey::new(0, 1);
        let fast = ExpertKey::new(0, 2);
        let long = Duration::from_secs(120);
        let mut b = FaultyBackend::new(inner, &fx.layout)
            .with_rule(Target::Expert(slow), Fault::Delay(long));
        let bufs = [
            AlignedBuf::new(fx.layout.max_read_len() as usize),
            AlignedBuf::new(fx.layout.max_read_len() as usize),
        ];
        let submitted = Instant::now();
        // SAFETY: distinct buffers that outlive `b`.
        unsafe {
            submit_record(&mut b, &fx.layout, slow, bufs[0].ptr(), 1);
            submit_record(&mut b, &fx.layout, fast, bufs[1].ptr(), 2);
        }
        b.flush().unwrap();
        // The undelayed read comes back; the delayed one does not before its deadline.
        let c = reap_n(&mut b, 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].tag, 2);
        let mut out: Vec<Completion> = Vec::new();
        b.reap(&mut out, Some(Duration::from_millis(50))).unwrap();
        if submitted.elapsed() < long {
            assert!(out.is_empty(), "a delayed completion came early");
        }
        assert_eq!(b.in_flight(), 1);

        // The waker interrupts a reap that waits on a held completion.
        let waker = b.waker();
        let called = Arc::new(AtomicBool::new(false));
        let c2 = called.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.store(true, Ordering::SeqCst);
            waker();
        });
        while !called.load(Ordering::SeqCst) {
            b.reap(&mut out, None).unwrap();
        }
        t.join().unwrap();
        if submitted.elapsed() < long {
            assert!(out.is_empty());
        }
        // Dropping with a held completion returns (the inner read is already done).
        drop(b);
        assert_eq!(bufs[0].slice(0, fx.record(slow).len()), fx.record(slow));
    }
}

#[test]
fn a_delayed_completion_arrives_no_earlier_than_its_deadline() {
    let fx = fixture();
    let delay = Duration::from_millis(150);
    let mut b =
        FaultyBackend::new(pread(&fx, 2), &fx.layout).with_rule(Target::Any, Fault::Delay(delay));
    let log = b.log();
    let buf = AlignedBuf::new(fx.layout.max_read_len() as usize);
    let key = ExpertKey::new(2, 5);
    // SAFETY: `buf` outlives `b`.
    unsafe { submit_record(&mut b, &fx.layout, key, buf.ptr(), 9) };
    let c = reap_n(&mut b, 1).remove(0);
    let at = log.lock()[0].at;
    // A lower bound the backend guarantees, not a speed assumption.
    assert!(at.elapsed() >= delay);
    assert!(c.result.unwrap() >= fx.record(key).len());
    assert_eq!(buf.slice(0, fx.record(key).len()), fx.record(key));
}

#[test]
fn the_log_records_every_submit_in_order() {
    let fx = fixture();
    let mut b = FaultyBackend::new(pread(&fx, 8), &fx.layout)
        .with_rule(Target::Layer(1), Fault::Eio { times: 100 });
    let log = b.log();
    let arena = Arena::new(&fx.layout);
    let order: Vec<usize> = vec![5, 0, 17, 9, 23, 2];
    for (i, &s) in order.iter().enumerate() {
        let (key, _, at) = arena.slots[s];
        // SAFETY: distinct arena slots; the arena outlives `b`.
        unsafe { submit_record(&mut b, &fx.layout, key, arena.buf.at(at), 100 + i as u64) };
    }
    b.flush().unwrap();
    let done = reap_n(&mut b, order.len());
    assert_eq!(done.len(), order.len());
    let entries = log.lock().clone();
    let tags: Vec<u64> = entries.iter().map(|e| e.tag).collect();
    assert_eq!(tags, (100..106).collect::<Vec<_>>());
    for (e, &s) in entries.iter().zip(&order) {
        let (key, loc, _) = arena.slots[s];
        assert_eq!(e.key, Some(key));
        assert_eq!(
            (e.file, e.offset, e.len),
            (loc.file, loc.offset, loc.read_len() as usize)
        );
        assert_eq!(e.fault.is_some(), key.layer == 1);
    }
    assert!(entries.windows(2).all(|w| w[0].at <= w[1].at));
    // Errors only for layer 1.
    for c in done {
        let s = order[(c.tag - 100) as usize];
        assert_eq!(c.result.is_err(), arena.slots[s].0.layer == 1);
    }
    // Rules can change while the backend is owned elsewhere.
    b.rules().clear();
    let (key, _, at) = arena.slots[9];
    // SAFETY: as above.
    unsafe { submit_record(&mut b, &fx.layout, key, arena.buf.at(at), 200) };
    assert!(reap_n(&mut b, 1).remove(0).result.is_ok());
}

/// Submits a read of every record, then drops the backend at once: when drop returns, every
/// buffer must hold its final bytes (no read may still be writing).
fn drop_waits(mut b: Box<dyn ReadBackend>, fx: &Fixture) {
    let arena = Arena::new(&fx.layout);
    let n = arena.slots.len().min(b.max_in_flight());
    for &(key, _, at) in &arena.slots[..n] {
        // SAFETY: distinct arena slots; the arena outlives `b`.
        unsafe { submit_record(b.as_mut(), &fx.layout, key, arena.buf.at(at), at as u64) };
    }
    b.flush().unwrap();
    assert_eq!(b.in_flight(), n);
    drop(b);
    // Fast check first, last submitted first: the reads most likely to be still running if
    // drop did not wait. Then the full checksums.
    for &(key, loc, at) in arena.slots[..n].iter().rev() {
        let len = loc.len as usize;
        let tail = len.saturating_sub(4096);
        assert_eq!(
            arena.buf.slice(at + tail, len - tail),
            &fx.record(key)[tail..],
            "{key:?} was not final after drop"
        );
    }
    for &(key, loc, at) in &arena.slots[..n] {
        assert_eq!(
            checksum(arena.buf.slice(at, loc.len as usize)),
            loc.checksum,
            "{key:?} was not final after drop"
        );
    }
}

#[test]
fn dropping_a_backend_waits_for_reads_in_flight() {
    // Big records so reads are still running when drop starts.
    let fx = Fixture::new(None, 2, 16, 8 << 20, 9);
    drop_waits(pread(&fx, 4), &fx);
    drop_waits(
        Box::new(io_sched::backend::mmap::MmapBackend::open(&fx.layout, 4).unwrap()),
        &fx,
    );
    if cfg!(target_os = "linux") {
        let cfg = BackendConfig::default().kind(Some(io_sched::backend::BackendKind::IoUring));
        drop_waits(open_backend(&fx.layout, &cfg).unwrap().backend, &fx);
    }
    // Through the fault injector, with every completion held back.
    let delayed = FaultyBackend::new(pread(&fx, 4), &fx.layout)
        .with_rule(Target::Any, Fault::Delay(Duration::from_secs(60)));
    drop_waits(Box::new(delayed), &fx);
}
