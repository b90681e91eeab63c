//! Routing hooks on the tiny Qwen3-MoE fixture: actual routing matches the fixture's HF routing
//! trace, pre-gate scores predict the next layer, and the tokens do not depend on how an expert
//! source manages memory.

mod common;

use common::{fixture, golden, load};
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::{
    ExpertBatch, ExpertLayout, ExpertSource, InMemoryExperts, NoObserver, TraceRecorder,
    generate_greedy,
};
use half::f16;
use safetensors::SafeTensors;

/// Probability margin under which a different top-k choice is a legitimate near-tie.
const NEAR_TIE: f32 = 1e-3;

#[test]
fn routing_matches_hf_trace_and_pregate_predicts_next_layer() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let bytes = std::fs::read(dir.join("routing_trace.safetensors")).expect("trace");
    let st = SafeTensors::deserialize(&bytes).expect("parse trace");
    let data = |n: &str| st.tensor(n).expect("trace tensor").data().to_vec();
    let ids_raw = data("input_ids");
    let experts_raw = data("expert_ids");
    let weights_raw = data("expert_weights");
    let margin_raw = data("topk_margin");
    let n_tokens = 64; // first sequence starts at 0 and was run from position 0
    let (layers, k) = (8usize, 4usize);
    let tokens: Vec<u32> = ids_raw
        .chunks_exact(4)
        .take(n_tokens)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
        .collect();
    let u16_at = |raw: &[u8], i: usize| u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]);

    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    let mut rec = TraceRecorder::new(true);
    for (pos, &t) in tokens.iter().enumerate() {
        model
            .forward(t, pos, &mut experts, &mut rec)
            .expect("forward");
    }
    assert_eq!(rec.routing.len(), n_tokens * layers);
    assert_eq!(rec.pregate.len(), n_tokens * (layers - 1));
    let (mut same, mut ties) = (0, 0);
    for r in &rec.routing {
        let base = (r.pos * layers + r.layer as usize) * k;
        let want: Vec<u32> = (0..k)
            .map(|j| u32::from(u16_at(&experts_raw, base + j)))
            .collect();
        let sum: f32 = r.weights.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "norm_topk_prob: weights sum to {sum}"
        );
        let mut a = r.ids.clone();
        let mut b = want.clone();
        a.sort_unstable();
        b.sort_unstable();
        if a == b {
            same += 1;
            for (j, &id) in r.ids.iter().enumerate() {
                let pos_in_trace = want.iter().position(|&x| x == id).expect("same set");
                let w = f16::from_bits(u16_at(&weights_raw, base + pos_in_trace)).to_f32();
                assert!(
                    (r.weights[j] - w).abs() < 2e-3,
                    "pos {} layer {}: weight {} vs trace {w}",
                    r.pos,
                    r.layer,
                    r.weights[j]
                );
            }
        } else {
            let margin =
                f16::from_bits(u16_at(&margin_raw, r.pos * layers + r.layer as usize)).to_f32();
            assert!(
                margin < NEAR_TIE,
                "pos {} layer {}: experts {:?} vs trace {want:?} with margin {margin}",
                r.pos,
                r.layer,
                r.ids
            );
            ties += 1;
        }
    }
    println!(
        "routing vs HF trace: {same}/{} (token, layer) identical expert sets, {ties} near-tie differences",
        rec.routing.len()
    );

    // Pre-gate recall: top-4 of layer L+1's router on layer L's MoE input vs the actual routing.
    let mut recall = vec![(0usize, 0usize); layers];
    for (pos, layer, scores) in &rec.pregate {
        assert_eq!(scores.len(), 32);
        assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        let predicted = flashmoe_engine::sampler::top_k(scores, k);
        let actual = &rec.routing[pos * layers + *layer as usize];
        assert_eq!(actual.layer, *layer);
        recall[*layer as usize].0 += actual
            .ids
            .iter()
            .filter(|id| predicted.contains(id))
            .count();
        recall[*layer as usize].1 += k;
    }
    let per_layer: Vec<f64> = recall[1..]
        .iter()
        .map(|(h, n)| *h as f64 / *n as f64)
        .collect();
    println!("pre-gate top-4 recall, layers 1..7: {per_layer:.3?} (random 0.125)");
    let mean = per_layer.iter().sum::<f64>() / per_layer.len() as f64;
    assert!(
        mean > 0.4,
        "pre-gate recall {mean:.3} barely beats random: wrong layer or input?"
    );
}

/// One cache slot: which (layer, expert) it holds, its bytes, when it was last used.
type Slot = (Option<(u32, u32)>, Vec<u8>, u64);

/// An expert source with room for only `slots` records, filled by copying (as a disk read would).
struct Budgeted<'a> {
    backing: &'a InMemoryExperts,
    slots: Vec<Slot>,
    clock: u64,
    misses: usize,
    hits: usize,
}

impl<'a> Budgeted<'a> {
    fn new(backing: &'a InMemoryExperts, slots: usize) -> Self {
        let len = backing.layout().record_len;
        Self {
            backing,
            slots: (0..slots).map(|_| (None, vec![0; len], 0)).collect(),
            clock: 0,
            misses: 0,
            hits: 0,
        }
    }
}

impl ExpertSource for Budgeted<'_> {
    fn layout(&self) -> &ExpertLayout {
        self.backing.layout()
    }
    fn experts(&mut self, layer: u32, ids: &[u32]) -> flashmoe_engine::Result<ExpertBatch<'_>> {
        let mut chosen = Vec::with_capacity(ids.len());
        for &e in ids {
            self.clock += 1;
            let hit = self.slots.iter().position(|s| s.0 == Some((layer, e)));
            let i = match hit {
                Some(i) => {
                    self.hits += 1;
                    i
                }
                None => {
                    self.misses += 1;
                    // Least recently used slot not already holding an expert of this batch.
                    let i = (0..self.slots.len())
                        .filter(|i| !chosen.contains(i))
                        .min_by_key(|&i| self.slots[i].2)
                        .expect("slots >= k");
                    self.slots[i]
                        .1
                        .copy_from_slice(self.backing.record(layer, e)?);
                    self.slots[i].0 = Some((layer, e));
                    i
                }
            };
            self.slots[i].2 = self.clock;
            chosen.push(i);
        }
        let records = chosen.iter().map(|&i| self.slots[i].1.as_slice()).collect();
        Ok(ExpertBatch::slices(records))
    }
}

#[test]
fn tokens_do_not_depend_on_expert_budget() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (mut model, experts) = load(&dir, WeightFormat::Q4_64);
    let p = &golden(&dir)[1];
    let mut all = experts;
    let reference =
        generate_greedy(&mut model, &p.input_ids, 24, &mut all, &mut NoObserver).expect("generate");
    for slots in [4, 12, 64] {
        let mut src = Budgeted::new(&all, slots);
        let got = generate_greedy(&mut model, &p.input_ids, 24, &mut src, &mut NoObserver)
            .expect("generate");
        let rate = src.hits as f64 / (src.hits + src.misses) as f64;
        println!(
            "budget {slots:>3} records: hit rate {rate:.3}, same tokens: {}",
            got == reference
        );
        assert_eq!(got, reference, "budget {slots} changed the tokens");
    }
}
