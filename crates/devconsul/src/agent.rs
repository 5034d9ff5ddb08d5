//! `/v1/agent/service/*` and `/v1/agent/check/*`: service registration with its checks (rules
//! A1–A3, A6), TTL updates (A5), the listings, and the probes the agent itself runs for HTTP and
//! TCP checks (A4).

use std::{collections::BTreeMap, sync::Arc};

use axum::http::StatusCode;
use serde_json::{json as js, Map, Value};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    acl::{Level, Resource},
    app::App,
    decode::{
        decode_object, get_bool, get_duration, get_i64, get_str, get_str_list, get_str_map, Field, Schema,
    },
    duration::format_go_duration,
    reply::{decode_failed, empty_ok, json, ApiError, ApiResult, Ctx},
    state::{Check, CheckKind, Service, Status, Weights},
};

/// Default HTTP/TCP check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest check output kept.
const MAX_OUTPUT: usize = 4096;

/// Check definition fields (Consul's `CheckType` plus `CheckID`/`Name`/`Status`/`Notes`).
const CHECK: Schema = &[
    ("CheckID", Field::Leaf),
    ("Name", Field::Leaf),
    ("Status", Field::Leaf),
    ("Notes", Field::Leaf),
    ("ServiceID", Field::Leaf),
    ("HTTP", Field::Leaf),
    ("Method", Field::Leaf),
    ("Header", Field::Map),
    ("Body", Field::Leaf),
    ("TLSSkipVerify", Field::Leaf),
    ("TLSServerName", Field::Leaf),
    ("DisableRedirects", Field::Leaf),
    ("TCP", Field::Leaf),
    ("UDP", Field::Leaf),
    ("GRPC", Field::Leaf),
    ("GRPCUseTLS", Field::Leaf),
    ("H2PING", Field::Leaf),
    ("H2PingUseTLS", Field::Leaf),
    ("OSService", Field::Leaf),
    ("Args", Field::Leaf),
    ("ScriptArgs", Field::Leaf),
    ("DockerContainerID", Field::Leaf),
    ("Shell", Field::Leaf),
    ("AliasNode", Field::Leaf),
    ("AliasService", Field::Leaf),
    ("Interval", Field::Leaf),
    ("Timeout", Field::Leaf),
    ("TTL", Field::Leaf),
    ("DeregisterCriticalServiceAfter", Field::Leaf),
    ("SuccessBeforePassing", Field::Leaf),
    ("FailuresBeforeCritical", Field::Leaf),
    ("FailuresBeforeWarning", Field::Leaf),
    ("OutputMaxSize", Field::Leaf),
    ("Namespace", Field::Leaf),
    ("Partition", Field::Leaf),
];
/// Service weights.
const WEIGHTS: Schema = &[("Passing", Field::Leaf), ("Warning", Field::Leaf)];
/// Service definition fields; unknown fields are rejected (rule G6).
const SERVICE: Schema = &[
    ("ID", Field::Leaf),
    ("Name", Field::Leaf),
    ("Tags", Field::Leaf),
    ("Address", Field::Leaf),
    ("TaggedAddresses", Field::Any),
    ("Meta", Field::Map),
    ("Port", Field::Leaf),
    ("SocketPath", Field::Leaf),
    ("Kind", Field::Leaf),
    ("Weights", Field::Struct(WEIGHTS)),
    ("EnableTagOverride", Field::Leaf),
    ("Check", Field::Struct(CHECK)),
    ("Checks", Field::List(CHECK)),
    ("Proxy", Field::Any),
    ("Connect", Field::Any),
    ("Locality", Field::Any),
    ("Namespace", Field::Leaf),
    ("Partition", Field::Leaf),
    ("Token", Field::Leaf),
];
/// `check/update` body.
const UPDATE: Schema = &[("Status", Field::Leaf), ("Output", Field::Leaf)];

/// Rule A1's Meta limits.
fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err(format!(
            "Node metadata cannot contain more than {} key/value pairs",
            64
        ));
    }
    for (k, v) in meta {
        if k.is_empty() {
            return Err("Couldn't load metadata pair ('', ''): Key cannot be blank".into());
        }
        if !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!("Key contains invalid characters: {k:?}"));
        }
        if k.len() > 128 {
            return Err(format!("Key is too long (limit: 128 characters): {k:?}"));
        }
        if k.starts_with("consul-") {
            return Err(format!(
                "Key prefix 'consul-' is reserved for internal use: {k:?}"
            ));
        }
        if v.len() > 512 {
            return Err(format!("Value is too long (limit: 512 characters): {v:?}"));
        }
    }
    Ok(())
}

