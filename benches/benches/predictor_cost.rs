//! What prediction costs the decode loop, per token: every layer's `observe_scores` (L+1 and
//! L+2), `observe` and `predict` (horizon 2, top 2k), and `next_use` (as the session feeds the
//! NextUse eviction policy), on pseudo-random routing with informative scores. Geometries:
//! the tiny fixtures' (8 x 32, k 4; 8 x 64, k 8) and a real one (Qwen3-30B-A3B: 48 x 128, k 8).
//! Throughput is in elements = tokens.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use io_sched::predictor::{Blend, LayerPrediction, Predictor, Scores};

struct Stream {
    layers: u32,
    k: usize,
    routing: Vec<Vec<u32>>,
    scores: Vec<Vec<f32>>,
}

/// `tokens` tokens of routing (xorshift) and, per (token, layer), scores naming most of the
/// next layer's experts.
fn stream(layers: u32, experts: u32, k: usize, tokens: usize) -> Stream {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = tokens * layers as usize;
    let routing: Vec<Vec<u32>> = (0..n)
        .map(|_| {
            let mut v = Vec::with_capacity(k);
            while v.len() < k {
                let e = (next() % experts as u64) as u32;
                if !v.contains(&e) {
                    v.push(e);
                }
            }
            v
        })
        .collect();
    let scores = (0..n)
        .map(|i| {
            let mut s: Vec<f32> = (0..experts).map(|_| (next() % 1000) as f32 / 1e4).collect();
            for &e in &routing[(i + 1) % n] {
                if next() % 4 != 0 {
                    s[e as usize] = 0.5;
                }
            }
            s
        })
        .collect();
    Stream {
        layers,
        k,
        routing,
        scores,
    }
}

fn run_token(
    p: &mut dyn Predictor,
    s: &Stream,
    t: usize,
    out: &mut Vec<LayerPrediction>,
    nu: &mut [f32],
) {
    let l = s.layers as usize;
    let tokens = s.routing.len() / l;
    let t = t % tokens;
    for layer in 0..s.layers {
        let i = t * l + layer as usize;
        if layer + 1 < s.layers {
            p.observe_scores(layer + 1, &s.scores[i]);
        }
        if layer + 2 < s.layers {
            p.observe_scores(layer + 2, &s.scores[(i + 1) % s.scores.len()]);
        }
        p.observe(layer, &s.routing[i]);
        p.predict(layer, 2, 2 * s.k, out);
        p.next_use(layer, nu);
        for lp in out.iter() {
            p.next_use(lp.layer, nu);
        }
    }
}

fn predictor_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("predictor_per_token");
    g.throughput(Throughput::Elements(1));
    for (name, layers, experts, k) in [
        ("8x32k4", 8u32, 32u32, 4usize),
        ("8x64k8", 8, 64, 8),
        ("48x128k8", 48, 128, 8),
    ] {
        let s = stream(layers, experts, k, 64);
        let mut out = Vec::new();
        let mut nu = vec![0.0f32; experts as usize];
        let mut blend = Blend::new(layers, experts);
        let mut scores = Scores::new(layers, experts);
        for t in 0..32 {
            run_token(&mut blend, &s, t, &mut out, &mut nu);
            run_token(&mut scores, &s, t, &mut out, &mut nu);
        }
        let mut t = 0;
        g.bench_function(format!("blend/{name}"), |b| {
            b.iter(|| {
                run_token(&mut blend, &s, t, &mut out, &mut nu);
                t += 1;
            })
        });
        g.bench_function(format!("scores/{name}"), |b| {
            b.iter(|| {
                run_token(&mut scores, &s, t, &mut out, &mut nu);
                t += 1;
            })
        });
    }
    g.finish();
}

criterion_group!(benches, predictor_cost);
criterion_main!(benches);
