//! The C functions called from Rust: a layout built record by record, NULL and bad arguments,
//! the `scores` predictor prefetching through a session, `ready`, metrics; the `blend`
//! predictor with `next-use` eviction.

use std::ffi::{CStr, CString};
use std::ptr;

use flashmoe_io_sched_capi::error::fmio_last_error;
use flashmoe_io_sched_capi::layout::*;
use flashmoe_io_sched_capi::options::*;
use flashmoe_io_sched_capi::session::*;
use flashmoe_io_sched_capi::{FMIO_ALL_LAYERS, FmioMetrics, FmioStatus, fmio_checksum};

const LAYERS: u32 = 2;
const EXPERTS: u32 = 4;
const REC: usize = 8192;

fn last_error() -> String {
    let p = fmio_last_error();
    assert!(!p.is_null());
    // SAFETY: non-NULL and valid until the next failing call on this thread.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A file of `LAYERS x EXPERTS` records of `REC` bytes, record `i` filled with `i`, described
/// through the builder functions.
fn built_layout(dir: &std::path::Path) -> *mut FmioLayout {
    let path = dir.join("experts.bin");
    let mut image = vec![0u8; (LAYERS * EXPERTS) as usize * REC];
    for (i, rec) in image.chunks_mut(REC).enumerate() {
        rec.fill(i as u8);
    }
    std::fs::write(&path, &image).unwrap();
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let mut b = ptr::null_mut();
    let mut layout = ptr::null_mut();
    // SAFETY: every pointer is live and writable; the builder is used by this thread alone.
    unsafe {
        assert_eq!(
            fmio_layout_builder_new(LAYERS, EXPERTS, &mut b),
            FmioStatus::Ok
        );
        let mut file = u32::MAX;
        assert_eq!(
            fmio_layout_builder_add_file(b, cpath.as_ptr(), &mut file),
            FmioStatus::Ok
        );
        for i in 0..LAYERS * EXPERTS {
            let bytes = &image[i as usize * REC..][..REC];
            let st = fmio_layout_builder_set(
                b,
                i / EXPERTS,
                i % EXPERTS,
                file,
                i as u64 * REC as u64,
                REC as u64,
                fmio_checksum(bytes.as_ptr(), bytes.len()),
            );
            assert_eq!(st, FmioStatus::Ok);
        }
        // Out-of-range keys are refused at once, not left for build to report as missing.
        let st = fmio_layout_builder_set(b, LAYERS, 0, file, 0, REC as u64, 0);
        assert_eq!(st, FmioStatus::UnknownExpert);
        assert!(
            last_error().contains("layer 2 expert 0"),
            "{}",
            last_error()
        );
        assert_eq!(fmio_layout_builder_build(b, &mut layout), FmioStatus::Ok);
        // A used-up builder says so.
        assert_eq!(
            fmio_layout_builder_build(b, &mut layout),
            FmioStatus::InvalidArgument
        );
        assert!(last_error().contains("already built"), "{}", last_error());
        fmio_layout_builder_free(b);
        // A count that would allocate without bound is refused.
        let mut huge = ptr::null_mut();
        assert_eq!(
            fmio_layout_builder_new(u32::MAX, u32::MAX, &mut huge),
            FmioStatus::InvalidArgument
        );
        assert!(huge.is_null());
    }
    layout
}

#[test]
fn scores_predictor_prefetches_and_guards_hold_the_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let layout = built_layout(dir.path());
    // SAFETY: all handles are live, used as documented, and freed once at the end.
    unsafe {
        assert_eq!(fmio_layout_num_layers(layout), LAYERS);
        let mut rec = FmioRecord::default();
        assert_eq!(fmio_layout_record(layout, 1, 2, &mut rec), FmioStatus::Ok);
        assert_eq!((rec.offset, rec.len), (6 * REC as u64, REC as u64));
        let p = CStr::from_ptr(fmio_layout_file_path(layout, rec.file));
        assert!(p.to_str().unwrap().ends_with("experts.bin"));
        assert!(fmio_layout_file_path(layout, 9).is_null());

        let mut opts = ptr::null_mut();
        assert_eq!(fmio_options_new(&mut opts), FmioStatus::Ok);
        let name = CString::new("scores").unwrap();
        assert_eq!(
            fmio_options_set_predictor(opts, name.as_ptr()),
            FmioStatus::Ok
        );
        assert_eq!(
            fmio_options_set_budget_bytes(opts, 4 * REC as u64),
            FmioStatus::Ok
        );
        assert_eq!(fmio_options_set_prefetch(opts, 1, 2), FmioStatus::Ok);
        let pread = CString::new("pread").unwrap();
        assert_eq!(
            fmio_options_set_backend(opts, pread.as_ptr()),
            FmioStatus::Ok
        );
        let mut s = ptr::null_mut();
        assert_eq!(fmio_session_open(layout, opts, &mut s), FmioStatus::Ok);
        fmio_options_free(opts);
        let backend = CStr::from_ptr(fmio_session_backend(s)).to_str().unwrap();
        assert!(backend.starts_with("pread"), "{backend}");
        let (mut slots, mut size, mut budget) = (0usize, 0usize, 0u64);
        assert_eq!(
            fmio_session_capacity(s, &mut slots, &mut size, &mut budget),
            FmioStatus::Ok
        );
        assert_eq!((slots, size, budget), (4, REC, 4 * REC as u64));

        // Pre-gate scores for layer 1 say experts 3 and 1; acquiring layer 0 hints them.
        let scores = [0.0f32, 0.7, 0.1, 0.9];
        assert_eq!(
            fmio_session_scores(s, 1, scores.as_ptr(), 4),
            FmioStatus::Ok
        );
        let mut g = ptr::null_mut();
        assert_eq!(
            fmio_session_acquire(s, 0, [2u32].as_ptr(), 1, &mut g),
            FmioStatus::Ok
        );
        let mut b = std::mem::zeroed::<FmioExpertBytes>();
        assert_eq!(fmio_guard_get(g, 0, &mut b), FmioStatus::Ok);
        let bytes = std::slice::from_raw_parts(b.data, b.len as usize);
        assert!(b.expert == 2 && bytes.iter().all(|&x| x == 2));
        assert_eq!(fmio_guard_get(g, 1, &mut b), FmioStatus::InvalidArgument);
        fmio_guard_release(g);

        // The hinted experts arrive without a demand; `ready` pins what is there.
        let want = [3u32, 1, 0];
        let mut ready_count = 0;
        for _ in 0..2000 {
            let mut r = ptr::null_mut();
            assert_eq!(
                fmio_session_ready(s, 1, want.as_ptr(), 3, &mut r),
                FmioStatus::Ok
            );
            ready_count = fmio_guard_count(r);
            fmio_guard_release(r);
            if ready_count == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            ready_count, 2,
            "experts 3 and 1 of layer 1 were prefetched, 0 was not"
        );
        assert_eq!(
            fmio_session_acquire(s, 1, [3u32, 1].as_ptr(), 2, &mut g),
            FmioStatus::Ok
        );
        assert_eq!(fmio_guard_get(g, 0, &mut b), FmioStatus::Ok);
        assert!(
            std::slice::from_raw_parts(b.data, REC)
                .iter()
                .all(|&x| x == 4 + 3)
        );
        fmio_guard_release(g);

        let mut m = FmioMetrics::default();
        assert_eq!(
            fmio_session_metrics(s, FMIO_ALL_LAYERS, &mut m),
            FmioStatus::Ok
        );
        assert_eq!((m.demanded, m.misses, m.prefetch_used), (3, 1, 2));
        assert_eq!(fmio_session_metrics(s, 1, &mut m), FmioStatus::Ok);
        assert_eq!((m.demanded, m.hits), (2, 2));
        assert_eq!(
            fmio_session_metrics(s, 7, &mut m),
            FmioStatus::InvalidArgument
        );
        assert!(
            last_error().contains("`layer` 7 is out of range"),
            "{}",
            last_error()
        );
        fmio_session_free(s);
        fmio_layout_free(layout);
    }
}

