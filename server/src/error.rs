//! API errors: one type mapping engine errors and request errors to a status code and a
//! `{"msg": ...}` JSON body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::response::json_response;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub msg: String,
    /// For a 5xx: what went wrong, for the operator's log (the client sees only `msg`).
    pub cause: Option<String>,
}

/// The cause of a 5xx, carried on the response to the request log line.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub String);

/// Marks a 5xx that is an answer rather than a failure (`GET /ready` while the server is
/// not ready): the request log gives it the level of any request, not `eror`.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedStatus;

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            msg: msg.into(),
            cause: None,
        }
    }
    /// A 500 whose cause is logged but not shown.
    pub fn internal(cause: impl Into<String>) -> ApiError {
        ApiError {
            cause: Some(cause.into()),
            ..ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }
    pub fn forbidden(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, msg)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Invalid or missing token")
    }
    pub fn too_large(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, msg)
    }
    pub fn queue_not_found() -> ApiError {
        ApiError::not_found("Queue not found")
    }
}

impl From<engine::Error> for ApiError {
    fn from(e: engine::Error) -> ApiError {
        use engine::Error as E;
        let status = match &e {
            E::QueueNotFound | E::MessageNotFound => StatusCode::NOT_FOUND,
            E::ReservationMismatch(_) | E::ReservationRequired(_) | E::WrongQueueType(_) => {
                StatusCode::FORBIDDEN
            }
            E::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::MetaTooLarge { .. }
            | E::LimitExceeded { .. }
            | E::Invalid(_)
            | E::NotForQueueType(_)
            | E::DeadLetterCycle(_)
            | E::PushCycle(_) => StatusCode::BAD_REQUEST,
            E::Closed => {
                return ApiError {
                    cause: Some("the storage engine is closed (shutting down)".into()),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                };
            }
            // The contract's 500 for an unavailable dependency (the disk), with the reason
            // shown: the client's request is fine, and may be sent again later.
            E::StorageFull(why) => {
                return ApiError {
                    cause: Some(format!("no room for a new log segment: {why}")),
                    ..ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                };
            }
            E::Io { .. }
            | E::Corruption { .. }
            | E::Locked(_)
            | E::Config { .. }
            | E::Failed(_) => {
                return ApiError::internal(e.to_string());
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<engine::backup::BackupError> for ApiError {
    fn from(e: engine::backup::BackupError) -> ApiError {
        use engine::backup::BackupError as B;
        match e {
            B::Engine(e) => e.into(),
            B::LimitExceeded { .. } => ApiError::bad_request(e.to_string()),
            other => {
                tracing::error!(error = %other, "backup failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.status, &serde_json::json!({ "msg": self.msg }));
        if self.status.is_server_error() {
            let cause = self.cause.unwrap_or_else(|| self.msg.clone());
            resp.extensions_mut().insert(ErrorCause(cause));
        }
        resp
    }
}

/// Handler result.
pub type ApiResult = Result<Response, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_a_500_that_says_so() {
        let e = ApiError::from(engine::Error::StorageFull("No space left on device".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            e.msg.starts_with(
                "Insufficient storage: no room for a new log segment (No space left on device)"
            ),
            "{}",
            e.msg
        );
        assert!(e.cause.is_some(), "logged as a 5xx with its cause");
    }
}
