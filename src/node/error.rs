//! The node API's errors and their one mapping to an HTTP status with a JSON body
//! `{"error": "...", ...}`.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};

use crate::{election::NotLeader, log::LogError};

/// Everything a request to the node can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the message says what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The message or batch is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// This node cannot accept writes now.
    #[error("not the leader: {}", .0.reason)]
    NotLeader(NotLeader),
    /// This node leads but cannot take writes now (its log cannot append, or its term is stale).
    #[error("this node leads but cannot take writes now: {0}")]
    NotServing(String),
    /// The write became durable but the lease lapsed before it could be acknowledged.
    #[error("the leader's lease lapsed before the write could be acknowledged; it is not acknowledged")]
    LeaseLapsed,
    /// The log refused or failed the operation.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Forwarding to the leader failed.
    #[error("could not forward to the leader at {leader}: {message}")]
    Forward {
        /// The leader's address.
        leader: String,
        /// What went wrong.
        message: String,
    },
    /// No such route.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request body did not arrive within `--http-body-timeout`.
    #[error(transparent)]
    BodyTimeout(#[from] super::BodyTimeout),
    /// Every request slot is taken; retry later.
    #[error("overloaded: already handling {limit} requests (--http-max-concurrent-requests); retry later")]
    Overloaded {
        /// The limit.
        limit: usize,
    },
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotLeader(_) | ApiError::NotServing(_) | ApiError::LeaseLapsed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Log(err) if err.is_disk_full() => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Log(LogError::RecordTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Log(LogError::StaleSequence { .. }) => StatusCode::CONFLICT,
            ApiError::Log(LogError::OffsetTrimmed { .. }) => StatusCode::GONE,
            ApiError::Log(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Forward { .. } => StatusCode::BAD_GATEWAY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The error for a request body that could not be read within `limit` bytes: 408 when it
    /// came too slowly, else 413 naming `flag`.
    pub fn body(err: &axum::Error, flag: &str, limit: usize) -> ApiError {
        match super::BodyTimeout::find(err) {
            Some(timeout) => ApiError::BodyTimeout(super::BodyTimeout { limit: timeout.limit }),
            None => ApiError::TooLarge(format!("request body exceeds {flag} ({limit} bytes)")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({ "error": self.to_string() });
        let mut leader_header = None;
        match &self {
            ApiError::NotLeader(not_leader) => {
                body["role"] = json!(not_leader.role.as_str());
                body["leader"] = match &not_leader.leader {
                    Some(l) => {
                        leader_header = HeaderValue::from_str(&l.address).ok();
                        json!({ "name": l.name, "address": l.address })
                    }
                    None => Value::Null,
                };
            }
            ApiError::NotServing(_) => body["role"] = json!("leader (not serving)"),
            ApiError::Log(LogError::OffsetTrimmed { start, .. }) => body["start_offset"] = json!(start),
            _ => {}
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(leader) = leader_header {
            response.headers_mut().insert("x-simpleloggers-leader", leader);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    /// Storage errors map to the statuses clients branch on: a full disk 507, other I/O 503.
    #[test]
    fn log_errors_map_to_statuses() {
        let full = ApiError::Log(LogError::DiskFull {
            op: "append",
            path: PathBuf::from("x"),
            source: io(std::io::ErrorKind::StorageFull),
        });
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
        let failed = ApiError::Log(LogError::Io {
            op: "sync",
            path: PathBuf::from("x"),
            source: io(std::io::ErrorKind::Other),
        });
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = failed.into_response();
        assert!(
            response.headers().contains_key(header::RETRY_AFTER),
            "503s say when to retry"
        );
        assert_eq!(ApiError::LeaseLapsed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            ApiError::NotServing("disk full".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
