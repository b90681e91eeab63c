//! The HTTP routes: `/v1/chat/completions`, `/v1/completions` (SSE streaming or one JSON
//! answer), `/v1/models`, `/health`. Requests are read, checked and tokenized here; the
//! generation itself is queued to the worker.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flashmoe_engine::{ChatTemplate, Tokenizer};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::worker::{Counters, Event, Ready, Request};
use flashmoe::http_api::{
    self as api, ApiError, ChatRequest, Checked, CompletionRequest, Prompt, Usage,
};
use flashmoe_engine::{GenerationRequest, Outcome};

/// What every handler shares.
pub struct AppState {
    /// The worker's queue.
    pub queue: mpsc::Sender<Request>,
    /// Its capacity.
    pub queue_cap: usize,
    /// Worker counters.
    pub counters: Arc<Counters>,
    /// The model id clients name.
    pub model_id: String,
    /// The loaded model's facts.
    pub ready: Ready,
    /// The tokenizer (requests are tokenized on the HTTP side, so over-long ones are refused
    /// before they queue).
    pub tokenizer: Tokenizer,
    /// The chat template, or why there is none.
    pub template: Result<ChatTemplate, String>,
    /// Extra stop tokens for chat (the template's end-of-turn token).
    pub chat_stop_tokens: Vec<u32>,
    /// Required `Authorization: Bearer` key.
    pub api_key: Option<String>,
    /// Largest request body.
    pub max_body: usize,
    /// Request counter (ids, default seeds).
    pub requests: AtomicU64,
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .fallback(fallback)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

async fn fallback(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::wrong_method(method.as_str(), uri.path())
}

impl AppState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant time in the key's contents (the length may show).
        if bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::unauthorized())
        }
    }

    fn check_model(&self, asked: &str) -> Result<(), ApiError> {
        if asked == self.model_id {
            Ok(())
        } else {
            Err(ApiError::unknown_model(asked, &self.model_id))
        }
    }

    fn next_id(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed)
    }

    /// A job for `prompt`, or 400 when it does not fit the context.
    fn job(
        &self,
        prompt: Vec<u32>,
        c: &Checked,
        stop_tokens: Vec<u32>,
    ) -> Result<GenerationRequest, ApiError> {
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "encodes to no tokens".into()));
        }
        if prompt.len() >= self.ready.ctx {
            return Err(ApiError::too_long(prompt.len(), self.ready.ctx));
        }
        let room = self.ready.ctx - prompt.len();
        let max_tokens = c.max_tokens.unwrap_or(room).min(room);
        Ok(GenerationRequest::greedy(prompt, max_tokens)
            .sampling(c.temperature, c.top_p, c.seed)
            .stop(c.stop.clone())
            .stop_tokens(stop_tokens)
            .ignore_eos(c.ignore_eos))
    }

    /// Queues `job`; 429 when the queue is full, 503 when shutting down.
    fn submit(&self, job: GenerationRequest) -> Result<mpsc::Receiver<Event>, ApiError> {
        let (events, rx) = mpsc::channel(64);
        match self.queue.try_send(Request { job, events }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::queue_full(self.queue_cap))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::shutting_down()),
        }
    }

    fn seed(&self, id: u64) -> u64 {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ id.rotate_left(32)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the body, at most `limit` bytes.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| ApiError::too_large(limit))
}

async fn health(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let c = &s.counters;
    Json(json!({
        "status": "ok",
        "model": s.model_id,
        "compute": s.ready.compute,
        "queued": s.queue_cap - s.queue.capacity(),
        "queue_capacity": s.queue_cap,
        "generating": c.busy.load(Ordering::Relaxed),
        "completed": c.completed.load(Ordering::Relaxed),
        "cancelled": c.cancelled.load(Ordering::Relaxed),
        "rejected": c.rejected.load(Ordering::Relaxed),
        "failed": c.failed.load(Ordering::Relaxed),
    }))
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": s.model_id, "object": "model", "created": 0, "owned_by": "flashmoe"}],
    }))
    .into_response())
}

