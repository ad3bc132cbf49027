//! The API's errors: an HTTP status, a stable code a client can branch
//! on, and a message for people. Never a PAN, a key or a one-time code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The stable code (`PAN_NOT_ELIGIBLE`, `UNAUTHORIZED`, ...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with this status and code.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `BAD_REQUEST`: the body is not what the call takes.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BAD_REQUEST", message)
    }

    /// 401 `UNAUTHORIZED`: no key, or not a key the config knows.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "UNAUTHORIZED",
            "send Authorization: Bearer KEY with a configured key",
        )
    }

    /// 403 `FORBIDDEN`: a known caller that may not make this call.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "FORBIDDEN", message)
    }

    /// 404 `NOT_FOUND` (also for another requestor's token: its existence
    /// is not revealed).
    pub fn not_found(what: &str) -> Self {
        Self::new(404, "NOT_FOUND", format!("no such {what}"))
    }

    /// 409 `CONFLICT`-family: the resource's state refuses the call.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }

    /// 422: a business refusal (`PAN_NOT_ELIGIBLE`, ...).
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, code, message)
    }

    /// 500 `INTERNAL`: storage failed; the change was not made.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "INTERNAL", message)
    }

    /// 503 `BUSY`: a bound was reached (sessions, pending requests).
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(503, "BUSY", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        (status, axum::Json(body)).into_response()
    }
}