#[test]
fn blend_predictor_with_next_use_eviction_prefetches_what_the_scores_name() {
    let dir = tempfile::tempdir().unwrap();
    let layout = built_layout(dir.path());
    // SAFETY: all handles are live, used as documented, and freed once at the end.
    unsafe {
        let mut opts = ptr::null_mut();
        assert_eq!(fmio_options_new(&mut opts), FmioStatus::Ok);
        let blend = CString::new("blend").unwrap();
        assert_eq!(
            fmio_options_set_predictor(opts, blend.as_ptr()),
            FmioStatus::Ok
        );
        let bogus = CString::new("belady").unwrap();
        assert_eq!(
            fmio_options_set_eviction(opts, bogus.as_ptr()),
            FmioStatus::InvalidArgument
        );
        assert!(
            last_error()
                .contains("fmio_options_set_eviction: `name` unknown eviction policy \"belady\""),
            "{}",
            last_error()
        );
        let next_use = CString::new("next-use").unwrap();
        assert_eq!(
            fmio_options_set_eviction(opts, next_use.as_ptr()),
            FmioStatus::Ok
        );
        assert_eq!(
            fmio_options_set_budget_bytes(opts, 4 * REC as u64),
            FmioStatus::Ok
        );
        assert_eq!(fmio_options_set_prefetch(opts, 1, 2), FmioStatus::Ok);
        let mut s = ptr::null_mut();
        assert_eq!(fmio_session_open(layout, opts, &mut s), FmioStatus::Ok);
        fmio_options_free(opts);

        // From the first token the blend ranks by the pre-gate scores: layer 1's say 3, then 1.
        let scores = [0.05f32, 0.6, 0.05, 0.9];
        assert_eq!(
            fmio_session_scores(s, 1, scores.as_ptr(), 4),
            FmioStatus::Ok
        );
        let mut g = ptr::null_mut();
        assert_eq!(
            fmio_session_acquire(s, 0, [2u32, 0].as_ptr(), 2, &mut g),
            FmioStatus::Ok
        );
        fmio_guard_release(g);
        assert_eq!(
            fmio_session_acquire(s, 1, [3u32, 1].as_ptr(), 2, &mut g),
            FmioStatus::Ok
        );
        let mut b = std::mem::zeroed::<FmioExpertBytes>();
        assert_eq!(fmio_guard_get(g, 1, &mut b), FmioStatus::Ok);
        assert!(
            b.expert == 1
                && std::slice::from_raw_parts(b.data, REC)
                    .iter()
                    .all(|&x| x == 4 + 1)
        );
        fmio_guard_release(g);
        let mut m = FmioMetrics::default();
        assert_eq!(fmio_session_metrics(s, 1, &mut m), FmioStatus::Ok);
        assert_eq!(
            (m.demanded, m.prefetch_used, m.misses),
            (2, 2, 0),
            "layer 1's experts came from the blend's hints"
        );
        fmio_session_free(s);
        fmio_layout_free(layout);
    }
}