async fn completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    let body = read_body(&headers, body, s.max_body).await?;
    let req: CompletionRequest = api::parse(&body, api::COMPLETION_FIELDS)?;
    s.check_model(&req.model)?;
    if req.echo == Some(true) {
        return Err(ApiError::invalid("echo", "is not supported".into()));
    }
    if req.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid("logprobs", "is not supported".into()));
    }
    let id = s.next_id();
    let c = req.sampling.check(s.seed(id))?;
    let prompt = match req.prompt {
        Prompt::Text(t) => encode(&s, &t)?,
        Prompt::Texts(v) if v.len() == 1 => encode(&s, &v[0])?,
        Prompt::Texts(v) => {
            return Err(ApiError::invalid(
                "prompt",
                format!("only one prompt per request is supported, got {}", v.len()),
            ));
        }
        Prompt::Tokens(ids) => {
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= s.ready.vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!(
                        "token id {bad} is outside the vocabulary of {}",
                        s.ready.vocab
                    ),
                ));
            }
            ids
        }
    };
    let job = s.job(prompt, &c, Vec::new())?;
    let rx = s.submit(job)?;
    let meta = Meta {
        id: format!("cmpl-{id}"),
        model: s.model_id.clone(),
        created: now(),
        chat: false,
        include_usage: c.include_usage,
    };
    if c.stream {
        Ok(stream(meta, rx).into_response())
    } else {
        answer(meta, rx).await
    }
}

async fn chat(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    let body = read_body(&headers, body, s.max_body).await?;
    let req: ChatRequest = api::parse(&body, api::CHAT_FIELDS)?;
    s.check_model(&req.model)?;
    if req
        .logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && *v != false)
    {
        return Err(ApiError::invalid("logprobs", "is not supported".into()));
    }
    let template = s
        .template
        .as_ref()
        .map_err(|e| ApiError::bad_request(format!("chat is not available: {e}")))?;
    let id = s.next_id();
    let c = req.sampling.check(s.seed(id))?;
    let text = api::chat_prompt(&req, template)?;
    let prompt = encode(&s, &text)?;
    let job = s.job(prompt, &c, s.chat_stop_tokens.clone())?;
    let rx = s.submit(job)?;
    let meta = Meta {
        id: format!("chatcmpl-{id}"),
        model: s.model_id.clone(),
        created: now(),
        chat: true,
        include_usage: c.include_usage,
    };
    if c.stream {
        Ok(stream(meta, rx).into_response())
    } else {
        answer(meta, rx).await
    }
}

fn encode(s: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    s.tokenizer
        .encode(text)
        .map_err(|e| ApiError::invalid("prompt", format!("cannot be tokenized: {e}")))
}

/// What a response names.
struct Meta {
    id: String,
    model: String,
    created: u64,
    chat: bool,
    include_usage: bool,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    /// A chunk with `text` (chat: a `delta`) and `finish`.
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> serde_json::Value {
        let choice = if self.chat {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [choice]})
    }

    fn full(&self, o: &Outcome) -> serde_json::Value {
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": o.text},
                   "logprobs": null, "finish_reason": o.finish.as_str()})
        } else {
            json!({"index": 0, "text": o.text, "logprobs": null, "finish_reason": o.finish.as_str()})
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created,
               "model": self.model, "choices": [choice], "usage": Usage::of(o)})
    }
}

/// Waits for the whole answer.
async fn answer(meta: Meta, mut rx: mpsc::Receiver<Event>) -> Result<Response, ApiError> {
    loop {
        match rx.recv().await {
            Some(Event::Text(_)) => {}
            Some(Event::Done(o)) => return Ok(Json(meta.full(&o)).into_response()),
            Some(Event::Failed(e)) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::internal("the generation worker stopped")),
        }
    }
}

/// Streams the answer as server-sent events, ending with `data: [DONE]`. A task relays the
/// worker's events; when the client goes away the SSE body is dropped, the relay's send
/// fails, it drops the worker's channel, and the worker stops at the next token.
fn stream(meta: Meta, mut rx: mpsc::Receiver<Event>) -> impl IntoResponse {
    let (tx, out) = mpsc::channel::<Result<SseEvent, Infallible>>(16);
    tokio::spawn(async move {
        let send = |v: serde_json::Value| SseEvent::default().data(v.to_string());
        if meta.chat
            && tx
                .send(Ok(send(meta.chunk(Some(""), true, None))))
                .await
                .is_err()
        {
            return;
        }
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                () = tx.closed() => return,
            };
            match ev {
                Some(Event::Text(t)) => {
                    if tx
                        .send(Ok(send(meta.chunk(Some(&t), false, None))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Event::Done(o)) => {
                    let last = meta.chunk(
                        if meta.chat { None } else { Some("") },
                        false,
                        Some(o.finish.as_str()),
                    );
                    let _ = tx.send(Ok(send(last))).await;
                    if meta.include_usage {
                        let mut u = meta.chunk(None, false, None);
                        u["choices"] = json!([]);
                        u["usage"] = serde_json::to_value(Usage::of(&o)).unwrap_or_default();
                        let _ = tx.send(Ok(send(u))).await;
                    }
                    break;
                }
                Some(Event::Failed(e)) => {
                    let _ = tx.send(Ok(send(ApiError::internal(e).json()))).await;
                    break;
                }
                None => break,
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(out))
}
