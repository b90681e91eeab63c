//! `generate` through io-sched's fault-injecting backend, on the committed default model (no
//! fixtures needed): EIO once, short reads, latency spikes and bytes corrupted once on the way
//! give the same tokens as a clean run, through the chunked prompt (the union path) and token
//! by token (the decode path); a persistent EIO, bytes corrupted on every read and a
//! corrupted record end the generation with an error naming layer, expert, file and offset —
//! never different tokens.

use flashmoe_backends::CpuBackend;
use flashmoe_engine::{NoObserver, PackedModel, SchedExperts, generate_greedy};
use io_sched::backend::BackendKind;
use io_sched::backend::faulty::{Fault, FaultyBackend, Target};
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::metrics::LayerMetrics;
use io_sched::{Scheduler, SchedulerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const TOKENS: usize = 12;

/// Rules added to the fault-injecting backend.
type Faults = Box<dyn FnOnce(FaultyBackend) -> FaultyBackend>;

fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4")
}

/// Greedy tokens of the default prompt with `faults` applied to every expert read (pread
/// backend, a quarter of the experts cached), and the failed loads the scheduler counted.
fn run(
    dir: &Path,
    faults: impl FnOnce(FaultyBackend) -> FaultyBackend,
) -> (Result<Vec<u32>, String>, LayerMetrics) {
    run_chunked(dir, None, faults)
}

/// [`run`] with the prompt prefilled in chunks of `chunk` tokens (`None`: the model's
/// default, which takes the whole prompt at once; `Some(1)`: token by token, so every read
/// goes through the per-token demand path).
fn run_chunked(
    dir: &Path,
    chunk: Option<usize>,
    faults: impl FnOnce(FaultyBackend) -> FaultyBackend,
) -> (Result<Vec<u32>, String>, LayerMetrics) {
    let m = PackedModel::open(dir).expect("open model");
    let inner = open_backend(
        &m.experts,
        &BackendConfig::default().kind(BackendKind::Pread),
    )
    .expect("pread backend");
    let faulty = faults(FaultyBackend::new(inner.backend, &m.experts));
    let sched = Arc::new(
        Scheduler::with_backend(
            m.experts.clone(),
            SchedulerConfig::with_budget(m.expert_bytes() / 4),
            Box::new(faulty),
        )
        .expect("scheduler"),
    );
    let mut model = m.load_model(CpuBackend::new(), 128).expect("model");
    if let Some(n) = chunk {
        model.set_prefill_chunk(n);
    }
    let mut experts = SchedExperts::new(sched.clone(), m.record).expect("source");
    let prompt = m
        .tokenizer
        .encode("The Rust programming language")
        .expect("encode");
    let out = generate_greedy(&mut model, &prompt, TOKENS, &mut experts, &mut NoObserver)
        .map_err(|e| e.to_string());
    (out, sched.metrics().total())
}

#[test]
fn transient_faults_give_the_same_tokens() {
    for chunk in [None, Some(1)] {
        transient_faults_with_chunk(chunk);
    }
}

fn transient_faults_with_chunk(chunk: Option<usize>) {
    let dir = default_model();
    let (clean, failed) = run_chunked(&dir, chunk, |b| b);
    let clean = clean.expect("clean run");
    assert_eq!((clean.len(), failed.failed_loads), (TOKENS, 0));
    let cases: Vec<(&str, Faults)> = vec![
        (
            "bytes corrupted once per layer",
            Box::new(|b| {
                (0..8).fold(b, |b, l| {
                    b.with_rule(Target::Layer(l), Fault::Corrupt { times: 1 })
                })
            }),
        ),
        (
            "EIO once per layer",
            Box::new(|b| {
                (0..8).fold(b, |b, l| {
                    b.with_rule(Target::Layer(l), Fault::Eio { times: 1 })
                })
            }),
        ),
        (
            "short reads",
            Box::new(|b| {
                b.with_rule(
                    Target::Any,
                    Fault::ShortRead {
                        max_bytes: 16 << 10,
                        times: 200,
                    },
                )
            }),
        ),
        (
            "latency spikes",
            Box::new(|b| b.with_rule(Target::Layer(3), Fault::Delay(Duration::from_millis(3)))),
        ),
    ];
    for (what, faults) in cases {
        let (got, failed) = run_chunked(&dir, chunk, faults);
        assert_eq!(
            got.as_ref(),
            Ok(&clean),
            "{what} changed the tokens (prefill chunk {chunk:?})"
        );
        if what.starts_with("EIO") || what.starts_with("bytes") {
            assert!(
                failed.failed_loads >= 1,
                "{what}: the fault was not applied"
            );
        }
        if what.starts_with("short") {
            assert!(
                failed.short_read_retries >= 1,
                "{what}: the fault was not applied"
            );
        }
    }
}

#[test]
fn persistent_eio_is_an_error_naming_the_read() {
    let (got, failed) = run(&default_model(), |b| {
        b.with_rule(Target::Layer(5), Fault::Eio { times: u32::MAX })
    });
    let e = got.expect_err("a layer that never reads");
    assert!(
        failed.failed_loads >= 2,
        "{} failed loads",
        failed.failed_loads
    );
    for want in [
        "layer 5",
        "expert",
        "experts-layer-0005.fmoe",
        "offset",
        "attempt 2 of 2",
    ] {
        assert!(e.contains(want), "{want:?} not in: {e}");
    }
}

#[test]
fn a_corrupted_record_is_an_error_not_other_tokens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).expect("mkdir");
    for e in std::fs::read_dir(default_model()).expect("model dir") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
    }
    // Flip one byte inside every expert record of layer 2.
    let m = PackedModel::open(&dir).expect("open");
    let file = dir.join("experts-layer-0002.fmoe");
    let mut bytes = std::fs::read(&file).expect("read");
    for (key, loc) in m.experts.iter() {
        if key.layer == 2 {
            bytes[(loc.offset + loc.len / 2) as usize] ^= 0x40;
        }
    }
    std::fs::write(&file, bytes).expect("write");
    let (got, _) = run(&dir, |b| b);
    let e = got.expect_err("corrupt layer 2");
    assert!(e.contains("layer 2") && e.contains("checksum"), "{e}");
}

#[test]
fn bytes_corrupted_on_every_read_are_an_error_not_other_tokens() {
    for chunk in [None, Some(1)] {
        let (got, failed) = run_chunked(&default_model(), chunk, |b| {
            b.with_rule(Target::Layer(6), Fault::Corrupt { times: u32::MAX })
        });
        let e = got.expect_err("a layer whose bytes are always corrupted");
        assert!(
            failed.failed_loads >= 2,
            "{} failed loads",
            failed.failed_loads
        );
        for want in [
            "layer 6",
            "checksum",
            "experts-layer-0006.fmoe",
            "attempt 2 of 2",
        ] {
            assert!(e.contains(want), "{want:?} not in (chunk {chunk:?}): {e}");
        }
    }
}

#[test]
fn a_persistent_eio_in_decode_is_an_error_naming_the_read() {
    // Token by token, so the failing layer is first read by a per-token demand.
    let (got, _) = run_chunked(&default_model(), Some(1), |b| {
        b.with_rule(Target::Layer(4), Fault::Eio { times: u32::MAX })
    });
    let e = got.expect_err("a layer that never reads");
    for want in [
        "layer 4",
        "experts-layer-0004.fmoe",
        "offset",
        "attempt 2 of 2",
    ] {
        assert!(e.contains(want), "{want:?} not in: {e}");
    }
}
