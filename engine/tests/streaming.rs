//! Experts streamed through io-sched from a packed fixture: the tokens do not depend on the
//! cache budget, the read backend or the predictor, and pre-gate hints turn into prefetch hits.

mod common;

use common::{fixture, golden, load, pack_fixture};
use flashmoe_backends::CpuBackend;
use flashmoe_backends::quant::WeightFormat;
use flashmoe_engine::{
    NoObserver, PackedModel, Prediction, PrefetchPolicy, SchedExperts, generate_greedy,
    open_scheduler, open_streamed, streamed,
};
use io_sched::backend::BackendKind;
use io_sched::backend::select::BackendConfig;
use io_sched::metrics::LayerMetrics;
use io_sched::{SchedulerConfig, SessionConfig};

const TOKENS: usize = 24;

/// The fixture packed to 4 bits in a temporary directory, its model on the CPU, and its
/// experts streamed through io-sched at a quarter of their bytes.
fn streamed_q4(
    dir: &std::path::Path,
) -> (
    tempfile::TempDir,
    PackedModel,
    flashmoe_engine::MoeModel<CpuBackend>,
    SchedExperts,
) {
    let (tmp, packed) = pack_fixture(dir, 4);
    let m = PackedModel::open(&packed).expect("open packed");
    let (sched, _) = open_scheduler(
        &m,
        SchedulerConfig::with_budget(m.expert_bytes() / 4),
        &BackendConfig::default(),
    )
    .expect("scheduler");
    let model = m.load_model(CpuBackend::new(), 256).expect("model");
    let experts = SchedExperts::new(sched, m.record).expect("source");
    (tmp, m, model, experts)
}

/// Greedy tokens through io-sched, and the scheduler's totals; `None` if the backend cannot
/// start here (the reason is printed).
fn run(
    m: &PackedModel,
    prompt: &[u32],
    budget: u64,
    kind: Option<BackendKind>,
    pregate: bool,
) -> Option<(Vec<u32>, LayerMetrics)> {
    run_chunked(m, prompt, budget, kind, pregate, None)
}

/// [`run`] with the prompt in chunks of `chunk` tokens (`None`: the model's default).
fn run_chunked(
    m: &PackedModel,
    prompt: &[u32],
    budget: u64,
    kind: Option<BackendKind>,
    pregate: bool,
    chunk: Option<usize>,
) -> Option<(Vec<u32>, LayerMetrics)> {
    let backend = BackendConfig::default().kind(kind);
    let (sched, _) = match open_scheduler(m, SchedulerConfig::with_budget(budget), &backend) {
        Ok(s) => s,
        Err(e) => {
            println!("SKIP backend {kind:?}: {e}");
            return None;
        }
    };
    let mut model = m.load_model(CpuBackend::new(), 256).expect("model");
    if let Some(n) = chunk {
        model.set_prefill_chunk(n);
    }
    let mode = if pregate {
        Prediction::Pregate
    } else {
        Prediction::None
    };
    let k = m.config.top_k;
    let policy = SessionConfig::new(k).with_per_layer(k + 2);
    let (mut experts, mut obs) = streamed(sched.clone(), m.record, mode, policy).expect("source");
    let out =
        generate_greedy(&mut model, prompt, TOKENS, &mut experts, &mut obs).expect("generate");
    Some((out, sched.metrics().total()))
}

#[test]
fn same_tokens_whatever_the_budget_and_backend() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_tmp, packed) = pack_fixture(&dir, 4);
    let m = PackedModel::open(&packed).expect("open packed");
    let p = &golden(&dir)[1];
    let (mut mem_model, mut mem) = load(&dir, WeightFormat::Q4_64);
    let want = generate_greedy(
        &mut mem_model,
        &p.input_ids,
        TOKENS,
        &mut mem,
        &mut NoObserver,
    )
    .expect("in-memory generate");
    let slot = m.experts.max_read_len();
    let k = m.config.top_k as u64;
    let all = slot * (m.config.num_layers * m.config.num_experts) as u64;
    for kind in [BackendKind::IoUring, BackendKind::Pread, BackendKind::Mmap] {
        for budget in [k * slot, (k + 3) * slot, all / 4, all] {
            for pregate in [false, true] {
                let Some((got, t)) = run(&m, &p.input_ids, budget, Some(kind), pregate) else {
                    continue;
                };
                println!(
                    "{kind:?} budget {} slots pregate {pregate}: hit rate {:.3}, prefetch used {}",
                    budget / slot,
                    t.hit_rate(),
                    t.prefetch_used
                );
                assert_eq!(
                    got,
                    want,
                    "{kind:?} with a budget of {} slots (pregate {pregate}) changed the tokens",
                    budget / slot
                );
                assert_eq!(t.failed_loads, 0);
            }
        }
    }
}

