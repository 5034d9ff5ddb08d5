//! The internal replication endpoint's wire format (`/internal/v1/replication/`, spec in
//! `docs/replication.md`): the query of a fetch and of an end-offset question, the answer headers,
//! the refusal bodies (409 `diverged`/`stale_term`, 410 `offset_trimmed`, 401, 503 `not_leader`),
//! and the follower's client, which sends the cluster secret and never uses an ambient proxy.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Path prefix of every internal replication route.
pub const PREFIX: &str = "/internal/v1/replication";
/// Path of the end-offset question.
pub const END_OFFSET_PATH: &str = "/internal/v1/replication/end-offset";
/// Path of the fetch.
pub const FETCH_PATH: &str = "/internal/v1/replication/fetch";

/// Answer header: the leader's term.
pub const HEADER_TERM: &str = "x-repl-term";
/// Answer header: the leader's Consul session.
pub const HEADER_SESSION: &str = "x-repl-session";
/// Answer header: the leader's high watermark.
pub const HEADER_HW: &str = "x-repl-hw";
/// Answer header: the leader's first retained offset.
pub const HEADER_LOG_START: &str = "x-repl-log-start";
/// Answer header: the leader's durable log end.
pub const HEADER_LOG_END: &str = "x-repl-log-end";
/// Answer header: the offset after the frames in the body (the next fetch's `from`).
pub const HEADER_NEXT: &str = "x-repl-next";

/// Longest long poll a fetch may ask for (`wait_ms` is capped to it).
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// `max_bytes` when the fetch does not say.
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;
/// Largest `max_bytes` honoured (bigger values are capped to it).
pub const MAX_MAX_BYTES: usize = 16 << 20;

/// A query string that does not parse: answered 400, the message names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

fn number(name: &str, value: &str) -> Result<u64, QueryError> {
    value.trim().parse::<u64>().map_err(|_| {
        QueryError(format!(
            "query parameter {name} must be an unsigned integer, got {value:?}"
        ))
    })
}

fn missing(name: &str) -> QueryError {
    QueryError(format!("query parameter {name} is required"))
}

/// `GET /internal/v1/replication/end-offset?term=T`: where term `T` ends in the leader's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOffsetQuery {
    /// The term asked about.
    pub term: u64,
}

impl EndOffsetQuery {
    /// Parses the query string.
    ///
    /// # Errors
    /// A missing or non-numeric `term`, an unknown parameter.
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
        let mut term = None;
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "term" => term = Some(number("term", &value)?),
                other => return Err(QueryError(format!("unknown query parameter {other:?}"))),
            }
        }
        Ok(Self {
            term: term.ok_or_else(|| missing("term"))?,
        })
    }

    /// The query string.
    pub fn to_query(&self) -> String {
        format!("term={}", self.term)
    }
}

/// The answer to an end-offset question: the leader's `end_offset_for(T)`, the largest term it
/// holds at or below `T` and where that term ends; `{"term":null,"end":0}` for a log that never
/// held a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndOffsetAnswer {
    /// The term found (`None`: the leader's log never held a record).
    pub term: Option<u64>,
    /// Where it ends.
    pub end: u64,
}

impl EndOffsetAnswer {
    /// From `LogStore::end_offset_for`.
    pub fn from_lookup(found: Option<(u64, u64)>) -> Self {
        match found {
            Some((term, end)) => Self {
                term: Some(term),
                end,
            },
            None => Self { term: None, end: 0 },
        }
    }

    /// Back to what `truncation::decide` takes.
    pub fn lookup(&self) -> Option<(u64, u64)> {
        self.term.map(|term| (term, self.end))
    }
}

/// `GET /internal/v1/replication/fetch?...`: a follower asks for the records from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchQuery {
    /// The follower's durable log end: it holds every record below it durably.
    pub from: u64,
    /// Term of the follower's last record (`None`: its log holds no record).
    pub last_term: Option<u64>,
    /// The highest term the follower has seen; a leader below it is stale.
    pub term: u64,
    /// The follower's node name.
    pub name: String,
    /// The follower's log incarnation.
    pub incarnation: String,
    /// How long the leader may hold the fetch when it has nothing to send (capped at
    /// [`MAX_WAIT`]).
    pub wait: Duration,
    /// Most bytes of frames in the answer (at least one whole batch is sent when any exists).
    pub max_bytes: usize,
    /// Optional extension: the high watermark the follower knows, so that the leader answers at
    /// once (without records) when its own is higher instead of holding the poll.
    pub hw: Option<u64>,
}

