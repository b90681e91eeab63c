//! Request bodies of `flashmoe serve` (`/v1/completions`, `/v1/chat/completions`): parsed and
//! checked, and chat messages rendered through a real chat template (Qwen3.5's) — the code
//! `serve` runs on every request (`flashmoe::http_api`). The first byte picks the route.
#![no_main]
use flashmoe::http_api::{self, ChatRequest, CompletionRequest};
use flashmoe_engine::ChatTemplate;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const QWEN35: &str = include_str!("../../engine/tests/data/chat_templates/Qwen3.5-4B.jinja");

fn template() -> &'static ChatTemplate {
    static T: OnceLock<ChatTemplate> = OnceLock::new();
    T.get_or_init(|| {
        let mut special = serde_json::Map::new();
        special.insert("eos_token".into(), "<|im_end|>".into());
        ChatTemplate::new(QWEN35.into(), "Qwen3.5-4B.jinja".into(), special)
            .expect("the committed template compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    if route & 1 == 0 {
        if let Ok(req) = http_api::parse::<CompletionRequest>(body, http_api::COMPLETION_FIELDS) {
            let _ = req.sampling.check(0);
        }
    } else if let Ok(req) = http_api::parse::<ChatRequest>(body, http_api::CHAT_FIELDS) {
        let _ = req.sampling.check(0);
        let _ = http_api::chat_prompt(&req, template());
    }
});
