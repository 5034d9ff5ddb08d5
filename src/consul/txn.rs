//! Transactions (`PUT /v1/txn`): several KV operations applied atomically at one index, or
//! none of them. Replication uses this for an atomic check-and-lock.

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{kv::base64_value, ConsulClient, ConsulError, KvPair, Result};

/// One KV operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Read a key (fails the transaction when absent).
    Get { key: String },
    /// Write a key unconditionally.
    Set { key: String, value: Vec<u8>, flags: u64 },
    /// Write only if ModifyIndex equals `index` (0: only if absent).
    Cas {
        key: String,
        value: Vec<u8>,
        flags: u64,
        index: u64,
    },
    /// Acquire the lock with `session`.
    Lock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    /// Release the lock held by `session`.
    Unlock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    /// Fail unless the key's ModifyIndex equals `index`.
    CheckIndex { key: String, index: u64 },
    /// Fail unless `session` holds the key.
    CheckSession { key: String, session: String },
    /// Fail if the key exists.
    CheckNotExists { key: String },
    /// Delete a key.
    Delete { key: String },
}

#[derive(Serialize)]
struct OpWire<'a> {
    #[serde(rename = "KV")]
    kv: KvWire<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KvWire<'a> {
    verb: &'static str,
    key: &'a str,
    #[serde(with = "base64_value", skip_serializing_if = "<[u8]>::is_empty")]
    value: &'a [u8],
    #[serde(skip_serializing_if = "is_zero")]
    flags: u64,
    #[serde(skip_serializing_if = "is_zero")]
    index: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    session: &'a str,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn base<'a>(verb: &'static str, key: &'a str) -> KvWire<'a> {
    KvWire {
        verb,
        key,
        value: &[],
        flags: 0,
        index: 0,
        session: "",
    }
}

impl TxnOp {
    fn wire(&self) -> OpWire<'_> {
        let kv = match self {
            TxnOp::Get { key } => base("get", key),
            TxnOp::Set { key, value, flags } => KvWire {
                value,
                flags: *flags,
                ..base("set", key)
            },
            TxnOp::Cas {
                key,
                value,
                flags,
                index,
            } => KvWire {
                value,
                flags: *flags,
                index: *index,
                ..base("cas", key)
            },
            TxnOp::Lock {
                key,
                value,
                flags,
                session,
            } => KvWire {
                value,
                flags: *flags,
                session,
                ..base("lock", key)
            },
            TxnOp::Unlock {
                key,
                value,
                flags,
                session,
            } => KvWire {
                value,
                flags: *flags,
                session,
                ..base("unlock", key)
            },
            TxnOp::CheckIndex { key, index } => KvWire {
                index: *index,
                ..base("check-index", key)
            },
            TxnOp::CheckSession { key, session } => KvWire {
                session,
                ..base("check-session", key)
            },
            TxnOp::CheckNotExists { key } => base("check-not-exists", key),
            TxnOp::Delete { key } => base("delete", key),
        };
        OpWire { kv }
    }
}

/// Why one operation failed, as Consul reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TxnError {
    /// Position of the failing operation.
    #[serde(rename = "OpIndex")]
    pub op_index: usize,
    /// Consul's explanation.
    #[serde(rename = "What")]
    pub what: String,
}

/// The outcome of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every operation applied; one result per operation that returns an entry.
    Committed(Vec<KvPair>),
    /// Nothing applied (409).
    RolledBack(Vec<TxnError>),
}

#[derive(Deserialize)]
struct TxnBody {
    #[serde(rename = "Results", default)]
    results: Option<Vec<ResultWire>>,
    #[serde(rename = "Errors", default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
struct ResultWire {
    #[serde(rename = "KV")]
    kv: Option<KvPair>,
}

impl ConsulClient {
    /// Applies `ops` atomically.
    ///
    /// # Errors
    /// A malformed transaction (400), permission (403, or an operation an ACL denied:
    /// [`ConsulError::PermissionDenied`]), or transport failures. A transaction that Consul rolled
    /// back for any other reason is `Ok(TxnOutcome::RolledBack)`.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome> {
        let wire: Vec<OpWire<'_>> = ops.iter().map(TxnOp::wire).collect();
        let req = self.request(Method::PUT, self.url("txn", ""), &[]).json(&wire);
        let resp = self.send(req).await?;
        if resp.status() == StatusCode::CONFLICT {
            let body: TxnBody = self.json(resp, "a rolled-back txn").await?;
            let errors = body.errors.unwrap_or_default();
            // An ACL denial is not a lost race: report it as the 403 it is.
            if let Some(denied) = errors.iter().find(|e| e.what.starts_with("Permission denied")) {
                return Err(ConsulError::permission_denied(denied.what.clone()));
            }
            return Ok(TxnOutcome::RolledBack(errors));
        }
        let resp = self.check(resp).await?;
        let body: TxnBody = self.json(resp, "txn").await?;
        if let Some(errors) = body.errors.filter(|e| !e.is_empty()) {
            return Err(ConsulError::Decode {
                what: "txn",
                message: format!("200 with errors: {errors:?}"),
            });
        }
        Ok(TxnOutcome::Committed(
            body.results
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| r.kv)
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each verb is spelled as Consul expects, values base64, unset fields omitted.
    #[test]
    fn wire_shape() {
        let ops = [
            TxnOp::Lock {
                key: "k".into(),
                value: b"v".to_vec(),
                flags: 0,
                session: "s".into(),
            },
            TxnOp::CheckIndex {
                key: "k".into(),
                index: 7,
            },
            TxnOp::CheckNotExists { key: "x".into() },
        ];
        let wire: Vec<_> = ops.iter().map(TxnOp::wire).collect();
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            serde_json::json!([
                {"KV":{"Verb":"lock","Key":"k","Value":"dg==","Session":"s"}},
                {"KV":{"Verb":"check-index","Key":"k","Index":7}},
                {"KV":{"Verb":"check-not-exists","Key":"x"}}
            ])
        );
    }
}
