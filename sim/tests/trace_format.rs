//! The routing-trace format: round trip, and clear errors on malformed input.

use std::io::Cursor;

use io_sched::trace::{Real, Trace, TraceHeader, TraceWriter, f16_to_f32, f32_to_f16};

fn sample(weights: Option<Real>, scores: Option<Real>, experts: u32) -> Vec<u8> {
    let mut h = TraceHeader::new(3, experts, 2);
    h.weights = weights;
    h.scores = scores;
    let mut w = TraceWriter::new(Cursor::new(Vec::new()), h).unwrap();
    for t in 0..5u32 {
        for l in 0..3u32 {
            let ids = [(t + l) % experts, (t + l + 1) % experts];
            let ws = [0.75f32, 0.25];
            let sc: Vec<f32> = (0..experts).map(|e| e as f32 / experts as f32).collect();
            w.write_layer(l, &ids, weights.map(|_| &ws[..]), scores.map(|_| &sc[..]))
                .unwrap();
        }
    }
    assert_eq!(w.tokens(), 5);
    w.finish().unwrap().into_inner()
}

#[test]
fn round_trips_every_variant() {
    for (weights, scores, experts) in [
        (None, None, 8),
        (Some(Real::F16), None, 8),
        (Some(Real::F32), Some(Real::F16), 8),
        (None, Some(Real::F32), 70_000),
    ] {
        let bytes = sample(weights, scores, experts);
        let t = Trace::from_bytes(&bytes, "mem").unwrap();
        assert_eq!(t.tokens(), 5);
        assert_eq!(t.experts_at(4, 2), &[6 % experts, 7 % experts]);
        assert_eq!(t.weights.as_ref().map(|w| w[1]), weights.map(|_| 0.25));
        if scores.is_some() {
            assert_eq!(t.scores_at(0, 0).unwrap()[4], 4.0 / experts as f32);
        }
        // Through a file, with the whole-trace writer.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.fmtrace");
        t.write(&p).unwrap();
        assert_eq!(Trace::read(&p).unwrap(), t);
    }
}

#[test]
fn f16_conversion_is_exact_on_representable_values() {
    for x in [
        0.0f32,
        1.0,
        -2.5,
        0.333_251_95,
        65504.0,
        6.103_515_6e-5,
        5.960_464_5e-8,
    ] {
        assert_eq!(f16_to_f32(f32_to_f16(x)), x, "{x}");
    }
    assert!(f16_to_f32(f32_to_f16(1e6)).is_infinite());
}

fn err(bytes: &[u8]) -> String {
    Trace::from_bytes(bytes, "bad.fmtrace")
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_input_is_rejected_with_file_and_position() {
    let good = sample(Some(Real::F16), None, 8);
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(err(&bad_magic).contains("bad.fmtrace") && err(&bad_magic).contains("magic"));

    let mut version = good.clone();
    version[8] = 9;
    assert!(err(&version).contains("version 9"));

    assert!(err(&good[..good.len() - 3]).contains("5 tokens need"));
    assert!(err(&good[..20]).contains("shorter than a trace header"));

    let mut k_big = good.clone();
    k_big[24..28].copy_from_slice(&100u32.to_le_bytes());
    assert!(err(&k_big).contains("k <= experts"));

    let mut huge = good.clone();
    huge[32..40].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(err(&huge).contains("overflow") || err(&huge).contains("tokens need"));

    let mut id = good.clone();
    id[40] = 200; // first expert id of the first record
    let e = err(&id);
    assert!(e.contains("byte 40") && e.contains("expert id 200"), "{e}");

    let mut flags = good;
    flags[10] = 0x80;
    assert!(err(&flags).contains("unknown flags"));
}

#[test]
fn writer_rejects_misuse() {
    let mut w = TraceWriter::new(Cursor::new(Vec::new()), TraceHeader::new(2, 8, 2)).unwrap();
    assert!(
        w.write_layer(1, &[0, 1], None, None).is_err(),
        "layers out of order"
    );
    assert!(
        w.write_layer(0, &[3, 3], None, None).is_err(),
        "repeated expert"
    );
    assert!(
        w.write_layer(0, &[0, 9], None, None).is_err(),
        "expert out of range"
    );
    assert!(
        w.write_layer(0, &[0, 1], Some(&[1.0, 0.0]), None).is_err(),
        "weights not in header"
    );
    w.write_layer(0, &[0, 1], None, None).unwrap();
    assert!(w.finish().is_err(), "half a token");
}

#[test]
fn loads_the_fixture_trace() {
    let Some(path) = flashmoe_test_support::fixture("tiny-qwen3-moe/routing_trace.safetensors")
    else {
        return;
    };
    let t = flashmoe_sim::fixture::load_trace(&path).unwrap();
    assert_eq!(
        (t.tokens(), t.header.layers, t.header.experts, t.header.k),
        (20224, 8, 32, 4)
    );
    let w = t.weights.as_ref().unwrap();
    let sum: f32 = w[..4].iter().sum();
    assert!((sum - 1.0).abs() < 0.01);
    // Truncated copies are rejected, not read out of bounds.
    let bytes = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = flashmoe_sim::fixture::load_trace(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cut.safetensors") && e.contains("outside the file"),
        "{e}"
    );
}
