//! `/v1/session/*`: create (body parsing, check fix-ups, TTL and Behavior validation), renew,
//! destroy, info, list and node (rules S1–S12). With ACLs: create, renew and destroy need
//! `session:write` on the session's node; info, list and node show only sessions whose node the
//! token may `session:read` (Consul's session endpoint).

use axum::http::StatusCode;
use serde_json::Value;
use tokio::time::Duration;

use crate::{
    acl::{Level, Resource},
    decode::{decode_object, get_str, get_str_list, Field, Schema},
    duration::{format_go_duration, parse_go_duration},
    reply::{blocking, decode_failed, json, with_meta, ApiError, ApiResult, Ctx},
    state::{Behavior, Invalidation, NewSession, ServiceCheck, Session, SERF_CHECK_ID},
};

/// Consul's `SessionTTLMax`.
const TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Default lock-delay.
const DEFAULT_LOCK_DELAY_NS: u64 = 15_000_000_000;

/// `ServiceChecks` entries.
const SERVICE_CHECK: Schema = &[("ID", Field::Leaf), ("Namespace", Field::Leaf)];
/// Session create body; unknown fields are tolerated (rule G6).
const SESSION: Schema = &[
    ("ID", Field::Leaf),
    ("Name", Field::Leaf),
    ("Node", Field::Leaf),
    ("LockDelay", Field::Leaf),
    ("Behavior", Field::Leaf),
    ("TTL", Field::Leaf),
    ("NodeChecks", Field::Leaf),
    ("ServiceChecks", Field::List(SERVICE_CHECK)),
    ("Checks", Field::Leaf),
];

/// Rule S3: string = Go duration, number = nanoseconds; below 1000 ns means seconds.
fn parse_lock_delay(v: Option<&Value>) -> Result<u64, ApiError> {
    let ns: i64 = match v {
        None | Some(Value::Null) => return Ok(DEFAULT_LOCK_DELAY_NS),
        Some(Value::String(s)) => parse_go_duration(s).map_err(decode_failed)?,
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or_else(|| decode_failed("json: invalid LockDelay"))?,
        Some(_) => return Err(decode_failed("json: cannot unmarshal LockDelay")),
    };
    let ns = if ns < 1000 {
        ns.saturating_mul(1_000_000_000)
    } else {
        ns
    };
    Ok(u64::try_from(ns).unwrap_or(0))
}

/// Parses a create body into a [`NewSession`] (rules S1–S5).
fn parse_create(ctx: &Ctx) -> Result<NewSession, ApiError> {
    let body = if ctx.body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &ctx.body[..]
    };
    let obj = decode_object(body, SESSION, false).map_err(decode_failed)?;
    let name = get_str(&obj, "Name").map_err(decode_failed)?.unwrap_or_default();
    let node = get_str(&obj, "Node")
        .map_err(decode_failed)?
        .filter(|n| !n.is_empty());
    let behavior_s = get_str(&obj, "Behavior")
        .map_err(decode_failed)?
        .unwrap_or_default();
    let ttl = get_str(&obj, "TTL").map_err(decode_failed)?.unwrap_or_default();
    let lock_delay = parse_lock_delay(obj.get("LockDelay"))?;
    let node_checks_in = get_str_list(&obj, "NodeChecks").map_err(decode_failed)?;
    let checks_in = get_str_list(&obj, "Checks").map_err(decode_failed)?;
    let service_checks = match obj.get("ServiceChecks") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                let Value::Object(o) = item else {
                    return Err(decode_failed(
                        "json: cannot unmarshal into Go struct field .ServiceChecks",
                    ));
                };
                out.push(ServiceCheck {
                    id: get_str(o, "ID").map_err(decode_failed)?.unwrap_or_default(),
                    namespace: get_str(o, "Namespace")
                        .map_err(decode_failed)?
                        .unwrap_or_default(),
                });
            }
            (!out.is_empty()).then_some(out)
        }
        Some(_) => {
            return Err(decode_failed(
                "json: cannot unmarshal into Go struct field .ServiceChecks",
            ))
        }
    };
    // Rule S2: Consul's fixupEmptySessionChecks.
    let (node_checks, checks) = match (node_checks_in, checks_in) {
        (None, None) => (vec![SERF_CHECK_ID.to_string()], Vec::new()),
        (None, Some(c)) if c == [SERF_CHECK_ID] => (vec![SERF_CHECK_ID.to_string()], Vec::new()),
        (None, Some(c)) => (Vec::new(), c),
        (Some(n), c) => (n, c.unwrap_or_default()),
    };
    // Validation done by Consul's session RPC: errors are 500s (rules S4, S5).
    let behavior = match behavior_s.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => return Err(ApiError::internal(format!("Invalid Behavior setting '{other}'"))),
    };
    let mut ttl_duration = None;
    if !ttl.is_empty() {
        let ns = parse_go_duration(&ttl)
            .map_err(|e| ApiError::internal(format!("Session TTL '{ttl}' invalid: {e}")))?;
        if ns != 0 {
            let min = ctx.app.config.session_ttl_min;
            let ok = ns > 0
                && Duration::from_nanos(ns.unsigned_abs()) >= min
                && Duration::from_nanos(ns.unsigned_abs()) <= TTL_MAX;
            if !ok {
                let min_ns = i64::try_from(min.as_nanos()).unwrap_or(i64::MAX);
                return Err(ApiError::internal(format!(
                    "Invalid Session TTL '{ns}', must be between [{}={}]",
                    format_go_duration(min_ns),
                    format_go_duration(TTL_MAX.as_nanos() as i64)
                )));
            }
            ttl_duration = Some(Duration::from_nanos(ns.unsigned_abs()));
        }
    }
    Ok(NewSession {
        name,
        node: node.unwrap_or_else(|| ctx.app.config.node_name.clone()),
        lock_delay,
        behavior,
        ttl,
        ttl_duration,
        node_checks,
        service_checks,
        checks,
    })
}

