//! Access rules of the node API: the optional write token (`--api-token`) and read token
//! (`--read-token`), the one middleware that enforces them, and the client-side flags and
//! `Authorization` header that the producer, `tail`, `status` and the node itself send.
//! Probes, `/metrics` and the static dashboard page stay open; the replication endpoint has its
//! own check (the cluster secret) in `crate::replication::http`, whose constant-time
//! comparison this module reuses.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::ApiError;

/// The query parameter that may carry the read token on `GET` requests (RFC 6750 §2.3), for
/// clients that cannot set headers: the browser's `EventSource` behind the dashboard's live log.
pub const ACCESS_TOKEN_PARAM: &str = "access_token";

/// The node's access flags (part of `simpleloggers node`).
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Access")]
pub struct AccessArgs {
    /// When set, every request that changes something (`POST /api/v1/log`, any method but GET
    /// and HEAD) needs `Authorization: Bearer <token>`. Also accepted wherever the read token is.
    #[arg(long = "api-token", env = "SIMPLELOGGERS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// When set, every read (`GET /api/v1/log`, the live stream, `/api/v1/status`,
    /// `/api/v1/cluster`, `/api/v1/producers/{id}`) needs `Authorization: Bearer <token>` with
    /// this token or the write token. Probes, `/metrics` and the dashboard page stay open.
    #[arg(long = "read-token", env = "SIMPLELOGGERS_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
}

impl AccessArgs {
    /// The enforced rules, `None` when neither token is set (then no middleware is installed and
    /// requests pay nothing).
    pub fn rules(&self) -> Option<AccessRules> {
        let non_empty = |t: &Option<String>| t.as_deref().filter(|t| !t.is_empty()).map(Arc::from);
        let rules = AccessRules {
            write: non_empty(&self.api_token),
            read: non_empty(&self.read_token),
        };
        (rules.write.is_some() || rules.read.is_some()).then_some(rules)
    }

    /// The credential the node itself presents to its peers (the dashboard's cluster view reads
    /// every member's status; a follower forwards writes to the leader): the write token, which
    /// is accepted for reads too, else the read token.
    pub fn own_credential(&self) -> Option<&str> {
        self.api_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(self.read_token.as_deref().filter(|t| !t.is_empty()))
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A read: the read token or the write token.
    Read,
    /// A change: the write token.
    Write,
}

impl Access {
    /// The node flag that sets the token this access needs.
    pub fn node_flag(self) -> &'static str {
        match self {
            Access::Read => "--read-token",
            Access::Write => "--api-token",
        }
    }

    /// What the client must pass, named by its flag and environment variable.
    pub fn client_hint(self) -> &'static str {
        match self {
            Access::Read => {
                "pass the read token (--read-token / SIMPLELOGGERS_READ_TOKEN) or the write token"
            }
            Access::Write => "pass the write token (--api-token / SIMPLELOGGERS_API_TOKEN)",
        }
    }
}

/// The tokens a node enforces (at least one is set).
#[derive(Clone, Debug)]
pub struct AccessRules {
    /// `--api-token`.
    write: Option<Arc<str>>,
    /// `--read-token`.
    read: Option<Arc<str>>,
}

impl AccessRules {
    /// What `method` on `path` needs, `None` when it is open (the page and its assets: they hold
    /// no data; everything else this middleware sees is the public API).
    pub fn needed(method: &Method, path: &str) -> Option<Access> {
        if path == "/" || path.starts_with("/assets/") {
            return None;
        }
        if method == Method::GET || method == Method::HEAD {
            Some(Access::Read)
        } else {
            Some(Access::Write)
        }
    }

    /// Whether a request presenting `authorization` (the header) or `query_token` (the
    /// `access_token` parameter, honoured for reads only) may do `access`.
    pub fn allows(
        &self,
        access: Access,
        authorization: Option<&HeaderValue>,
        query_token: Option<&str>,
    ) -> bool {
        let presented = |secret: &str| {
            crate::replication::http::authorized(secret, authorization)
                || (access == Access::Read
                    && query_token.is_some_and(|t| {
                        use subtle::ConstantTimeEq;
                        bool::from(t.as_bytes().ct_eq(secret.as_bytes()))
                    }))
        };
        match access {
            Access::Write => self.write.as_deref().is_none_or(presented),
            Access::Read => match (&self.read, &self.write) {
                (None, _) => true,
                (Some(read), write) => presented(read) || write.as_deref().is_some_and(presented),
            },
        }
    }
}

