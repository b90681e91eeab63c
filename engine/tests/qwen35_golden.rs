//! The tiny Qwen3.5-MoE fixture (Gated DeltaNet + gated attention + shared expert) against HF
//! transformers' float32 golden outputs, on the CPU backend.
//!
//! Run with `--release` (the model runs a few hundred decode steps).

mod common;
mod qwen35_common;

use common::{golden, load, max_abs_diff};
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::sampler::{argmax, top_k};
use flashmoe_engine::{NoObserver, generate_greedy};
use qwen35_common::{DOCUMENTED_TIES, check_greedy, fixture};

/// Max |logit - golden| at the last prompt position, bf16 weights computed in f32.
///
/// Both sides compute in f32 from the same bf16 values; only summation order differs (and the
/// reference runs DeltaNet in its chunked form, we run the equivalent recurrence). The fixture's
/// own float64 reference is within 7.8e-6 of golden and HF CPU vs GPU float32 within 9.5e-6; we
/// measured < 1e-5. 1e-4 leaves 10x headroom and is far below any real bug (a wrong norm
/// offset, gate, conv or decay moves logits by > 1e-2).
const LOGIT_TOL: f32 = 1e-4;

/// Two golden top-5 logits closer than this are a near-tie: their order may differ legitimately.
const TIE: f32 = 2e-3;

/// The fixture's experts are 32 wide: 8- and 4-bit records use groups of 32 (what `flashmoe
/// pack` picks for it).
const Q8: WeightFormat = WeightFormat::Q8 { group: 32 };
const Q4: WeightFormat = WeightFormat::Q4 { group: 32 };

/// Last-position logit tolerance for a prompt whose documented tie flipped (README: "up to ~0.1").
const FLIPPED_TIE_TOL: f32 = 0.15;

#[test]
fn bf16_logits_top5_and_greedy_match_golden() {
    let Some(dir) = fixture() else { return };
    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    let (mut exact, mut tie_excused, mut total) = (0, 0, 0);
    for (i, p) in golden(&dir).iter().enumerate() {
        model.reset();
        let mut logits = Vec::new();
        for (pos, &t) in p.input_ids.iter().enumerate() {
            logits = model
                .forward(t, pos, &mut experts, &mut NoObserver)
                .expect("forward");
            let ours = top_k(&logits, 5);
            let want = &p.top5_ids[pos];
            total += 1;
            for (k, &id) in want.iter().enumerate() {
                let d = (logits[id as usize] - p.top5_logits[pos][k]).abs();
                let tol = if DOCUMENTED_TIES[i].is_some_and(|t| pos >= t.0) {
                    FLIPPED_TIE_TOL
                } else {
                    LOGIT_TOL
                };
                assert!(
                    d < tol,
                    "prompt {i} pos {pos}: logit of top-{k} id {id} off by {d}"
                );
            }
            if ours == *want {
                exact += 1;
                continue;
            }
            for k in 0..5 {
                let (a, b) = (logits[ours[k] as usize], logits[want[k] as usize]);
                assert!(
                    (a - b).abs() < TIE,
                    "prompt {i} pos {pos}: top-5 {ours:?} vs golden {want:?} differ at rank {k} beyond a near-tie ({a} vs {b})"
                );
            }
            tie_excused += 1;
        }
        let err = max_abs_diff(&logits, &p.last_logits);
        println!("prompt {i}: last-position logits max |diff| = {err:.3e}");
        match DOCUMENTED_TIES[i] {
            Some((pos, layer, margin, _)) if err >= LOGIT_TOL => {
                println!(
                    "prompt {i}: the documented routing near-tie (position {pos}, layer {layer}, margin {margin:e}) resolved the other way"
                );
                assert!(
                    err < FLIPPED_TIE_TOL,
                    "prompt {i}: last logits differ by {err}"
                );
            }
            _ => assert!(err < LOGIT_TOL, "prompt {i}: last logits differ by {err}"),
        }
        check_greedy(i, &p.input_ids, &p.greedy_ids, &mut model, &mut experts);
    }
    println!(
        "top-5 at every prompt position: {exact}/{total} identical, {tie_excused} differ only within near-ties (< {TIE})"
    );
}

/// Agreement of a quantized model with HF's golden: per-position top-1 over the prompts, and
/// along HF's greedy continuations fed back token by token (teacher-forced: the argmax after
/// each golden token is the next golden token), so one near-tie does not decide the rest of a
/// sequence. Free-running greedy lengths are printed beside them.
struct Agreement {
    top1: usize,
    positions: usize,
    followed: usize,
    steps: usize,
}

