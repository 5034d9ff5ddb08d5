//! What every endpoint shares: the request context ([`Ctx`], [`Query`]), Consul's plain-text
//! errors ([`ApiError`]), the JSON/raw/text response shapes and read headers, and the blocking-query
//! helper. A leaf: it imports the shared state and the store, never an endpoint or the router.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    http::{header, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use rand::Rng;
use serde::Serialize;
use tokio::time::{Duration, Instant};

use crate::{
    acl::{Authz, Denied, Level, Resource},
    app::App,
    duration::parse_go_duration,
    state::Store,
};

/// Consul's `kv_max_value_size`.
pub(crate) const MAX_VALUE_SIZE: usize = 524_288;
/// Default blocking wait.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest blocking wait.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A Consul error: a status and a plain-text body.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Plain-text message.
    pub message: String,
}

impl ApiError {
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
    /// 500 (Consul's RPC errors).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: denied.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        text(self.status, self.message)
    }
}

/// Handler result.
pub(crate) type ApiResult = Result<Response, ApiError>;

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON response.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = (status, body).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to encode response: {err}"),
        ),
    }
}

/// An empty 200 (agent writes).
pub(crate) fn empty_ok() -> Response {
    StatusCode::OK.into_response()
}

/// Parsed query string; flags are presence-based (rule G3).
#[derive(Debug, Default)]
pub(crate) struct Query {
    /// Decoded pairs in order.
    pub pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string.
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        let pairs = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        Query { pairs }
    }
    /// Whether `key` is present (any value).
    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    /// Go's `url.Values.Encode()`: sorted by key, form-encoded.
    pub fn encode(&self) -> String {
        let mut pairs = self.pairs.clone();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    }
}

/// Everything a handler needs about one request.
pub(crate) struct Ctx {
    /// Shared state.
    pub app: Arc<App>,
    /// Method.
    pub method: Method,
    /// The percent-decoded path remainder after the route prefix (key, ID, name).
    pub rest: String,
    /// Query parameters.
    pub query: Query,
    /// Request body.
    pub body: Bytes,
    /// What the request's token may do; `None` when ACLs are off.
    pub authz: Option<Authz>,
}

impl Ctx {
    /// `Ok` when ACLs are off or the token grants `level` on `resource` `name`; else Consul's 403.
    pub fn require(&self, resource: Resource, name: &str, level: Level) -> Result<(), ApiError> {
        match &self.authz {
            Some(authz) => authz.require(resource, name, level).map_err(ApiError::from),
            None => Ok(()),
        }
    }

    /// Whether a listed item is shown (lists filter instead of refusing, rule T3).
    pub fn can(&self, resource: Resource, name: &str, level: Level) -> bool {
        self.authz
            .as_ref()
            .is_none_or(|authz| authz.allows(resource, name, level))
    }
}

/// Adds the read headers of rule B5 (index 0 is sent as 1).
pub(crate) fn with_meta(mut resp: Response, index: u64) -> Response {
    let headers = resp.headers_mut();
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    headers.insert(
        "X-Consul-Query-Backend",
        HeaderValue::from_static("blocking-query"),
    );
    resp
}

/// Parses `index` and `wait` (rule B2): `(min_index, wait including jitter)`.
fn parse_blocking(query: &Query) -> Result<(u64, Duration), ApiError> {
    let index = match query.get("index") {
        None => 0,
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("Invalid index"))?,
    };
    let mut wait = match query.get("wait") {
        None => DEFAULT_WAIT,
        Some(s) => {
            let ns = parse_go_duration(s).map_err(|_| ApiError::bad_request("Invalid wait time"))?;
            if ns <= 0 {
                DEFAULT_WAIT
            } else {
                Duration::from_nanos(ns.unsigned_abs())
            }
        }
    };
    wait = wait.min(MAX_WAIT);
    let jitter_max = wait.as_nanos() / 16;
    if jitter_max > 0 {
        let jitter = rand::thread_rng().gen_range(0..jitter_max);
        wait += Duration::from_nanos(u64::try_from(jitter).unwrap_or(0));
    }
    Ok((index, wait))
}

/// Runs a read as a blocking query (rules B1–B5): `f` computes `(index, response)`; with
/// `index=N>0` it is re-run on every write until its index exceeds N, the wait elapses, or the
/// server shuts down. Wakes on the index watch channel, never by polling.
pub(crate) async fn blocking<F>(ctx: &Ctx, f: F) -> ApiResult
where
    F: Fn(&Store) -> ApiResult,
{
    let (min_index, wait) = parse_blocking(&ctx.query)?;
    let mut rx = ctx.app.watch_index();
    let deadline = Instant::now() + wait;
    loop {
        rx.borrow_and_update();
        let (index, resp) = ctx.app.read(|store| {
            let resp = f(store);
            (current_index(&resp), resp)
        });
        let resp = resp?;
        if min_index == 0 || index > min_index || Instant::now() >= deadline {
            return Ok(resp);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return Ok(resp) },
            () = tokio::time::sleep_until(deadline) => {}
            () = ctx.app.shutdown.cancelled() => return Ok(resp),
        }
    }
}

/// The `X-Consul-Index` a read response carries (set by `with_meta` inside `f`).
fn current_index(resp: &ApiResult) -> u64 {
    match resp {
        Ok(r) => r
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Decodes a JSON body or answers 400 `Request decode failed: …`.
pub(crate) fn decode_failed(err: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Request decode failed: {err}"))
}

/// Raw response body (KV `?raw`).
pub(crate) fn raw(value: Vec<u8>) -> Response {
    let mut resp = (StatusCode::OK, Body::from(value)).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
    headers.insert("Content-Security-Policy", HeaderValue::from_static("sandbox"));
    resp
}