#[test]
fn null_and_bad_arguments_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let layout = built_layout(dir.path());
    // SAFETY: NULL is what is under test; every non-NULL pointer is live.
    unsafe {
        let mut s = ptr::null_mut();
        assert_eq!(
            fmio_session_open(ptr::null(), ptr::null(), &mut s),
            FmioStatus::Null
        );
        assert_eq!(last_error(), "fmio_session_open: `layout` is NULL");
        assert_eq!(
            fmio_session_open(layout, ptr::null(), ptr::null_mut()),
            FmioStatus::Null
        );
        let mut g = ptr::null_mut();
        let one = [0u32];
        assert_eq!(
            fmio_session_acquire(ptr::null(), 0, one.as_ptr(), 1, &mut g),
            FmioStatus::Null
        );
        assert_eq!(
            fmio_layout_open_manifest(ptr::null(), &mut ptr::null_mut()),
            FmioStatus::Null
        );
        assert_eq!(fmio_guard_count(ptr::null()), 0);
        assert_eq!(fmio_checksum(ptr::null(), 5), 0);
        assert!(last_error().contains("`data` is NULL"));
        fmio_guard_release(ptr::null_mut());
        fmio_session_free(ptr::null_mut());

        let mut opts = ptr::null_mut();
        assert_eq!(fmio_options_new(&mut opts), FmioStatus::Ok);
        let bad = CString::new("psychic").unwrap();
        assert_eq!(
            fmio_options_set_predictor(opts, bad.as_ptr()),
            FmioStatus::InvalidArgument
        );
        assert!(last_error().contains("psychic"), "{}", last_error());
        assert_eq!(
            fmio_options_set_backend(opts, bad.as_ptr()),
            FmioStatus::InvalidArgument
        );
        assert_eq!(
            fmio_options_set_budget_share(opts, 1.5),
            FmioStatus::InvalidArgument
        );
        assert_eq!(
            fmio_options_set_prefetch(opts, 0, 4),
            FmioStatus::InvalidArgument
        );
        // A budget below one record cannot hold an acquire.
        assert_eq!(fmio_options_set_budget_bytes(opts, 4096), FmioStatus::Ok);
        assert_eq!(fmio_session_open(layout, opts, &mut s), FmioStatus::Budget);
        assert!(
            last_error().starts_with("fmio_session_open: cache budget too small"),
            "{}",
            last_error()
        );
        fmio_options_free(opts);

        assert_eq!(
            fmio_session_open(layout, ptr::null(), &mut s),
            FmioStatus::Ok
        );
        assert_eq!(
            fmio_session_acquire(s, 0, one.as_ptr(), 0, &mut g),
            FmioStatus::InvalidArgument
        );
        assert_eq!(
            fmio_session_acquire(s, 5, one.as_ptr(), 1, &mut g),
            FmioStatus::UnknownExpert
        );
        assert!(
            last_error().contains("layer 5 expert 0"),
            "{}",
            last_error()
        );
        fmio_session_free(s);
        fmio_layout_free(layout);
    }
}