/// `PUT /v1/session/create` → `{"ID": …}`.
pub(crate) fn create(ctx: &Ctx) -> ApiResult {
    let new = parse_create(ctx)?;
    ctx.require(Resource::Session, &new.node, Level::Write)?;
    let session = ctx
        .app
        .write(|store, now| store.session_create(new, now))
        .map_err(ApiError::internal)?;
    tracing::info!(session = %session.id, name = %session.name, ttl = %session.ttl, "session created");
    Ok(json(StatusCode::OK, &serde_json::json!({ "ID": session.id })))
}

/// `session:write` on the node of the session `ctx.rest` names (an unknown session passes: the
/// endpoint answers for it as without ACLs).
fn require_on_node(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.authz.is_none() {
        return Ok(());
    }
    let node = ctx
        .app
        .read(|store| store.sessions.get(&ctx.rest).map(|s| s.node.clone()));
    match node {
        Some(node) => ctx.require(Resource::Session, &node, Level::Write),
        None => Ok(()),
    }
}

/// `PUT /v1/session/destroy/:id` → `true`, known or not (rule S10).
pub(crate) fn destroy(ctx: &Ctx) -> ApiResult {
    if ctx.rest.is_empty() {
        return Err(ApiError::bad_request("Missing session"));
    }
    require_on_node(ctx)?;
    ctx.app
        .write(|store, now| store.session_invalidate(&ctx.rest, &Invalidation::Destroyed, now));
    Ok(json(StatusCode::OK, &true))
}

/// `PUT /v1/session/renew/:id` → `[session]`, 404 when unknown (rule S9).
pub(crate) fn renew(ctx: &Ctx) -> ApiResult {
    if ctx.rest.is_empty() {
        return Err(ApiError::bad_request("Missing session"));
    }
    require_on_node(ctx)?;
    match ctx.app.write(|store, now| store.session_renew(&ctx.rest, now)) {
        Some(session) => Ok(json(StatusCode::OK, &[session])),
        None => Err(ApiError::not_found(format!(
            "Session id '{}' not found",
            ctx.rest
        ))),
    }
}

/// `GET /v1/session/info/:id` → `[session]` or `[]` (rule S8).
pub(crate) async fn info(ctx: &Ctx) -> ApiResult {
    if ctx.rest.is_empty() {
        return Err(ApiError::bad_request("Missing session"));
    }
    blocking(ctx, |store| {
        let found: Vec<&Session> = store
            .sessions
            .get(&ctx.rest)
            .into_iter()
            .filter(|s| ctx.can(Resource::Session, &s.node, Level::Read))
            .collect();
        Ok(with_meta(json(StatusCode::OK, &found), store.sessions_index))
    })
    .await
}

/// `GET /v1/session/list`.
pub(crate) async fn list(ctx: &Ctx) -> ApiResult {
    blocking(ctx, |store| {
        let all: Vec<&Session> = store
            .sessions
            .values()
            .filter(|s| ctx.can(Resource::Session, &s.node, Level::Read))
            .collect();
        Ok(with_meta(json(StatusCode::OK, &all), store.sessions_index))
    })
    .await
}

/// `GET /v1/session/node/:node`.
pub(crate) async fn node(ctx: &Ctx) -> ApiResult {
    if ctx.rest.is_empty() {
        return Err(ApiError::bad_request("Missing node name"));
    }
    blocking(ctx, |store| {
        let found: Vec<&Session> = store
            .sessions
            .values()
            .filter(|s| s.node == ctx.rest && ctx.can(Resource::Session, &s.node, Level::Read))
            .collect();
        Ok(with_meta(json(StatusCode::OK, &found), store.sessions_index))
    })
    .await
}
