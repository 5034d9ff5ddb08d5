//! The LogCluster status the leader writes: who leads, since when, its log end offset, the
//! members and their roles, and conditions. Built by the pure [`build_status`], written by
//! [`patch_status`] as a merge patch on the `status` subresource.

use std::time::SystemTime;

use kube::{
    api::{Patch, PatchParams},
    Api, Client,
};
use serde_json::json;

use super::{
    crd::{LogCluster, LogClusterCondition, LogClusterMember, LogClusterStatus},
    rollout::{Action, PodView},
    K8sError,
};
use crate::election::{LeaderState, Role};

/// Condition type: a leader holds the lock.
pub const LEADER_ELECTED: &str = "LeaderElected";
/// Condition type: every pod runs the StatefulSet's update revision.
pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";

/// RFC 3339 (seconds) of a system time.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The status as this node (the leader) sees it. `pods` are the StatefulSet's pods when they
/// could be listed (`None` otherwise: the members are then this node alone); `rollout` is the
/// last rollout decision, if any; `now` stamps the rollout condition.
pub fn build_status(
    self_name: &str,
    state: &LeaderState,
    log_end_offset: u64,
    pods: Option<&[PodView]>,
    rollout: Option<&Action>,
    now: SystemTime,
) -> LogClusterStatus {
    let leading = state.role == Role::Leader;
    let record = state.leader.as_ref();
    let since = record
        .map(|r| r.since.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| rfc3339(state.since));
    let member = |name: &str, running: bool| LogClusterMember {
        name: name.to_string(),
        role: if leading && name == self_name {
            "leader"
        } else {
            "follower"
        }
        .into(),
        ready: running,
        log_end_offset: (name == self_name).then_some(log_end_offset),
    };
    let mut members: Vec<LogClusterMember> = match pods {
        Some(pods) => pods.iter().map(|p| member(&p.name, p.settled())).collect(),
        None => Vec::new(),
    };
    if !members.iter().any(|m| m.name == self_name) {
        members.push(member(self_name, true));
    }
    members.sort_by(|a, b| a.name.len().cmp(&b.name.len()).then_with(|| a.name.cmp(&b.name)));

    let mut conditions = vec![if leading {
        LogClusterCondition {
            type_: LEADER_ELECTED.into(),
            status: "True".into(),
            reason: "LockHeld".into(),
            message: format!("{self_name} leads term {}", state.term),
            last_transition_time: since.clone(),
        }
    } else {
        LogClusterCondition {
            type_: LEADER_ELECTED.into(),
            status: "False".into(),
            reason: "NoLeader".into(),
            message: format!("{self_name} stepped down: {}", state.reason),
            last_transition_time: rfc3339(state.since),
        }
    }];
    if let Some(action) = rollout {
        let (status, reason, message) = match action {
            Action::Done => (
                "True",
                "UpToDate",
                "every pod runs the update revision".to_string(),
            ),
            Action::Wait(why) => ("False", "Waiting", why.clone()),
            Action::Delete(pod) => ("False", "Replacing", format!("replacing pod {}", pod.name)),
        };
        conditions.push(LogClusterCondition {
            type_: ROLLOUT_COMPLETE.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: rfc3339(now),
        });
    }
    LogClusterStatus {
        leader: leading.then(|| self_name.to_string()),
        leader_address: if leading {
            record.map(|r| r.address.clone())
        } else {
            None
        },
        term: state.term,
        since: leading.then_some(since),
        log_end_offset: leading.then_some(log_end_offset),
        members,
        conditions,
    }
}

/// Writes `status` to LogCluster `name` (merge patch on `logclusters/status`; needs `patch` on
/// `logclusters/status`).
///
/// # Errors
/// Any API failure (a missing LogCluster is a 404); the caller logs it and retries later.
pub async fn patch_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &LogClusterStatus,
) -> Result<(), K8sError> {
    let api: Api<LogCluster> = Api::namespaced(client.clone(), namespace);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::discovery::LeaderRecord;

    fn leader_state() -> LeaderState {
        LeaderState {
            role: Role::Leader,
            case: crate::election::ElectionCase::Normal,
            term: 12,
            leader: Some(LeaderRecord {
                name: "sl-1".into(),
                address: "10.0.0.2:3000".into(),
                since: "2026-11-25T10:00:00Z".into(),
                term: None,
            }),
            lease_until: None,
            session: Some("s".into()),
            consul_reachable: true,
            consul_denied: None,
            reason: "holds the lock".into(),
            since: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            transitions: 2,
        }
    }

    fn pod(name: &str, running: bool) -> PodView {
        PodView {
            name: name.into(),
            uid: None,
            revision: None,
            running,
            terminating: false,
            consul_passing: None,
        }
    }

    /// The leader reports itself, its address, term, since and offset, every member with its
    /// role, and LeaderElected=True.
    #[test]
    fn leader_status() {
        let pods = [pod("sl-2", false), pod("sl-0", true), pod("sl-1", true)];
        let s = build_status(
            "sl-1",
            &leader_state(),
            42,
            Some(&pods),
            Some(&Action::Done),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(s.leader.as_deref(), Some("sl-1"));
        assert_eq!(s.leader_address.as_deref(), Some("10.0.0.2:3000"));
        assert_eq!(s.term, 12);
        assert_eq!(s.since.as_deref(), Some("2026-11-25T10:00:00Z"));
        assert_eq!(s.log_end_offset, Some(42));
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.role.as_str(), m.ready))
            .collect();
        assert_eq!(
            members,
            [
                ("sl-0", "follower", true),
                ("sl-1", "leader", true),
                ("sl-2", "follower", false)
            ]
        );
        assert_eq!(s.members[1].log_end_offset, Some(42));
        assert_eq!(s.members[0].log_end_offset, None);
        assert_eq!(s.conditions[0].type_, LEADER_ELECTED);
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.conditions[1].type_, ROLLOUT_COMPLETE);
        assert_eq!(s.conditions[1].status, "True");
        assert_eq!(s.conditions[1].last_transition_time, "1970-01-01T00:00:00Z");
    }

    /// Without a pod list the members are this node alone; a non-leader reports no leader.
    #[test]
    fn fallbacks() {
        let s = build_status("sl-1", &leader_state(), 1, None, None, SystemTime::now());
        assert_eq!(s.members.len(), 1);
        assert_eq!(s.conditions.len(), 1);
        let mut st = leader_state();
        st.role = Role::Stopping;
        let s = build_status("sl-1", &st, 1, None, None, SystemTime::now());
        assert_eq!(s.leader, None);
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.members[0].role, "follower");
    }
}
