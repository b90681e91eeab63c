//! A bounded load test on loopback: 32 concurrent clients, 3 requests each (a fixed count),
//! streamed and not. Every request completes with its own prompt's text (no cross-talk) or
//! gets a 429 to retry; the server stays up and its memory stays flat. Requests/s and time to
//! first token are printed (measured on a shared machine; never asserted).

mod support;

use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Instant;
use support::{Server, default_model};

const PROMPTS: [&str; 4] = [
    "The Rust programming language",
    "fn main() {",
    "Ownership is a set of rules",
    "A trait defines",
];

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One request: (status, text, seconds to the first byte of the body).
fn one(port: u16, prompt: &str, stream: bool) -> (u16, String, f64) {
    let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0,
                      "stream": stream})
    .to_string();
    let t = Instant::now();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 1];
    let n = c.read(&mut first).unwrap();
    let ttft = t.elapsed().as_secs_f64();
    let mut raw = first[..n].to_vec();
    let _ = c.read_to_end(&mut raw);
    let r = support::parse_response(&raw);
    if r.status != 200 {
        return (r.status, r.text(), ttft);
    }
    let text = if stream {
        r.sse()
            .iter()
            .filter(|d| d.as_str() != "[DONE]")
            .map(|d| {
                serde_json::from_str::<serde_json::Value>(d).unwrap()["choices"][0]["text"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    } else {
        r.json()["choices"][0]["text"].as_str().unwrap().to_string()
    };
    (200, text, ttft)
}

#[test]
fn thirty_two_clients_get_their_own_text_or_429() {
    let s = Server::start(&default_model(), &["--queue", "8"]);
    let expected: HashMap<&str, String> = PROMPTS
        .iter()
        .map(|p| (*p, one(s.port, p, false).1))
        .collect();
    let rss_before = rss_kb(s.child.id());
    let t = Instant::now();
    let port = s.port;
    let handles: Vec<_> = (0..32)
        .map(|i| {
            std::thread::spawn(move || {
                (0..3)
                    .map(|j| {
                        let p = PROMPTS[(i + j) % PROMPTS.len()];
                        let (status, text, ttft) = one(port, p, (i + j) % 2 == 0);
                        (p, status, text, ttft)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = t.elapsed().as_secs_f64();
    let mut ok = 0;
    let mut ttfts = Vec::new();
    for (p, status, text, ttft) in &results {
        match status {
            200 => {
                assert_eq!(text, &expected[p], "cross-talk: prompt {p:?} got {text:?}");
                ok += 1;
                ttfts.push(*ttft);
            }
            429 => assert!(text.contains("queue_full"), "{text}"),
            other => panic!("status {other}: {text}"),
        }
    }
    assert_eq!(results.len(), 96);
    assert!(ok > 0, "every request was refused");
    ttfts.sort_by(f64::total_cmp);
    let pct = |q: f64| ttfts[((ttfts.len() - 1) as f64 * q) as usize];
    eprintln!(
        "load: 96 requests in {secs:.2} s ({:.1} req/s, {ok} answered, {} got 429), time to first byte p50 {:.0} ms p99 {:.0} ms (shared machine)",
        96.0 / secs,
        96 - ok,
        pct(0.5) * 1e3,
        pct(0.99) * 1e3
    );
    // Still serving, nothing left queued, memory flat.
    let (status, text, _) = one(s.port, PROMPTS[0], false);
    assert_eq!(
        (status, text.as_str()),
        (200, expected[PROMPTS[0]].as_str())
    );
    let h = s.health();
    assert_eq!(h["queued"], 0, "{h}");
    let rss_after = rss_kb(s.child.id());
    eprintln!("load: server RSS {rss_before} kB before, {rss_after} kB after");
    assert!(
        rss_after < rss_before + 100 * 1024,
        "RSS grew from {rss_before} to {rss_after} kB"
    );
}
