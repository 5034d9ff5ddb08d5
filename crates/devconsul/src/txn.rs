//! `PUT /v1/txn`: KV transactions (get, get-tree, set, cas, lock, unlock, check-index,
//! check-session, check-not-exists, delete, delete-cas, delete-tree), applied all-or-nothing at
//! one index; 200 with `Results`, or 409 with `Errors`.

use axum::http::StatusCode;
use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::{
    acl::{Level, Resource},
    decode::{get_i64, get_str, normalize, Field, Schema},
    reply::{json, with_meta, ApiError, ApiResult, Ctx, MAX_VALUE_SIZE},
    state::{DirEntry, Store},
};

/// Consul's `maxTxnOps`.
const MAX_OPS: usize = 128;

/// KV operation fields.
const KV_OP: Schema = &[
    ("Verb", Field::Leaf),
    ("Key", Field::Leaf),
    ("Value", Field::Leaf),
    ("Flags", Field::Leaf),
    ("Index", Field::Leaf),
    ("Session", Field::Leaf),
    ("Namespace", Field::Leaf),
    ("Partition", Field::Leaf),
];
/// One transaction operation.
const OP: Schema = &[
    ("KV", Field::Struct(KV_OP)),
    ("Node", Field::Any),
    ("Service", Field::Any),
    ("Check", Field::Any),
];

/// A parsed KV operation.
#[derive(Debug)]
struct KvOp {
    /// Verb.
    verb: String,
    /// Key (or prefix for the tree verbs).
    key: String,
    /// Decoded value.
    value: Vec<u8>,
    /// Flags.
    flags: u64,
    /// `Index` (ModifyIndex for cas/check-index/delete-cas).
    index: u64,
    /// Session for lock/unlock/check-session.
    session: String,
}

/// A failed operation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    /// Position of the op.
    op_index: usize,
    /// Consul's message.
    what: String,
}

/// One result.
#[derive(Debug, Serialize)]
struct TxnResult {
    /// The entry.
    #[serde(rename = "KV")]
    kv: DirEntry,
}

/// The whole response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    /// Results (null on failure).
    results: Option<Vec<TxnResult>>,
    /// Errors (null on success).
    errors: Option<Vec<TxnError>>,
}

/// `Failed to parse body: …`.
fn parse_failed(err: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Failed to parse body: {err}"))
}

/// Parses the op list.
fn parse(body: &[u8]) -> Result<Vec<KvOp>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(parse_failed("EOF"));
    }
    let value: Value = serde_json::from_slice(body).map_err(parse_failed)?;
    let Value::Array(items) = value else {
        return Err(parse_failed(
            "json: cannot unmarshal object into Go value of type api.TxnOps",
        ));
    };
    if items.len() > MAX_OPS {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "Transaction contains too many operations ({} > {MAX_OPS})",
                items.len()
            ),
        });
    }
    let mut ops = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(op) = normalize(item, OP, false).map_err(parse_failed)? else {
            return Err(parse_failed(
                "json: cannot unmarshal into Go value of type api.TxnOp",
            ));
        };
        let Some(Value::Object(kv)) = op.get("KV") else {
            return Err(parse_failed(
                "dev-consul supports only KV operations in transactions",
            ));
        };
        let value = match get_str(kv, "Value").map_err(parse_failed)? {
            None => Vec::new(),
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(parse_failed)?,
        };
        let key = get_str(kv, "Key").map_err(parse_failed)?.unwrap_or_default();
        if value.len() > MAX_VALUE_SIZE {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "Value for key {key:?} is too large ({} > {MAX_VALUE_SIZE} bytes)",
                    value.len()
                ),
            });
        }
        let num = |f: &str| -> Result<u64, ApiError> {
            Ok(u64::try_from(get_i64(kv, f).map_err(parse_failed)?.unwrap_or(0)).unwrap_or(0))
        };
        ops.push(KvOp {
            verb: get_str(kv, "Verb").map_err(parse_failed)?.unwrap_or_default(),
            key,
            value,
            flags: num("Flags")?,
            index: num("Index")?,
            session: get_str(kv, "Session").map_err(parse_failed)?.unwrap_or_default(),
        });
    }
    Ok(ops)
}

/// Whether a verb only reads.
fn is_read(verb: &str) -> bool {
    matches!(
        verb,
        "get" | "get-tree" | "check-index" | "check-session" | "check-not-exists"
    )
}

/// A write result: the entry without its value.
fn blank(store: &Store, key: &str) -> Vec<DirEntry> {
    store
        .kv
        .get(key)
        .map(|e| DirEntry {
            value: Vec::new(),
            ..e.clone()
        })
        .into_iter()
        .collect()
}