/// The middleware: 401 (`WWW-Authenticate: Bearer`, JSON body with code `unauthorized`) unless
/// the request carries the token its access needs. Never logs a token.
pub async fn require(State(rules): State<AccessRules>, request: Request, next: Next) -> Response {
    let Some(access) = AccessRules::needed(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let query_token = (access == Access::Read)
        .then(|| request.uri().query().and_then(access_token_param))
        .flatten();
    if rules.allows(
        access,
        request.headers().get(header::AUTHORIZATION),
        query_token.as_deref(),
    ) {
        next.run(request).await
    } else {
        ApiError::Unauthorized(access).into_response()
    }
}

/// The `access_token` query parameter, percent-decoded.
fn access_token_param(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == ACCESS_TOKEN_PARAM)
        .map(|(_, v)| v.into_owned())
}

/// Default headers for a client that presents `token` (none when `None` or empty): one
/// `Authorization: Bearer <token>`, marked sensitive so it never shows in debug output.
///
/// # Errors
/// The token holds characters a header cannot carry; the message names `flag`.
pub fn bearer_headers(token: Option<&str>, flag: &str) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| format!("{flag}: the token holds characters not allowed in an HTTP header"))?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(write: Option<&str>, read: Option<&str>) -> AccessRules {
        AccessArgs {
            api_token: write.map(String::from),
            read_token: read.map(String::from),
        }
        .rules()
        .expect("a token is set")
    }

    fn bearer(t: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
    }

    /// No token, or only empty ones, means no rules at all (no middleware, no cost).
    #[test]
    fn no_tokens_no_rules() {
        assert!(AccessArgs::default().rules().is_none());
        let empty = AccessArgs {
            api_token: Some(String::new()),
            read_token: Some(String::new()),
        };
        assert!(empty.rules().is_none());
    }

    /// Every method but GET/HEAD is a write; the page and its assets are open.
    #[test]
    fn what_each_request_needs() {
        assert_eq!(
            AccessRules::needed(&Method::POST, "/api/v1/log"),
            Some(Access::Write)
        );
        assert_eq!(
            AccessRules::needed(&Method::DELETE, "/api/v1/log"),
            Some(Access::Write)
        );
        assert_eq!(
            AccessRules::needed(&Method::GET, "/api/v1/log"),
            Some(Access::Read)
        );
        assert_eq!(
            AccessRules::needed(&Method::HEAD, "/api/v1/status"),
            Some(Access::Read)
        );
        assert_eq!(AccessRules::needed(&Method::GET, "/"), None);
        assert_eq!(AccessRules::needed(&Method::GET, "/assets/app.js"), None);
    }

    /// The write token opens writes and reads; the read token only reads; the query parameter
    /// only reads; a wrong or missing token opens nothing that is protected.
    #[test]
    fn token_rules() {
        let both = rules(Some("w"), Some("r"));
        assert!(both.allows(Access::Write, Some(&bearer("w")), None));
        assert!(!both.allows(Access::Write, Some(&bearer("r")), None));
        assert!(
            !both.allows(Access::Write, None, Some("w")),
            "no query tokens for writes"
        );
        assert!(!both.allows(Access::Write, None, None));
        assert!(both.allows(Access::Read, Some(&bearer("r")), None));
        assert!(both.allows(Access::Read, Some(&bearer("w")), None));
        assert!(both.allows(Access::Read, None, Some("r")));
        assert!(!both.allows(Access::Read, Some(&bearer("x")), None));
        assert!(!both.allows(Access::Read, None, Some("rr")));
        assert!(!both.allows(Access::Read, None, None));

        let write_only = rules(Some("w"), None);
        assert!(write_only.allows(Access::Read, None, None), "reads stay open");
        assert!(!write_only.allows(Access::Write, None, None));

        let read_only = rules(None, Some("r"));
        assert!(read_only.allows(Access::Write, None, None), "writes stay open");
        assert!(!read_only.allows(Access::Read, None, None));
    }

    /// The node presents its write token to peers, else its read token.
    #[test]
    fn own_credential() {
        let args = AccessArgs {
            api_token: Some("w".into()),
            read_token: Some("r".into()),
        };
        assert_eq!(args.own_credential(), Some("w"));
        let args = AccessArgs {
            api_token: None,
            read_token: Some("r".into()),
        };
        assert_eq!(args.own_credential(), Some("r"));
    }

    /// Client headers: one sensitive bearer header, none without a token; a bad token names
    /// the flag.
    #[test]
    fn client_headers() {
        let headers = bearer_headers(Some("t0k"), "--api-token").unwrap();
        let value = headers.get(header::AUTHORIZATION).unwrap();
        assert_eq!(value, "Bearer t0k");
        assert!(value.is_sensitive());
        assert!(bearer_headers(None, "--api-token").unwrap().is_empty());
        let err = bearer_headers(Some("a\nb"), "--read-token").unwrap_err();
        assert!(err.contains("--read-token"), "{err}");
    }

    /// The query parameter is found and percent-decoded.
    #[test]
    fn query_parameter() {
        assert_eq!(
            access_token_param("from=3&access_token=a%2Bb").as_deref(),
            Some("a+b")
        );
        assert_eq!(access_token_param("from=3"), None);
    }
}
