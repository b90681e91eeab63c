//! `flashmoe serve` driven over raw HTTP on a loopback port: streamed and non-streamed text
//! equal `generate`'s, seeds reproduce, `stop` cuts, prompt reuse is reported, malformed
//! requests get OpenAI error JSON (and the server keeps serving), the API key is checked,
//! a full queue answers 429, a client that disconnects frees the worker, SIGTERM drains.

mod support;

use serde_json::json;
use std::io::{Read, Write};
use support::{Server, chat_model, default_model, generate_text, sse_data};

const PROMPT: &str = "The Rust programming language";

fn completion(s: &Server, body: serde_json::Value) -> serde_json::Value {
    let r = s.post_json("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Concatenated text of a streamed completion or chat answer, and its finish reason.
fn streamed(s: &Server, path: &str, body: serde_json::Value) -> (String, String) {
    let r = s.post_json(path, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"))
    );
    let data = r.sse();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let mut text = String::new();
    let mut finish = String::new();
    for d in &data[..data.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        let c = &v["choices"][0];
        if let Some(t) = c["text"].as_str().or(c["delta"]["content"].as_str()) {
            text.push_str(t);
        }
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish)
}

#[test]
fn completions_equal_generate_streamed_or_not() {
    let model = default_model();
    let want = generate_text(&model, PROMPT, 24);
    let s = Server::start(&model, &[]);
    let body = json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 24, "temperature": 0});
    let v = completion(&s, body.clone());
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text, want);
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let (stext, _) = streamed(&s, "/v1/completions", sb);
    assert_eq!(stext, want);
    // Usage: the same prompt again reuses all of it but the last token.
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 1);
    let again = completion(&s, body);
    assert_eq!(again["choices"][0]["text"], v["choices"][0]["text"]);
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt_tokens - 1
    );
    assert_eq!(
        again["usage"]["total_tokens"],
        prompt_tokens + again["usage"]["completion_tokens"].as_u64().unwrap()
    );
    // /v1/models and /health.
    let m = s.get("/v1/models").json();
    assert_eq!(m["data"][0]["id"], "tiny");
    assert_eq!(s.health()["status"], "ok");
}

#[test]
fn seeds_reproduce_and_stop_strings_cut() {
    let s = Server::start(&default_model(), &[]);
    let body = |seed: u64| {
        json!({"model": "tiny", "prompt": "fn main() {", "max_tokens": 24,
                                   "temperature": 1.0, "top_p": 0.95, "seed": seed, "ignore_eos": true})
    };
    let a = completion(&s, body(7))["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let b = completion(&s, body(7))["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(a, b, "same seed, different text");
    let mut sb = body(7);
    sb["stream"] = json!(true);
    assert_eq!(streamed(&s, "/v1/completions", sb).0, a);
    let others: Vec<String> = (8..12)
        .map(|seed| {
            completion(&s, body(seed))["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        others.iter().any(|o| *o != a),
        "every seed gave the same text"
    );

    // Stop: cut at the first occurrence of a string the greedy text contains.
    let greedy = json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 24, "temperature": 0});
    let full = completion(&s, greedy.clone())["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let cut_at = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[cut_at..].chars().take(3).collect();
    let want = &full[..full.find(&stop).unwrap()];
    let mut sb = greedy.clone();
    sb["stop"] = json!([stop, "never-appears-xyz"]);
    let v = completion(&s, sb.clone());
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    sb["stream"] = json!(true);
    let (st, finish) = streamed(&s, "/v1/completions", sb);
    assert_eq!(st, want);
    assert_eq!(finish, "stop");
}

#[test]
fn chat_uses_the_template_and_reuses_the_conversation() {
    let dir = chat_model();
    let s = Server::start(dir.path(), &[]);
    let turn1 = json!({"model": "tiny", "max_tokens": 8, "temperature": 0,
                       "messages": [{"role": "user", "content": "What is Rust?"}]});
    let r = s.post_json("/v1/chat/completions", &turn1);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    // The rendered prompt is the template's: generate on that text gives the same answer.
    let rendered = "<|im_start|>user\nWhat is Rust?<|im_end|>\n<|im_start|>assistant\n";
    let want = generate_text(dir.path(), rendered, 8);
    assert_eq!(answer, want);
    let mut sb = turn1.clone();
    sb["stream"] = json!(true);
    assert_eq!(streamed(&s, "/v1/chat/completions", sb).0, answer);
    // Turn 2 re-sends turn 1: its prompt reuses the cached context.
    let turn2 = json!({"model": "tiny", "max_tokens": 8, "temperature": 0,
                       "messages": [{"role": "user", "content": "What is Rust?"},
                                    {"role": "assistant", "content": answer},
                                    {"role": "user", "content": "And Cargo?"}]});
    let v2 = s.post_json("/v1/chat/completions", &turn2).json();
    let cached = v2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let p1 = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached >= p1 - 1,
        "cached {cached} of turn 1's {p1} prompt tokens"
    );

    // The default model has no template: chat is a clear 400, completions still work.
    let plain = Server::start(&default_model(), &[]);
    let r = plain.post_json("/v1/chat/completions", &turn1);
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("no chat template"),
        "{}",
        r.text()
    );
}

