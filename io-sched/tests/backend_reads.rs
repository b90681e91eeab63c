//! Every backend returns exactly the right bytes, under shallow and deep queues, and its
//! waker interrupts a blocking reap.

mod backend_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backend_common::{Arena, Fixture, read_all_and_check};
use io_sched::backend::files::{DirectMode, OpenFiles};
use io_sched::backend::mmap::MmapBackend;
use io_sched::backend::pread::PreadBackend;
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::backend::{BackendKind, Completion, ReadBackend, ReadOp};

fn fixture() -> Fixture {
    // 4 layers x 24 experts, records up to 300 KiB: ~14 MiB.
    Fixture::new(None, 4, 24, 300 << 10, 7)
}

fn check_backend(backend: &mut dyn ReadBackend, fx: &Fixture, depths: &[usize]) {
    let arena = Arena::new(&fx.layout);
    for &depth in depths {
        let n = read_all_and_check(backend, &arena, depth, 2);
        assert!(n >= 2 * 96, "{} completions", n);
    }
}

#[cfg(target_os = "linux")]
mod uring {
    use super::*;
    use io_sched::backend::uring::{RegisterBuffers, UringBackend, UringConfig};

    fn uring(fx: &Fixture, qd: u32, reg: RegisterBuffers) -> UringBackend {
        let files = Arc::new(OpenFiles::open(&fx.layout, DirectMode::Auto).expect("open"));
        UringBackend::new(
            files,
            UringConfig {
                queue_depth: qd,
                register_buffers: reg,
            },
        )
        .expect("io_uring should start on this kernel")
    }

    #[test]
    fn uring_reads_right_bytes_unregistered() {
        let fx = fixture();
        let mut b = uring(&fx, 32, RegisterBuffers::Off);
        assert!(b.direct(), "{}", b.describe());
        check_backend(&mut b, &fx, &[1, 8, 32]);
    }

    #[test]
    fn uring_reads_right_bytes_with_registered_buffers_deep_queue() {
        let fx = fixture();
        let arena = Arena::new(&fx.layout);
        let mut b = uring(&fx, 256, RegisterBuffers::Auto);
        // SAFETY: `arena` outlives `b` (declared before it, dropped after it).
        let registered = unsafe { b.register_memory(arena.buf.ptr(), arena.buf.len()) }.unwrap();
        // As root with CAP_IPC_LOCK this registers; elsewhere it falls back with a reason.
        if registered {
            assert!(
                b.describe().contains("registered-buffers"),
                "{}",
                b.describe()
            );
        } else {
            println!("buffers not registered: {:?}", b.fallbacks());
            assert!(!b.fallbacks().is_empty());
        }
        for depth in [4, 64, 256] {
            read_all_and_check(&mut b, &arena, depth, 2);
        }
        // A null registration withdraws the earlier one (what lets a caller free its memory
        // before the backend goes), and reads still work, unregistered.
        // SAFETY: nothing is registered by this call.
        let again = unsafe { b.register_memory(std::ptr::null_mut(), 0) }.unwrap();
        assert!(!again && !b.buffers_registered(), "{}", b.describe());
        read_all_and_check(&mut b, &arena, 4, 2);
        drop(b);
    }

    #[test]
    fn uring_accepts_any_tag_and_reports_each_once() {
        let fx = fixture();
        let mut b = uring(&fx, 8, RegisterBuffers::Off);
        let buf = backend_common::AlignedBuf::new(2 << 20);
        let tags = [u64::MAX, u64::MAX - 1, 0, 42];
        let loc = *fx.layout.get(io_sched::ExpertKey::new(0, 0)).unwrap();
        for (i, &tag) in tags.iter().enumerate() {
            let op = ReadOp {
                tag,
                file: 0,
                offset: loc.offset,
                len: 4096,
                buf: buf.at(i * 4096),
            };
            // SAFETY: distinct 4096-byte pieces of `buf`, which outlives `b`.
            unsafe { b.submit(op) }.unwrap();
        }
        b.flush().unwrap();
        let mut got: Vec<u64> = backend_common::reap_n(&mut b, tags.len())
            .into_iter()
            .map(|c| {
                assert_eq!(c.result.unwrap(), 4096);
                c.tag
            })
            .collect();
        got.sort_unstable();
        let mut want = tags.to_vec();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(b.in_flight(), 0);
        // Bad file index is refused at submit.
        let bad = ReadOp {
            tag: 1,
            file: 9,
            offset: 0,
            len: 4096,
            buf: buf.ptr(),
        };
        // SAFETY: refused before any I/O.
        assert!(unsafe { b.submit(bad) }.is_err());
        drop(b);
    }

    #[test]
    fn uring_waker_interrupts_reap() {
        let fx = fixture();
        let b = uring(&fx, 8, RegisterBuffers::Off);
        waker_interrupts(Box::new(b));
    }
}

