//! Liveness, readiness and status. Readiness is a pure function of the published leader state,
//! the clock and the store, so the probe never blocks on Consul and unit tests drive it.

use std::time::Instant;

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use serde::Serialize;

use super::Node;
use crate::election::{LeaderState, Role};

/// The body of `/readyz`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// True only on the leader with a valid lease and a writable store.
    pub ready: bool,
    /// This node's role.
    pub role: &'static str,
    /// The leader's name, when known.
    pub leader: Option<String>,
    /// The current term.
    pub term: u64,
    /// Why the node is (not) ready.
    pub reason: String,
}

/// Decides readiness: the leader whose lease is valid at `now` and whose store accepts writes.
pub fn readiness(state: &LeaderState, now: Instant, store_writable: bool) -> Readiness {
    let (ready, reason) = match state.write_term(now) {
        Ok(_) if store_writable => (true, "leader with a valid lease".to_string()),
        Ok(_) => (
            false,
            "leader, but the log store is not writable (disk full or I/O error)".into(),
        ),
        Err(not_leader) => (false, not_leader.reason),
    };
    Readiness {
        ready,
        role: if state.role == Role::Leader && !ready {
            "leader (not serving)"
        } else {
            state.role.as_str()
        },
        leader: state.leader.as_ref().map(|l| l.name.clone()),
        term: state.term,
        reason,
    }
}

/// `GET /readyz`: 200 only on the serving leader, 503 otherwise.
pub async fn readyz(State(node): State<Node>) -> impl IntoResponse {
    let body = readiness(&node.elector.current(), Instant::now(), node.store.is_writable());
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET /healthz`: 200 while the process and its store work, whatever the role.
pub async fn healthz(State(node): State<Node>) -> impl IntoResponse {
    Json(
        serde_json::json!({ "status": "ok", "name": node.config.name, "log_end_offset": node.store.end_offset() }),
    )
}

/// The body of `/api/v1/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// This node's name.
    pub name: String,
    /// Its advertised address.
    pub address: String,
    /// Its role.
    pub role: &'static str,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// The current leader.
    pub leader: Option<LeaderInfo>,
    /// The current term.
    pub term: u64,
    /// Milliseconds left on the lease (leader only).
    pub lease_remaining_ms: Option<u64>,
    /// Why the node is in its role.
    pub reason: String,
    /// Since when (RFC 3339).
    pub role_since: String,
    /// Role changes since start.
    pub transitions: u64,
    /// Next offset of the local log.
    pub log_end_offset: u64,
    /// First retained offset of the local log.
    pub log_start_offset: u64,
    /// Whether the last Consul request succeeded.
    pub consul_reachable: bool,
    /// This node's Consul session.
    pub session: Option<String>,
}

/// A leader as the status reports it.
#[derive(Debug, Serialize)]
pub struct LeaderInfo {
    /// Node name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Since when it leads.
    pub since: String,
}

/// `GET /api/v1/status`.
pub async fn status(State(node): State<Node>) -> Json<Status> {
    let state = node.elector.current();
    let now = Instant::now();
    let ready = readiness(&state, now, node.store.is_writable()).ready;
    Json(Status {
        name: node.config.name.clone(),
        address: node.elector.config().advertise_addr.clone(),
        role: state.role.as_str(),
        ready,
        leader: state.leader.as_ref().map(|l| LeaderInfo {
            name: l.name.clone(),
            address: l.address.clone(),
            since: l.since.clone(),
        }),
        term: state.term,
        lease_remaining_ms: state.lease_remaining(now).map(|d| d.as_millis() as u64),
        reason: state.reason.clone(),
        role_since: humantime::format_rfc3339_millis(state.since).to_string(),
        transitions: state.transitions,
        log_end_offset: node.store.end_offset(),
        log_start_offset: node.store.start_offset(),
        consul_reachable: state.consul_reachable,
        session: state.session.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::discovery::LeaderRecord;

    fn state(role: Role, lease: Option<Duration>, now: Instant) -> LeaderState {
        LeaderState {
            role,
            term: 7,
            leader: Some(LeaderRecord {
                name: "n1".into(),
                address: "a:1".into(),
                since: String::new(),
            }),
            lease_until: lease.map(|d| now + d),
            session: Some("s".into()),
            consul_reachable: true,
            reason: "because".into(),
            since: SystemTime::now(),
            transitions: 0,
        }
    }

    /// Ready only as leader, with a lease in the future and a writable store.
    #[test]
    fn ready_only_on_serving_leader() {
        let now = Instant::now();
        let leader = state(Role::Leader, Some(Duration::from_secs(1)), now);
        assert!(readiness(&leader, now, true).ready);
        assert!(
            !readiness(&leader, now, false).ready,
            "a full disk makes the leader unready"
        );
        assert!(
            !readiness(&leader, now + Duration::from_secs(2), true).ready,
            "lapsed lease"
        );
        for role in [Role::Follower, Role::Starting, Role::Stopping] {
            let r = readiness(&state(role, Some(Duration::from_secs(1)), now), now, true);
            assert!(!r.ready, "{role:?}");
            assert_eq!(r.role, role.as_str());
            assert_eq!(r.leader.as_deref(), Some("n1"));
        }
    }
}
