//! The pod role label `simpleloggers.io/role=leader|follower` each node keeps on its own pod, so
//! `kubectl get pods -L simpleloggers.io/role` shows the roles and tools can select the leader.

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Patch, PatchParams},
    Api, Client,
};
use serde_json::{json, Value};

use super::K8sError;
use crate::election::Role;

/// The label key.
pub const ROLE_LABEL: &str = "simpleloggers.io/role";

/// The label value for a role: `leader` only while the election says Leader. Starting and
/// Stopping are `follower`: the label is always present (so selectors for followers work from
/// the first moment), and a stopping leader gives the label up before it releases the lock.
pub fn role_label(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Starting | Role::Follower | Role::Stopping => "follower",
    }
}

/// The JSON merge patch that sets the role label.
pub fn role_patch(value: &str) -> Value {
    json!({ "metadata": { "labels": { ROLE_LABEL: value } } })
}

/// Sets the role label on pod `pod` in `namespace` (merge patch; needs `patch` on pods).
///
/// # Errors
/// Any API failure; the caller logs it and retries later.
pub async fn patch_role(client: &Client, namespace: &str, pod: &str, role: Role) -> Result<(), K8sError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.patch(
        pod,
        &PatchParams::default(),
        &Patch::Merge(role_patch(role_label(role))),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only Leader maps to `leader`; every other role is `follower`.
    #[test]
    fn labels() {
        assert_eq!(role_label(Role::Leader), "leader");
        for role in [Role::Starting, Role::Follower, Role::Stopping] {
            assert_eq!(role_label(role), "follower");
        }
        assert_eq!(
            role_patch("leader"),
            json!({"metadata": {"labels": {"simpleloggers.io/role": "leader"}}})
        );
    }
}
