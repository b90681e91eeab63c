//! An SVG timeline: compute and stalls on one lane, reads on lanes below (demand red,
//! prefetch blue), for the first few measured tokens.

use std::fmt::Write as _;

use crate::vtime::{Span, SpanKind};

/// Renders `spans` as an SVG document.
pub fn svg(spans: &[Span], title: &str) -> String {
    let t0 = spans
        .iter()
        .map(|s| s.start_ns)
        .fold(f64::INFINITY, f64::min);
    let t1 = spans.iter().map(|s| s.end_ns).fold(0.0, f64::max);
    let (width, left, lane_h) = (1400.0, 110.0, 18.0);
    let span_ns = (t1 - t0).max(1.0);
    let x = |t: f64| left + (t - t0) / span_ns * (width - left - 10.0);
    // Greedy lane packing of reads.
    let mut lanes_end: Vec<f64> = Vec::new();
    let mut placed = Vec::new();
    let mut reads: Vec<&Span> = spans
        .iter()
        .filter(|s| matches!(s.kind, SpanKind::DemandRead | SpanKind::PrefetchRead))
        .collect();
    reads.sort_by(|a, b| a.start_ns.total_cmp(&b.start_ns));
    for r in reads {
        let lane = match lanes_end.iter().position(|&e| e <= r.start_ns) {
            Some(i) => i,
            None => {
                lanes_end.push(0.0);
                lanes_end.len() - 1
            }
        };
        lanes_end[lane] = r.end_ns;
        placed.push((lane, r));
    }
    let height = 60.0 + (lanes_end.len() as f64 + 2.0) * lane_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="16" font-size="13">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="32">{:.1} ms shown. green: compute, grey: stalled on I/O, red: demand reads, blue: prefetch reads (one lane per read in flight)</text>"#,
        span_ns / 1e6
    );
    let y0 = 44.0;
    let _ = writeln!(s, r#"<text x="10" y="{}">compute</text>"#, y0 + 13.0);
    for sp in spans
        .iter()
        .filter(|s| matches!(s.kind, SpanKind::Compute | SpanKind::Stall))
    {
        let color = if sp.kind == SpanKind::Compute {
            "#2ca02c"
        } else {
            "#999999"
        };
        let _ = writeln!(
            s,
            r#"<rect x="{:.2}" y="{y0}" width="{:.2}" height="{}" fill="{color}"><title>layer {} {:?} {:.3} ms</title></rect>"#,
            x(sp.start_ns),
            (x(sp.end_ns) - x(sp.start_ns)).max(0.5),
            lane_h - 2.0,
            sp.layer,
            sp.kind,
            (sp.end_ns - sp.start_ns) / 1e6
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="10" y="{}">SSD reads</text>"#,
        y0 + lane_h * 2.0 + 13.0
    );
    for (lane, r) in placed {
        let y = y0 + lane_h * (2.0 + lane as f64);
        let color = if r.kind == SpanKind::DemandRead {
            "#d62728"
        } else {
            "#1f77b4"
        };
        let _ = writeln!(
            s,
            r#"<rect x="{:.2}" y="{y}" width="{:.2}" height="{}" fill="{color}" stroke="white" stroke-width="0.3"><title>layer {} {:?} {:.3} ms</title></rect>"#,
            x(r.start_ns),
            (x(r.end_ns) - x(r.start_ns)).max(0.5),
            lane_h - 2.0,
            r.layer,
            r.kind,
            (r.end_ns - r.start_ns) / 1e6
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
