//! KV endpoints: get (single, recurse, keys), put with acquire / release / cas / flags, delete.
//! Values are bytes; Consul carries them base64-encoded in JSON.

use base64::{engine::general_purpose::STANDARD, Engine};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConsulClient, QueryMeta, QueryOptions, Result};

/// One KV entry (Consul's `DirEntry`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    /// How many times the key has been acquired: the fencing term of a lock.
    pub lock_index: u64,
    /// The full key.
    pub key: String,
    /// Opaque client flags.
    pub flags: u64,
    /// The value (empty when Consul sends `null`).
    #[serde(with = "base64_value")]
    pub value: Vec<u8>,
    /// The session holding the key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Index of the write that created the key.
    pub create_index: u64,
    /// Index of the last write to the key.
    pub modify_index: u64,
}

/// Serialises values as Consul does: standard base64, `null` for empty.
pub(crate) mod base64_value {
    use super::*;

    pub fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if value.is_empty() {
            s.serialize_none()
        } else {
            s.serialize_str(&STANDARD.encode(value))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom),
        }
    }
}

/// Options of a KV PUT. At most one of `cas`, `acquire`, `release` may be set.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// Flags to store (every write without flags resets them to 0).
    pub flags: Option<u64>,
    /// Check-and-set: write only if ModifyIndex equals this (0: only if absent).
    pub cas: Option<u64>,
    /// Acquire the lock with this session.
    pub acquire: Option<String>,
    /// Release the lock held by this session.
    pub release: Option<String>,
}

/// Options of a KV DELETE.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// Delete every key under the prefix.
    pub recurse: bool,
    /// Delete only if ModifyIndex equals this.
    pub cas: Option<u64>,
}

impl ConsulClient {
    /// Reads one key; `None` when it does not exist (404).
    ///
    /// # Errors
    /// Transport, permission or decoding failures.
    pub async fn kv_get(&self, key: &str, opts: &QueryOptions) -> Result<(Option<KvPair>, QueryMeta)> {
        let (resp, meta) = self.read(self.url("kv/", key), Vec::new(), opts).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok((None, meta));
        }
        let mut pairs: Vec<KvPair> = self.json(resp, "a KV read").await?;
        Ok((pairs.pop(), meta))
    }

    /// Reads every entry under `prefix` (empty when none).
    ///
    /// # Errors
    /// Transport, permission or decoding failures.
    pub async fn kv_list(&self, prefix: &str, opts: &QueryOptions) -> Result<(Vec<KvPair>, QueryMeta)> {
        let (resp, meta) = self
            .read(self.url("kv/", prefix), vec![("recurse", String::new())], opts)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), meta));
        }
        Ok((self.json(resp, "a KV listing").await?, meta))
    }

    /// Lists keys under `prefix`, folded at `separator` when given.
    ///
    /// # Errors
    /// Transport, permission or decoding failures.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        opts: &QueryOptions,
    ) -> Result<(Vec<String>, QueryMeta)> {
        let mut query = vec![("keys", String::new())];
        if let Some(sep) = separator {
            query.push(("separator", sep.to_string()));
        }
        let (resp, meta) = self.read(self.url("kv/", prefix), query, opts).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), meta));
        }
        Ok((self.json(resp, "a KV key listing").await?, meta))
    }

    /// Writes a key; answers Consul's verdict (`false` for a failed cas, acquire or release).
    ///
    /// # Errors
    /// Transport, permission or validation failures (e.g. an unknown session on acquire).
    pub async fn kv_put(&self, key: &str, value: impl Into<Vec<u8>>, opts: &PutOptions) -> Result<bool> {
        let mut query = Vec::new();
        if let Some(flags) = opts.flags {
            query.push(("flags", flags.to_string()));
        }
        if let Some(cas) = opts.cas {
            query.push(("cas", cas.to_string()));
        }
        if let Some(session) = &opts.acquire {
            query.push(("acquire", session.clone()));
        }
        if let Some(session) = &opts.release {
            query.push(("release", session.clone()));
        }
        let req = self
            .request(Method::PUT, self.url("kv/", key), &query)
            .body(value.into());
        self.send_bool(req).await
    }

    /// Tries to take the lock on `key` for `session`, storing `value`.
    ///
    /// # Errors
    /// As [`Self::kv_put`].
    pub async fn kv_acquire(&self, key: &str, session: &str, value: impl Into<Vec<u8>>) -> Result<bool> {
        self.kv_put(
            key,
            value,
            &PutOptions {
                acquire: Some(session.to_string()),
                ..PutOptions::default()
            },
        )
        .await
    }

    /// Releases the lock on `key` held by `session`, storing `value` (Consul replaces the value).
    ///
    /// # Errors
    /// As [`Self::kv_put`].
    pub async fn kv_release(&self, key: &str, session: &str, value: impl Into<Vec<u8>>) -> Result<bool> {
        self.kv_put(
            key,
            value,
            &PutOptions {
                release: Some(session.to_string()),
                ..PutOptions::default()
            },
        )
        .await
    }

    /// Deletes a key (or a prefix); `false` only for a failed cas.
    ///
    /// # Errors
    /// Transport or permission failures.
    pub async fn kv_delete(&self, key: &str, opts: &DeleteOptions) -> Result<bool> {
        let mut query = Vec::new();
        if opts.recurse {
            query.push(("recurse", String::new()));
        }
        if let Some(cas) = opts.cas {
            query.push(("cas", cas.to_string()));
        }
        self.send_bool(self.request(Method::DELETE, self.url("kv/", key), &query))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DirEntry decodes from Consul's JSON, `null` values become empty and `Session` is optional.
    #[test]
    fn decodes_consul_dir_entries() {
        let json = r#"[{"LockIndex":2,"Key":"a/b","Flags":7,"Value":"aGk=","Session":"s1","CreateIndex":5,"ModifyIndex":9},
                       {"LockIndex":0,"Key":"c","Flags":0,"Value":null,"CreateIndex":1,"ModifyIndex":1}]"#;
        let pairs: Vec<KvPair> = serde_json::from_str(json).unwrap();
        assert_eq!(pairs[0].value, b"hi");
        assert_eq!(pairs[0].session.as_deref(), Some("s1"));
        assert_eq!(pairs[0].lock_index, 2);
        assert!(pairs[1].value.is_empty());
        assert_eq!(pairs[1].session, None);
    }
}
