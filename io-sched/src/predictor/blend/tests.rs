use super::*;

/// A small deterministic generator (xorshift) for the synthetic streams.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `k` distinct experts of `experts`, drawn at random.
fn draw(rng: &mut Rng, experts: u32, k: usize) -> Vec<u32> {
    let mut v = Vec::new();
    while v.len() < k {
        let e = rng.below(experts as u64) as u32;
        if !v.contains(&e) {
            v.push(e);
        }
    }
    v
}

/// Share of each predicted layer's routed experts that its candidates held, per token.
fn run_stream(
    p: &mut Blend,
    routing: &[Vec<Vec<u32>>],
    mut scores: impl FnMut(usize, u32) -> Option<Vec<f32>>,
    max: usize,
) -> Vec<f64> {
    let layers = routing[0].len() as u32;
    let mut out = Vec::new();
    let mut pending: Option<(usize, u32, Vec<u32>)> = None;
    let mut recall = Vec::new();
    for (t, tok) in routing.iter().enumerate() {
        let (mut hit, mut all) = (0usize, 0usize);
        for l in 0..layers {
            if let Some((pt, pl, cands)) = pending.take()
                && (pt, pl) == (t, l)
            {
                all += tok[l as usize].len();
                hit += tok[l as usize].iter().filter(|e| cands.contains(e)).count();
            }
            let next = if l + 1 < layers {
                (t, l + 1)
            } else {
                (t + 1, 0)
            };
            if let Some(s) = scores(next.0, next.1) {
                p.observe_scores(next.1, &s);
            }
            p.observe(l, &tok[l as usize]);
            p.predict(l, 1, max, &mut out);
            if let Some(lp) = out.first() {
                pending = Some((
                    next.0,
                    next.1,
                    lp.candidates.iter().map(|c| c.expert).collect(),
                ));
            }
        }
        recall.push(if all == 0 {
            0.0
        } else {
            hit as f64 / all as f64
        });
    }
    recall
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[test]
fn recall_rises_on_a_periodic_stream_without_scores() {
    // 4 layers x 16 experts, k = 2; tokens cycle through 3 routings, so each layer's routing
    // follows from the layer before (cross-layer transitions), never from the previous token.
    let mut rng = Rng(7);
    let cycle: Vec<Vec<Vec<u32>>> = (0..3)
        .map(|_| (0..4).map(|_| draw(&mut rng, 16, 2)).collect())
        .collect();
    let routing: Vec<_> = (0..150).map(|t| cycle[t % 3].clone()).collect();
    let mut p = Blend::new(4, 16);
    let recall = run_stream(&mut p, &routing, |_, _| None, 2);
    let (early, late) = (mean(&recall[1..3]), mean(&recall[100..]));
    assert!(
        early < 0.7,
        "nothing learned yet: {early} ({:?})",
        &recall[..12]
    );
    assert!(late >= 0.95, "learned the cycle: {late} (early {early})");
    // The transition weight carries it.
    let w = p.model_weights(1, 1).unwrap();
    assert!(w[6] > 0.5, "transition weight {w:?}");
}

#[test]
fn confidences_match_measured_precision() {
    // Pre-gate scores that put the true experts in their top k 60% of the time (else a decoy),
    // on routing without history structure: the blend must say ~0.6 for its top k.
    let (layers, experts, k) = (4u32, 32u32, 4usize);
    let mut rng = Rng(11);
    let routing: Vec<Vec<Vec<u32>>> = (0..400)
        .map(|_| (0..layers).map(|_| draw(&mut rng, experts, k)).collect())
        .collect();
    let mut srng = Rng(5);
    let mut p = Blend::new(layers, experts);
    let mut out = Vec::new();
    let (mut said, mut hit, mut n) = (0.0f64, 0usize, 0usize);
    for (t, tok) in routing.iter().enumerate() {
        for l in 0..layers {
            if l + 1 < layers {
                let mut s: Vec<f32> = (0..experts).map(|_| srng.f32() * 0.1).collect();
                for &e in &tok[l as usize + 1] {
                    let target = if srng.f32() < 0.6 {
                        e
                    } else {
                        srng.below(experts as u64) as u32
                    };
                    s[target as usize] = 0.5 + srng.f32() * 0.1;
                }
                p.observe_scores(l + 1, &s);
            }
            p.observe(l, &tok[l as usize]);
            p.predict(l, 1, k, &mut out);
            if t >= 200
                && l + 1 < layers
                && let Some(lp) = out.first()
            {
                for c in &lp.candidates {
                    said += c.confidence as f64;
                    n += 1;
                    hit += tok[l as usize + 1].contains(&c.expert) as usize;
                }
            }
        }
    }
    let (said, measured) = (said / n as f64, hit as f64 / n as f64);
    assert!(
        (said - measured).abs() < 0.08,
        "confidence {said:.3} vs precision {measured:.3}"
    );
    assert!(measured > 0.5, "the scores' signal is used: {measured:.3}");
}

#[test]
fn scores_rank_from_the_first_token() {
    let mut p = Blend::new(2, 8);
    p.observe_scores(1, &[0.0, 0.1, 0.0, 0.7, 0.0, 0.2, 0.0, 0.0]);
    p.observe(0, &[0, 1]);
    let mut out = Vec::new();
    p.predict(0, 1, 2, &mut out);
    let e: Vec<u32> = out[0].candidates.iter().map(|c| c.expert).collect();
    assert_eq!(e, [3, 5]);
}

#[test]
fn next_use_waits_prefer_the_predicted_and_fall_back_to_history() {
    let mut p = Blend::new(2, 8);
    let mut probs = [0.0f32; 8];
    assert!(!p.next_use(1, &mut probs), "nothing observed yet");
    for _ in 0..30 {
        p.observe(0, &[1, 2]);
        p.observe(1, &[5, 6]);
    }
    // History of layer 1: its experts 5 and 6 recur (expected back at the next demand), the
    // others never come.
    assert!(p.next_use(1, &mut probs));
    assert!(probs[5] < 1.5 && probs[0] > 10.0, "{probs:?}");
    // A live prediction for layer 1 from fresh scores that name 3 (the model still weighs
    // history more than one odd score, but 3 rises above the other unused experts).
    p.observe_scores(1, &[0.0, 0.0, 0.0, 0.9, 0.0, 0.05, 0.05, 0.0]);
    p.observe(0, &[1, 2]);
    let mut out = Vec::new();
    p.predict(0, 1, 4, &mut out);
    assert!(p.next_use(1, &mut probs));
    assert!(probs[3] < probs[0], "{probs:?}");
}

#[test]
fn bad_input_is_ignored() {
    let mut p = Blend::new(2, 4);
    p.observe(9, &[0]);
    p.observe(0, &[7, 1, 1]);
    p.observe_scores(5, &[1.0]);
    p.observe_scores(1, &[f32::NAN, f32::INFINITY, 0.5]);
    let mut out = Vec::new();
    p.predict(0, 3, 4, &mut out);
    p.predict(7, 1, 4, &mut out);
    assert!(out.is_empty());
    p.predict(0, 1, 4, &mut out);
    assert!(out[0].candidates.iter().all(|c| c.confidence.is_finite()));
    let mut probs = [0.0; 4];
    assert!(!p.next_use(9, &mut probs));
}

#[test]
fn next_use_waits_are_calibrated_on_independent_routing() {
    // One layer routing 2 of 8 experts per token, independently of the past, with fixed
    // odds: each expert's wait is geometric, mean 1 / P(routed in a token). The rate the
    // waits imply, 1 / wait, averaged over time must match P (the mean of the waits
    // themselves is biased up by Jensen's inequality wherever the estimate is noisy).
    let weights = [8.0f64, 6.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.5];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut draw = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut p = Blend::new(1, 8);
    let mut routed = [0u32; 8];
    let tokens = 4000;
    let mut waits = [0.0f32; 8];
    let mut rate = [0.0f64; 8];
    let mut samples = 0;
    for t in 0..tokens {
        let mut pick = Vec::with_capacity(2);
        while pick.len() < 2 {
            let total: f64 = (0..8)
                .filter(|j| !pick.contains(j))
                .map(|j| weights[j as usize])
                .sum();
            let mut u = draw() * total;
            for j in (0..8u32).filter(|j| !pick.contains(j)) {
                u -= weights[j as usize];
                if u <= 0.0 {
                    pick.push(j);
                    break;
                }
            }
        }
        for &j in &pick {
            routed[j as usize] += 1;
        }
        p.observe(0, &pick);
        assert!(p.next_use(0, &mut waits));
        if t >= tokens / 2 {
            for (r, w) in rate.iter_mut().zip(&waits) {
                *r += 1.0 / *w as f64;
            }
            samples += 1;
        }
    }
    let report: Vec<String> = (0..8)
        .map(|j| {
            let want = routed[j] as f64 / tokens as f64;
            format!("{j}: {:.3} vs P {want:.3}", rate[j] / samples as f64)
        })
        .collect();
    for j in 0..8 {
        let want = routed[j] as f64 / tokens as f64;
        let got = rate[j] / samples as f64;
        assert!(
            (got / want - 1.0).abs() < 0.15,
            "mean 1 / expected wait vs P(routed): {report:?}"
        );
    }
}