/// A non-negative duration field in a check.
fn duration_field(obj: &Map<String, Value>, field: &str) -> Result<Option<Duration>, ApiError> {
    Ok(get_duration(obj, field)
        .map_err(decode_failed)?
        .map(|ns| Duration::from_nanos(u64::try_from(ns).unwrap_or(0))))
}

/// Builds one check of `service` from its definition (rules A2–A4).
fn parse_check(
    obj: &Map<String, Value>,
    default_id: String,
    service: &Service,
    ctx: &Ctx,
) -> Result<Check, ApiError> {
    let s = |f: &str| get_str(obj, f).map_err(decode_failed);
    let id = s("CheckID")?.filter(|i| !i.is_empty()).unwrap_or(default_id);
    let name = s("Name")?
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("Service '{}' check", service.name));
    let status = match s("Status")?.unwrap_or_default().as_str() {
        "" => Status::Critical,
        other => Status::parse(other).ok_or_else(|| {
            ApiError::bad_request("Status for checks must 'passing', 'warning', 'critical'")
        })?,
    };
    let interval = duration_field(obj, "Interval")?.filter(|d| !d.is_zero());
    let ttl = duration_field(obj, "TTL")?.filter(|d| !d.is_zero());
    let timeout = duration_field(obj, "Timeout")?
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_TIMEOUT);
    let http = s("HTTP")?.unwrap_or_default();
    let tcp = s("TCP")?.unwrap_or_default();
    let other_interval_type = ["UDP", "GRPC", "H2PING", "OSService"]
        .iter()
        .any(|f| obj.get(*f).and_then(Value::as_str).is_some_and(|v| !v.is_empty()))
        || obj
            .get("Args")
            .or_else(|| obj.get("ScriptArgs"))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
    let interval_type = !http.is_empty() || !tcp.is_empty() || other_interval_type;
    let invalid = |m: &str| ApiError::bad_request(format!("Invalid check: {m}"));
    if interval.is_some() && ttl.is_some() {
        return Err(invalid("Interval and TTL cannot both be specified"));
    }
    if interval_type && interval.is_none() {
        return Err(invalid(
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
        ));
    }
    let kind = if let Some(ttl) = ttl {
        CheckKind::Ttl { ttl }
    } else if !http.is_empty() {
        let header = match obj.get("Header") {
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    let values = v
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect());
                    (k.clone(), values.unwrap_or_default())
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        CheckKind::Http {
            url: http,
            method: s("Method")?
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "GET".into()),
            header,
            body: s("Body")?.unwrap_or_default(),
            interval: interval.unwrap_or(DEFAULT_TIMEOUT),
            timeout,
            tls_skip_verify: get_bool(obj, "TLSSkipVerify")
                .map_err(decode_failed)?
                .unwrap_or(false),
        }
    } else if !tcp.is_empty() {
        CheckKind::Tcp {
            addr: tcp,
            interval: interval.unwrap_or(DEFAULT_TIMEOUT),
            timeout,
        }
    } else if other_interval_type {
        return Err(invalid(
            "only TTL, HTTP and TCP checks are supported by dev-consul",
        ));
    } else {
        return Err(invalid("TTL must be > 0 for TTL checks"));
    };
    let deregister_after = duration_field(obj, "DeregisterCriticalServiceAfter")?
        .filter(|d| !d.is_zero())
        .map(|d| d.max(ctx.app.config.check_deregister_min));
    let count = |f: &str| -> Result<u32, ApiError> {
        Ok(u32::try_from(get_i64(obj, f).map_err(decode_failed)?.unwrap_or(0)).unwrap_or(0))
    };
    let mut definition = Map::new();
    for (field, value) in obj {
        if !["CheckID", "Name", "Status", "Notes", "ServiceID"].contains(&field.as_str()) {
            definition.insert(field.clone(), value.clone());
        }
    }
    Ok(Check {
        id,
        name,
        status,
        notes: s("Notes")?.unwrap_or_default(),
        output: String::new(),
        service_id: service.id.clone(),
        service_name: service.name.clone(),
        service_tags: service.tags.clone(),
        kind,
        deregister_after,
        success_before_passing: count("SuccessBeforePassing")?,
        failures_before_critical: count("FailuresBeforeCritical")?,
        successes: 0,
        failures: 0,
        critical_since: None,
        ttl_deadline: None,
        definition: Value::Object(definition),
        create_index: 0,
        modify_index: 0,
    })
}

