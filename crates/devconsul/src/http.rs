//! The router: a single dispatcher over Consul's route table (404 for unknown `/v1` paths, 405
//! with `Allow`, OPTIONS), token resolution (each endpoint checks its own permissions), the checks common to every request (`ns`, `dc`,
//! `stale`+`consistent`, body limits), `?pretty`, then the endpoint. Only the crate root imports it.

use std::sync::Arc;

use axum::{
    body::{to_bytes, Body},
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    Router,
};

use crate::{
    acl::{Level, Resource},
    agent,
    app::App,
    health, kv,
    reply::{json, text, ApiError, ApiResult, Ctx, Query, MAX_VALUE_SIZE},
    session,
    state::Status,
    txn,
};

/// Largest request body read for any other endpoint.
const MAX_BODY: usize = 8 * 1024 * 1024;

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
    let policy = if app.acl.is_some() { "deny" } else { "allow" };
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
    // Rule T1; `/v1/status/*` needs no ACL (rule H4).
    let authz = match &app.acl {
        Some(acl) if !matches!(route, Route::StatusLeader | Route::StatusPeers) => {
            Some(acl.resolve(request_token(&query, &parts.headers))?)
        }
        _ => None,
    };
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
        authz,
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
        Route::CheckPass => agent::ttl_update(&ctx, Some(Status::Passing)),
        Route::CheckWarn => agent::ttl_update(&ctx, Some(Status::Warning)),
        Route::CheckFail => agent::ttl_update(&ctx, Some(Status::Critical)),
        Route::CheckUpdate => agent::ttl_update(&ctx, None),
        Route::CheckDeregister => agent::check_deregister(&ctx),
        Route::AgentServices => agent::services(&ctx),
        Route::AgentChecks => agent::checks(&ctx),
        Route::AgentSelf => {
            ctx.require(Resource::Agent, &ctx.app.config.node_name, Level::Read)?;
            health::agent_self(&ctx)
        }
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