impl FetchQuery {
    /// Parses the query string; `wait_ms` and `max_bytes` are capped, not refused.
    ///
    /// # Errors
    /// A missing `from`, `term`, `name` or `incarnation`; a bad number; an empty name or
    /// incarnation; `max_bytes=0`; an unknown parameter.
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
        let (mut from, mut last_term, mut term, mut name, mut incarnation) = (None, None, None, None, None);
        let (mut wait_ms, mut max_bytes, mut hw) = (0u64, DEFAULT_MAX_BYTES as u64, None);
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "from" => from = Some(number("from", &value)?),
                "last_term" => last_term = Some(number("last_term", &value)?),
                "term" => term = Some(number("term", &value)?),
                "name" => name = Some(value.trim().to_string()),
                "incarnation" => incarnation = Some(value.trim().to_string()),
                "wait_ms" => wait_ms = number("wait_ms", &value)?,
                "max_bytes" => max_bytes = number("max_bytes", &value)?,
                "hw" => hw = Some(number("hw", &value)?),
                other => return Err(QueryError(format!("unknown query parameter {other:?}"))),
            }
        }
        let nonempty = |field: Option<String>, key: &str| match field {
            None => Err(missing(key)),
            Some(v) if v.is_empty() || v.len() > 256 => Err(QueryError(format!(
                "query parameter {key} must be 1 to 256 characters"
            ))),
            Some(v) => Ok(v),
        };
        if max_bytes == 0 {
            return Err(QueryError("query parameter max_bytes must be positive".into()));
        }
        Ok(Self {
            from: from.ok_or_else(|| missing("from"))?,
            last_term,
            term: term.ok_or_else(|| missing("term"))?,
            name: nonempty(name, "name")?,
            incarnation: nonempty(incarnation, "incarnation")?,
            wait: Duration::from_millis(wait_ms).min(MAX_WAIT),
            max_bytes: (max_bytes.min(MAX_MAX_BYTES as u64)) as usize,
            hw,
        })
    }

    /// The query string (percent-encoded).
    pub fn to_query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("from", &self.from.to_string());
        if let Some(t) = self.last_term {
            q.append_pair("last_term", &t.to_string());
        }
        q.append_pair("term", &self.term.to_string());
        q.append_pair("name", &self.name);
        q.append_pair("incarnation", &self.incarnation);
        q.append_pair("wait_ms", &self.wait.as_millis().to_string());
        q.append_pair("max_bytes", &self.max_bytes.to_string());
        if let Some(hw) = self.hw {
            q.append_pair("hw", &hw.to_string());
        }
        q.finish()
    }
}

/// A fetch answered 200: the leader's view (from the headers) and the frames (the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchAnswer {
    /// The leader's term (`X-Repl-Term`).
    pub term: u64,
    /// The leader's session (`X-Repl-Session`).
    pub session: String,
    /// The leader's high watermark (`X-Repl-Hw`).
    pub high_watermark: u64,
    /// The leader's first retained offset (`X-Repl-Log-Start`).
    pub log_start: u64,
    /// The leader's durable log end (`X-Repl-Log-End`).
    pub log_end: u64,
    /// One past the frames (`X-Repl-Next`); the fetch's `from` when there are none.
    pub next: u64,
    /// Raw frames of whole batches, byte for byte as the leader stores them.
    pub frames: Bytes,
}

