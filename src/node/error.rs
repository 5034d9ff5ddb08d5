//! The node API's errors and their one mapping to an HTTP status with a JSON body
//! `{"error": "...", "code": "...", ...}`: the words for people, a stable `code` for clients.

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
    /// Fewer in-sync replicas than `--min-insync`: the write is refused (checked before the
    /// append, and after it: then it is stored but not acknowledged, and a retry is answered as
    /// a duplicate).
    #[error("not enough in-sync replicas: {isr} in sync, --min-insync {min_insync}")]
    NotEnoughReplicas {
        /// In-sync replicas (the leader included).
        isr: u32,
        /// `--min-insync`.
        min_insync: u32,
    },
    /// The write is durable on the leader but the high watermark did not pass it in time: its
    /// fate is unknown (it may still be committed); retry with the same producer id and sequence.
    #[error("the write was not committed within {0:?}; it may still be: retry it (idempotently)")]
    CommitTimeout(std::time::Duration),
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
    /// `GET /api/v1/producers/{id}` for a producer the leader does not know (or has forgotten).
    #[error("unknown producer {0:?}: no batch stored (or idle longer than --producer-id-expiry)")]
    UnknownProducer(String),
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request body did not arrive within `--http-body-timeout`.
    #[error(transparent)]
    BodyTimeout(#[from] super::BodyTimeout),
    /// The request lacks the bearer token its access needs (`--api-token` / `--read-token`).
    #[error("missing or wrong bearer token: this node requires its {} token here; {}", .0.node_flag(), .0.client_hint())]
    Unauthorized(super::auth::Access),
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
            ApiError::NotLeader(_)
            | ApiError::NotServing(_)
            | ApiError::LeaseLapsed
            | ApiError::NotEnoughReplicas { .. }
            | ApiError::CommitTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Log(err) if err.is_disk_full() => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Log(LogError::RecordTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Log(LogError::StaleSequence { .. } | LogError::OutOfOrderSequence { .. }) => {
                StatusCode::CONFLICT
            }
            ApiError::Log(LogError::SequenceOverflow { .. } | LogError::ProducerIdTooLong { .. }) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Log(LogError::OffsetTrimmed { .. }) => StatusCode::GONE,
            ApiError::Log(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Forward { .. } => StatusCode::BAD_GATEWAY,
            ApiError::NotFound(_) | ApiError::UnknownProducer(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable `code` of the JSON body, one per kind of failure a client
    /// may branch on (the `error` words may change; these do not).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::TooLarge(_) | ApiError::Log(LogError::RecordTooLarge { .. }) => "too_large",
            ApiError::NotLeader(_) => "not_leader",
            ApiError::NotServing(_) => "not_serving",
            ApiError::NotEnoughReplicas { .. } => "not_enough_replicas",
            ApiError::CommitTimeout(_) => "commit_timeout",
            ApiError::LeaseLapsed => "lease_lapsed",
            ApiError::Log(err) if err.is_disk_full() => "disk_full",
            ApiError::Log(LogError::OutOfOrderSequence { .. }) => "out_of_order_sequence",
            ApiError::Log(LogError::StaleSequence { .. }) => "stale_sequence",
            ApiError::Log(LogError::SequenceOverflow { .. }) => "sequence_overflow",
            ApiError::Log(LogError::ProducerIdTooLong { .. }) => "producer_id_too_long",
            ApiError::Log(LogError::Poisoned { .. }) => "log_recovering",
            ApiError::Log(LogError::OffsetTrimmed { .. }) => "offset_trimmed",
            ApiError::Log(_) => "log_unavailable",
            ApiError::Forward { .. } => "forward_failed",
            ApiError::NotFound(_) => "not_found",
            ApiError::UnknownProducer(_) => "unknown_producer",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Overloaded { .. } => "overloaded",
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
        let mut body = json!({ "error": self.to_string(), "code": self.code() });
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
            ApiError::NotEnoughReplicas { isr, min_insync } => {
                body["isr"] = json!(isr);
                body["min_insync"] = json!(min_insync);
            }
            ApiError::Log(LogError::OffsetTrimmed { start, .. }) => body["start_offset"] = json!(start),
            ApiError::Log(LogError::OutOfOrderSequence { expected, .. }) => {
                body["expected"] = json!(expected);
            }
            ApiError::Log(LogError::StaleSequence { last_seq, .. }) => {
                body["last_seq"] = json!(last_seq);
            }
            _ => {}
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"simpleloggers\""),
            );
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

    async fn json_of(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("JSON body"))
    }

    /// A gap is a retriable 409 naming the expected sequence; a stale retry a 409 of its own
    /// code; an overflowing sequence a 400; a poisoned log a 503; an unknown producer a 404, all
    /// with a JSON `code`.
    #[tokio::test]
    async fn producer_errors_carry_codes() {
        let (status, body) = json_of(ApiError::Log(LogError::OutOfOrderSequence {
            producer_id: "p".into(),
            seq: 20,
            expected: 10,
        }))
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            (body["code"].as_str(), body["expected"].as_u64()),
            (Some("out_of_order_sequence"), Some(10))
        );
        let (status, body) = json_of(ApiError::Log(LogError::StaleSequence {
            producer_id: "p".into(),
            seq: 1,
            last_seq: 99,
        }))
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::CONFLICT, Some("stale_sequence"))
        );
        let (status, body) = json_of(ApiError::Log(LogError::SequenceOverflow {
            seq: u64::MAX,
            count: 2,
        }))
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("sequence_overflow"))
        );
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("overflows")),
            "{body}"
        );
        let (status, body) = json_of(ApiError::Log(LogError::Poisoned {
            reason: "sync failed".into(),
        }))
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("log_recovering")),
            "a poisoned log is a retriable 503: {body}"
        );
        let (status, body) = json_of(ApiError::NotEnoughReplicas {
            isr: 1,
            min_insync: 2,
        })
        .await;
        assert_eq!(
            (
                status,
                body["code"].as_str(),
                body["isr"].as_u64(),
                body["min_insync"].as_u64()
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("not_enough_replicas"),
                Some(1),
                Some(2)
            )
        );
        let (status, body) = json_of(ApiError::CommitTimeout(std::time::Duration::from_secs(5))).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("commit_timeout"))
        );
        let (status, body) = json_of(ApiError::UnknownProducer("p".into())).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("unknown_producer"))
        );
    }

    /// Bad input, a body over its limit, a full disk and the other refusals carry a `code` too,
    /// next to the words.
    #[tokio::test]
    async fn every_error_carries_a_code() {
        let cases = [
            (
                ApiError::BadRequest("bad header".into()),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                ApiError::TooLarge("too big".into()),
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            (
                ApiError::Log(LogError::DiskFull {
                    op: "append",
                    path: PathBuf::from("x"),
                    source: io(std::io::ErrorKind::StorageFull),
                }),
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
            ),
            (
                ApiError::Log(LogError::Io {
                    op: "sync",
                    path: PathBuf::from("x"),
                    source: io(std::io::ErrorKind::Other),
                }),
                StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
            ),
            (
                ApiError::NotFound("/x".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                ApiError::MethodNotAllowed,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                ApiError::LeaseLapsed,
                StatusCode::SERVICE_UNAVAILABLE,
                "lease_lapsed",
            ),
            (
                ApiError::Overloaded { limit: 1 },
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
            ),
        ];
        for (error, want_status, want_code) in cases {
            let words = error.to_string();
            let (status, body) = json_of(error).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (want_status, Some(want_code)),
                "{body}"
            );
            assert_eq!(body["error"].as_str(), Some(words.as_str()));
        }
    }
}