#[test]
fn pregate_hints_become_prefetch_hits() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_tmp, packed) = pack_fixture(&dir, 4);
    let m = PackedModel::open(&packed).expect("open packed");
    let p = &golden(&dir)[0];
    let budget = m.expert_bytes() / 4;
    // Token by token: a chunked prompt reads each union's next group ahead (a prefetch
    // without any prediction), and this test is about what predicted hints bring.
    let (plain, t0) =
        run_chunked(&m, &p.input_ids, budget, None, false, Some(1)).expect("auto backend");
    let (hinted, t1) =
        run_chunked(&m, &p.input_ids, budget, None, true, Some(1)).expect("auto backend");
    println!(
        "25% budget: without hints hit rate {:.3}; pre-gate hit rate {:.3}, precision {:.3}, recall {:.3}",
        t0.hit_rate(),
        t1.hit_rate(),
        t1.prefetch_precision(),
        t1.prefetch_recall()
    );
    assert_eq!(t0.prefetch_used, 0);
    assert!(
        t1.prefetch_used > 0,
        "pre-gate hints produced no prefetch hit"
    );
    assert_eq!(hinted, plain, "pre-gate hints changed the tokens");
}

/// The default policy (blend, cost-aware, next-use eviction) prefetches at a quarter of the
/// experts' bytes, predicts nothing where the cache holds every expert, and never changes the
/// tokens.
#[test]
fn the_default_blend_prefetches_and_a_cache_of_every_expert_predicts_nothing() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_tmp, packed) = pack_fixture(&dir, 4);
    let m = PackedModel::open(&packed).expect("open packed");
    let p = &golden(&dir)[0];
    let every =
        m.experts.max_read_len() * (m.experts.num_layers() as u64 * m.experts.num_experts() as u64);
    let (want, _) = run(&m, &p.input_ids, every, None, false).expect("auto backend");
    let policy = PrefetchPolicy::new();
    for (budget, predicts) in [(m.expert_bytes() / 4, true), (every, false)] {
        let eviction = policy.eviction_for(&Prediction::Blend).expect("eviction");
        let cfg = SchedulerConfig::with_budget(budget).eviction(eviction);
        let (sched, _) = open_scheduler(&m, cfg, &BackendConfig::default()).expect("scheduler");
        let session = policy
            .session_config(m.config.top_k, &Prediction::Blend)
            .expect("policy");
        let mut model = m.load_model(CpuBackend::new(), 256).expect("model");
        model.set_prefill_chunk(1);
        let (mut experts, mut obs) =
            streamed(sched.clone(), m.record, Prediction::Blend, session).expect("source");
        let out = generate_greedy(&mut model, &p.input_ids, TOKENS, &mut experts, &mut obs)
            .expect("generate");
        assert_eq!(out, want, "budget {budget}: the policy changed the tokens");
        let t = sched.metrics().total();
        if predicts {
            assert_eq!(obs.predictor_name(), "blend");
            assert!(t.prefetch_used > 0, "blend hints produced no prefetch hit");
        } else {
            assert_eq!(obs.predictor_name(), "none");
            assert_eq!((obs.stats().hinted, t.prefetch_issued), (0, 0));
        }
    }
}

/// The default policy preloads every expert when the budget holds them all (then every demand
/// hits and nothing more is read), nothing below that, and `preload(true)` fills a smaller
/// cache's free slots; the tokens never change.
#[test]
fn the_default_policy_preloads_a_cache_that_holds_every_expert() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_tmp, packed) = pack_fixture(&dir, 4);
    let m = PackedModel::open(&packed).expect("open packed");
    let p = &golden(&dir)[0];
    let records = m.experts.num_layers() as u64 * m.experts.num_experts() as u64;
    let every = m.experts.max_read_len() * records;
    let quarter = every / 4;
    let (want, _) = run(&m, &p.input_ids, every, None, false).expect("auto backend");
    for (budget, policy, preloads) in [
        (every, PrefetchPolicy::new(), Some(records as usize)),
        (quarter, PrefetchPolicy::new(), None),
        (
            quarter,
            PrefetchPolicy::new().preload(true),
            Some(records as usize / 4),
        ),
        (every, PrefetchPolicy::new().preload(false), None),
    ] {
        let s = open_streamed(
            &m,
            budget,
            &BackendConfig::default(),
            Prediction::Blend,
            &policy,
        )
        .expect("streamed");
        let sched = s.scheduler.clone();
        let slots = sched.capacity().0;
        assert_eq!(
            s.preloaded.map(|g| g.read),
            preloads,
            "budget {budget}, {policy:?}"
        );
        if let Some(g) = s.preloaded {
            assert_eq!((g.cached, g.read), (slots, slots));
            assert_eq!(g.bytes, slots as u64 * m.experts.max_read_len());
        }
        let mut model = m.load_model(CpuBackend::new(), 256).expect("model");
        let (mut experts, mut obs) = (s.experts, s.prefetch);
        let out = generate_greedy(&mut model, &p.input_ids, TOKENS, &mut experts, &mut obs)
            .expect("generate");
        assert_eq!(out, want, "budget {budget}: preloading changed the tokens");
        let t = sched.metrics().total();
        if budget == every && preloads.is_some() {
            assert_eq!(
                (t.misses, t.bytes_read()),
                (0, 0),
                "all preloaded, all hits"
            );
            assert_eq!(t.hits, t.demanded);
        } else if preloads.is_none() {
            assert_eq!((t.preloaded, t.preload_bytes), (0, 0));
            assert!(t.misses > 0);
        }
    }
}

