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
    /// 403 (or a transaction rolled back by a denial): the ACL token is unknown or lacks a
    /// permission. When Consul names the permission, the message says what to grant.
    #[error("{}", permission_message(.missing.as_ref(), .message))]
    PermissionDenied {
        /// Consul's plain-text body.
        message: String,
        /// The permission Consul named (`key:write` on `"service/simpleloggers/leader"`), when it
        /// did (newer releases do; older ones answer a bare `Permission denied`).
        missing: Option<MissingPermission>,
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

/// A permission Consul said the token lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingPermission {
    /// The resource: `key`, `session`, `service`, `node`, `agent`, ...
    pub resource: String,
    /// `read`, `write` or `list`.
    pub level: String,
    /// The key, node or service name (may be empty for unnamed checks).
    pub name: String,
}

impl MissingPermission {
    /// Parses Consul's `Permission denied: token with AccessorID '<id>' lacks permission
    /// '<resource>:<level>' on "<name>"` (also the anonymous-token form); `None` for any other text.
    pub fn parse(message: &str) -> Option<MissingPermission> {
        let rest = message.split_once("lacks permission '")?.1;
        let (permission, rest) = rest.split_once('\'')?;
        let (resource, level) = permission.split_once(':')?;
        let name = rest
            .strip_prefix(" on \"")
            .and_then(|r| r.split_once('"'))
            .map_or("", |(name, _)| name);
        Some(MissingPermission {
            resource: resource.to_string(),
            level: level.to_string(),
            name: name.to_string(),
        })
    }

    /// The policy rule that grants it (`key_prefix "<key>"` for keys, which also covers the keys
    /// under it; the exact rule otherwise).
    pub fn rule(&self) -> String {
        let block = if self.resource == "key" {
            "key_prefix".to_string()
        } else {
            self.resource.clone()
        };
        format!("{block} \"{}\" {{ policy = \"{}\" }}", self.name, self.level)
    }
}

fn permission_message(missing: Option<&MissingPermission>, message: &str) -> String {
    match missing {
        Some(m) => format!(
            "Consul denied {}:{} on {:?}: the token (CONSUL_HTTP_TOKEN / --consul-token) needs a policy \
             with {} (docs/consul-acl.md lists the minimal policies); Consul said: {message}",
            m.resource,
            m.level,
            m.name,
            m.rule()
        ),
        None if message.contains("ACL not found") => {
            format!("Consul does not know the ACL token (CONSUL_HTTP_TOKEN / --consul-token): {message}")
        }
        None => format!(
            "permission denied by Consul (check CONSUL_HTTP_TOKEN / --consul-token and its policy, \
             docs/consul-acl.md): {message}"
        ),
    }
}

impl ConsulError {
    /// The 403 error for Consul's `message`.
    pub fn permission_denied(message: impl Into<String>) -> ConsulError {
        let message = message.into();
        ConsulError::PermissionDenied {
            missing: MissingPermission::parse(&message),
            message,
        }
    }

    /// True for a 403 (or a transaction an ACL denial rolled back).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, ConsulError::PermissionDenied { .. })
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Consul's denial texts become the permission and the rule to grant; other 403s keep a hint.
    #[test]
    fn permission_denied_messages() {
        let err = ConsulError::permission_denied(
            "Permission denied: token with AccessorID 'a-1' lacks permission 'key:write' on \"service/simpleloggers/leader\"",
        );
        let ConsulError::PermissionDenied { missing: Some(m), .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((m.resource.as_str(), m.level.as_str()), ("key", "write"));
        assert_eq!(m.name, "service/simpleloggers/leader");
        let text = err.to_string();
        assert!(
            text.starts_with("Consul denied key:write on \"service/simpleloggers/leader\""),
            "{text}"
        );
        assert!(
            text.contains("key_prefix \"service/simpleloggers/leader\" { policy = \"write\" }"),
            "{text}"
        );
        assert!(text.contains("CONSUL_HTTP_TOKEN"), "{text}");

        let anon = ConsulError::permission_denied(
            "Permission denied: anonymous token lacks permission 'session:write' on \"n1\". The anonymous token is used implicitly when a request does not specify a token.",
        );
        assert!(
            anon.to_string().contains("session \"n1\" { policy = \"write\" }"),
            "{anon}"
        );
        let unknown = ConsulError::permission_denied("ACL not found");
        assert!(
            unknown.to_string().contains("does not know the ACL token"),
            "{unknown}"
        );
        let bare = ConsulError::permission_denied("Permission denied");
        assert!(matches!(
            bare,
            ConsulError::PermissionDenied { missing: None, .. }
        ));
        assert!(bare.to_string().contains("CONSUL_HTTP_TOKEN"), "{bare}");
    }
}