#[test]
fn malformed_requests_are_4xx_with_a_message_and_the_server_keeps_serving() {
    let s = Server::start(&default_model(), &["--max-body", "64K"]);
    let post = |body: &[u8]| {
        s.request(
            "POST",
            "/v1/completions",
            &[("Content-Type", "application/json")],
            body,
        )
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated JSON",
            br#"{"model": "tiny", "prompt": "a"#.to_vec(),
            400,
            "not valid JSON",
        ),
        ("not an object", b"[1, 2]".to_vec(), 400, "JSON object"),
        (
            "wrong type",
            br#"{"model": "tiny", "prompt": "a", "max_tokens": "ten"}"#.to_vec(),
            400,
            "invalid",
        ),
        (
            "negative max_tokens",
            br#"{"model": "tiny", "prompt": "a", "max_tokens": -3}"#.to_vec(),
            400,
            "max_tokens",
        ),
        (
            "unknown field",
            br#"{"model": "tiny", "prompt": "a", "frobnicate": 1}"#.to_vec(),
            400,
            "frobnicate",
        ),
        (
            "unknown model",
            br#"{"model": "gpt-9", "prompt": "a"}"#.to_vec(),
            400,
            "gpt-9",
        ),
        (
            "bad temperature",
            br#"{"model": "tiny", "prompt": "a", "temperature": 9}"#.to_vec(),
            400,
            "temperature",
        ),
        (
            "invalid UTF-8",
            b"{\"model\": \"tiny\", \"prompt\": \"\xff\xfe\"}".to_vec(),
            400,
            "JSON",
        ),
        ("empty body", Vec::new(), 400, "JSON"),
        (
            "token out of vocabulary",
            br#"{"model": "tiny", "prompt": [999999]}"#.to_vec(),
            400,
            "vocabulary",
        ),
        (
            "body over the limit",
            format!(
                r#"{{"model": "tiny", "prompt": "{}"}}"#,
                "a".repeat(100_000)
            )
            .into_bytes(),
            413,
            "limit",
        ),
    ];
    for (what, body, status, needle) in cases {
        let r = post(&body);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let m = r.error_message();
        assert!(m.contains(needle), "{what}: {m:?} lacks {needle:?}");
    }
    // Over-long prompt: 400 context_length_exceeded.
    let long = "word ".repeat(3000);
    let r = s.post_json("/v1/completions", &json!({"model": "tiny", "prompt": long}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    // A 100 MB body announced: refused before it is read.
    let mut c = s.connect();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n{\"model\":").unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    assert_eq!(support::parse_response(&raw).status, 413);
    // Unknown route: JSON 404.
    let r = s.get("/v1/nothing");
    assert_eq!(r.status, 404);
    r.error_message();
    // Wrong method: JSON 405.
    let r = s.get("/v1/completions");
    assert_eq!(r.status, 405);
    assert!(r.error_message().contains("GET"), "{}", r.text());
    // Still serving.
    let r = s.post_json(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn api_key_is_required_when_set() {
    let s = Server::start(&default_model(), &["--api-key", "sekret"]);
    let body = json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 2}).to_string();
    let ct = ("Content-Type", "application/json");
    let r = s.request("POST", "/v1/completions", &[ct], body.as_bytes());
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = s.request(
        "POST",
        "/v1/completions",
        &[ct, ("Authorization", "Bearer sekreT")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 401);
    let r = s.request("GET", "/v1/models", &[], b"");
    assert_eq!(r.status, 401);
    let r = s.request(
        "POST",
        "/v1/completions",
        &[ct, ("Authorization", "Bearer sekret")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // /health needs no key.
    assert_eq!(s.get("/health").status, 200);
}

/// Starts a streamed request that would run long, reads its first event, and returns the
/// open connection.
fn long_stream(s: &Server) -> std::net::TcpStream {
    let body = json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 900, "ignore_eos": true,
                      "temperature": 0, "stream": true})
    .to_string();
    let mut c = s.connect();
    write!(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("data:") {
        let n = c.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream closed early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    c
}

/// Polls `/health` until `key` reaches `n` (bounded number of polls, no timing asserted).
fn wait_health(s: &Server, key: &str, n: u64) -> serde_json::Value {
    for _ in 0..600 {
        let h = s.health();
        if h[key].as_u64() >= Some(n) {
            return h;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("/health {key} never reached {n}: {}", s.health());
}

#[test]
fn a_disconnected_stream_frees_the_worker_and_a_full_queue_is_429() {
    let s = Server::start(&default_model(), &["--queue", "1"]);
    let c = long_stream(&s);
    drop(c);
    let h = wait_health(&s, "cancelled", 1);
    assert_eq!(h["completed"], 0, "{h}");
    let r = s.post_json(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // One generating (held open, unread), one queued: the next is refused with 429.
    let held = long_stream(&s);
    let queued = std::thread::spawn({
        let port = s.port;
        move || {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let body = json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 2}).to_string();
            write!(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
            support::read_response(&mut c).status
        }
    });
    wait_health(&s, "queued", 1);
    let r = s.post_json(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 2}),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "queue_full");
    drop(held);
    assert_eq!(queued.join().unwrap(), 200);
}

#[test]
fn a_client_that_leaves_a_non_streamed_request_frees_the_worker() {
    let s = Server::start(&default_model(), &[]);
    let body = json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 900, "ignore_eos": true,
                      "temperature": 0})
    .to_string();
    let mut c = s.connect();
    write!(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    // Wait until the worker is on it, then hang up without reading the answer.
    for _ in 0..600 {
        if s.health()["generating"] == true {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(c);
    let h = wait_health(&s, "cancelled", 1);
    assert_eq!(
        h["completed"], 0,
        "the abandoned request ran to its end: {h}"
    );
    // The worker is free for the next client.
    let r = s.post_json(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.health()["completed"], 1);
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let s = Server::start(&default_model(), &[]);
    let r = s.post_json(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 2}),
    );
    assert_eq!(r.status, 200);
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sse_parser_reads_events() {
    assert_eq!(sse_data("data: a\n\ndata: [DONE]\n\n"), vec!["a", "[DONE]"]);
}
