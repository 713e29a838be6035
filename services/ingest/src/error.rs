//! API errors and their JSON answers: every error names the problem.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

/// One invalid event field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detail {
    /// Position of the event in the request (array index or NDJSON line, from 0).
    pub index: usize,
    /// JSON pointer into that event.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 400: the body or an event is invalid; nothing was published.
    Validation(Vec<Detail>),
    /// 401: missing, wrong or stale signature.
    Unauthorized(String),
    /// 408: the body did not arrive in time.
    Timeout(String),
    /// 413: body or event count over the limit.
    TooLarge(String),
    /// 415: unsupported content type.
    UnsupportedMediaType(String),
    /// 422: an idempotency key reused with a different request.
    IdempotencyConflict,
    /// 429: this client is over its rate.
    RateLimited { retry_after_secs: u64 },
    /// 503: the broker is unreachable or saturated.
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A body-level validation error (not JSON, empty, ...).
    pub fn body(index: usize, message: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![Detail {
            index,
            path: String::new(),
            message: message.into(),
        }])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (body, retry_after) = match self {
            ApiError::Validation(details) => (
                json!({"error": "validation_failed", "details": details}),
                None,
            ),
            ApiError::Unauthorized(message) => {
                (json!({"error": "unauthorized", "message": message}), None)
            }
            ApiError::Timeout(message) => (
                json!({"error": "request_timeout", "message": message}),
                None,
            ),
            ApiError::TooLarge(message) => (
                json!({"error": "payload_too_large", "message": message}),
                None,
            ),
            ApiError::UnsupportedMediaType(message) => (
                json!({"error": "unsupported_media_type", "message": message}),
                None,
            ),
            ApiError::IdempotencyConflict => (
                json!({"error": "idempotency_key_reused",
                       "message": "this Idempotency-Key was used for a different request"}),
                None,
            ),
            ApiError::RateLimited { retry_after_secs } => (
                json!({"error": "rate_limited", "message": "too many requests for this client",
                       "retry_after": retry_after_secs}),
                Some(retry_after_secs),
            ),
            ApiError::Unavailable {
                message,
                retry_after_secs,
            } => (
                json!({"error": "unavailable", "message": message, "retry_after": retry_after_secs}),
                Some(retry_after_secs),
            ),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
