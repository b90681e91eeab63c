//! Errors of the HTTP API, answered as OpenAI's error JSON
//! (`{"error": {"message", "type", "param", "code"}}`) with a 4xx or 5xx status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What is wrong, for a person.
    pub message: String,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// The offending parameter.
    pub param: Option<String>,
    /// OpenAI's `code`.
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400: parameter `param` is invalid.
    pub fn invalid(param: &str, message: String) -> Self {
        let mut e = Self::bad_request(format!("`{param}`: {message}"));
        e.param = Some(param.to_string());
        e
    }

    /// 400: the prompt does not fit the context.
    pub fn too_long(prompt: usize, ctx: usize) -> Self {
        let mut e = Self::bad_request(format!(
            "the prompt is {prompt} tokens, but this server's context holds {ctx} (prompt + answer); shorten it or start the server with a larger --ctx"
        ));
        e.code = Some("context_length_exceeded");
        e.param = Some("messages".into());
        e
    }

    /// 400: the model named is not the one served.
    pub fn unknown_model(asked: &str, served: &str) -> Self {
        let mut e = Self::bad_request(format!(
            "the model `{asked}` does not exist here; this server serves `{served}`"
        ));
        e.code = Some("model_not_found");
        e.param = Some("model".into());
        e
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or incorrect API key (send `Authorization: Bearer KEY`)",
        );
        e.code = Some("invalid_api_key");
        e
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over this server's limit of {limit} bytes"),
        )
    }

    /// 429: the queue is full; retry later.
    pub fn queue_full(depth: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("the server is busy ({depth} requests queued); retry later"),
        );
        e.code = Some("queue_full");
        e
    }

    /// 503: the server is shutting down.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        )
    }

    /// 404: no such route.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "no route {path} (try /v1/chat/completions, /v1/completions, /v1/models, /health)"
            ),
        )
    }

    /// 405: the route exists with another method.
    pub fn wrong_method(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{method} is not allowed on {path}"),
        )
    }

    /// 500: generation failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.json())).into_response()
    }
}
