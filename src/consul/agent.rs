//! Agent endpoints: register and deregister a service with HTTP or TTL checks, update TTL
//! checks, and read the agent's own identity.

use std::{collections::BTreeMap, time::Duration};

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{ConsulClient, Result};

/// A check's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded; does not invalidate sessions.
    Warning,
    /// Failing; invalidates every session bound to the check.
    Critical,
}

impl CheckStatus {
    /// Consul's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

/// A check registered with a service (HTTP or TTL).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinition {
    /// Check id (default `service:<service-id>`).
    #[serde(rename = "CheckID", skip_serializing_if = "String::is_empty")]
    pub check_id: String,
    /// Display name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// URL the agent GETs every `interval` (HTTP check).
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Interval of an HTTP check.
    #[serde(
        serialize_with = "super::duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// Timeout of an HTTP check.
    #[serde(
        serialize_with = "super::duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// TTL of a TTL check.
    #[serde(
        rename = "TTL",
        serialize_with = "super::duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Initial status (Consul's default: critical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    /// Deregister the service once the check has been critical this long (minimum 1 min).
    #[serde(
        serialize_with = "super::duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_service_after: Option<Duration>,
}

/// The body of `PUT /v1/agent/service/register`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// Instance id (default: the name).
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Service name.
    pub name: String,
    /// Address others dial.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Port others dial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckDefinition>,
}

/// What `GET /v1/agent/self` tells about the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSelf {
    /// The agent's node name (sessions belong to it).
    pub node_name: String,
    /// The datacenter.
    pub datacenter: String,
}

#[derive(Deserialize)]
struct SelfBody {
    #[serde(rename = "Config")]
    config: SelfConfig,
}

#[derive(Deserialize)]
struct SelfConfig {
    #[serde(rename = "NodeName")]
    node_name: String,
    #[serde(rename = "Datacenter")]
    datacenter: String,
}

#[derive(Serialize)]
struct CheckUpdate<'a> {
    #[serde(rename = "Status")]
    status: &'a str,
    #[serde(rename = "Output")]
    output: &'a str,
}

impl ConsulClient {
    /// Registers (or replaces) a service instance with the local agent.
    ///
    /// # Errors
    /// Consul refuses the definition (400 with its message) or cannot be reached.
    pub async fn agent_service_register(&self, registration: &ServiceRegistration) -> Result<()> {
        let req = self
            .request(Method::PUT, self.url("agent/service/register", ""), &[])
            .json(registration);
        self.send_ok(req).await.map(drop)
    }

    /// Deregisters a service instance and its checks.
    ///
    /// # Errors
    /// Unknown id (404 on recent Consul) or transport failures.
    pub async fn agent_service_deregister(&self, id: &str) -> Result<()> {
        self.send_ok(self.request(Method::PUT, self.url("agent/service/deregister/", id), &[]))
            .await
            .map(drop)
    }

    /// Sets a TTL check's status with an optional note.
    ///
    /// # Errors
    /// Unknown check, a non-TTL check, or transport failures.
    pub async fn agent_check_set(&self, id: &str, status: CheckStatus, note: &str) -> Result<()> {
        let verb = match status {
            CheckStatus::Passing => "agent/check/pass/",
            CheckStatus::Warning => "agent/check/warn/",
            CheckStatus::Critical => "agent/check/fail/",
        };
        let query = if note.is_empty() {
            Vec::new()
        } else {
            vec![("note", note.to_string())]
        };
        self.send_ok(self.request(Method::PUT, self.url(verb, id), &query))
            .await
            .map(drop)
    }

    /// Sets a TTL check's status and output through `/v1/agent/check/update`.
    ///
    /// # Errors
    /// Unknown check, a non-TTL check, or transport failures.
    pub async fn agent_check_update(&self, id: &str, status: CheckStatus, output: &str) -> Result<()> {
        let body = CheckUpdate {
            status: status.as_str(),
            output,
        };
        let req = self
            .request(Method::PUT, self.url("agent/check/update/", id), &[])
            .json(&body);
        self.send_ok(req).await.map(drop)
    }

    /// Reads the agent's node name and datacenter.
    ///
    /// # Errors
    /// Transport or decoding failures.
    pub async fn agent_self(&self) -> Result<AgentSelf> {
        let resp = self
            .send_ok(self.request(Method::GET, self.url("agent/self", ""), &[]))
            .await?;
        let body: SelfBody = self.json(resp, "agent/self").await?;
        Ok(AgentSelf {
            node_name: body.config.node_name,
            datacenter: body.config.datacenter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registration JSON uses Consul's field names (`CheckID`, `HTTP`, `TTL`) and Go durations.
    #[test]
    fn registration_shape() {
        let reg = ServiceRegistration {
            id: "a".into(),
            name: "svc".into(),
            address: "10.0.0.1".into(),
            port: Some(3000),
            checks: vec![CheckDefinition {
                check_id: "a:http".into(),
                http: Some("http://10.0.0.1:3000/healthz".into()),
                interval: Some(Duration::from_secs(1)),
                timeout: Some(Duration::from_millis(500)),
                ..CheckDefinition::default()
            }],
            ..ServiceRegistration::default()
        };
        assert_eq!(
            serde_json::to_value(&reg).unwrap(),
            serde_json::json!({"ID":"a","Name":"svc","Address":"10.0.0.1","Port":3000,"Checks":[
                {"CheckID":"a:http","HTTP":"http://10.0.0.1:3000/healthz","Interval":"1s","Timeout":"500ms"}]})
        );
    }
}