/// `PUT /v1/agent/service/register` (rule A1).
pub(crate) fn register(ctx: &Ctx) -> ApiResult {
    let obj = decode_object(&ctx.body, SERVICE, true).map_err(decode_failed)?;
    let s = |f: &str| get_str(&obj, f).map_err(decode_failed);
    let name = s("Name")?.unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    // Consul's vetServiceRegister: the service and its checks need service:write on its name.
    ctx.require(Resource::Service, &name, Level::Write)?;
    let address = s("Address")?.unwrap_or_default();
    if address == "0.0.0.0" || address == "::" || address == "[::]" {
        return Err(ApiError::bad_request("Invalid service address"));
    }
    let meta = get_str_map(&obj, "Meta").map_err(decode_failed)?;
    validate_meta(&meta).map_err(|e| ApiError::bad_request(format!("Invalid Service Meta: {e}")))?;
    let weights = match obj.get("Weights") {
        Some(Value::Object(w)) => Weights {
            passing: get_i64(w, "Passing").map_err(decode_failed)?.unwrap_or(1),
            warning: get_i64(w, "Warning").map_err(decode_failed)?.unwrap_or(1),
        },
        _ => Weights::default(),
    };
    let service = Service {
        id: s("ID")?.filter(|i| !i.is_empty()).unwrap_or_else(|| name.clone()),
        name,
        tags: get_str_list(&obj, "Tags")
            .map_err(decode_failed)?
            .unwrap_or_default(),
        address,
        meta,
        port: get_i64(&obj, "Port").map_err(decode_failed)?.unwrap_or(0),
        weights,
        enable_tag_override: get_bool(&obj, "EnableTagOverride")
            .map_err(decode_failed)?
            .unwrap_or(false),
        create_index: 0,
        modify_index: 0,
    };
    let mut defs: Vec<&Map<String, Value>> = Vec::new();
    if let Some(Value::Object(c)) = obj.get("Check") {
        defs.push(c);
    }
    if let Some(Value::Array(items)) = obj.get("Checks") {
        defs.extend(items.iter().filter_map(Value::as_object));
    }
    let many = defs.len() > 1;
    let mut checks = Vec::new();
    for (n, def) in defs.iter().enumerate() {
        let default_id = if many {
            format!("service:{}:{}", service.id, n + 1)
        } else {
            format!("service:{}", service.id)
        };
        checks.push(parse_check(def, default_id, &service, ctx)?);
    }
    let replace = match ctx.query.get("replace-existing-checks") {
        None => false,
        Some(v) => v.is_empty() || v == "true",
    };
    let registered: Vec<String> = checks.iter().map(|c| c.id.clone()).collect();
    let probes: Vec<(String, CheckKind)> = checks
        .iter()
        .filter(|c| matches!(c.kind, CheckKind::Http { .. } | CheckKind::Tcp { .. }))
        .map(|c| (c.id.clone(), c.kind.clone()))
        .collect();
    let live = ctx.app.write(|store, now| {
        store.service_register(service, checks, replace, now);
        store.checks.keys().cloned().collect::<Vec<_>>()
    });
    stop_runners_except(&ctx.app, &live);
    // A re-registered check may have changed kind: stop its old probe before starting new ones.
    {
        let mut runners = ctx.app.runners();
        for id in &registered {
            if let Some(token) = runners.remove(id) {
                token.cancel();
            }
        }
    }
    for (id, kind) in probes {
        start_runner(&ctx.app, id, kind);
    }
    Ok(empty_ok())
}

/// `PUT /v1/agent/service/deregister/:id` (rule A6).
pub(crate) fn deregister(ctx: &Ctx) -> ApiResult {
    let id = ctx.rest.clone();
    // Consul's vetServiceUpdate: service:write on the registered service's name.
    let name = ctx
        .app
        .read(|store| store.services.get(&id).map(|s| s.name.clone()));
    if let Some(name) = &name {
        ctx.require(Resource::Service, name, Level::Write)?;
    }
    let removed = ctx.app.write(|store, now| store.service_deregister(&id, now));
    match removed {
        Some(checks) => {
            let mut runners = ctx.app.runners();
            for check in checks {
                if let Some(token) = runners.remove(&check) {
                    token.cancel();
                }
            }
            Ok(empty_ok())
        }
        None => Err(ApiError::not_found(format!(
            "Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."
        ))),
    }
}