#[test]
fn a_corrupted_record_fails_its_acquire_with_a_checksum_error() {
    let dir = tempfile::tempdir().unwrap();
    let layout = built_layout(dir.path());
    // Flip a byte of record (0, 1) on disk after the layout recorded its checksum.
    let path = dir.path().join("experts.bin");
    let mut image = std::fs::read(&path).unwrap();
    image[REC + 100] ^= 0xff;
    std::fs::write(&path, &image).unwrap();
    // SAFETY: live handles, freed once.
    unsafe {
        let mut s = ptr::null_mut();
        assert_eq!(
            fmio_session_open(layout, ptr::null(), &mut s),
            FmioStatus::Ok
        );
        let mut g = ptr::null_mut();
        assert_eq!(
            fmio_session_acquire(s, 0, [1u32].as_ptr(), 1, &mut g),
            FmioStatus::Checksum
        );
        assert!(
            last_error().contains("layer 0 expert 1"),
            "{}",
            last_error()
        );
        assert!(g.is_null());
        fmio_session_free(s);
        fmio_layout_free(layout);
    }
}

/// `fmio_session_preload` fills the free slots layer by layer (a budget of 5 records of 8:
/// layer 0 and expert 0 of layer 1), counted as preloaded; the demands after it hit.
#[test]
fn preload_fills_the_free_slots_and_the_demands_after_it_hit() {
    let dir = tempfile::tempdir().unwrap();
    let layout = built_layout(dir.path());
    // SAFETY: live handles, freed once; out pointers are locals.
    unsafe {
        let mut opts = ptr::null_mut();
        assert_eq!(fmio_options_new(&mut opts), FmioStatus::Ok);
        assert_eq!(
            fmio_options_set_budget_bytes(opts, 5 * REC as u64),
            FmioStatus::Ok
        );
        let mut s = ptr::null_mut();
        assert_eq!(fmio_session_open(layout, opts, &mut s), FmioStatus::Ok);
        fmio_options_free(opts);
        let (mut cached, mut read) = (0usize, 0usize);
        assert_eq!(
            fmio_session_preload(s, &mut cached, &mut read),
            FmioStatus::Ok
        );
        assert_eq!((cached, read), (5, 5));
        let mut m = FmioMetrics::default();
        assert_eq!(
            fmio_session_metrics(s, FMIO_ALL_LAYERS, &mut m),
            FmioStatus::Ok
        );
        assert_eq!((m.preloaded, m.preload_bytes), (5, 5 * REC as u64));
        assert_eq!((m.demanded, m.demand_bytes), (0, 0));
        let mut g = ptr::null_mut();
        assert_eq!(
            fmio_session_acquire(s, 1, [0u32].as_ptr(), 1, &mut g),
            FmioStatus::Ok
        );
        let mut b = FmioExpertBytes {
            expert: 0,
            data: ptr::null(),
            len: 0,
        };
        assert_eq!(fmio_guard_get(g, 0, &mut b), FmioStatus::Ok);
        assert!(
            std::slice::from_raw_parts(b.data, REC)
                .iter()
                .all(|&x| x == 4)
        );
        fmio_guard_release(g);
        assert_eq!(
            fmio_session_metrics(s, FMIO_ALL_LAYERS, &mut m),
            FmioStatus::Ok
        );
        assert_eq!((m.demanded, m.hits, m.demand_bytes), (1, 1, 0));
        // Out pointers may be NULL; a second preload reads nothing.
        assert_eq!(
            fmio_session_preload(s, ptr::null_mut(), &mut read),
            FmioStatus::Ok
        );
        assert_eq!(read, 0);
        assert_eq!(
            fmio_session_preload(ptr::null(), ptr::null_mut(), ptr::null_mut()),
            FmioStatus::Null
        );
        fmio_session_free(s);
        fmio_layout_free(layout);
    }
}

