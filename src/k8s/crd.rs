//! The `LogCluster` custom resource (`simpleloggers.io/v1alpha1`, short name `lc`): the spec the
//! chart creates, and the status the leader writes so `kubectl get lc` shows who leads.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the chart declares about one log cluster. The nodes only read it for display; the
/// StatefulSet and Consul remain the sources of truth.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "simpleloggers.io",
    version = "v1alpha1",
    kind = "LogCluster",
    plural = "logclusters",
    shortname = "lc",
    namespaced,
    status = "LogClusterStatus",
    printcolumn = r#"{"name":"Leader","type":"string","description":"Pod that holds the Consul lock","jsonPath":".status.leader"}"#,
    printcolumn = r#"{"name":"Term","type":"integer","description":"Leadership term (Consul LockIndex)","jsonPath":".status.term"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","description":"Desired number of nodes","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LogClusterSpec {
    /// Desired number of nodes (the StatefulSet's replicas).
    pub replicas: i32,
    /// Consul service name the nodes register under.
    pub service_name: String,
    /// Consul KV key whose lock is leadership.
    pub election_key: String,
}

/// What the current leader reports. Written with a merge patch on the `status` subresource, so
/// lists (members, conditions) are replaced whole on every write.
//
// The `u64` fields are declared `format: int64` (schemars would say `uint64`): the API server
// knows only `int32`/`int64` for integers, warns on any other format and ignores it; `minimum: 0`
// still keeps them unsigned.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogClusterStatus {
    /// Pod name of the leader.
    pub leader: Option<String>,
    /// `host:port` of the leader's HTTP API.
    pub leader_address: Option<String>,
    /// The leader's term (Consul LockIndex of the election key).
    #[schemars(extend("format" = "int64"))]
    pub term: u64,
    /// When the leader took over (RFC 3339).
    pub since: Option<String>,
    /// The leader's log end offset (next offset to assign) at the time of writing.
    #[schemars(extend("format" = "int64"))]
    pub log_end_offset: Option<u64>,
    /// The node pods as the leader sees them.
    #[serde(default)]
    pub members: Vec<LogClusterMember>,
    /// Standard-shaped conditions; `LeaderElected` is always present.
    #[serde(default)]
    pub conditions: Vec<LogClusterCondition>,
}

/// One node pod in the status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogClusterMember {
    /// Pod name.
    pub name: String,
    /// `leader` for the writer of this status (the lock holder), `follower` for every other pod.
    pub role: String,
    /// Running with its container started, and passing in Consul when Consul could be asked.
    /// Followers are never Kubernetes-Ready by design (leader-only readiness), so this is not
    /// the pod's Ready condition.
    pub ready: bool,
    /// Log end offset, when known (the leader knows only its own).
    #[schemars(extend("format" = "int64"))]
    pub log_end_offset: Option<u64>,
}

/// A condition in the usual Kubernetes shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogClusterCondition {
    /// Condition type, e.g. `LeaderElected`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One-word CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The CRD as YAML: what `simpleloggers crd` prints and `charts/simpleloggers/crds/logcluster.yaml`
/// holds.
///
/// # Errors
/// Only if serialisation fails, which would be a bug.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt as _;
    serde_yaml::to_string(&LogCluster::crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt as _, Resource as _};

    /// The CRD names, scope, subresource and printer columns are the ones the chart and kubectl
    /// users rely on.
    #[test]
    fn crd_shape() {
        let crd = LogCluster::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("logclusters.simpleloggers.io"));
        assert_eq!(crd.spec.group, "simpleloggers.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "LogCluster");
        assert_eq!(crd.spec.names.short_names, Some(vec!["lc".to_string()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Leader", ".status.leader"),
                ("Term", ".status.term"),
                ("Members", ".spec.replicas"),
                ("Age", ".metadata.creationTimestamp")
            ]
        );
        assert_eq!(LogCluster::api_version(&()), "simpleloggers.io/v1alpha1");
    }

    /// The spec is camelCase in YAML, as the chart writes it.
    #[test]
    fn spec_is_camel_case() {
        let spec: LogClusterSpec =
            serde_yaml::from_str("replicas: 3\nserviceName: simpleloggers\nelectionKey: service/x/leader\n")
                .unwrap();
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.service_name, "simpleloggers");
        assert_eq!(spec.election_key, "service/x/leader");
    }
}