#[test]
fn pread_direct_reads_right_bytes() {
    let fx = fixture();
    let files = Arc::new(OpenFiles::open(&fx.layout, DirectMode::Require).expect("O_DIRECT"));
    let mut b = PreadBackend::new(files, 16).unwrap();
    assert!(b.direct());
    check_backend(&mut b, &fx, &[1, 16]);
}

#[test]
fn pread_buffered_reads_right_bytes() {
    let fx = fixture();
    let files = Arc::new(OpenFiles::open(&fx.layout, DirectMode::Off).unwrap());
    let mut b = PreadBackend::new(files, 4).unwrap();
    assert!(!b.direct());
    assert!(b.describe().contains("buffered"), "{}", b.describe());
    check_backend(&mut b, &fx, &[1, 4]);
}

#[test]
fn mmap_reads_right_bytes_and_checks_bounds() {
    let fx = fixture();
    let mut b = MmapBackend::open(&fx.layout, 8).unwrap();
    assert!(!b.direct());
    check_backend(&mut b, &fx, &[1, 8]);

    // Past the end: short, then 0; bad file index refused.
    let size = fx.bytes.len() as u64;
    let buf = backend_common::AlignedBuf::new(8192);
    let ops = [(1, size - 100, 8192), (2, size + 4096, 4096)];
    for (tag, offset, len) in ops {
        let op = ReadOp {
            tag,
            file: 0,
            offset,
            len,
            buf: buf.ptr(),
        };
        // SAFETY: `buf` holds 8192 bytes and outlives `b`; one read at a time.
        unsafe { b.submit(op) }.unwrap();
        let c = backend_common::reap_n(&mut b, 1).remove(0);
        assert_eq!(c.tag, tag);
        assert_eq!(c.result.unwrap(), if tag == 1 { 100 } else { 0 });
    }
    assert_eq!(buf.slice(0, 100), &fx.bytes[(size - 100) as usize..]);
    let bad = ReadOp {
        tag: 3,
        file: 1,
        offset: 0,
        len: 1,
        buf: buf.ptr(),
    };
    // SAFETY: refused before any I/O.
    assert!(unsafe { b.submit(bad) }.is_err());
}

#[test]
fn every_kind_through_the_selector() {
    let fx = fixture();
    let kinds: &[BackendKind] = if cfg!(target_os = "linux") {
        &[BackendKind::IoUring, BackendKind::Pread, BackendKind::Mmap]
    } else {
        &[BackendKind::Pread, BackendKind::Mmap]
    };
    for &kind in kinds {
        let cfg = BackendConfig::default().kind(Some(kind)).threads(Some(6));
        let mut opened = open_backend(&fx.layout, &cfg).unwrap();
        assert_eq!(opened.backend.kind(), kind);
        println!("{kind:?}: {}", opened.backend.describe());
        check_backend(opened.backend.as_mut(), &fx, &[32]);
    }
    // Automatic choice.
    let opened = open_backend(&fx.layout, &BackendConfig::default()).unwrap();
    if cfg!(target_os = "linux") {
        assert_eq!(opened.backend.kind(), BackendKind::IoUring, "{opened:?}");
    }
}

/// Reap blocks until another thread calls the waker, then returns with nothing; a wake sent
/// before reap is not lost.
fn waker_interrupts(mut b: Box<dyn ReadBackend>) {
    let called = Arc::new(AtomicBool::new(false));
    let waker = b.waker();
    let (c2, w2) = (called.clone(), waker.clone());
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        c2.store(true, Ordering::SeqCst);
        w2();
    });
    let mut out: Vec<Completion> = Vec::new();
    let start = Instant::now();
    // Loop over spurious returns (allowed), stop once the waker was called.
    while !called.load(Ordering::SeqCst) {
        b.reap(&mut out, Some(Duration::from_secs(300))).unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(300),
        "reap ignored the waker"
    );
    assert!(out.is_empty());
    t.join().unwrap();

    // A wake before the reap makes the next blocking reap return.
    waker();
    b.reap(&mut out, Some(Duration::from_secs(300))).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(300),
        "wake before reap was lost"
    );
    // Polling with nothing in flight returns at once.
    b.reap(&mut out, Some(Duration::ZERO)).unwrap();
    assert!(out.is_empty());
    // A short timeout with nothing to do returns.
    b.reap(&mut out, Some(Duration::from_millis(20))).unwrap();
    assert!(out.is_empty());
    // A waker that outlives its backend is harmless.
    drop(b);
    waker();
}

#[test]
fn pread_waker_interrupts_reap() {
    let fx = fixture();
    let files = Arc::new(OpenFiles::open(&fx.layout, DirectMode::Auto).unwrap());
    waker_interrupts(Box::new(PreadBackend::new(files, 2).unwrap()));
}

#[test]
fn mmap_waker_interrupts_reap() {
    let fx = fixture();
    waker_interrupts(Box::new(MmapBackend::open(&fx.layout, 2).unwrap()));
}
