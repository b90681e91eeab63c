//! Predictors on the real routing trace of the tiny-qwen3-moe fixture (8 layers, 32 experts,
//! top-4, 20,224 tokens in 79 sequences). Skipped, with a printed reason, when the fixture is
//! absent (a fresh clone without `../shared`).

use std::path::PathBuf;

use io_sched::predictor::{
    Calibrated, Combine, Frequency, LayerPrediction, Oracle, Predictor, Temporal, Transition,
};

const LAYERS: usize = 8;
const EXPERTS: u32 = 32;
const K: usize = 4;
/// `temporal reuse` per layer from the fixture's README.txt.
const README_TEMPORAL_REUSE: [f64; LAYERS] =
    [0.178, 0.260, 0.306, 0.281, 0.329, 0.365, 0.328, 0.354];

struct Trace {
    /// [token][layer][k]
    routing: Vec<Vec<Vec<u32>>>,
    /// Whether the token starts a sequence.
    seq_start: Vec<bool>,
}

fn fixture_path() -> PathBuf {
    flashmoe_test_support::fixtures_dir().join("tiny-qwen3-moe/routing_trace.safetensors")
}

/// Parses the two tensors we need by hand: 8-byte LE header length, JSON header, data.
fn load_trace() -> Result<Trace, String> {
    let path = fixture_path();
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or("too short")?
            .try_into()
            .map_err(|_| "len")?,
    ) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(bytes.get(8..8 + n).ok_or("header past end")?)
            .map_err(|e| e.to_string())?;
    let data = &bytes[8 + n..];
    let tensor = |name: &str, dtype: &str| -> Result<(Vec<usize>, &[u8]), String> {
        let t = &header[name];
        if t["dtype"] != dtype {
            return Err(format!("{name}: dtype {} != {dtype}", t["dtype"]));
        }
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .ok_or("shape")?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).ok_or("dim"))
            .collect::<Result<_, _>>()?;
        let off = &t["data_offsets"];
        let (a, b) = (
            off[0].as_u64().ok_or("off")? as usize,
            off[1].as_u64().ok_or("off")? as usize,
        );
        Ok((shape, data.get(a..b).ok_or("data past end")?))
    };
    let (shape, ids) = tensor("expert_ids", "U16")?;
    if shape.len() != 3
        || shape[1] != LAYERS
        || shape[2] != K
        || ids.len() != shape.iter().product::<usize>() * 2
    {
        return Err(format!("expert_ids shape {shape:?}"));
    }
    let tokens = shape[0];
    let ids: Vec<u32> = ids
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
        .collect();
    let routing = (0..tokens)
        .map(|t| {
            (0..LAYERS)
                .map(|l| ids[(t * LAYERS + l) * K..][..K].to_vec())
                .collect()
        })
        .collect();
    let (_, starts) = tensor("seq_starts", "I64")?;
    let mut seq_start = vec![false; tokens];
    for c in starts.chunks_exact(8) {
        let s = i64::from_le_bytes(c.try_into().map_err(|_| "i64")?);
        if let Some(f) = usize::try_from(s).ok().and_then(|s| seq_start.get_mut(s)) {
            *f = true;
        }
    }
    Ok(Trace { routing, seq_start })
}

/// Runs `p` over the trace and returns, per layer, the mean recall of its top-`K` prediction
/// made `ahead` layers earlier (within a sequence only: predictions that would cross into a
/// new sequence are not scored), and the mean confidence of the predicted candidates (which a
/// calibrated predictor makes equal to the precision, here equal to the recall).
fn recall(p: &mut dyn Predictor, trace: &Trace, ahead: u32) -> [f64; LAYERS] {
    let (r, conf) = recall_and_confidence(p, trace, ahead);
    println!(
        "{:<10} h={ahead} recall {}  confidence {}",
        p.name(),
        fmt(&r),
        fmt(&conf)
    );
    r
}

/// One scored prediction: (expert, confidence) pairs.
type Prediction = Vec<(u32, f32)>;