fn quantized_agreement(format: WeightFormat) -> Option<Agreement> {
    let dir = fixture()?;
    let (mut model, mut experts) = load(&dir, format);
    let mut a = Agreement {
        top1: 0,
        positions: 0,
        followed: 0,
        steps: 0,
    };
    for (i, p) in golden(&dir).iter().enumerate() {
        model.reset();
        let mut logits = Vec::new();
        for (pos, &t) in p.input_ids.iter().enumerate() {
            logits = model
                .forward(t, pos, &mut experts, &mut NoObserver)
                .expect("forward");
            a.positions += 1;
            a.top1 += usize::from(argmax(&logits) == Some(p.top5_ids[pos][0]));
        }
        for (j, &want) in p.greedy_ids.iter().enumerate() {
            a.steps += 1;
            a.followed += usize::from(argmax(&logits) == Some(want));
            logits = model
                .forward(want, p.input_ids.len() + j, &mut experts, &mut NoObserver)
                .expect("forward");
        }
        let greedy = generate_greedy(
            &mut model,
            &p.input_ids,
            p.greedy_ids.len(),
            &mut experts,
            &mut NoObserver,
        )
        .expect("generate");
        let same = greedy
            .iter()
            .zip(&p.greedy_ids)
            .take_while(|(a, b)| a == b)
            .count();
        println!("{format:?} prompt {i}: free-running greedy matches golden for {same}/40 tokens");
    }
    println!(
        "{format:?}: top-1 agreement {}/{}; greedy followed teacher-forced at {}/{}",
        a.top1, a.positions, a.followed, a.steps
    );
    Some(a)
}

#[test]
fn q8_experts_keep_greedy_continuations() {
    let Some(a) = quantized_agreement(Q8) else {
        return;
    };
    assert!(
        a.followed as f64 >= 0.95 * a.steps as f64,
        "8-bit experts: golden greedy followed at only {}/{}",
        a.followed,
        a.steps
    );
}

#[test]
fn q4_experts_keep_top1_agreement() {
    let Some(a) = quantized_agreement(Q4) else {
        return;
    };
    assert!(
        a.top1 as f64 >= 0.9 * a.positions as f64,
        "4-bit experts: top-1 agreement {}/{} < 90%",
        a.top1,
        a.positions
    );
}

#[test]
fn recurrent_state_restarts_at_position_zero_and_refuses_rewinds() {
    let Some(dir) = fixture() else { return };
    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    let p = &golden(&dir)[1];
    let mut run = || {
        let mut last = Vec::new();
        for (pos, &t) in p.input_ids.iter().enumerate() {
            last = model
                .forward(t, pos, &mut experts, &mut NoObserver)
                .expect("forward");
        }
        last
    };
    let first = run();
    // Without reset(): position 0 restarts the sequence, DeltaNet states included.
    let again = run();
    assert_eq!(
        first, again,
        "a second pass from position 0 must give identical logits"
    );
    let err = model
        .forward(p.input_ids[0], 3, &mut experts, &mut NoObserver)
        .expect_err("rewinding a recurrent state must be refused");
    assert!(err.to_string().contains("DeltaNet"), "{err}");
}

/// The prompt cache on the hybrid family: its DeltaNet state cannot be rewound, so a prompt
/// that only shares a prefix with the cached context (or repeats it exactly) is prefilled
/// again, and every continuation gives a fresh generation's tokens.
#[test]
fn prompt_cache_reuses_deltanet_state_only_when_extended() {
    use flashmoe_engine::{ContextState, PromptCache, Sampler};
    use std::ops::ControlFlow;
    let Some(dir) = fixture() else { return };
    let (mut model, mut experts) = load(&dir, WeightFormat::Bf16);
    assert!(!model.can_rewind());
    let mut go = |model: &mut flashmoe_engine::MoeModel<_>, cache: &mut PromptCache, p: &[u32]| {
        let (g, reused) = cache
            .generate(
                model,
                p,
                6,
                &[],
                &mut Sampler::greedy(),
                &mut experts,
                &mut NoObserver,
                &mut |_| Ok(ControlFlow::Continue(())),
            )
            .unwrap();
        (g.tokens, reused)
    };
    let prompts = golden(&dir);
    let turn1 = prompts[0].input_ids.clone();
    let mut cache = PromptCache::new();
    let (a, _) = go(&mut model, &mut cache, &turn1);
    let held = cache.tokens().to_vec();
    // Extends everything held: reused in full, same tokens as from scratch.
    let mut ext = turn1.clone();
    ext.extend_from_slice(&a);
    ext.extend_from_slice(&turn1[..2]);
    let (b, reused) = go(&mut model, &mut cache, &ext);
    assert_eq!(reused, held.len());
    let (fresh_b, _) = go(&mut model, &mut PromptCache::new(), &ext);
    assert_eq!(b, fresh_b, "extended DeltaNet context changed the tokens");
    // Shares only a prefix: prefilled from scratch, same tokens.
    let mut diverged = turn1[..turn1.len() - 1].to_vec();
    diverged.push(if turn1[turn1.len() - 1] == 7 { 8 } else { 7 });
    let (c, reused) = go(&mut model, &mut cache, &diverged);
    assert_eq!(reused, 0);
    let (fresh_c, _) = go(&mut model, &mut PromptCache::new(), &diverged);
    assert_eq!(c, fresh_c);
    // Exactly the held context again: not reused (its last token would be applied twice).
    let again = cache.tokens().to_vec();
    assert_eq!(cache.reusable(&again, &model), 0);
}
