//! Liveness, the Consul check, readiness and status. Readiness is [`admit`] — the predicate the
//! write path uses — applied to the published leader state, the clock and the log's health, so
//! the probe never blocks on Consul, a node is Ready exactly when it would accept a write, and
//! unit tests drive it.

use std::time::Instant;

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use serde::Serialize;

use super::{
    health::{admit_replicated, LogFacts, Refusal},
    Node,
};
use crate::{
    election::{LeaderState, Role},
    replication::{ReplicationStatus, WriteRefusal},
};

/// The body of `/readyz`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// True only when a write would be accepted now: the leader with a valid lease, a log that can
    /// append, and a term the log accepts.
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

/// Decides readiness: ready exactly when [`admit_replicated`] would accept a write at `now`
/// (`replication`: replication's check for the term). A leader that refuses writes for too few
/// in-sync replicas is not ready; the Consul check (`/consul-check`) does not look at replication,
/// so its session and lock stay where they are while followers catch up.
pub fn readiness(
    state: &LeaderState,
    now: Instant,
    log: &LogFacts,
    replication: impl FnOnce(u64) -> Result<(), WriteRefusal>,
) -> Readiness {
    let (ready, reason) = match admit_replicated(state, now, log, replication) {
        Ok(_) => (true, "leader with a valid lease".to_string()),
        Err(refusal) => (false, refusal.reason()),
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

/// Whether this node takes writes now and, when not, why: a stable machine-readable `reason`
/// (`/api/v1/status` `writes`, `simpleloggers status`, the dashboard) and the words.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Writes {
    /// True exactly when `/readyz` is 200: a write sent here now is accepted.
    pub accepting: bool,
    /// `accepting`, or why not: `not_leader`, `consul_unreachable`, `consul_permission_denied`,
    /// `lease_expired`, `log_unavailable`, `not_enough_replicas`, `term_starting`, `deposed`,
    /// `isr_unknown`, `shutting_down`.
    pub reason: &'static str,
    /// The details in words (the refusal; for a follower the leader to write to instead).
    pub detail: String,
}

/// Decides [`Writes`] from the same facts as [`readiness`] (`consul_denied` and
/// `consul_reachable` of `state` tell a follower's Consul trouble from a healthy follower).
pub fn writes(
    state: &LeaderState,
    now: Instant,
    log: &LogFacts,
    replication: impl FnOnce(u64) -> Result<(), WriteRefusal>,
) -> Writes {
    let refusal = match admit_replicated(state, now, log, replication) {
        Ok(_) => {
            return Writes {
                accepting: true,
                reason: "accepting",
                detail: "leader with a valid lease".into(),
            }
        }
        Err(refusal) => refusal,
    };
    let detail = refusal.reason();
    let reason = match &refusal {
        Refusal::NotLeader(_) if state.role == Role::Stopping => "shutting_down",
        Refusal::NotLeader(_) if state.consul_denied.is_some() => "consul_permission_denied",
        Refusal::NotLeader(_) if state.role == Role::Leader => "lease_expired",
        Refusal::NotLeader(_) if !state.consul_reachable => "consul_unreachable",
        Refusal::NotLeader(_) => "not_leader",
        Refusal::Log(_) => "log_unavailable",
        Refusal::Replication(WriteRefusal::NotEnoughReplicas { .. }) => "not_enough_replicas",
        Refusal::Replication(WriteRefusal::TermStarting { .. }) => "term_starting",
        Refusal::Replication(WriteRefusal::Deposed { .. }) => "deposed",
        Refusal::Replication(WriteRefusal::HandingOver) => "shutting_down",
        Refusal::Replication(WriteRefusal::IsrUnknown) => "isr_unknown",
    };
    let detail = match (reason, &state.consul_denied, &state.leader) {
        ("consul_permission_denied", Some(denied), _) => denied.clone(),
        ("not_leader", _, Some(leader)) if !leader.address.is_empty() => {
            format!("{detail}; the leader is {} at {}", leader.name, leader.address)
        }
        _ => detail,
    };
    Writes {
        accepting: false,
        reason,
        detail,
    }
}

/// `GET /readyz`: 200 only on the serving leader, 503 otherwise.
pub async fn readyz(State(node): State<Node>) -> impl IntoResponse {
    let body = readiness(
        &node.elector.current(),
        Instant::now(),
        &node.health.facts(),
        |term| node.replication.admit(term),
    );
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET /healthz`, the liveness probe: 200 while the process serves, whatever the role and even
/// with a full disk (a restart would not free space). 503 only once the log's writer has stopped,
/// which only a restart cures.
pub async fn healthz(State(node): State<Node>) -> impl IntoResponse {
    let problem = node.health.problem();
    let status = if node.health.writer_gone() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ok" } else { "failing" },
        "name": node.config.name,
        "log_end_offset": node.store.end_offset(),
        "log_problem": problem,
    });
    (status, Json(body))
}

/// `GET /consul-check`, the HTTP check Consul runs and the session is bound to: 200 while the
/// log can append, 503 (with the reason) while it cannot — disk full, I/O errors, a stopped
/// writer. A failing check invalidates the session, so a leader that cannot write loses the lock
/// and a healthy node takes over; it passes again once a probe of the data directory succeeds.
pub async fn consul_check(State(node): State<Node>) -> impl IntoResponse {
    let facts = node.health.facts();
    let step_down = node
        .elector
        .with_current(|state| super::health::must_step_down(state, &facts));
    match step_down.or(facts.problem) {
        None => (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "failing", "reason": problem })),
        ),
    }
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
    /// The last permission Consul's ACLs denied this node, naming what to grant (absent when
    /// none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_denied: Option<String>,
    /// Whether writes are accepted here now, and why not.
    pub writes: Writes,
    /// Why the local log cannot append right now (absent when it can).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_problem: Option<String>,
    /// Replication: the high watermark, the in-sync set, each follower's progress (leader only),
    /// why writes are refused, a refused truncation.
    pub replication: ReplicationStatus,
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
    let facts = node.health.facts();
    let ready = readiness(&state, now, &facts, |term| node.replication.admit(term)).ready;
    let writes = writes(&state, now, &facts, |term| node.replication.admit(term));
    let write_term = state.write_term(now).ok();
    let replication = node.replication.status(
        state.leader.as_ref().map(|l| l.name.clone()),
        election_case(&state),
        write_term,
    );
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
        consul_denied: state.consul_denied.clone(),
        writes,
        log_problem: facts.problem,
        replication,
    })
}

/// The election case as the election publishes it, for the status.
fn election_case(state: &LeaderState) -> serde_json::Value {
    serde_json::to_value(&state.case).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::discovery::LeaderRecord;

    fn state(role: Role, lease: Option<Duration>, now: Instant) -> LeaderState {
        LeaderState {
            role,
            case: crate::election::ElectionCase::Normal,
            term: 7,
            leader: Some(LeaderRecord {
                name: "n1".into(),
                address: "a:1".into(),
                replication_address: None,
                since: String::new(),
                term: None,
            }),
            lease_until: lease.map(|d| now + d),
            session: Some("s".into()),
            consul_reachable: true,
            consul_denied: None,
            reason: "because".into(),
            since: SystemTime::now(),
            transitions: 0,
        }
    }

    /// Every refusal gets its machine-readable reason; a follower's Consul trouble is told apart
    /// from being a healthy follower.
    #[test]
    fn writes_reasons() {
        let now = Instant::now();
        let healthy = LogFacts::default();
        let ok = |_| Ok(());
        let leader = state(Role::Leader, Some(Duration::from_secs(1)), now);
        let w = writes(&leader, now, &healthy, ok);
        assert_eq!((w.accepting, w.reason), (true, "accepting"));
        let lapsed = writes(&leader, now + Duration::from_secs(2), &healthy, ok);
        assert_eq!((lapsed.accepting, lapsed.reason), (false, "lease_expired"));
        let follower = state(Role::Follower, None, now);
        let w = writes(&follower, now, &healthy, ok);
        assert_eq!(w.reason, "not_leader");
        assert!(w.detail.contains("the leader is n1 at a:1"), "{}", w.detail);
        let cut_off = LeaderState {
            consul_reachable: false,
            ..state(Role::Follower, None, now)
        };
        assert_eq!(writes(&cut_off, now, &healthy, ok).reason, "consul_unreachable");
        let denied = LeaderState {
            consul_denied: Some("Consul denied session:write on \"n\"".into()),
            ..state(Role::Starting, None, now)
        };
        let w = writes(&denied, now, &healthy, ok);
        assert_eq!(w.reason, "consul_permission_denied");
        assert!(w.detail.contains("session:write"), "{}", w.detail);
        let full = LogFacts {
            problem: Some("disk full".into()),
            last_term: None,
            lost_term: None,
        };
        assert_eq!(writes(&leader, now, &full, ok).reason, "log_unavailable");
        let short = writes(&leader, now, &healthy, |_| {
            Err(WriteRefusal::NotEnoughReplicas {
                isr: 1,
                min_insync: 2,
            })
        });
        assert_eq!(short.reason, "not_enough_replicas");
        let stopping = state(Role::Stopping, None, now);
        assert_eq!(writes(&stopping, now, &healthy, ok).reason, "shutting_down");
    }

    /// Ready only as leader, with a lease in the future, a log that can append and a term the
    /// log accepts: exactly when a write would be admitted.
    #[test]
    fn ready_only_on_serving_leader() {
        let now = Instant::now();
        let leader = state(Role::Leader, Some(Duration::from_secs(1)), now);
        let healthy = LogFacts::default();
        assert!(readiness(&leader, now, &healthy, |_| Ok(())).ready);
        let full = LogFacts {
            problem: Some("disk full".into()),
            last_term: None,
            lost_term: None,
        };
        let r = readiness(&leader, now, &full, |_| Ok(()));
        assert!(!r.ready, "a full disk makes the leader unready");
        assert_eq!(r.role, "leader (not serving)");
        let ahead = LogFacts {
            problem: None,
            last_term: Some(8),
            lost_term: None,
        };
        assert!(
            !readiness(&leader, now, &ahead, |_| Ok(())).ready,
            "term 7 is below the log's term 8: writes would be refused, so not ready"
        );
        assert!(
            !readiness(&leader, now + Duration::from_secs(2), &healthy, |_| Ok(())).ready,
            "lapsed lease"
        );
        for role in [Role::Follower, Role::Starting, Role::Stopping] {
            let r = readiness(
                &state(role, Some(Duration::from_secs(1)), now),
                now,
                &healthy,
                |_| Ok(()),
            );
            assert!(!r.ready, "{role:?}");
            assert_eq!(r.role, role.as_str());
            assert_eq!(r.leader.as_deref(), Some("n1"));
        }
        let short = readiness(&leader, now, &healthy, |_| {
            Err(WriteRefusal::NotEnoughReplicas {
                isr: 1,
                min_insync: 2,
            })
        });
        assert!(
            !short.ready,
            "too few in-sync replicas: writes are refused, so not ready"
        );
        assert_eq!(short.role, "leader (not serving)");
        assert!(short.reason.contains("not_enough_replicas"), "{}", short.reason);
    }
}