/// Why the leader did not serve a fetch or question; each has a status and a JSON body with a
/// stable `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchRefusal {
    /// 409 `diverged`: `(last_term, from)` does not match the leader's log; the fields are the
    /// leader's `end_offset_for(last_term)`. The follower runs the truncation rule.
    #[error("the follower's log diverges from the leader's: the leader's term {term:?} ends at {end}")]
    Diverged {
        /// The largest term the leader holds at or below `last_term`.
        term: Option<u64>,
        /// Where it ends.
        end: u64,
    },
    /// 409 `stale_term`: the follower has seen a term above the leader's.
    #[error("stale term: the leader is in term {term}, below a term the follower has seen")]
    StaleTerm {
        /// The leader's term.
        term: u64,
    },
    /// 410 `offset_trimmed`: the follower's position is not in the leader's log (below its first
    /// retained offset, or an empty follower log elsewhere than the leader's start): empty the
    /// log and fetch from `log_start`.
    #[error("offset not in the leader's log: fetch from its first retained offset {log_start}")]
    OffsetTrimmed {
        /// The leader's first retained offset.
        log_start: u64,
    },
    /// 401 `unauthorized`: the cluster secret is missing or wrong.
    #[error("the cluster secret is missing or wrong: every node needs the same --cluster-secret (SIMPLELOGGERS_CLUSTER_SECRET)")]
    Unauthorized,
    /// 503 `not_leader`: this node does not lead (or has not begun its term).
    #[error("not the leader: {reason}")]
    NotLeader {
        /// Why.
        reason: String,
    },
}

impl FetchRefusal {
    /// The stable `code` of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            FetchRefusal::Diverged { .. } => "diverged",
            FetchRefusal::StaleTerm { .. } => "stale_term",
            FetchRefusal::OffsetTrimmed { .. } => "offset_trimmed",
            FetchRefusal::Unauthorized => "unauthorized",
            FetchRefusal::NotLeader { .. } => "not_leader",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            FetchRefusal::Diverged { .. } | FetchRefusal::StaleTerm { .. } => 409,
            FetchRefusal::OffsetTrimmed { .. } => 410,
            FetchRefusal::Unauthorized => 401,
            FetchRefusal::NotLeader { .. } => 503,
        }
    }

    /// The JSON body: `code`, `message` and the refusal's fields.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        match self {
            FetchRefusal::Diverged { term, end } => {
                body["term"] = serde_json::json!(term);
                body["end"] = serde_json::json!(end);
            }
            FetchRefusal::StaleTerm { term } => body["term"] = serde_json::json!(term),
            FetchRefusal::OffsetTrimmed { log_start } => body["log_start"] = serde_json::json!(log_start),
            FetchRefusal::Unauthorized | FetchRefusal::NotLeader { .. } => {}
        }
        body
    }

    /// Reads a refusal back from a status and JSON body; `None` for anything else.
    pub fn parse(status: u16, body: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let u = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        let refusal = match (status, v.get("code")?.as_str()?) {
            (409, "diverged") => FetchRefusal::Diverged {
                term: u("term"),
                end: u("end")?,
            },
            (409, "stale_term") => FetchRefusal::StaleTerm { term: u("term")? },
            (410, "offset_trimmed") => FetchRefusal::OffsetTrimmed {
                log_start: u("log_start")?,
            },
            (401, "unauthorized") => FetchRefusal::Unauthorized,
            (503, "not_leader") => FetchRefusal::NotLeader {
                reason: v
                    .get("error")
                    .or_else(|| v.get("message"))
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("not the leader")
                    .to_string(),
            },
            _ => return None,
        };
        Some(refusal)
    }
}

/// What can go wrong asking the leader.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The leader answered with one of the protocol's refusals.
    #[error(transparent)]
    Refused(#[from] FetchRefusal),
    /// The request did not get an answer (connection, timeout).
    #[error("replication request to {addr} failed: {source}")]
    Transport {
        /// The leader's address.
        addr: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An answer the protocol does not know (unexpected status, bad header or body).
    #[error("unexpected replication answer from {addr}: {message}")]
    Malformed {
        /// The leader's address.
        addr: String,
        /// What was wrong.
        message: String,
    },
}

/// The follower's HTTP client for the internal endpoint. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReplicationClient {
    /// The client (no ambient proxy; `--replication-proxy` when set).
    http: reqwest::Client,
    /// `--cluster-secret`, sent as a bearer token.
    secret: Option<String>,
}

