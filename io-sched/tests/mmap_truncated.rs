//! The mmap backend on a file truncated while mapped: reads past the new end complete with an
//! error (no `SIGBUS`), reads before it still return the right bytes; and the scheduler turns
//! that error into one naming layer, expert, file and offset.

mod backend_common;

use backend_common::{AlignedBuf, Fixture, reap_n, submit_record};
use io_sched::backend::ReadBackend;
use io_sched::backend::mmap::MmapBackend;
use io_sched::{ExpertKey, Scheduler, SchedulerConfig};

/// The fixture's keys in file order.
fn keys_by_offset(fx: &Fixture) -> Vec<ExpertKey> {
    let mut v: Vec<(u64, ExpertKey)> = fx.layout.iter().map(|(k, l)| (l.offset, k)).collect();
    v.sort();
    v.into_iter().map(|(_, k)| k).collect()
}

#[test]
fn truncated_file_gives_an_error_not_sigbus() {
    let fx = Fixture::new(None, 2, 4, 64 << 10, 3);
    let mut b = MmapBackend::open(&fx.layout, 2).expect("mmap backend");
    let keys = keys_by_offset(&fx);
    let (first, last) = (keys[0], *keys.last().expect("keys"));
    let cut = fx.layout.get(last).expect("last").offset;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fx.path)
        .expect("open")
        .set_len(cut)
        .expect("truncate");
    let buf = AlignedBuf::new(2 * (128 << 10));
    // SAFETY: two disjoint halves of `buf`, which outlives every read (all reaped below).
    unsafe {
        submit_record(&mut b, &fx.layout, last, buf.at(0), 1);
        submit_record(&mut b, &fx.layout, first, buf.at(128 << 10), 2);
    }
    b.flush().expect("flush");
    let mut done = reap_n(&mut b, 2);
    done.sort_by_key(|c| c.tag);
    let e = done[0]
        .result
        .as_ref()
        .expect_err("read past the truncation");
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    let n = *done[1].result.as_ref().expect("read before the truncation");
    let len = fx.record(first).len();
    assert!(n >= len, "short read {n} < {len}");
    assert_eq!(buf.slice(128 << 10, len), fx.record(first));
}

#[test]
fn scheduler_on_mmap_names_the_expert_of_a_truncated_record() {
    let fx = Fixture::new(None, 2, 4, 64 << 10, 5);
    let keys = keys_by_offset(&fx);
    let last = *keys.last().expect("keys");
    let backend = MmapBackend::open(&fx.layout, 2).expect("mmap backend");
    let sched = Scheduler::with_backend(
        fx.layout.clone(),
        SchedulerConfig::with_budget(8 << 20),
        Box::new(backend),
    )
    .expect("scheduler");
    let cut = fx.layout.get(last).expect("last").offset;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fx.path)
        .expect("open")
        .set_len(cut)
        .expect("truncate");
    let e = sched
        .acquire(last.layer, &[last.expert])
        .map(|_| ())
        .expect_err("a truncated record cannot be acquired")
        .to_string();
    assert!(
        e.contains(&format!("layer {}", last.layer))
            && e.contains(&format!("expert {}", last.expert)),
        "{e}"
    );
}
