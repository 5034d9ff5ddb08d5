//! Read-only views of the single node: `/v1/health/service/:name` (rules H1, H2),
//! `/v1/catalog/service/:name`, `/v1/catalog/services`, `/v1/catalog/nodes` (H3) and
//! `/v1/agent/self` (H5). All catalog reads block on the catalog index.

use axum::http::StatusCode;
use serde_json::{json as js, Map, Value};

use crate::{
    acl::{Level, Resource},
    agent::check_json,
    reply::{blocking, json, with_meta, ApiError, ApiResult, Ctx},
    state::{Service, Status, Store},
};

/// The node's address.
const NODE_ADDR: &str = "127.0.0.1";

/// The node object of health results.
fn node_json(store: &Store, dc: &str) -> Value {
    js!({
        "ID": store.node_id, "Node": store.node, "Address": NODE_ADDR, "Datacenter": dc,
        "TaggedAddresses": {"lan": NODE_ADDR, "lan_ipv4": NODE_ADDR, "wan": NODE_ADDR, "wan_ipv4": NODE_ADDR},
        "Meta": {"consul-network-segment": ""},
        "CreateIndex": store.node_index, "ModifyIndex": store.node_index,
    })
}

/// The service object of health results.
fn service_json(s: &Service) -> Value {
    js!({
        "ID": s.id, "Service": s.name, "Tags": s.tags, "Address": s.address, "Meta": s.meta,
        "Port": s.port, "Weights": s.weights, "EnableTagOverride": s.enable_tag_override,
        "Kind": "", "TaggedAddresses": {}, "CreateIndex": s.create_index, "ModifyIndex": s.modify_index,
    })
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether an instance of `service` on the node is listed (Consul filters health and catalog
/// entries the token cannot `service:read` and `node:read`).
fn visible(ctx: &Ctx, store: &crate::state::Store, service: &str) -> bool {
    ctx.can(Resource::Service, service, Level::Read) && ctx.can(Resource::Node, &store.node, Level::Read)
}

/// `GET /v1/health/service/:name[?passing]`.
pub(crate) async fn service(ctx: &Ctx) -> ApiResult {
    if ctx.rest.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let passing = match ctx.query.get("passing") {
        None => false,
        Some("") => true,
        Some(v) => parse_bool(v).ok_or_else(|| ApiError::bad_request("Invalid value for ?passing"))?,
    };
    let tag = ctx.query.get("tag").map(str::to_string);
    let dc = ctx.app.config.datacenter.clone();
    blocking(ctx, |store| {
        let mut out = Vec::new();
        for s in store.service_instances(&ctx.rest) {
            if tag.as_ref().is_some_and(|t| !s.tags.contains(t)) || !visible(ctx, store, &s.name) {
                continue;
            }
            let checks = store.instance_checks(&s.id);
            if passing && checks.iter().any(|c| c.status != Status::Passing) {
                continue;
            }
            let checks: Vec<Value> = checks.iter().map(|c| check_json(c, &store.node)).collect();
            out.push(js!({"Node": node_json(store, &dc), "Service": service_json(s), "Checks": checks}));
        }
        Ok(with_meta(json(StatusCode::OK, &out), store.service_index()))
    })
    .await
}

/// `GET /v1/catalog/service/:name`: flat entries, no health filtering.
pub(crate) async fn catalog_service(ctx: &Ctx) -> ApiResult {
    if ctx.rest.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let dc = ctx.app.config.datacenter.clone();
    blocking(ctx, |store| {
        let out: Vec<Value> = store
            .service_instances(&ctx.rest)
            .into_iter()
            .filter(|s| visible(ctx, store, &s.name))
            .map(|s| {
                js!({
                    "ID": store.node_id, "Node": store.node, "Address": NODE_ADDR, "Datacenter": dc,
                    "TaggedAddresses": {"lan": NODE_ADDR, "lan_ipv4": NODE_ADDR, "wan": NODE_ADDR, "wan_ipv4": NODE_ADDR},
                    "NodeMeta": {"consul-network-segment": ""}, "ServiceKind": "", "ServiceID": s.id,
                    "ServiceName": s.name, "ServiceTags": s.tags, "ServiceAddress": s.address,
                    "ServiceTaggedAddresses": {}, "ServiceWeights": s.weights, "ServiceMeta": s.meta,
                    "ServicePort": s.port, "ServiceEnableTagOverride": s.enable_tag_override,
                    "ServiceProxy": {}, "ServiceConnect": {},
                    "CreateIndex": s.create_index, "ModifyIndex": s.modify_index,
                })
            })
            .collect();
        Ok(with_meta(json(StatusCode::OK, &out), store.service_index()))
    })
    .await
}

/// `GET /v1/catalog/services`: name → tags.
pub(crate) async fn catalog_services(ctx: &Ctx) -> ApiResult {
    blocking(ctx, |store| {
        let mut out: Map<String, Value> = Map::new();
        for s in store.services.values() {
            if !ctx.can(Resource::Service, &s.name, Level::Read) {
                continue;
            }
            let entry = out
                .entry(s.name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(tags) = entry {
                for t in &s.tags {
                    if !tags.iter().any(|x| x == t) {
                        tags.push(Value::String(t.clone()));
                    }
                }
            }
        }
        Ok(with_meta(json(StatusCode::OK, &out), store.service_index()))
    })
    .await
}

/// `GET /v1/catalog/nodes`: the single node.
pub(crate) async fn catalog_nodes(ctx: &Ctx) -> ApiResult {
    let dc = ctx.app.config.datacenter.clone();
    blocking(ctx, |store| {
        let nodes: Vec<Value> = if ctx.can(Resource::Node, &store.node, Level::Read) {
            vec![node_json(store, &dc)]
        } else {
            Vec::new()
        };
        Ok(with_meta(json(StatusCode::OK, &nodes), store.node_index))
    })
    .await
}

/// `GET /v1/agent/self` (rule H5).
pub(crate) fn agent_self(ctx: &Ctx) -> ApiResult {
    let cfg = &ctx.app.config;
    let node_id = ctx.app.read(|store| store.node_id.clone());
    let version = "1.20.0";
    let body = js!({
        "Config": {
            "Datacenter": cfg.datacenter, "PrimaryDatacenter": cfg.datacenter, "NodeName": cfg.node_name,
            "NodeID": node_id, "Server": true, "Revision": "simpleloggers-dev",
            "Version": version, "BuildDate": "", "PartitionOrEmpty": "",
        },
        "DebugConfig": {"SessionTTLMin": format!("{:?}", cfg.session_ttl_min), "ACLsEnabled": ctx.app.acl.is_some()},
        "Coord": {"Vec": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5},
        "Member": {
            "Name": cfg.node_name, "Addr": NODE_ADDR, "Port": 8301,
            "Tags": {"dc": cfg.datacenter, "role": "consul", "id": node_id, "build": version},
            "Status": 1,
        },
        "Meta": {"consul-network-segment": ""},
        "Stats": {},
        "xDS": null,
    });
    Ok(json(StatusCode::OK, &body))
}
