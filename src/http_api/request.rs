//! The OpenAI request and response bodies `serve` speaks, and their validation. Unknown
//! fields are refused (a typo'd parameter is a 400 naming it, not silently ignored); accepted
//! parameters that flashmoe does not implement must keep their neutral value.

use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// Fields of [`Sampling`].
const SAMPLING_FIELDS: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "ignore_eos",
];
/// Fields of [`CompletionRequest`] besides the sampling ones.
pub const COMPLETION_FIELDS: &[&str] = &["model", "prompt", "echo", "logprobs"];
/// Fields of [`ChatRequest`] besides the sampling ones.
pub const CHAT_FIELDS: &[&str] = &["model", "messages", "chat_template_kwargs", "logprobs"];

/// Parses a request body: a JSON object with no field outside `own` and the sampling
/// fields, then typed. Every failure is a 400 that says what is wrong.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8], own: &[&str]) -> Result<T, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = &v else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some(k) = map
        .keys()
        .find(|k| !own.contains(&k.as_str()) && !SAMPLING_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(k, "unknown field".to_string()));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

/// `stop`: one string or up to four.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with the usage counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// What `/v1/completions` and `/v1/chat/completions` share.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Sampling {
    /// Tokens to generate at most (default: what the context leaves).
    pub max_tokens: Option<i64>,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// 0..=2; 0 is greedy. Default 1, as OpenAI's.
    pub temperature: Option<f32>,
    /// (0, 1]. Default 1.
    pub top_p: Option<f32>,
    /// Seed of the sampler: the same seed and request give the same text.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Number of choices: only 1.
    pub n: Option<u32>,
    /// Accepted and ignored (an end-user id).
    #[allow(dead_code)]
    pub user: Option<String>,
    /// Only 0 (not implemented).
    pub presence_penalty: Option<f32>,
    /// Only 0 (not implemented).
    pub frequency_penalty: Option<f32>,
    /// flashmoe extension: keep generating after end-of-sequence tokens.
    #[serde(default)]
    pub ignore_eos: bool,
}

/// The validated sampling parameters.
#[derive(Clone, Debug)]
pub struct Checked {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

impl Sampling {
    /// Checks ranges; `fallback_seed` is used when the request gives none.
    pub fn check(&self, fallback_seed: u64) -> Result<Checked, ApiError> {
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = match max {
            Some(n) if n < 1 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("must be at least 1, got {n}"),
                ));
            }
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("must be in (0, 1], got {top_p}"),
            ));
        }
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(
                "n",
                format!("only n = 1 is supported, got {n}"),
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = v
                && v != 0.0
            {
                return Err(ApiError::invalid(
                    name,
                    format!("is not supported (only 0), got {v}"),
                ));
            }
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid(
                "stop",
                format!("at most 4 stop strings, got {}", stop.len()),
            ));
        }
        Ok(Checked {
            max_tokens,
            temperature,
            top_p,
            seed: self.seed.unwrap_or(fallback_seed),
            stop,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            ignore_eos: self.ignore_eos,
        })
    }
}

/// `/v1/completions` prompt: a string, or a list of one string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// A list of texts (only one is supported).
    Texts(Vec<String>),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// `POST /v1/completions`. (serde's `deny_unknown_fields` does not work with `flatten`:
/// unknown fields are refused by [`parse`] against [`COMPLETION_FIELDS`].)
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    /// The model id (see `/v1/models`).
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Only false.
    pub echo: Option<bool>,
    /// Only null (not implemented).
    pub logprobs: Option<serde_json::Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Message content: text, or a list of parts of which text parts are kept.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Text.
    Text(String),
    /// `[{"type": "text", "text": "..."}]`.
    Parts(Vec<ContentPart>),
}

/// One part of message content.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    /// Only `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: Option<String>,
}

/// A chat message.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text (may be null for an assistant message with tool calls).
    pub content: Option<Content>,
    /// A participant name (passed to the template).
    pub name: Option<String>,
    /// Passed to the template.
    pub tool_calls: Option<serde_json::Value>,
    /// Passed to the template.
    pub tool_call_id: Option<String>,
    /// Passed to the template (Qwen3's thinking).
    pub reasoning_content: Option<String>,
}

impl Message {
    /// The message as the template sees it (`content` flattened to a string).
    pub fn to_template(&self) -> Result<serde_json::Value, ApiError> {
        let content = match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!(
                                    "content part of type {kind:?} is not supported (text only)"
                                ),
                            ));
                        }
                    }
                }
                s
            }
        };
        let mut v = serde_json::json!({"role": self.role, "content": content});
        let o = v.as_object_mut().expect("a json object literal");
        if let Some(n) = &self.name {
            o.insert("name".into(), n.clone().into());
        }
        if let Some(t) = &self.tool_calls {
            o.insert("tool_calls".into(), t.clone());
        }
        if let Some(t) = &self.tool_call_id {
            o.insert("tool_call_id".into(), t.clone().into());
        }
        if let Some(t) = &self.reasoning_content {
            o.insert("reasoning_content".into(), t.clone().into());
        }
        Ok(v)
    }
}

/// `POST /v1/chat/completions` (unknown fields refused by [`parse`] against [`CHAT_FIELDS`]).
#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    /// The model id.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Extra variables for the chat template (`{"enable_thinking": false}`).
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Only null (not implemented).
    pub logprobs: Option<serde_json::Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `usage`.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// `cached_tokens`: prompt tokens reused from the previous request's context.
    pub prompt_tokens_details: PromptDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Clone, Debug, Serialize)]
pub struct PromptDetails {
    pub cached_tokens: usize,
}

impl Usage {
    /// From a finished generation.
    pub fn of(o: &flashmoe_engine::Outcome) -> Self {
        Self {
            prompt_tokens: o.prompt_tokens,
            completion_tokens: o.completion_tokens,
            total_tokens: o.prompt_tokens + o.completion_tokens,
            prompt_tokens_details: PromptDetails {
                cached_tokens: o.cached_tokens,
            },
        }
    }
}