#[test]
fn budget_below_top_k_is_refused_clearly() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (_tmp, packed) = pack_fixture(&dir, 4);
    let m = PackedModel::open(&packed).expect("open packed");
    let slot = m.experts.max_read_len();
    let err = open_scheduler(
        &m,
        SchedulerConfig::with_budget(3 * slot),
        &BackendConfig::default(),
    )
    .err()
    .expect("3 slots for top-4 routing")
    .to_string();
    assert!(err.contains("top_k = 4"), "{err}");
}

#[test]
fn trace_file_holds_routing_and_pregate_scores() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (tmp, m, mut model, mut experts) = streamed_q4(&dir);
    let p = &golden(&dir)[2];
    let c = &m.config;
    let path = tmp.path().join("run.trace");
    let mut sink = flashmoe_engine::TraceSink::create(
        &path,
        c.num_layers as u32,
        c.num_experts as u32,
        c.top_k as u32,
        true,
    )
    .expect("create trace");
    let mut rec = flashmoe_engine::TraceRecorder::new(true);
    let mut obs = flashmoe_engine::Tee(&mut sink, &mut rec);
    generate_greedy(&mut model, &p.input_ids, 8, &mut experts, &mut obs).expect("generate");
    let tokens = sink.finish().expect("finish trace");
    let steps = p.input_ids.len() + 7;
    assert_eq!(tokens, steps as u64);
    let t = io_sched::trace::Trace::read(&path).expect("read trace back");
    assert_eq!(t.tokens(), tokens);
    for r in &rec.routing {
        assert_eq!(t.experts_at(r.pos as u64, r.layer), r.ids.as_slice());
    }
    for (pos, layer, scores) in &rec.pregate {
        let got = t
            .scores_at(*pos as u64, layer - 1)
            .expect("trace has scores");
        let err = got
            .iter()
            .zip(scores)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            err < 1e-3,
            "token {pos} layer {layer}: scores differ by {err} (f16)"
        );
    }
}

#[test]
fn far_trace_holds_the_same_routing_and_scores_two_layers_ahead() {
    let Some(dir) = fixture("tiny-qwen3-moe") else {
        return;
    };
    let (tmp, m, mut model, mut experts) = streamed_q4(&dir);
    let p = &golden(&dir)[2];
    let c = &m.config;
    let (layers, e, k) = (c.num_layers as u32, c.num_experts as u32, c.top_k as u32);
    let (near_path, far_path) = (tmp.path().join("near.trace"), tmp.path().join("far.trace"));
    let mut near =
        flashmoe_engine::TraceSink::create(&near_path, layers, e, k, true).expect("near");
    let mut far = flashmoe_engine::TraceSink::create(&far_path, layers, e, k, true)
        .expect("far")
        .far();
    let mut obs = flashmoe_engine::Tee(&mut near, &mut far);
    generate_greedy(&mut model, &p.input_ids, 8, &mut experts, &mut obs).expect("generate");
    let tokens = near.finish().expect("near");
    assert_eq!(far.finish().expect("far"), tokens);
    let (n, f) = (
        io_sched::trace::Trace::read(&near_path).expect("near back"),
        io_sched::trace::Trace::read(&far_path).expect("far back"),
    );
    assert_eq!(n.ids, f.ids, "one run, one routing");
    for t in 0..tokens {
        for l in 0..layers {
            let s = f.scores_at(t, l).expect("far scores");
            let sum: f32 = s.iter().sum();
            if l + 2 < layers {
                assert!(
                    (sum - 1.0).abs() < 1e-2,
                    "token {t} layer {l}: probabilities ({sum})"
                );
                assert_ne!(
                    s,
                    n.scores_at(t, l).expect("near"),
                    "another router's scores"
                );
            } else {
                assert_eq!(sum, 0.0, "no layer two ahead of {l}");
            }
        }
    }
}
