//! The policy search of `--reproduce` and the throttling of `--costs`: invariants on tok/s
//! relations, labels and sums (never on time itself).

use clap::Parser;
use flashmoe_sim::replay::rows::{compare_rows, is_realisable_policy};
use serde_json::Value;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sim: flashmoe_sim::cli::SimArgs,
}

fn run_json(args: &[&str]) -> Value {
    let mut all = vec!["sim"];
    all.extend_from_slice(args);
    let cli = Cli::parse_from(all);
    let out = flashmoe_sim::cli::run(&cli.sim).unwrap();
    serde_json::from_str(&out).unwrap()
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[test]
fn the_best_policy_is_replays_fastest_row_and_its_gain_adds_up() {
    let cases = run_json(&["--reproduce", "--json", "--tokens", "12", "--warmup", "12"]);
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), flashmoe_sim::reproduce::PUBLISHED.len());
    // The space searched is replay's own (the horizon-2 rows on synthetic two-ahead scores),
    // less its baselines and oracles.
    let space: Vec<String> = compare_rows(flashmoe_sim::policy::TIE_PCT, true)
        .into_iter()
        .filter(|k| is_realisable_policy(*k))
        .map(|k| k.label())
        .collect();
    for row in ["d scores+4 tie50 idle", "d blend h2 next-use"] {
        assert!(space.iter().any(|l| l == row), "{row} not in {space:?}");
    }
    for c in cases {
        let case = c["published"]["case"].as_str().unwrap();
        let rows = c["search"]["rows"].as_array().unwrap();
        let labels: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
        assert_eq!(labels, space, "{case}");
        let best = f(c, "/search/best/tok_per_s");
        for r in rows {
            assert!(
                best >= f(r, "/tok_per_s"),
                "{case}: {} beats the best",
                r["policy"]
            );
        }
        let best_label = c["search"]["best_policy"].as_str().unwrap();
        let best_row = rows.iter().find(|r| r["policy"] == best_label).unwrap();
        assert_eq!(f(best_row, "/tok_per_s"), best, "{case}");
        let g = &c["gain"];
        let terms = [
            "compute_ms",
            "dense_ms",
            "cache_hits_ms",
            "prefetch_ms",
            "read_path_ms",
        ];
        let sum: f64 = terms.iter().map(|t| f(g, &format!("/{t}"))).sum();
        let diff = f(g, "/os_ms_per_token") - f(g, "/best_ms_per_token");
        // The per-layer sums cover the token time: what they leave out is rounding.
        assert!(
            (sum - diff).abs() <= 1e-6 * f(g, "/os_ms_per_token"),
            "{case}: terms {sum} vs {diff}"
        );
        let ratio = f(c, "/simulated/tok_per_s") * f(c, "/best_over_trust_os");
        assert!(
            (ratio - best).abs() <= 1e-12 * best,
            "{case}: {ratio} vs {best}"
        );
    }
}

#[test]
fn throttled_tok_s_never_beats_unthrottled_and_equals_it_before_the_throttle_point() {
    let rows = run_json(&["--costs", "--json", "--tokens", "12", "--warmup", "12"]);
    let rows = rows.as_array().unwrap();
    let mut throttled = 0;
    for r in rows {
        let c = &r["costs"];
        let t = &c["throttle"];
        let full = f(t, "/unthrottled_tok_per_s");
        let sustained = f(t, "/sustained_tok_per_s");
        assert!((full - f(c, "/tok_per_s")).abs() <= 1e-9 * full, "{r}");
        assert!(sustained <= full, "{r}");
        let th = t["time_to_throttle_s"].as_f64();
        // Throttling starts exactly when the run's power is over the envelope.
        assert_eq!(th.is_some(), f(c, "/thermal_ratio") > 1.0, "{r}");
        if th.is_some() {
            throttled += 1;
            assert!(sustained < full, "{r}");
        }
        for a in t["after"].as_array().unwrap() {
            let (m, rate) = (f(a, "/minutes"), f(a, "/tok_per_s"));
            match th {
                Some(th) if m * 60.0 > th => assert_eq!(rate, sustained, "{r}"),
                _ => assert_eq!(rate, full, "{r}"),
            }
            assert!(f(a, "/tokens") <= full * m * 60.0 * (1.0 + 1e-12), "{r}");
        }
    }
    assert!(
        throttled > 0,
        "no preset runs over its envelope: the model is untested"
    );
}
