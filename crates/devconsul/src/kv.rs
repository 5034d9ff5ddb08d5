//! `/v1/kv/<key>`: GET (single, `recurse`, `keys`+`separator`, `raw`, blocking), PUT (plain, `cas`,
//! `acquire`, `release`, `flags`) and DELETE (`recurse`, `cas`), rules K1–K17; with ACLs, reads
//! need `key:read` (lists are filtered), writes `key:write`, recursive deletes write on the
//! whole prefix (Consul's `kvsPreApply`).

use axum::http::{Method, StatusCode};

use crate::{
    acl::{Level, Resource},
    reply::{blocking, json, raw, text, with_meta, ApiError, ApiResult, Ctx},
};

/// Dispatches on the method.
pub(crate) async fn handle(ctx: &Ctx) -> ApiResult {
    match ctx.method {
        Method::GET => get(ctx).await,
        Method::PUT => put(ctx),
        _ => delete(ctx),
    }
}

/// Rule K2: rejects path traversal and leading/trailing spaces.
fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Ok(());
    }
    let traversal = key == ".."
        || key.starts_with("../")
        || key.starts_with("..\\")
        || key.contains("/../")
        || key.contains("\\..\\")
        || key.contains("/..\\")
        || key.contains("\\../")
        || key.ends_with("/..")
        || key.ends_with("\\..");
    if traversal {
        return Err(ApiError::bad_request(format!(
            "Invalid key name {key:?}: path traversal is not allowed"
        )));
    }
    if key.trim() != key {
        return Err(ApiError::bad_request(format!(
            "Invalid key name {key:?}: leading or trailing spaces are not allowed"
        )));
    }
    Ok(())
}

/// Go's `strconv.ParseUint` error text.
fn parse_u64(value: &str) -> Result<u64, ApiError> {
    value.parse::<u64>().map_err(|e| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow => "value out of range",
            _ => "invalid syntax",
        };
        ApiError::internal(format!("strconv.ParseUint: parsing {value:?}: {why}"))
    })
}

/// GET: `keys` wins over `recurse`, which wins over `raw`.
async fn get(ctx: &Ctx) -> ApiResult {
    let key = ctx.rest.clone();
    let q = &ctx.query;
    validate_key(&key)?;
    if q.has("keys") {
        let sep = q
            .get("separator")
            .or_else(|| q.get("seperator"))
            .unwrap_or("")
            .to_string();
        return blocking(ctx, |store| {
            let index = store.kv_prefix_index(&key);
            let mut keys: Vec<String> = Vec::new();
            for entry in store.kv_list(&key) {
                if !ctx.can(Resource::Key, &entry.key, Level::Read) {
                    continue;
                }
                let after = &entry.key[key.len()..];
                let cut = match after.find(&sep) {
                    Some(pos) if !sep.is_empty() => entry.key[..key.len() + pos + sep.len()].to_string(),
                    _ => entry.key.clone(),
                };
                if keys.last() != Some(&cut) {
                    keys.push(cut);
                }
            }
            if keys.is_empty() && !key.is_empty() {
                return Ok(with_meta(text(StatusCode::NOT_FOUND, ""), index));
            }
            Ok(with_meta(json(StatusCode::OK, &keys), index))
        })
        .await;
    }
    if q.has("recurse") {
        return blocking(ctx, |store| {
            let index = store.kv_prefix_index(&key);
            let mut entries = store.kv_list(&key);
            entries.retain(|e| ctx.can(Resource::Key, &e.key, Level::Read));
            if entries.is_empty() {
                return Ok(with_meta(text(StatusCode::NOT_FOUND, ""), index));
            }
            Ok(with_meta(json(StatusCode::OK, &entries), index))
        })
        .await;
    }
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    ctx.require(Resource::Key, &key, Level::Read)?;
    let want_raw = q.has("raw");
    blocking(ctx, |store| {
        let index = store.kv_key_index(&key);
        match store.kv.get(&key) {
            None => Ok(with_meta(text(StatusCode::NOT_FOUND, ""), index)),
            Some(entry) if want_raw => Ok(with_meta(raw(entry.value.clone()), index)),
            Some(entry) => Ok(with_meta(json(StatusCode::OK, &[entry]), index)),
        }
    })
    .await
}

/// PUT: plain, `cas`, `acquire` or `release` (rules K8–K15).
fn put(ctx: &Ctx) -> ApiResult {
    let key = ctx.rest.clone();
    let q = &ctx.query;
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    validate_key(&key)?;
    let modes = ["cas", "acquire", "release"].iter().filter(|m| q.has(m)).count();
    if modes > 1 {
        return Err(ApiError::bad_request(format!(
            "Conflicting flags: {}",
            q.encode()
        )));
    }
    ctx.require(Resource::Key, &key, Level::Write)?;
    let flags = q.get("flags").map(parse_u64).transpose()?.unwrap_or(0);
    let cas = q.get("cas").map(parse_u64).transpose()?;
    let value = ctx.body.to_vec();
    let result = if let Some(sid) = q.get("acquire") {
        ctx.app
            .write(|store, now| store.kv_acquire(&key, value, flags, sid, now))
            .map_err(|e| ApiError::internal(e.to_string()))?
    } else if let Some(sid) = q.get("release") {
        ctx.app
            .write(|store, _| store.kv_release(&key, value, flags, sid))
            .map_err(|e| ApiError::internal(e.to_string()))?
    } else if let Some(cas) = cas {
        ctx.app.write(|store, _| store.kv_cas(&key, value, flags, cas))
    } else {
        ctx.app.write(|store, _| store.kv_set(&key, value, flags))
    };
    Ok(json(StatusCode::OK, &result))
}

/// DELETE: one key, `cas`, or `recurse` (rule K16).
fn delete(ctx: &Ctx) -> ApiResult {
    let key = ctx.rest.clone();
    let q = &ctx.query;
    let recurse = q.has("recurse");
    if key.is_empty() && !recurse {
        return Err(ApiError::bad_request("Missing key name"));
    }
    validate_key(&key)?;
    if recurse && q.has("cas") {
        return Err(ApiError::bad_request(format!(
            "Conflicting flags: {}",
            q.encode()
        )));
    }
    let cas = q.get("cas").map(parse_u64).transpose()?;
    if recurse {
        if let Some(authz) = ctx.authz.as_ref().filter(|a| !a.allows_write_prefix(&key)) {
            return Err(authz.denied(Resource::Key, &key, Level::Write).into());
        }
    } else {
        ctx.require(Resource::Key, &key, Level::Write)?;
    }
    let result = if recurse {
        ctx.app.write(|store, _| store.kv_delete_tree(&key));
        true
    } else {
        ctx.app.write(|store, _| store.kv_delete(&key, cas))
    };
    Ok(json(StatusCode::OK, &result))
}