/// Transport errors building the client.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the replication client: {0}")]
pub struct ClientBuildError(String);

impl ReplicationClient {
    /// A client sending `secret` (if any) and going through `proxy` (an HTTP forward proxy URL,
    /// `--replication-proxy`) or, without it, through no proxy at all, whatever `HTTP_PROXY` says.
    ///
    /// # Errors
    /// A proxy URL that does not parse, or a TLS backend that cannot start.
    pub fn new(secret: Option<String>, proxy: Option<&str>) -> Result<Self, ClientBuildError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30));
        let builder = match proxy {
            Some(url) => builder.proxy(
                reqwest::Proxy::all(url)
                    .map_err(|e| ClientBuildError(format!("--replication-proxy {url:?}: {e}")))?,
            ),
            None => builder.no_proxy(),
        };
        Ok(Self {
            http: builder.build().map_err(|e| ClientBuildError(e.to_string()))?,
            secret,
        })
    }

    fn get(&self, url: String, timeout: Duration) -> reqwest::RequestBuilder {
        let request = self.http.get(url).timeout(timeout);
        match &self.secret {
            Some(secret) => request.bearer_auth(secret),
            None => request,
        }
    }

    /// Asks the leader at `addr` (`host:port`) where `term` ends in its log.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn end_offset(&self, addr: &str, term: u64) -> Result<EndOffsetAnswer, ClientError> {
        let url = format!(
            "http://{addr}{END_OFFSET_PATH}?{}",
            EndOffsetQuery { term }.to_query()
        );
        let answer = self
            .get(url, Duration::from_secs(5))
            .send()
            .await
            .map_err(|source| transport(addr, source))?;
        let status = answer.status().as_u16();
        let body = answer.bytes().await.map_err(|source| transport(addr, source))?;
        if status == 200 {
            return serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
                addr: addr.to_string(),
                message: format!("end-offset body: {e}"),
            });
        }
        Err(refusal(addr, status, &body))
    }

    /// Fetches from the leader at `addr`; held by the leader up to `query.wait` when it has
    /// nothing to send.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn fetch(&self, addr: &str, query: &FetchQuery) -> Result<FetchAnswer, ClientError> {
        let url = format!("http://{addr}{FETCH_PATH}?{}", query.to_query());
        let answer = self
            .get(url, query.wait + Duration::from_secs(5))
            .send()
            .await
            .map_err(|source| transport(addr, source))?;
        let status = answer.status().as_u16();
        if status != 200 {
            let body = answer.bytes().await.map_err(|source| transport(addr, source))?;
            return Err(refusal(addr, status, &body));
        }
        let headers = answer.headers().clone();
        let header = |name: &str| -> Result<String, ClientError> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| ClientError::Malformed {
                    addr: addr.to_string(),
                    message: format!("missing header {name}"),
                })
        };
        let numeric = |name: &str| -> Result<u64, ClientError> {
            header(name)?.parse().map_err(|_| ClientError::Malformed {
                addr: addr.to_string(),
                message: format!("header {name} is not a number"),
            })
        };
        let parsed = FetchAnswer {
            term: numeric(HEADER_TERM)?,
            session: header(HEADER_SESSION)?,
            high_watermark: numeric(HEADER_HW)?,
            log_start: numeric(HEADER_LOG_START)?,
            log_end: numeric(HEADER_LOG_END)?,
            next: numeric(HEADER_NEXT)?,
            frames: Bytes::new(),
        };
        let frames = answer.bytes().await.map_err(|source| transport(addr, source))?;
        Ok(FetchAnswer { frames, ..parsed })
    }
}

fn transport(addr: &str, source: reqwest::Error) -> ClientError {
    ClientError::Transport {
        addr: addr.to_string(),
        source,
    }
}

