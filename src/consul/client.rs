//! The HTTP plumbing every endpoint shares: base URL, token header, timeouts, query options,
//! response metadata (`X-Consul-Index`, ...) and the mapping of statuses to [`ConsulError`].

use std::{sync::Arc, time::Duration};

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use super::{format_go_duration, ConsulConfig, ConsulError, Result};

/// Characters escaped in a KV key or id placed in a URL path; `/` stays, it separates key parts.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Extra time allowed beyond a blocking query's wait before the request counts as timed out:
/// Consul adds up to wait/16 of jitter and the network needs a moment.
const BLOCKING_SLACK: Duration = Duration::from_secs(5);

/// Options of a read: blocking-query index and wait, and consistency mode.
#[derive(Clone, Debug, Default)]
pub struct QueryOptions {
    /// Block until the result's index exceeds this (`None` or 0: answer at once).
    pub index: Option<u64>,
    /// How long Consul may block (Consul's default 5 min, maximum 10 min).
    pub wait: Option<Duration>,
    /// Read through the leader with a consistency check (`?consistent`).
    pub consistent: bool,
    /// Allow any server to answer (`?stale`).
    pub stale: bool,
}

impl QueryOptions {
    /// A blocking read at `index` that waits at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        Self {
            index: Some(index),
            wait: Some(wait),
            ..Self::default()
        }
    }

    fn apply(&self, query: &mut Vec<(&'static str, String)>) {
        if let Some(index) = self.index.filter(|i| *i > 0) {
            query.push(("index", index.to_string()));
            if let Some(wait) = self.wait {
                query.push(("wait", format_go_duration(wait)));
            }
        }
        if self.consistent {
            query.push(("consistent", String::new()));
        }
        if self.stale {
            query.push(("stale", String::new()));
        }
    }

    /// The client-side timeout for this query: Consul's wait (default 5 min) plus its jitter.
    fn timeout(&self, base: Duration) -> Duration {
        match self.index.filter(|i| *i > 0) {
            Some(_) => {
                let wait = self
                    .wait
                    .unwrap_or(Duration::from_secs(300))
                    .min(Duration::from_secs(600));
                wait + wait / 16 + BLOCKING_SLACK
            }
            None => base,
        }
    }
}

