//! Prompt reuse on the committed default model: a prompt that extends (or shares a prefix
//! with) the cached context gives exactly the tokens of a fresh generation, and reports how
//! many prompt tokens it reused.

use flashmoe_backends::CpuBackend;
use flashmoe_engine::{
    MoeModel, NoObserver, PackedModel, PromptCache, Sampler, SchedExperts, open_scheduler,
};
use io_sched::SchedulerConfig;
use io_sched::backend::select::BackendConfig;
use std::ops::ControlFlow;
use std::path::Path;

struct Run {
    model: MoeModel<CpuBackend>,
    experts: SchedExperts,
}

fn open() -> (PackedModel, Run) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-qwen3-moe-q4");
    let m = PackedModel::open(&dir).unwrap();
    let (sched, _) = open_scheduler(
        &m,
        SchedulerConfig::with_budget(64 << 20),
        &BackendConfig::default(),
    )
    .unwrap();
    let experts = SchedExperts::new(sched, m.record).unwrap();
    let model = m.load_model(CpuBackend::new(), 512).unwrap();
    (m, Run { model, experts })
}

fn go(r: &mut Run, cache: &mut PromptCache, prompt: &[u32], n: usize) -> (Vec<u32>, usize) {
    let mut s = Sampler::greedy();
    let (g, reused) = cache
        .generate(
            &mut r.model,
            prompt,
            n,
            &[],
            &mut s,
            &mut r.experts,
            &mut NoObserver,
            &mut |_| Ok(ControlFlow::Continue(())),
        )
        .unwrap();
    (g.tokens, reused)
}

#[test]
fn reused_prefix_gives_the_tokens_of_a_fresh_generation() {
    let (m, mut r) = open();
    let turn1 = m.tokenizer.encode("The Rust programming language").unwrap();
    let mut cache = PromptCache::new();
    let (a, reused) = go(&mut r, &mut cache, &turn1, 12);
    assert_eq!(reused, 0);
    assert_eq!(cache.tokens().len(), turn1.len() + 11);

    // Turn 2 extends turn 1 and its answer.
    let mut turn2 = turn1.clone();
    turn2.extend_from_slice(&a);
    turn2.extend(m.tokenizer.encode(" Ownership is").unwrap());
    let (b, reused) = go(&mut r, &mut cache, &turn2, 12);
    // Everything cached (prompt + 11 fed answer tokens) is reused.
    assert_eq!(reused, turn1.len() + 11);
    let (fresh_b, fresh_reused) = go(&mut r, &mut PromptCache::new(), &turn2, 12);
    assert_eq!(fresh_reused, 0);
    assert_eq!(b, fresh_b, "reused context changed the tokens");

    // A prompt that diverges after turn 1 rewinds to the shared prefix.
    let mut cache2 = PromptCache::new();
    go(&mut r, &mut cache2, &turn2, 4);
    let mut other = turn1.clone();
    other.extend(m.tokenizer.encode(" is not").unwrap());
    let (c, reused) = go(&mut r, &mut cache2, &other, 8);
    assert!(
        reused >= turn1.len() - 1 && reused < other.len(),
        "reused {reused}"
    );
    let (fresh_c, _) = go(&mut r, &mut PromptCache::new(), &other, 8);
    assert_eq!(c, fresh_c, "rewound context changed the tokens");

    // The same prompt again reuses all but its last token.
    let (d, reused) = go(&mut r, &mut cache2, &other, 8);
    assert_eq!(reused, other.len() - 1);
    assert_eq!(d, fresh_c);
}

/// A model whose state cannot be rewound (like DeltaNet's) reuses only full extensions.
struct Recurrent;
impl flashmoe_engine::ContextState for Recurrent {
    fn can_rewind(&self) -> bool {
        false
    }
    fn clear_context(&mut self) {}
}

#[test]
fn state_that_cannot_rewind_is_reused_only_when_extended() {
    let (m, mut r) = open();
    let p = m.tokenizer.encode("fn main() {").unwrap();
    let mut cache = PromptCache::new();
    let (a, _) = go(&mut r, &mut cache, &p, 3);
    let held = cache.tokens().to_vec();
    let mut ext = held.clone();
    ext.extend_from_slice(&a[2..]);
    ext.push(5);
    assert_eq!(cache.reusable(&ext, &Recurrent), held.len());
    assert_eq!(cache.reusable(&ext, &r.model), held.len());
    let mut diverged = p.clone();
    diverged.push(if a[0] == 7 { 8 } else { 7 });
    assert_eq!(cache.reusable(&diverged, &Recurrent), 0);
    assert_eq!(cache.reusable(&diverged, &r.model), p.len());
}
