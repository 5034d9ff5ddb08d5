//! HTTP plumbing: a single dispatcher (Consul's route table, 404 for unknown `/v1` paths, 405 with
//! `Allow`, OPTIONS), ACL enforcement, common headers, plain-text errors and the blocking-query
//! helper shared by every read endpoint.

use std::sync::Arc;

use axum::{
    body::{to_bytes, Body, Bytes},
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use rand::Rng;
use serde::Serialize;
use tokio::time::{Duration, Instant};

use super::{agent, duration::parse_go_duration, health, kv, session, state::Store, txn, App};

/// Consul's `kv_max_value_size`.
pub(crate) const MAX_VALUE_SIZE: usize = 524_288;
/// Largest request body read for any other endpoint.
const MAX_BODY: usize = 8 * 1024 * 1024;
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
    fn parse(raw: Option<&str>) -> Query {
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
}

/// Every endpoint served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is named after the path in ROUTES
pub(crate) enum Route {
    Kv,
    Txn,
    SessionCreate,
    SessionDestroy,
    SessionRenew,
    SessionInfo,
    SessionNode,
    SessionList,
    ServiceRegister,
    ServiceDeregister,
    CheckPass,
    CheckWarn,
    CheckFail,
    CheckUpdate,
    CheckDeregister,
    AgentServices,
    AgentChecks,
    AgentSelf,
    HealthService,
    CatalogService,
    CatalogServices,
    CatalogNodes,
    StatusLeader,
    StatusPeers,
}

/// The route table: path (a trailing `/` means "prefix, rest is a parameter"), route, methods.
const ROUTES: &[(&str, Route, &[&str])] = &[
    ("/v1/kv/", Route::Kv, &["GET", "PUT", "DELETE"]),
    ("/v1/txn", Route::Txn, &["PUT"]),
    ("/v1/session/create", Route::SessionCreate, &["PUT"]),
    ("/v1/session/destroy/", Route::SessionDestroy, &["PUT"]),
    ("/v1/session/renew/", Route::SessionRenew, &["PUT"]),
    ("/v1/session/info/", Route::SessionInfo, &["GET"]),
    ("/v1/session/node/", Route::SessionNode, &["GET"]),
    ("/v1/session/list", Route::SessionList, &["GET"]),
    ("/v1/agent/service/register", Route::ServiceRegister, &["PUT"]),
    (
        "/v1/agent/service/deregister/",
        Route::ServiceDeregister,
        &["PUT"],
    ),
    ("/v1/agent/check/pass/", Route::CheckPass, &["PUT"]),
    ("/v1/agent/check/warn/", Route::CheckWarn, &["PUT"]),
    ("/v1/agent/check/fail/", Route::CheckFail, &["PUT"]),
    ("/v1/agent/check/update/", Route::CheckUpdate, &["PUT"]),
    ("/v1/agent/check/deregister/", Route::CheckDeregister, &["PUT"]),
    ("/v1/agent/services", Route::AgentServices, &["GET"]),
    ("/v1/agent/checks", Route::AgentChecks, &["GET"]),
    ("/v1/agent/self", Route::AgentSelf, &["GET"]),
    ("/v1/health/service/", Route::HealthService, &["GET"]),
    ("/v1/catalog/service/", Route::CatalogService, &["GET"]),
    ("/v1/catalog/services", Route::CatalogServices, &["GET"]),
    ("/v1/catalog/nodes", Route::CatalogNodes, &["GET"]),
    ("/v1/status/leader", Route::StatusLeader, &["GET"]),
    ("/v1/status/peers", Route::StatusPeers, &["GET"]),
];

/// Finds the route for a raw (still percent-encoded) path and the raw remainder.
fn find_route(path: &str) -> Option<(Route, &'static [&'static str], &str)> {
    ROUTES.iter().find_map(|(pattern, route, methods)| {
        if pattern.ends_with('/') {
            path.strip_prefix(pattern).map(|rest| (*route, *methods, rest))
        } else {
            (path == *pattern).then_some((*route, *methods, ""))
        }
    })
}

/// The router: one fallback handler that dispatches on Consul's table.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new().fallback(dispatch).with_state(app)
}

/// Entry point for every request: handles it, then adds the ACL policy header (rule G7).
async fn dispatch(State(app): State<Arc<App>>, req: Request) -> Response {
    let policy = if app.config.acl_token.is_some() {
        "deny"
    } else {
        "allow"
    };
    let pretty = Query::parse(req.uri().query()).has("pretty");
    let mut resp = match handle(app, req).await {
        Ok(resp) => resp,
        Err(err) => err.into_response(),
    };
    if pretty {
        resp = prettify(resp).await;
    }
    resp.headers_mut()
        .insert("X-Consul-Default-ACL-Policy", HeaderValue::from_static(policy));
    resp
}

/// `?pretty` (rule G2): re-indents a JSON body; anything else passes through.
async fn prettify(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/json");
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "failed to read response body");
    };
    let pretty = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| serde_json::to_vec_pretty(&v).ok())
        .unwrap_or_else(|| bytes.to_vec());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(pretty))
}

