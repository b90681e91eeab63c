//! Predictors on synthetic routing with known structure.

use io_sched::predictor::{
    self, Calibrated, Combine, Frequency, LayerPrediction, NoPredictor, Oracle, Predictor,
    PredictorKind, Scores, Temporal, Transition,
};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};

fn experts_of(p: &LayerPrediction) -> Vec<u32> {
    p.candidates.iter().map(|c| c.expert).collect()
}

fn assert_well_formed(out: &[LayerPrediction], max: usize) {
    for p in out {
        assert!(
            !p.candidates.is_empty() && p.candidates.len() <= max,
            "{p:?}"
        );
        for w in p.candidates.windows(2) {
            assert!(
                w[0].confidence >= w[1].confidence,
                "not most confident first: {p:?}"
            );
        }
        for c in &p.candidates {
            assert!((0.0..=1.0).contains(&c.confidence), "{p:?}");
        }
    }
}

#[test]
fn temporal_predicts_the_previous_tokens_set() {
    let mut p = Temporal::new(3, 16);
    let mut out = Vec::new();
    p.predict(0, 2, 4, &mut out);
    assert!(out.is_empty(), "nothing observed yet");
    // Token 0, then token 1 reusing half of each layer's experts.
    for (l, e) in [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
        .iter()
        .enumerate()
    {
        p.observe(l as u32, e);
    }
    for (l, e) in [[1, 2, 13, 14], [5, 6, 0, 15], [9, 10, 3, 4]]
        .iter()
        .enumerate()
    {
        p.observe(l as u32, e);
    }
    // Token 2 has seen layer 0; predict layers 1, 2 of token 2 and layer 0 of token 3.
    p.observe(0, &[7, 8, 9, 1]);
    p.predict(0, 3, 4, &mut out);
    assert_well_formed(&out, 4);
    let got: Vec<(u32, u32, Vec<u32>)> = out
        .iter()
        .map(|p| (p.layer, p.tokens_ahead, experts_of(p)))
        .collect();
    assert_eq!(
        got,
        [
            (1, 0, vec![5, 6, 0, 15]),
            (2, 0, vec![9, 10, 3, 4]),
            (0, 1, vec![7, 8, 9, 1])
        ]
    );
    // Layer 1 reused 2 of 4: confidence = (2 + 4·(4/16)) / (4 + 4) = 0.375.
    assert!(
        (out[0].candidates[0].confidence - 0.375).abs() < 1e-6,
        "{out:?}"
    );
    assert_eq!(p.reuse_rate(1), Some(0.375));
    // max_per_layer caps the list.
    p.predict(0, 1, 2, &mut out);
    assert_eq!(experts_of(&out[0]), [5, 6]);
}

/// Runs `Transition` on routing where layer l+1 uses perm_l(each expert of layer l) and layer 0
/// is random; returns the recall one and two layers ahead over tokens `from..to`.
fn deterministic_chain(combine: Combine, from: usize, to: usize) -> (f64, f64) {
    const L: u32 = 4;
    const E: u32 = 32;
    const K: usize = 4;
    let mut rng = StdRng::seed_from_u64(7);
    let perms: Vec<Vec<u32>> = (0..L)
        .map(|_| {
            sample(&mut rng, E as usize, E as usize)
                .into_iter()
                .map(|x| x as u32)
                .collect()
        })
        .collect();
    let mut p = Transition::with_combine(L, E, combine);
    let mut out = Vec::new();
    let (mut hits1, mut n1, mut hits2, mut n2) = (0, 0, 0, 0);
    for token in 0..to {
        let mut cur: Vec<u32> = sample(&mut rng, E as usize, K)
            .into_iter()
            .map(|x| x as u32)
            .collect();
        for layer in 0..L {
            if layer > 0 {
                cur = cur
                    .iter()
                    .map(|&e| perms[layer as usize - 1][e as usize])
                    .collect();
            }
            p.observe(layer, &cur);
            if layer + 1 == L {
                continue;
            }
            p.predict(layer, 2, K, &mut out);
            assert_well_formed(&out, K);
            assert_eq!(out[0].layer, layer + 1);
            let next: Vec<u32> = cur
                .iter()
                .map(|&e| perms[layer as usize][e as usize])
                .collect();
            if token >= from {
                n1 += K;
                hits1 += experts_of(&out[0])
                    .iter()
                    .filter(|e| next.contains(e))
                    .count();
                if layer + 2 < L {
                    let next2: Vec<u32> = next
                        .iter()
                        .map(|&e| perms[layer as usize + 1][e as usize])
                        .collect();
                    n2 += K;
                    hits2 += experts_of(&out[1])
                        .iter()
                        .filter(|e| next2.contains(e))
                        .count();
                }
            }
        }
        if token == to - 1 && combine == Combine::Max {
            // The learned probability of a true transition is near 1; of another, low.
            let j = perms[0][3];
            assert!(p.probability(0, 3, j).unwrap() > 0.8);
            assert!(p.probability(0, 3, (j + 1) % E).unwrap() < 0.5);
        }
    }
    (hits1 as f64 / n1 as f64, hits2 as f64 / n2 as f64)
}

#[test]
fn transition_learns_a_deterministic_mapping() {
    // Max: exact one and two layers ahead once each expert has been seen ~12 times.
    assert_eq!(deterministic_chain(Combine::Max, 100, 200), (1.0, 1.0));
    // Mean (the default, better on real routing) needs more tokens to shake off co-occurrence
    // noise (about 3x as many).
    assert_eq!(deterministic_chain(Combine::Mean, 300, 400), (1.0, 1.0));
}

#[test]
fn frequency_ranks_a_skewed_distribution() {
    let mut p = Frequency::new(1, 10);
    let mut rng = StdRng::seed_from_u64(3);
    // Expert e is routed with probability (10 - e) / 11: 0 most popular.
    for _ in 0..2000 {
        let set: Vec<u32> = (0..10u32)
            .filter(|&e| rng.random_bool((10 - e) as f64 / 11.0))
            .collect();
        p.observe(0, &set);
    }
    let mut out = Vec::new();
    p.predict(0, 1, 3, &mut out); // wraps to layer 0 of the next token
    assert_well_formed(&out, 3);
    assert_eq!((out[0].layer, out[0].tokens_ahead), (0, 1));
    assert_eq!(experts_of(&out[0]), [0, 1, 2]);
    let c0 = out[0].candidates[0].confidence;
    assert!(
        (c0 - 10.0 / 11.0).abs() < 0.1,
        "share of tokens using expert 0: {c0}"
    );
}

#[test]
fn frequency_forgets_with_decay() {
    let mut p = Frequency::with_half_life(1, 4, 8.0);
    for _ in 0..100 {
        p.observe(0, &[0]);
    }
    for _ in 0..50 {
        p.observe(0, &[3]);
    }
    let mut out = Vec::new();
    p.predict(0, 1, 1, &mut out);
    assert_eq!(experts_of(&out[0]), [3]);
}

#[test]
fn scores_pass_through_top_k() {
    let mut p = Scores::new(3, 6);
    let mut out = Vec::new();
    // Probabilities: used as they are.
    p.observe_scores(1, &[0.05, 0.4, 0.1, 0.3, 0.15, 0.0]);
    // Logits: softmaxed.
    p.observe_scores(2, &[2.0, -1.0, 0.5, 3.0, f32::NAN, 0.0]);
    p.predict(0, 2, 3, &mut out);
    assert_well_formed(&out, 3);
    assert_eq!(experts_of(&out[0]), [1, 3, 4]);
    assert_eq!(out[0].candidates[0].confidence, 0.4);
    assert_eq!(experts_of(&out[1]), [3, 0, 2]);
    let z: f32 = [2.0f32, -1.0, 0.5, 3.0, 0.0].iter().map(|x| x.exp()).sum();
    assert!((out[1].candidates[0].confidence - 3.0f32.exp() / z).abs() < 1e-5);
    // Once layer 1's real routing is seen, its scores are stale.
    p.observe(1, &[1, 3]);
    p.predict(0, 2, 3, &mut out);
    assert_eq!(out.iter().map(|p| p.layer).collect::<Vec<_>>(), [2]);
    // Short, long and out-of-range inputs do not panic.
    p.observe_scores(0, &[0.9]);
    p.observe_scores(0, &[0.1; 100]);
    p.observe_scores(9, &[0.1; 6]);
    p.predict(9, 2, 3, &mut out);
    assert!(out.is_empty());
}

#[test]
fn oracle_is_exact_and_wraps_to_the_next_token() {
    let trace: Vec<Vec<Vec<u32>>> = (0..5u32)
        .map(|t| {
            (0..3u32)
                .map(|l| vec![(t + l) % 8, (t * 3 + l + 1) % 8])
                .collect()
        })
        .collect();
    let mut p = Oracle::new(trace.clone(), 3, 8);
    let mut out = Vec::new();
    for t in 0..5usize {
        for l in 0..3u32 {
            p.observe(l, &trace[t][l as usize]);
            p.predict(l, 3, 4, &mut out);
            assert_eq!(p.token(), t);
            let mut want = Vec::new();
            for s in 1..=3u32 {
                let (tl, ahead) = ((l + s) % 3, (l + s) / 3);
                if let Some(tok) = trace.get(t + ahead as usize) {
                    want.push((tl, ahead, tok[tl as usize].clone()));
                }
            }
            let got: Vec<_> = out
                .iter()
                .map(|p| (p.layer, p.tokens_ahead, experts_of(p)))
                .collect();
            assert_eq!(got, want, "token {t} layer {l}");
            assert!(
                out.iter()
                    .all(|p| p.candidates.iter().all(|c| c.confidence == 1.0))
            );
        }
    }
}

#[test]
fn horizon_wraps_and_is_clamped_for_every_predictor() {
    let (layers, experts) = (4u32, 8u32);
    let trace = vec![vec![vec![1u32, 2]; 4]; 5];
    let mut all: Vec<Box<dyn Predictor>> = PredictorKind::ALL
        .iter()
        .filter_map(|&k| predictor::build(k, layers, experts))
        .collect();
    all.push(Box::new(Oracle::new(trace, layers, experts)));
    assert_eq!(all.len(), 7);
    let mut out = Vec::new();
    for p in &mut all {
        for _token in 0..2 {
            for l in 0..layers {
                p.observe_scores(l, &[0.5; 8]);
                p.observe(l, &[1, 2]);
            }
        }
        p.observe_scores(3, &[0.5; 8]);
        p.observe(2, &[1, 2]);
        p.predict(2, 100, 4, &mut out);
        assert_well_formed(&out, 4);
        assert!(
            out.len() <= layers as usize,
            "{}: horizon clamped",
            p.name()
        );
        for pred in &out {
            assert!(pred.layer < layers);
            let want_ahead = if pred.layer > 2 { 0 } else { 1 };
            assert_eq!(pred.tokens_ahead, want_ahead, "{}: {pred:?}", p.name());
        }
        if !matches!(p.name(), "none" | "scores") {
            let layers_seen: Vec<u32> = out.iter().map(|p| p.layer).collect();
            assert_eq!(layers_seen, [3, 0, 1, 2], "{}", p.name());
        }
        // Out-of-range input is ignored, never a panic.
        p.observe(99, &[1]);
        p.observe(0, &[99, 1, 1]);
        p.observe_scores(99, &[1.0]);
        p.predict(99, 3, 4, &mut out);
        assert!(out.is_empty(), "{}", p.name());
        p.predict(0, 0, 4, &mut out);
        assert!(out.is_empty(), "{}", p.name());
    }
    let mut none = NoPredictor;
    none.predict(0, 4, 4, &mut out);
    assert!(out.is_empty());
}

/// Always predicts experts 0 and 1 for the next layer with confidence 0.9.
struct Overconfident {
    layers: u32,
}

impl Predictor for Overconfident {
    fn name(&self) -> &'static str {
        "overconfident"
    }
    fn observe(&mut self, _layer: u32, _experts: &[u32]) {}
    fn predict(&mut self, layer: u32, _h: u32, _max: usize, out: &mut Vec<LayerPrediction>) {
        out.clear();
        out.push(LayerPrediction {
            layer: (layer + 1) % self.layers,
            tokens_ahead: (layer + 1) / self.layers,
            candidates: vec![
                io_sched::Candidate {
                    expert: 0,
                    confidence: 0.9,
                },
                io_sched::Candidate {
                    expert: 1,
                    confidence: 0.9,
                },
            ],
        });
    }
}

#[test]
fn calibrated_confidence_is_the_measured_hit_rate() {
    let mut p = Calibrated::new(Box::new(Overconfident { layers: 2 }), 2);
    let mut out = Vec::new();
    // Exactly one of the two predicted experts is used at every layer: hit rate 0.5.
    for token in 0..2000u32 {
        for layer in 0..2 {
            p.observe(layer, &[token % 2, 5]);
            p.predict(layer, 1, 4, &mut out);
        }
    }
    assert_eq!(p.name(), "overconfident");
    let c = out[0].candidates[0].confidence;
    assert!((c - 0.5).abs() < 0.05, "calibrated confidence {c}");
    assert!((p.calibrate(0, 1, 0.9) - 0.5).abs() < 0.05);
    // Unscored (layer, distance) pairs keep the inner confidence.
    assert_eq!(p.calibrate(0, 2, 0.9), 0.9);
    assert_eq!(p.calibrate(7, 1, 0.9), 0.9);
}
