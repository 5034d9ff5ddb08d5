//! The client's error type: tells apart what callers branch on (not found, permission denied,
//! bad request, Consul unavailable, timeout) and keeps Consul's own message.

use reqwest::StatusCode;

/// Errors returned by [`super::ConsulClient`].
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// 404: the session, check, service or path does not exist.
    #[error("not found in Consul: {message}")]
    NotFound {
        /// Consul's plain-text body (may be empty, as for a missing KV key).
        message: String,
    },
    /// 403: the ACL token is missing or lacks a permission.
    #[error("permission denied by Consul (check CONSUL_HTTP_TOKEN / --consul-token): {message}")]
    PermissionDenied {
        /// Consul's plain-text body.
        message: String,
    },
    /// 400 or 413: Consul refused the request as malformed.
    #[error("Consul rejected the request ({status}): {message}")]
    BadRequest {
        /// The HTTP status (400 or 413).
        status: StatusCode,
        /// Consul's plain-text body.
        message: String,
    },
    /// Consul could not be reached, or answered a 5xx.
    #[error("Consul unavailable at {addr}: {message}")]
    Unavailable {
        /// The base URL that was dialled.
        addr: String,
        /// The HTTP status when Consul answered, `None` for connection failures.
        status: Option<StatusCode>,
        /// Consul's body or the transport error.
        message: String,
    },
    /// The request did not complete in time.
    #[error("request to Consul at {addr} timed out")]
    Timeout {
        /// The base URL that was dialled.
        addr: String,
    },
    /// Any other unexpected status.
    #[error("unexpected answer from Consul ({status}): {message}")]
    Unexpected {
        /// The HTTP status.
        status: StatusCode,
        /// Consul's body.
        message: String,
    },
    /// Consul's answer could not be decoded.
    #[error("cannot decode Consul's answer to {what}: {message}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The client configuration is unusable (bad address, unreadable CA file, ...).
    #[error("invalid Consul configuration: {0}")]
    Config(String),
}

impl ConsulError {
    /// True when the failure is transient and the request may be retried after a back-off.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ConsulError::Unavailable { .. } | ConsulError::Timeout { .. }
        )
    }

    /// True for a 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConsulError::NotFound { .. })
    }

    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConsulError::NotFound { .. } => "not_found",
            ConsulError::PermissionDenied { .. } => "permission_denied",
            ConsulError::BadRequest { .. } => "bad_request",
            ConsulError::Unavailable { .. } => "unavailable",
            ConsulError::Timeout { .. } => "timeout",
            ConsulError::Unexpected { .. } => "unexpected",
            ConsulError::Decode { .. } => "decode",
            ConsulError::Config(_) => "config",
        }
    }
}
