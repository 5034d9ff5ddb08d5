//! Session endpoints: create, renew, destroy, info, list. A session is what a KV lock is held
//! by; Consul invalidates it on TTL expiry, destroy, or when a bound check turns critical.

use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{ConsulClient, ConsulError, QueryMeta, QueryOptions, Result};

/// What Consul does with the locks of an invalidated session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    /// Release held keys (keep their values).
    #[default]
    Release,
    /// Delete held keys.
    Delete,
}

/// A service check a session is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCheckRef {
    /// The check id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Namespace (Enterprise only; empty in CE).
    #[serde(rename = "Namespace", default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// The body of `PUT /v1/session/create`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionRequest {
    /// Human-readable name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Node the session belongs to (default: the agent's node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How long Consul keeps others from acquiring a lock this session held when it is
    /// invalidated (Consul's default 15s when unset; 0 disables).
    #[serde(
        serialize_with = "super::duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub lock_delay: Option<Duration>,
    /// Release or delete held keys on invalidation.
    pub behavior: Behavior,
    /// Invalidate when not renewed within this (Consul may wait up to 2×).
    #[serde(
        rename = "TTL",
        serialize_with = "super::duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Node checks to bind to (`None`: Consul's default `serfHealth`; `Some([])`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_checks: Option<Vec<String>>,
    /// Service checks to bind to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_checks: Vec<ServiceCheckRef>,
}

/// A session as Consul reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    /// The session id (a UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// The node it belongs to.
    #[serde(default)]
    pub node: String,
    /// Lock-delay in nanoseconds.
    #[serde(default)]
    pub lock_delay: u64,
    /// Release or delete.
    #[serde(default)]
    pub behavior: Behavior,
    /// TTL as a Go duration string (may be higher than requested).
    #[serde(rename = "TTL", default)]
    pub ttl: String,
    /// Bound node checks.
    #[serde(default, deserialize_with = "null_as_default")]
    pub node_checks: Vec<String>,
    /// Bound service checks.
    #[serde(default, deserialize_with = "null_as_default")]
    pub service_checks: Vec<ServiceCheckRef>,
    /// Index of the write that created it.
    pub create_index: u64,
    /// Equal to `create_index`: sessions never change.
    #[serde(default)]
    pub modify_index: u64,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

impl ConsulClient {
    /// Creates a session and answers its id.
    ///
    /// # Errors
    /// Consul refuses the request (TTL out of bounds, a bound check missing or critical, ...).
    pub async fn session_create(&self, request: &SessionRequest) -> Result<String> {
        let req = self
            .request(Method::PUT, self.url("session/create", ""), &[])
            .json(request);
        let created: Created = self.json(self.send_ok(req).await?, "session/create").await?;
        Ok(created.id)
    }

    /// Renews a session's TTL. A session Consul no longer knows is [`ConsulError::NotFound`].
    ///
    /// # Errors
    /// Not found (expired or invalidated), or transport failures.
    pub async fn session_renew(&self, id: &str) -> Result<SessionInfo> {
        let resp = self
            .send_ok(self.request(Method::PUT, self.url("session/renew/", id), &[]))
            .await?;
        let mut sessions: Vec<SessionInfo> = self.json(resp, "session/renew").await?;
        sessions.pop().ok_or_else(|| ConsulError::NotFound {
            message: format!("Session id '{id}' not found"),
        })
    }

    /// Destroys a session (Consul answers `true` even when it is already gone).
    ///
    /// # Errors
    /// Transport or permission failures.
    pub async fn session_destroy(&self, id: &str) -> Result<bool> {
        self.send_bool(self.request(Method::PUT, self.url("session/destroy/", id), &[]))
            .await
    }

    /// Reads one session; `None` when Consul does not know it.
    ///
    /// # Errors
    /// Transport or decoding failures.
    pub async fn session_info(
        &self,
        id: &str,
        opts: &QueryOptions,
    ) -> Result<(Option<SessionInfo>, QueryMeta)> {
        let (resp, meta) = self.read(self.url("session/info/", id), Vec::new(), opts).await?;
        let mut sessions: Vec<SessionInfo> = self.json(resp, "session/info").await?;
        Ok((sessions.pop(), meta))
    }

    /// Lists every session.
    ///
    /// # Errors
    /// Transport or decoding failures.
    pub async fn session_list(&self, opts: &QueryOptions) -> Result<(Vec<SessionInfo>, QueryMeta)> {
        let (resp, meta) = self.read(self.url("session/list", ""), Vec::new(), opts).await?;
        Ok((self.json(resp, "session/list").await?, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The create body uses Consul's field names and Go duration strings, omitting unset fields.
    #[test]
    fn create_body_shape() {
        let req = SessionRequest {
            name: "n".into(),
            lock_delay: Some(Duration::from_millis(2000)),
            ttl: Some(Duration::from_secs(10)),
            node_checks: Some(vec!["serfHealth".into()]),
            service_checks: vec![ServiceCheckRef {
                id: "service:a".into(),
                namespace: String::new(),
            }],
            ..SessionRequest::default()
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"Name":"n","LockDelay":"2s","Behavior":"release","TTL":"10s",
                "NodeChecks":["serfHealth"],"ServiceChecks":[{"ID":"service:a"}]})
        );
    }

    /// A session decodes with `ServiceChecks: null` and integer LockDelay.
    #[test]
    fn decodes_session() {
        let json = r#"{"ID":"x","Name":"","Node":"n","LockDelay":15000000000,"Behavior":"delete","TTL":"",
            "NodeChecks":["serfHealth"],"ServiceChecks":null,"CreateIndex":4,"ModifyIndex":4}"#;
        let s: SessionInfo = serde_json::from_str(json).unwrap();
        assert_eq!(s.behavior, Behavior::Delete);
        assert_eq!(s.lock_delay, 15_000_000_000);
        assert!(s.service_checks.is_empty());
    }
}