/// Consul's vetCheckUpdate: a service's check needs `service:write` on the service's name, a node
/// check `node:write` on the node; an unknown check passes (the endpoint answers 404).
fn require_check_write(ctx: &Ctx, id: &str) -> Result<(), ApiError> {
    if ctx.authz.is_none() {
        return Ok(());
    }
    let owner = ctx.app.read(|store| {
        store.checks.get(id).map(|c| {
            if c.service_id.is_empty() {
                (Resource::Node, store.node.clone())
            } else {
                (Resource::Service, c.service_name.clone())
            }
        })
    });
    match owner {
        Some((resource, name)) => ctx.require(resource, &name, Level::Write),
        None => Ok(()),
    }
}

/// `PUT /v1/agent/check/deregister/:id`.
pub(crate) fn check_deregister(ctx: &Ctx) -> ApiResult {
    let id = ctx.rest.clone();
    require_check_write(ctx, &id)?;
    if !ctx.app.write(|store, now| store.check_deregister(&id, now)) {
        return Err(ApiError::not_found(format!(
            "Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name."
        )));
    }
    if let Some(token) = ctx.app.runners().remove(&id) {
        token.cancel();
    }
    Ok(empty_ok())
}

/// `PUT /v1/agent/check/pass|warn|fail/:id?note=` (`status` given) or `update/:id` (body).
pub(crate) fn ttl_update(ctx: &Ctx, status: Option<Status>) -> ApiResult {
    let id = ctx.rest.clone();
    require_check_write(ctx, &id)?;
    let (status, output) = match status {
        Some(status) => (status, ctx.query.get("note").unwrap_or("").to_string()),
        None => {
            let obj = decode_object(&ctx.body, UPDATE, false).map_err(decode_failed)?;
            let s = get_str(&obj, "Status")
                .map_err(decode_failed)?
                .unwrap_or_default();
            let status = Status::parse(&s)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid check status: '{s}'")))?;
            (
                status,
                get_str(&obj, "Output")
                    .map_err(decode_failed)?
                    .unwrap_or_default(),
            )
        }
    };
    let output: String = output.chars().take(MAX_OUTPUT).collect();
    ctx.app.write(|store, now| {
        match store.checks.get(&id) {
            None => {
                return Err(ApiError::not_found(format!(
                    "Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name."
                )))
            }
            Some(c) if !matches!(c.kind, CheckKind::Ttl { .. }) => {
                return Err(ApiError::internal(format!(
                    "CheckID \"{id}\" does not have associated TTL"
                )))
            }
            Some(_) => {}
        }
        store.check_set(&id, status, output, now);
        Ok(())
    })?;
    Ok(empty_ok())
}

/// `GET /v1/agent/services`: local services by ID.
pub(crate) fn services(ctx: &Ctx) -> ApiResult {
    let body = ctx.app.read(|store| {
        let map: Map<String, Value> = store
            .services
            .values()
            .filter(|s| ctx.can(Resource::Service, &s.name, Level::Read))
            .map(|s| {
                let v = js!({
                    "ID": s.id, "Service": s.name, "Tags": s.tags, "Meta": s.meta, "Port": s.port,
                    "Address": s.address, "Weights": s.weights, "EnableTagOverride": s.enable_tag_override,
                    "Datacenter": ctx.app.config.datacenter,
                });
                (s.id.clone(), v)
            })
            .collect();
        map
    });
    Ok(json(StatusCode::OK, &body))
}

/// A check as the agent and health endpoints render it.
pub(crate) fn check_json(c: &Check, node: &str) -> Value {
    js!({
        "Node": node, "CheckID": c.id, "Name": c.name, "Status": c.status, "Notes": c.notes,
        "Output": c.output, "ServiceID": c.service_id, "ServiceName": c.service_name,
        "ServiceTags": c.service_tags, "Type": c.kind.type_name(), "Interval": interval_string(&c.kind),
        "Timeout": timeout_string(&c.kind), "ExposedPort": 0, "Definition": c.definition,
        "CreateIndex": c.create_index, "ModifyIndex": c.modify_index,
    })
}

/// The check's interval as Go prints it (`""` when none).
fn interval_string(kind: &CheckKind) -> String {
    match kind {
        CheckKind::Http { interval, .. } | CheckKind::Tcp { interval, .. } => go(*interval),
        _ => String::new(),
    }
}

/// The check's timeout as Go prints it (`""` when none).
fn timeout_string(kind: &CheckKind) -> String {
    match kind {
        CheckKind::Http { timeout, .. } | CheckKind::Tcp { timeout, .. } => go(*timeout),
        _ => String::new(),
    }
}