/// Metadata Consul returns with every read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index`: the index to pass to the next blocking query.
    pub index: u64,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`, milliseconds since the answering server heard from the leader.
    pub last_contact_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::operation;

    /// Operations drop keys and ids, so metric labels stay few.
    #[test]
    fn operations() {
        assert_eq!(operation("/v1/kv/service/simpleloggers/leader"), "kv");
        assert_eq!(operation("/v1/session/renew/abc"), "session/renew");
        assert_eq!(operation("/v1/agent/service/register"), "agent/service");
        assert_eq!(operation("/v1/txn"), "txn");
        assert_eq!(operation("/v1/status/leader"), "status/leader");
    }
}

impl QueryMeta {
    fn from_response(resp: &Response) -> Self {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        QueryMeta {
            index: header("x-consul-index").and_then(|v| v.parse().ok()).unwrap_or(0),
            known_leader: header("x-consul-knownleader").is_some_and(|v| v == "true"),
            last_contact_ms: header("x-consul-lastcontact")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// What an observer learns of each request: its operation (`kv`, `session/renew`, ...), how long
/// it took, and its HTTP status or the transport error.
pub type RequestObserver = Arc<dyn Fn(&str, Duration, std::result::Result<u16, &ConsulError>) + Send + Sync>;

/// A cheap-to-clone handle on one Consul agent.
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: url::Url,
    token: Option<String>,
    timeout: Duration,
    /// Told about every request (metrics); `None` costs nothing.
    observer: Option<RequestObserver>,
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The operation a `/v1/...` path names, without keys or ids: `kv`, `session/renew`, ...
pub fn operation(path: &str) -> &str {
    let rest = path.strip_prefix("/v1/").unwrap_or(path);
    let mut parts = rest.splitn(3, '/');
    let first = parts.next().unwrap_or("");
    match (first, parts.next()) {
        ("kv" | "txn", _) | (_, None) => &rest[..first.len()],
        (_, Some(second)) => &rest[..first.len() + 1 + second.len()],
    }
}

impl ConsulClient {
    /// Builds a client from the configuration (no request is sent).
    ///
    /// # Errors
    /// Fails when the address is invalid or a TLS file (CA, client certificate or key) cannot be
    /// read or parsed.
    pub fn new(config: &ConsulConfig) -> Result<Self> {
        let base = config.base_url()?;
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("simpleloggers/", env!("CARGO_PKG_VERSION")));
        let (builder, base) = super::tls::configure(config, builder, base)?;
        let http = builder
            .build()
            .map_err(|e| ConsulError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            token: config.token.clone().filter(|t| !t.is_empty()),
            timeout: config.timeout,
            observer: None,
        })
    }

    /// A client for `addr` with default settings (tests, the demo).
    ///
    /// # Errors
    /// Fails when the address is invalid.
    pub fn from_addr(addr: impl Into<String>) -> Result<Self> {
        Self::new(&ConsulConfig::new(addr))
    }

    /// The same client with another timeout for non-blocking requests (a renewal that takes
    /// longer than the lease it extends is worthless, so the elector uses a short one).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// The same client reporting every request to `observer` (used for metrics).
    pub fn with_observer(&self, observer: RequestObserver) -> Self {
        Self {
            observer: Some(observer),
            ..self.clone()
        }
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &url::Url {
        &self.base
    }

    /// Builds `/v1/<path>` with `tail` (a key or id) percent-encoded except for `/`.
    pub(crate) fn url(&self, path: &str, tail: &str) -> String {
        let mut url = format!("{}v1/{path}", self.base);
        url.extend(utf8_percent_encode(tail, PATH_SEGMENT));
        url
    }

    pub(crate) fn request(&self, method: Method, url: String, query: &[(&str, String)]) -> RequestBuilder {
        let mut req = self.http.request(method, url).timeout(self.timeout);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        req
    }

    /// Sends a read with query options; answers the raw response and its metadata.
    /// 404 is returned as `Ok` so callers can decide what "missing" means.
    pub(crate) async fn read(
        &self,
        url: String,
        mut query: Vec<(&'static str, String)>,
        opts: &QueryOptions,
    ) -> Result<(Response, QueryMeta)> {
        opts.apply(&mut query);
        let req = self
            .request(Method::GET, url, &query)
            .timeout(opts.timeout(self.timeout));
        let resp = self.send(req).await?;
        let meta = QueryMeta::from_response(&resp);
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok((resp, meta));
        }
        Ok((self.check(resp).await?, meta))
    }

    /// Sends a request and maps transport failures.
    pub(crate) async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let Some(observer) = &self.observer else {
            return req.send().await.map_err(|e| self.transport_error(e));
        };
        let request = req.build().map_err(|e| self.transport_error(e))?;
        let op = operation(request.url().path()).to_string();
        let started = std::time::Instant::now();
        let result = self
            .http
            .execute(request)
            .await
            .map_err(|e| self.transport_error(e));
        match &result {
            Ok(resp) => observer(&op, started.elapsed(), Ok(resp.status().as_u16())),
            Err(err) => observer(&op, started.elapsed(), Err(err)),
        }
        result
    }

    /// Sends a request and maps any non-2xx status to an error.
    pub(crate) async fn send_ok(&self, req: RequestBuilder) -> Result<Response> {
        let resp = self.send(req).await?;
        self.check(resp).await
    }

    /// Sends a write whose answer is Consul's JSON `true`/`false`.
    pub(crate) async fn send_bool(&self, req: RequestBuilder) -> Result<bool> {
        let resp = self.send_ok(req).await?;
        let body = resp.text().await.map_err(|e| self.transport_error(e))?;
        match body.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(ConsulError::Decode {
                what: "a write",
                message: format!("expected true or false, got {other:?}"),
            }),
        }
    }

    /// Decodes a JSON body.
    pub(crate) async fn json<T: DeserializeOwned>(&self, resp: Response, what: &'static str) -> Result<T> {
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ConsulError::Decode {
            what,
            message: e.to_string(),
        })
    }

    pub(crate) async fn check(&self, resp: Response) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let message = resp.text().await.unwrap_or_default().trim().to_string();
        Err(match status {
            StatusCode::NOT_FOUND => ConsulError::NotFound { message },
            StatusCode::FORBIDDEN => ConsulError::permission_denied(message),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
                ConsulError::BadRequest { status, message }
            }
            s if s.is_server_error() => ConsulError::Unavailable {
                addr: self.base.to_string(),
                status: Some(status),
                message,
            },
            _ => ConsulError::Unexpected { status, message },
        })
    }

    pub(crate) fn transport_error(&self, err: reqwest::Error) -> ConsulError {
        let addr = self.base.to_string();
        if err.is_timeout() {
            ConsulError::Timeout { addr }
        } else {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(inner) = source {
                message.push_str(": ");
                message.push_str(&inner.to_string());
                source = inner.source();
            }
            ConsulError::Unavailable {
                addr,
                status: None,
                message,
            }
        }
    }

    /// `GET /v1/status/leader`: the Raft leader's address, empty when there is none.
    ///
    /// # Errors
    /// Fails when Consul cannot be reached.
    pub async fn status_leader(&self) -> Result<String> {
        let resp = self
            .send_ok(self.request(Method::GET, self.url("status/leader", ""), &[]))
            .await?;
        self.json(resp, "status/leader").await
    }
}