/// The session pointer, to share between threads (documented thread-safe; checked Send + Sync).
#[derive(Clone, Copy)]
struct Shared(*const FmioSession);
// SAFETY: `FmioSession` is Send + Sync (checked in lib.rs); it outlives the threads.
unsafe impl Send for Shared {}

#[test]
fn threads_acquire_from_one_session_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let layout = built_layout(dir.path());
    let mut s = ptr::null_mut();
    // Guards held at once by all threads must fit (8 slots for 4 threads x 2 experts): with
    // every slot pinned an acquire fails with FMIO_STATUS_BUDGET rather than waiting.
    let mut opts = ptr::null_mut();
    // SAFETY: live layout and options, writable out pointers.
    unsafe {
        assert_eq!(fmio_options_new(&mut opts), FmioStatus::Ok);
        assert_eq!(fmio_options_set_budget_share(opts, 1.0), FmioStatus::Ok);
        assert_eq!(fmio_session_open(layout, opts, &mut s), FmioStatus::Ok);
        fmio_options_free(opts);
    }
    let shared = Shared(s);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            std::thread::spawn(move || {
                let shared = shared;
                for round in 0..50u32 {
                    let layer = (t + round) % LAYERS;
                    let experts = [round % EXPERTS, (round + 1) % EXPERTS];
                    let mut g = ptr::null_mut();
                    // SAFETY: the session is live until every thread is joined.
                    unsafe {
                        let st = fmio_session_acquire(shared.0, layer, experts.as_ptr(), 2, &mut g);
                        assert_eq!(st, FmioStatus::Ok, "{}", last_error());
                        for (i, &e) in experts.iter().enumerate() {
                            let mut b = std::mem::zeroed::<FmioExpertBytes>();
                            assert_eq!(fmio_guard_get(g, i, &mut b), FmioStatus::Ok);
                            let want = (layer * EXPERTS + e) as u8;
                            let bytes = std::slice::from_raw_parts(b.data, b.len as usize);
                            assert!(
                                bytes.iter().all(|&x| x == want),
                                "layer {layer} expert {}",
                                experts[i]
                            );
                        }
                        fmio_guard_release(g);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut m = FmioMetrics::default();
    // SAFETY: live session, no other user now; freed once.
    unsafe {
        assert_eq!(
            fmio_session_metrics(s, FMIO_ALL_LAYERS, &mut m),
            FmioStatus::Ok
        );
        assert_eq!(m.demanded, 4 * 50 * 2);
        fmio_session_free(s);
        fmio_layout_free(layout);
    }
}