/// Go formatting of a std duration.
fn go(d: Duration) -> String {
    format_go_duration(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `GET /v1/agent/checks`: local checks by ID (serfHealth is the server's, not listed).
pub(crate) fn checks(ctx: &Ctx) -> ApiResult {
    let body = ctx.app.read(|store| {
        store
            .checks
            .values()
            .filter(|c| !matches!(c.kind, CheckKind::Serf))
            .filter(|c| {
                if c.service_id.is_empty() {
                    ctx.can(Resource::Node, &store.node, Level::Read)
                } else {
                    ctx.can(Resource::Service, &c.service_name, Level::Read)
                }
            })
            .map(|c| (c.id.clone(), check_json(c, &store.node)))
            .collect::<Map<String, Value>>()
    });
    Ok(json(StatusCode::OK, &body))
}

/// Cancels the probes of checks that no longer exist.
pub(crate) fn stop_runners_except(app: &App, live: &[String]) {
    app.runners().retain(|id, token| {
        let keep = live.contains(id);
        if !keep {
            token.cancel();
        }
        keep
    });
}

/// Starts (or restarts) the probe for one HTTP/TCP check.
fn start_runner(app: &Arc<App>, id: String, kind: CheckKind) {
    let token = app.shutdown.child_token();
    if let Some(old) = app.runners().insert(id.clone(), token.clone()) {
        old.cancel();
    }
    app.tracker.spawn(run_probe(app.clone(), id, kind, token));
}

/// Probes a check every interval until cancelled. As Consul's agent does, an interval below
/// `--check-interval-min` (Consul: `checks.MinInterval`, 1 s) is raised to it with a warning (the
/// registered definition keeps the requested value), and the first probe comes after a random
/// stagger within one interval.
async fn run_probe(app: Arc<App>, id: String, kind: CheckKind, token: CancellationToken) {
    let requested = match &kind {
        CheckKind::Http { interval, .. } | CheckKind::Tcp { interval, .. } => *interval,
        _ => return,
    };
    let interval = requested.max(app.config.check_interval_min);
    if interval != requested {
        tracing::warn!(check = %id, ?requested, minimum_interval = ?interval, "check has interval below minimum");
    }
    let stagger = interval.mul_f64(rand::random::<f64>());
    tokio::select! {
        () = token.cancelled() => return,
        () = tokio::time::sleep(stagger) => {}
    }
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            () = token.cancelled() => return,
            r = probe(&app, &kind) => r,
        };
        if token.is_cancelled() {
            return;
        }
        let (status, output) = result;
        app.write(|store, now| store.check_probe_result(&id, status, output, now));
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep_until(started + interval) => {}
        }
    }
}

/// One probe: HTTP 2xx → passing, 429 → warning, else critical; TCP connect → passing.
async fn probe(app: &App, kind: &CheckKind) -> (Status, String) {
    match kind {
        CheckKind::Http {
            url,
            method,
            header,
            body,
            timeout,
            tls_skip_verify,
            ..
        } => {
            let client = if *tls_skip_verify {
                &app.insecure_client
            } else {
                &app.client
            };
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
            let mut req = client
                .request(method.clone(), url)
                .timeout(*timeout)
                .body(body.clone());
            for (name, values) in header {
                for value in values {
                    req = req.header(name.as_str(), value.as_str());
                }
            }
            match req.send().await {
                Ok(resp) => {
                    let code = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let text: String = text.chars().take(MAX_OUTPUT).collect();
                    let output = format!("HTTP {method} {url}: {code} Output: {text}");
                    let status = if code.is_success() {
                        Status::Passing
                    } else if code == reqwest::StatusCode::TOO_MANY_REQUESTS {
                        Status::Warning
                    } else {
                        Status::Critical
                    };
                    (status, output)
                }
                Err(err) => (Status::Critical, format!("{method} {url}: {err}")),
            }
        }
        CheckKind::Tcp { addr, timeout, .. } => {
            match tokio::time::timeout(*timeout, tokio::net::TcpStream::connect(addr.as_str())).await {
                Ok(Ok(_)) => (Status::Passing, format!("TCP connect {addr}: Success")),
                Ok(Err(err)) => (Status::Critical, format!("dial tcp {addr}: {err}")),
                Err(_) => (Status::Critical, format!("dial tcp {addr}: i/o timeout")),
            }
        }
        _ => (Status::Passing, String::new()),
    }
}