/// Applies one op; returns its results or Consul's error text.
fn apply(store: &mut Store, op: &KvOp) -> Result<Vec<DirEntry>, String> {
    let key = op.key.as_str();
    match op.verb.as_str() {
        "set" => {
            store.kv_set(key, op.value.clone(), op.flags);
            Ok(blank(store, key))
        }
        "cas" => {
            if store.kv_cas(key, op.value.clone(), op.flags, op.index) {
                Ok(blank(store, key))
            } else {
                Err(format!("failed to set key {key:?}, index is stale"))
            }
        }
        "lock" => match store.kv_lock_checked(key, op.value.clone(), op.flags, &op.session) {
            Ok(true) => Ok(blank(store, key)),
            Ok(false) => Err(format!("failed to lock key {key:?}, lock is already held")),
            Err(e) => Err(e.to_string()),
        },
        "unlock" => match store.kv_release(key, op.value.clone(), op.flags, &op.session) {
            Ok(true) => Ok(blank(store, key)),
            Ok(false) => Err(format!(
                "failed to unlock key {key:?}, lock isn't held, or is held by another session"
            )),
            Err(e) => Err(e.to_string()),
        },
        "get" => store
            .kv
            .get(key)
            .map(|e| vec![e.clone()])
            .ok_or_else(|| format!("key {key:?} doesn't exist")),
        "get-tree" => Ok(store.kv_list(key).into_iter().cloned().collect()),
        "check-index" => match store.kv.get(key) {
            None => Err(format!("failed to check index, key {key:?} doesn't exist")),
            Some(e) if e.modify_index != op.index => Err(format!(
                "failed index check for key {key:?}, current modify index {} != {}",
                e.modify_index, op.index
            )),
            Some(_) => Ok(blank(store, key)),
        },
        "check-session" => match store.kv.get(key) {
            None => Err(format!("failed to check session, key {key:?} doesn't exist")),
            Some(e) if e.session.as_deref().unwrap_or("") != op.session => Err(format!(
                "failed session check for key {key:?}, current session {:?} != {:?}",
                e.session.as_deref().unwrap_or(""),
                op.session
            )),
            Some(_) => Ok(blank(store, key)),
        },
        "check-not-exists" => match store.kv.get(key) {
            Some(_) => Err(format!("key {key:?} exists")),
            None => Ok(Vec::new()),
        },
        "delete" => {
            store.kv_delete(key, None);
            Ok(Vec::new())
        }
        "delete-cas" => {
            if store.kv_delete(key, Some(op.index)) {
                Ok(Vec::new())
            } else {
                Err(format!("failed to delete key {key:?}, index is stale"))
            }
        }
        "delete-tree" => {
            store.kv_delete_tree(key);
            Ok(Vec::new())
        }
        other => Err(format!("unknown KV verb {other:?}")),
    }
}

/// Renumbers every index above `base` to `base + 1`, so the transaction is one write.
fn collapse(store: &mut Store, base: u64, results: &mut [DirEntry]) {
    if store.index <= base {
        return;
    }
    let one = base + 1;
    let fix = |i: &mut u64| {
        if *i > base {
            *i = one;
        }
    };
    for e in store.kv.values_mut().chain(results.iter_mut()) {
        fix(&mut e.modify_index);
        fix(&mut e.create_index);
    }
    store.tombstones.values_mut().for_each(fix);
    fix(&mut store.kv_index);
    store.index = one;
}

/// Consul's `preCheck` (via `kvsPreApply`): every op the token may not do, with the denial as
/// its `What`. `get`/`get-tree` are filtered on output instead; `check-index`/`check-session`
/// need `key:read`; `delete-tree` write on the whole prefix; every other verb `key:write`.
fn acl_errors(ctx: &Ctx, ops: &[KvOp]) -> Vec<TxnError> {
    let Some(authz) = &ctx.authz else {
        return Vec::new();
    };
    ops.iter()
        .enumerate()
        .filter_map(|(i, op)| {
            let denied = match op.verb.as_str() {
                "get" | "get-tree" => None,
                "check-index" | "check-session" => authz.require(Resource::Key, &op.key, Level::Read).err(),
                "delete-tree" => (!authz.allows_write_prefix(&op.key))
                    .then(|| authz.denied(Resource::Key, &op.key, Level::Write)),
                _ => authz.require(Resource::Key, &op.key, Level::Write).err(),
            };
            denied.map(|d| TxnError {
                op_index: i,
                what: d.message,
            })
        })
        .collect()
}

/// `PUT /v1/txn`.
pub(crate) fn handle(ctx: &Ctx) -> ApiResult {
    let ops = parse(&ctx.body)?;
    let read_only = ops.iter().all(|op| is_read(&op.verb));
    let denied = acl_errors(ctx, &ops);
    if !denied.is_empty() {
        return Ok(json(
            StatusCode::CONFLICT,
            &TxnResponse {
                results: None,
                errors: Some(denied),
            },
        ));
    }
    let outcome = ctx.app.write(|store, now| {
        // Pre-checks done before the write in Consul: lock-delay on lock ops.
        let delayed: Vec<TxnError> = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.verb == "lock" && store.in_lock_delay(&op.key, now))
            .map(|(i, op)| TxnError {
                op_index: i,
                what: format!("failed to lock key {:?} due to lock delay", op.key),
            })
            .collect();
        if !delayed.is_empty() {
            return (Err(delayed), store.kv_index);
        }
        let snapshot = (
            store.kv.clone(),
            store.tombstones.clone(),
            store.kv_index,
            store.index,
        );
        let base = store.index;
        let mut results = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match apply(store, op) {
                Ok(r) => results.extend(r),
                Err(what) => {
                    (store.kv, store.tombstones, store.kv_index, store.index) = snapshot;
                    return (Err(vec![TxnError { op_index: i, what }]), store.kv_index);
                }
            }
        }
        collapse(store, base, &mut results);
        (Ok(results), store.kv_index)
    });
    let (resp, index) = match outcome {
        (Ok(results), index) => {
            let results = results
                .into_iter()
                .filter(|kv| ctx.can(Resource::Key, &kv.key, Level::Read))
                .map(|kv| TxnResult { kv })
                .collect();
            (
                json(
                    StatusCode::OK,
                    &TxnResponse {
                        results: Some(results),
                        errors: None,
                    },
                ),
                index,
            )
        }
        (Err(errors), index) => (
            json(
                StatusCode::CONFLICT,
                &TxnResponse {
                    results: None,
                    errors: Some(errors),
                },
            ),
            index,
        ),
    };
    Ok(if read_only { with_meta(resp, index) } else { resp })
}