/// The token a request presents (rule T1): `?token=`, `X-Consul-Token`, `Authorization: Bearer`.
fn request_token<'a>(query: &'a Query, headers: &'a HeaderMap) -> Option<&'a str> {
    if let Some(t) = query.get("token").filter(|t| !t.is_empty()) {
        return Some(t);
    }
    if let Some(t) = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
    {
        return Some(t);
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())?;
    let mut words = auth.split_whitespace();
    let scheme = words.next()?;
    if scheme.eq_ignore_ascii_case("bearer") {
        words.next()
    } else {
        None
    }
}

/// Routing, method checks, ACL, common validation, body reading, then the endpoint.
async fn handle(app: Arc<App>, req: Request) -> ApiResult {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let Some((route, methods, raw_rest)) = find_route(&path) else {
        return Err(ApiError::not_found(
            "Invalid URL path: not a recognized HTTP API endpoint",
        ));
    };
    let allow = format!("OPTIONS,{}", methods.join(","));
    if parts.method == Method::OPTIONS {
        let mut resp = StatusCode::OK.into_response();
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("OPTIONS")),
        );
        return Ok(resp);
    }
    if !methods.contains(&parts.method.as_str()) {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed", parts.method),
        );
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("OPTIONS")),
        );
        return Ok(resp);
    }
    let query = Query::parse(parts.uri.query());
    if let Some(required) = &app.config.acl_token {
        if route != Route::StatusLeader {
            match request_token(&query, &parts.headers) {
                Some(t) if t == required => {}
                Some(_) => {
                    return Err(ApiError {
                        status: StatusCode::FORBIDDEN,
                        message: "ACL not found".into(),
                    })
                }
                None => {
                    return Err(ApiError {
                        status: StatusCode::FORBIDDEN,
                        message: "Permission denied".into(),
                    })
                }
            }
        }
    }
    let ns_header = parts
        .headers
        .get("X-Consul-Namespace")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if query.get("ns").is_some_and(|ns| !ns.is_empty()) || !ns_header.is_empty() {
        return Err(ApiError::bad_request(
            "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature",
        ));
    }
    if let Some(dc) = query.get("dc").filter(|dc| !dc.is_empty()) {
        if dc != app.config.datacenter {
            return Err(ApiError::internal("No path to datacenter"));
        }
    }
    if query.has("stale") && query.has("consistent") {
        return Err(ApiError::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    let rest = percent_encoding::percent_decode_str(raw_rest)
        .decode_utf8_lossy()
        .into_owned();
    let limit = if route == Route::Kv && parts.method == Method::PUT {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if let Some(n) = declared.filter(|n: &usize| *n > MAX_VALUE_SIZE) {
            // Drain (bounded) so the client sees the 413 rather than a reset connection.
            let _ = to_bytes(body, MAX_BODY).await;
            return Err(too_large(n));
        }
        MAX_VALUE_SIZE
    } else {
        MAX_BODY
    };
    let body = match to_bytes(body, limit + 1).await {
        Ok(b) if b.len() > limit => return Err(too_large(b.len())),
        Ok(b) => b,
        Err(_) => return Err(too_large(limit + 1)),
    };
    let ctx = Ctx {
        app,
        method: parts.method,
        rest,
        query,
        body,
    };
    match route {
        Route::Kv => kv::handle(&ctx).await,
        Route::Txn => txn::handle(&ctx),
        Route::SessionCreate => session::create(&ctx),
        Route::SessionDestroy => session::destroy(&ctx),
        Route::SessionRenew => session::renew(&ctx),
        Route::SessionInfo => session::info(&ctx).await,
        Route::SessionNode => session::node(&ctx).await,
        Route::SessionList => session::list(&ctx).await,
        Route::ServiceRegister => agent::register(&ctx),
        Route::ServiceDeregister => agent::deregister(&ctx),
        Route::CheckPass => agent::ttl_update(&ctx, Some(super::state::Status::Passing)),
        Route::CheckWarn => agent::ttl_update(&ctx, Some(super::state::Status::Warning)),
        Route::CheckFail => agent::ttl_update(&ctx, Some(super::state::Status::Critical)),
        Route::CheckUpdate => agent::ttl_update(&ctx, None),
        Route::CheckDeregister => agent::check_deregister(&ctx),
        Route::AgentServices => agent::services(&ctx),
        Route::AgentChecks => agent::checks(&ctx),
        Route::AgentSelf => health::agent_self(&ctx),
        Route::HealthService => health::service(&ctx).await,
        Route::CatalogService => health::catalog_service(&ctx).await,
        Route::CatalogServices => health::catalog_services(&ctx).await,
        Route::CatalogNodes => health::catalog_nodes(&ctx).await,
        Route::StatusLeader => Ok(json(StatusCode::OK, "127.0.0.1:8300")),
        Route::StatusPeers => Ok(json(StatusCode::OK, &["127.0.0.1:8300"])),
    }
}

/// Rule K8's 413.
fn too_large(n: usize) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!(
            "Request body({n} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        ),
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
    let mut rx = ctx.app.index_tx.subscribe();
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
