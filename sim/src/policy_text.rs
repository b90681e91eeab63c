//! Text tables of `--reproduce`'s policy search: the best flashmoe policy per point, its gain
//! term by term, and every policy searched.

use std::fmt::Write as _;

use crate::reproduce::CaseResult;

/// The three tables, for the points in `out`.
pub fn best_table(out: &[CaseResult]) -> String {
    let mut s = String::new();
    s += "Best flashmoe policy on each point (replay --compare's policy space through io_sched::Session: own cache, direct reads, queue depth 32):\n\n";
    let _ = writeln!(
        s,
        "{:<31} {:>9} {:>9}  {:<22} {:>7} {:>10} {:>9} {:>7}",
        "case",
        "published",
        "trust-os",
        "best policy",
        "tok/s",
        "/published",
        "/trust-os",
        "oracle"
    );
    for c in out {
        let _ = writeln!(
            s,
            "{:<31} {:>9.2} {:>9.2}  {:<22} {:>7.2} {:>9.2}x {:>8.2}x {:>7.2}",
            c.published.case,
            c.published.tok_per_s,
            c.simulated.tok_per_s,
            c.search.best_policy,
            c.search.best.tok_per_s,
            c.best_over_published,
            c.best_over_trust_os,
            c.search.oracle.tok_per_s
        );
    }
    s += "\nGain of the best policy over the simulated trust-os run, ms/token (terms add up to the difference; flashmoe_sim::policy):\n\n";
    let _ = writeln!(
        s,
        "{:<31} {:>8} {:>8} = {:>8} {:>7} {:>8} {:>8} {:>9} {:>6} | {:>13} {:>13} {:>13}",
        "case",
        "os ms",
        "best ms",
        "compute",
        "dense",
        "cache",
        "prefetch",
        "read path",
        "other",
        "MB/token",
        "ready %",
        "overlap ms"
    );
    for c in out {
        let g = &c.gain;
        let _ = writeln!(
            s,
            "{:<31} {:>8.1} {:>8.1} = {:>8.1} {:>7.1} {:>8.1} {:>8.1} {:>9.1} {:>6.1} | {:>6.0}>{:<6.0} {:>6.1}>{:<6.1} {:>6.1}>{:<6.1}",
            c.published.case,
            g.os_ms_per_token,
            g.best_ms_per_token,
            g.compute_ms,
            g.dense_ms,
            g.cache_hits_ms,
            g.prefetch_ms,
            g.read_path_ms,
            g.other_ms,
            g.os_mb_per_token,
            g.best_mb_per_token,
            100.0 * g.os_ready,
            100.0 * g.best_ready,
            g.os_overlap_ms,
            g.best_overlap_ms
        );
    }
    s += "(compute: contention and copy work; dense: non-expert weights re-read; cache: fewer misses; prefetch: misses read ahead in time; read path: the same bytes read faster; a>b: trust-os > best)\n\n";
    s += "Every policy searched, tok/s:\n\n";
    let _ = write!(s, "{:<24}", "policy");
    for i in 0..out.len() {
        let _ = write!(s, " {:>8}", format!("#{}", i + 1));
    }
    s.push('\n');
    if let Some(first) = out.first() {
        for (r, row) in first.search.rows.iter().enumerate() {
            let _ = write!(s, "{:<24}", row.policy);
            for c in out {
                let v = c.search.rows.get(r).map_or(f64::NAN, |x| x.tok_per_s);
                let star = if c.search.rows.get(r).map(|x| &x.policy) == Some(&c.search.best_policy)
                {
                    "*"
                } else {
                    " "
                };
                let _ = write!(s, " {v:>7.2}{star}");
            }
            s.push('\n');
        }
    }
    for (i, c) in out.iter().enumerate() {
        let _ = write!(
            s,
            "{}#{} {}",
            if i == 0 { "(" } else { ", " },
            i + 1,
            c.published.case
        );
    }
    s += "; *: best)\n\n";
    s
}
