//! Health endpoint: the instances of a service with their node and checks, optionally only
//! those passing every check; blocking like every read.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{CheckStatus, ConsulClient, QueryMeta, QueryOptions, Result};

/// One instance of a service with its node and checks.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    /// The node the instance runs on.
    pub node: HealthNode,
    /// The instance.
    pub service: HealthService,
    /// The node's and the instance's checks.
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The worst status among the entry's checks (`passing` when there are none).
    pub fn aggregated_status(&self) -> CheckStatus {
        let mut worst = CheckStatus::Passing;
        for check in &self.checks {
            match check.status {
                CheckStatus::Critical => return CheckStatus::Critical,
                CheckStatus::Warning => worst = CheckStatus::Warning,
                CheckStatus::Passing => {}
            }
        }
        worst
    }
}

/// A catalog node.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthNode {
    /// Node name.
    pub node: String,
    /// Node address.
    #[serde(default)]
    pub address: String,
    /// Datacenter.
    #[serde(default)]
    pub datacenter: String,
}

/// A service instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthService {
    /// Instance id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Instance address (empty: the node's).
    #[serde(default)]
    pub address: String,
    /// Instance port.
    #[serde(default)]
    pub port: u16,
    /// Tags.
    #[serde(default, deserialize_with = "null_vec")]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default, deserialize_with = "null_map")]
    pub meta: BTreeMap<String, String>,
}

/// A check's state.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// Check id.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Status.
    pub status: CheckStatus,
    /// Last output.
    #[serde(default)]
    pub output: String,
    /// Owning service id (empty for node checks).
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
}

fn null_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

fn null_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

impl ConsulClient {
    /// The instances of `service`; with `passing`, only those whose every check passes.
    ///
    /// # Errors
    /// Transport or decoding failures.
    pub async fn health_service(
        &self,
        service: &str,
        passing: bool,
        opts: &QueryOptions,
    ) -> Result<(Vec<ServiceEntry>, QueryMeta)> {
        let query = if passing {
            vec![("passing", "true".to_string())]
        } else {
            Vec::new()
        };
        let (resp, meta) = self
            .read(self.url("health/service/", service), query, opts)
            .await?;
        Ok((self.json(resp, "health/service").await?, meta))
    }
}
