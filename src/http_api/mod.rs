//! The OpenAI-compatible HTTP API that `flashmoe serve` speaks: request and response bodies,
//! their validation, the errors answered to clients, and the chat prompt a request renders.
//!
//! Request bodies are untrusted: everything here turns bad input into an [`ApiError`] (a 4xx
//! naming the field), never a panic. It is a library module, not part of the binary, so that
//! the fuzz target `http_request` (fuzz/) drives exactly the code `serve` runs.

mod error;
mod request;

pub use error::ApiError;
pub use request::*;

use flashmoe_engine::{ChatTemplate, RenderOptions};

/// The prompt text of a chat request: its messages through `template`, with the generation
/// prompt and the request's `chat_template_kwargs`. An empty `messages`, a message the
/// template cannot take, or a template error is a 400 naming `messages`.
pub fn chat_prompt(req: &ChatRequest, template: &ChatTemplate) -> Result<String, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "must not be empty".into()));
    }
    let messages = req
        .messages
        .iter()
        .map(|m| {
            m.to_template()
                .map(|v| minijinja::Value::from_serialize(&v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut opts = RenderOptions::generation();
    for (k, v) in req.chat_template_kwargs.clone().unwrap_or_default() {
        opts = opts.var(k, v);
    }
    template
        .render_values(&messages, &opts)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))
}