fn refusal(addr: &str, status: u16, body: &[u8]) -> ClientError {
    match FetchRefusal::parse(status, body) {
        Some(refusal) => ClientError::Refused(refusal),
        None => ClientError::Malformed {
            addr: addr.to_string(),
            message: format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)])
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> FetchQuery {
        FetchQuery {
            from: 12,
            last_term: Some(3),
            term: 4,
            name: "n 1".into(),
            incarnation: "abc".into(),
            wait: Duration::from_millis(500),
            max_bytes: 4096,
            hw: Some(10),
        }
    }

    /// A fetch query survives the round trip through its query string (names are encoded).
    #[test]
    fn fetch_query_round_trips() {
        let q = query();
        assert_eq!(FetchQuery::parse(Some(&q.to_query())).unwrap(), q);
        let empty_log = FetchQuery {
            last_term: None,
            hw: None,
            ..q
        };
        let text = empty_log.to_query();
        assert!(!text.contains("last_term"), "{text}");
        assert_eq!(FetchQuery::parse(Some(&text)).unwrap(), empty_log);
    }

    /// Missing and bad parameters are refused naming the parameter; waits and sizes are capped.
    #[test]
    fn fetch_query_errors_name_the_parameter() {
        let base = "from=1&term=2&name=n&incarnation=i";
        let parsed = FetchQuery::parse(Some(base)).unwrap();
        assert_eq!(
            (parsed.wait, parsed.max_bytes, parsed.last_term),
            (Duration::ZERO, DEFAULT_MAX_BYTES, None)
        );
        for (query, names) in [
            ("term=2&name=n&incarnation=i", "from"),
            ("from=1&name=n&incarnation=i", "term"),
            ("from=1&term=2&incarnation=i", "name"),
            ("from=1&term=2&name=n", "incarnation"),
            ("from=x&term=2&name=n&incarnation=i", "from"),
            ("from=1&term=-2&name=n&incarnation=i", "term"),
            ("from=1&term=2&name=&incarnation=i", "name"),
        ] {
            let err = FetchQuery::parse(Some(query)).unwrap_err().to_string();
            assert!(err.contains(names), "{query}: {err}");
        }
        let err = FetchQuery::parse(Some(&format!("{base}&max_bytes=0"))).unwrap_err();
        assert!(err.0.contains("max_bytes"), "{err}");
        let err = FetchQuery::parse(Some(&format!("{base}&colour=red"))).unwrap_err();
        assert!(err.0.contains("colour"), "{err}");
        let capped = FetchQuery::parse(Some(&format!("{base}&wait_ms=999999&max_bytes=999999999"))).unwrap();
        assert_eq!((capped.wait, capped.max_bytes), (MAX_WAIT, MAX_MAX_BYTES));
        assert_eq!(EndOffsetQuery::parse(Some("term=7")).unwrap().term, 7);
        assert!(EndOffsetQuery::parse(None).unwrap_err().0.contains("term"));
        assert!(EndOffsetQuery::parse(Some("term=7&x=1")).is_err());
    }

    /// Every refusal parses back from the status and body it is answered with.
    #[test]
    fn refusals_round_trip() {
        for refusal in [
            FetchRefusal::Diverged {
                term: Some(3),
                end: 9,
            },
            FetchRefusal::Diverged { term: None, end: 0 },
            FetchRefusal::StaleTerm { term: 5 },
            FetchRefusal::OffsetTrimmed { log_start: 100 },
            FetchRefusal::Unauthorized,
            FetchRefusal::NotLeader { reason: "r".into() },
        ] {
            let body = serde_json::to_vec(&refusal.body()).unwrap();
            let back = FetchRefusal::parse(refusal.status(), &body);
            match (&refusal, back) {
                (FetchRefusal::NotLeader { .. }, Some(FetchRefusal::NotLeader { .. })) => {}
                (_, back) => assert_eq!(back.as_ref(), Some(&refusal)),
            }
        }
        let body = FetchRefusal::Diverged { term: None, end: 0 }.body();
        assert_eq!(body["term"], serde_json::Value::Null);
        assert_eq!(
            FetchRefusal::parse(500, b"{\"code\":\"diverged\",\"end\":1}"),
            None
        );
        assert_eq!(
            EndOffsetAnswer::from_lookup(None),
            EndOffsetAnswer { term: None, end: 0 }
        );
        assert_eq!(EndOffsetAnswer::from_lookup(Some((2, 5))).lookup(), Some((2, 5)));
    }
}