fn recall_and_confidence(
    p: &mut dyn Predictor,
    trace: &Trace,
    ahead: u32,
) -> ([f64; LAYERS], [f64; LAYERS]) {
    let (mut hits, mut n) = ([0usize; LAYERS], [0usize; LAYERS]);
    let (mut conf, mut nconf) = ([0f64; LAYERS], [0usize; LAYERS]);
    // pending[token % 2][layer] = the prediction for (token, layer), made `ahead` layers earlier.
    let mut pending: Vec<Vec<Option<Prediction>>> = vec![vec![None; LAYERS]; 2];
    let mut out: Vec<LayerPrediction> = Vec::new();
    for (t, layers) in trace.routing.iter().enumerate() {
        if trace.seq_start[t] {
            pending[t % 2].iter_mut().for_each(|p| *p = None);
        }
        for (l, experts) in layers.iter().enumerate() {
            if let Some(pred) = pending[t % 2][l].take() {
                hits[l] += pred.iter().filter(|(e, _)| experts.contains(e)).count();
                n[l] += K;
                conf[l] += pred.iter().map(|(_, c)| *c as f64).sum::<f64>();
                nconf[l] += pred.len();
            }
            p.observe(l as u32, experts);
            p.predict(l as u32, ahead, K, &mut out);
            if let Some(lp) = out.iter().find(|lp| {
                (l as u32 + ahead) as usize == lp.tokens_ahead as usize * LAYERS + lp.layer as usize
            }) {
                let slot = (t + lp.tokens_ahead as usize) % 2;
                pending[slot][lp.layer as usize] = Some(
                    lp.candidates
                        .iter()
                        .map(|c| (c.expert, c.confidence))
                        .collect(),
                );
            }
        }
    }
    (
        std::array::from_fn(|l| hits[l] as f64 / n[l].max(1) as f64),
        std::array::from_fn(|l| conf[l] / nconf[l].max(1) as f64),
    )
}

fn fmt(r: &[f64; LAYERS]) -> String {
    let v: Vec<String> = r.iter().map(|x| format!("{x:.3}")).collect();
    format!(
        "[{}] mean {:.3}",
        v.join(", "),
        r.iter().sum::<f64>() / LAYERS as f64
    )
}

#[test]
fn predictors_on_the_real_fixture_trace() {
    if flashmoe_test_support::fixture("tiny-qwen3-moe/routing_trace.safetensors").is_none() {
        return;
    }
    let trace = load_trace().unwrap_or_else(|e| panic!("fixture routing trace not usable: {e}"));
    assert_eq!(trace.routing.len(), 20224);

    let temporal = recall(&mut Temporal::new(LAYERS as u32, EXPERTS), &trace, 1);
    for l in 0..LAYERS {
        assert!(
            (temporal[l] - README_TEMPORAL_REUSE[l]).abs() < 0.005,
            "layer {l}: temporal recall {} vs README reuse {}",
            temporal[l],
            README_TEMPORAL_REUSE[l]
        );
    }

    let oracle = recall(
        &mut Oracle::new(trace.routing.clone(), LAYERS as u32, EXPERTS),
        &trace,
        2,
    );
    assert!(oracle.iter().all(|&r| r == 1.0), "oracle {oracle:?}");

    let freq = recall(&mut Frequency::new(LAYERS as u32, EXPERTS), &trace, 1);
    // Transition: both combiners beat random; the default (Mean), raw and calibrated.
    let raw = recall(
        &mut Transition::with_combine(LAYERS as u32, EXPERTS, Combine::Max),
        &trace,
        1,
    );
    println!("  (transition combining by max)");
    assert!(raw.iter().sum::<f64>() / LAYERS as f64 > 0.125);
    for ahead in [1, 2] {
        let raw = recall(&mut Transition::new(LAYERS as u32, EXPERTS), &trace, ahead);
        println!("  (transition combining by mean, the default)");
        assert!(raw.iter().sum::<f64>() / LAYERS as f64 > 0.125);
        // Calibrated confidences track the measured recall, without hurting the ranking.
        let inner = Box::new(Transition::new(LAYERS as u32, EXPERTS));
        let (r, conf) =
            recall_and_confidence(&mut Calibrated::new(inner, LAYERS as u32), &trace, ahead);
        println!(
            "calibrated h={ahead} recall {}  confidence {}",
            fmt(&r),
            fmt(&conf)
        );
        for l in 0..LAYERS {
            assert!(
                r[l] >= raw[l] - 0.01,
                "layer {l}: calibration hurt recall {} < {}",
                r[l],
                raw[l]
            );
            assert!(
                (conf[l] - r[l]).abs() < 0.02,
                "layer {l}: confidence {} vs recall {}",
                conf[l],
                r[l]
            );
        }
    }
    // Frequency should at least match popularity-based baselines (README: top-4 popular ≈ 0.15-0.21).
    assert!(freq.iter().sum::<f64>() / LAYERS as f64 > 0.125);
}
