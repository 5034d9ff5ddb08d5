//! The cluster as an operator sees it: the service's instances from Consul's health endpoint,
//! the leader from the election key, and each member's own `/api/v1/status` fetched concurrently
//! with a short timeout, replication included ([`super::replication`]). Shared by `simpleloggers
//! status` and the node's `/api/v1/cluster`, so the CLI and the dashboard never disagree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::replication::{self, FollowerProgress, ReplicationStatus};
use crate::{
    consul::{ConsulClient, ConsulError, QueryOptions, ServiceEntry},
    discovery::leader_from_kv,
};

/// The cluster at one moment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterView {
    /// The Consul service name the members are registered under.
    pub service: String,
    /// The leader named by the election key, `None` while nobody holds the lock.
    pub leader: Option<LeaderSummary>,
    /// The registered instances, sorted by name.
    pub members: Vec<Member>,
    /// When the view was taken (ms since the epoch).
    pub observed_at_ms: u64,
}

/// The holder of the election lock.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderSummary {
    /// Node name.
    pub name: String,
    /// Its advertised address.
    pub address: String,
    /// When it became leader (RFC 3339).
    pub since: String,
    /// The fencing term (the key's `LockIndex`).
    pub term: u64,
    /// The session holding the lock.
    pub session: String,
}

/// One registered instance and what it says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Member {
    /// Node name (the instance's `node_name` meta, else its service id).
    pub name: String,
    /// `host:port` of its HTTP API, as registered in Consul.
    pub address: String,
    /// The Consul service instance id.
    pub service_id: String,
    /// Worst status of its Consul checks: `passing`, `warning` or `critical`.
    pub consul_check: String,
    /// Whether its `/api/v1/status` answered in time.
    pub reachable: bool,
    /// Why it could not be reached.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Its role (`leader`, `follower`, `starting`, `stopping`); `None` when unreachable.
    pub role: Option<String>,
    /// Whether it answers `/readyz` 200 (only the serving leader does).
    pub ready: Option<bool>,
    /// The term it knows.
    pub term: Option<u64>,
    /// Next offset of its local log.
    pub log_end_offset: Option<u64>,
    /// Its Consul session.
    pub session: Option<String>,
    /// Whether that session holds the election lock.
    pub holds_lock: bool,
    /// Since when it has its role (RFC 3339).
    pub role_since: Option<String>,
    /// Its own replication report (`replication` in its `/api/v1/status`); `None` when
    /// unreachable or when the node predates replication.
    #[serde(default)]
    pub replication: Option<ReplicationStatus>,
    /// Whether the member takes writes and why not (`writes` of its status; older nodes: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<WritesStatus>,
    /// Whether it is in the ISR Consul holds, as the leader (else any node) reports it; `None`
    /// when no node reports replication.
    #[serde(default)]
    pub in_isr: Option<bool>,
    /// The leader's view of this member's progress (log end, lag, time since caught up); `None`
    /// for the leader itself and when the leader does not report it.
    #[serde(default)]
    pub follower_progress: Option<FollowerProgress>,
}

impl Member {
    /// An instance as Consul lists it, before its own status is asked for (so: unreachable).
    pub fn registered(name: &str, address: &str, service_id: &str, consul_check: &str) -> Member {
        Member {
            name: name.to_string(),
            address: address.to_string(),
            service_id: service_id.to_string(),
            consul_check: consul_check.to_string(),
            reachable: false,
            error: None,
            role: None,
            ready: None,
            term: None,
            log_end_offset: None,
            session: None,
            holds_lock: false,
            role_since: None,
            replication: None,
            in_isr: None,
            follower_progress: None,
            writes: None,
        }
    }

    /// Takes in what the member's `/api/v1/status` answered (the JSON body): it is reachable,
    /// with that role, term, log end, session and replication report; it holds the lock when its
    /// session is `leader`'s.
    ///
    /// # Errors
    /// The body lacks a field every node reports (name, role, ready, term, log end).
    pub fn absorb_status(
        &mut self,
        status: &Value,
        leader: Option<&LeaderSummary>,
    ) -> Result<(), serde_json::Error> {
        let parsed = NodeStatus::deserialize(status)?;
        self.reachable = true;
        self.error = None;
        self.name = parsed.name;
        self.role = Some(parsed.role);
        self.ready = Some(parsed.ready);
        self.term = Some(parsed.term);
        self.log_end_offset = Some(parsed.log_end_offset);
        self.holds_lock = leader.is_some_and(|l| parsed.session.as_deref() == Some(l.session.as_str()));
        self.session = parsed.session;
        self.role_since = parsed.role_since;
        self.replication = replication::from_status(status);
        self.writes = parsed.writes;
        Ok(())
    }
}

/// A member's `writes` (see `crate::node::Writes`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WritesStatus {
    /// Whether a write sent to it now is accepted.
    pub accepting: bool,
    /// `accepting` or the machine-readable reason it refuses (`consul_unreachable`, ...).
    pub reason: String,
    /// The reason in words.
    #[serde(default)]
    pub detail: String,
}

/// What a node's `/api/v1/status` answers (the fields this view uses).
#[derive(Debug, Deserialize)]
struct NodeStatus {
    name: String,
    role: String,
    ready: bool,
    term: u64,
    log_end_offset: u64,
    session: Option<String>,
    role_since: Option<String>,
    #[serde(default)]
    writes: Option<WritesStatus>,
}

/// Takes a view of the cluster: the health of `service` and the election key from Consul (any
/// Consul failure is an error), then every member's status concurrently, each bounded by
/// `timeout` (a member that does not answer is reported unreachable, not an error).
///
/// # Errors
/// Consul cannot be reached or answers badly.
pub async fn collect(
    consul: &ConsulClient,
    http: &reqwest::Client,
    service: &str,
    election_key: &str,
    timeout: Duration,
) -> Result<ClusterView, ConsulError> {
    let opts = QueryOptions::default();
    let (health, key) = tokio::try_join!(
        consul.health_service(service, false, &opts),
        consul.kv_get(election_key, &opts)
    )?;
    let leader = leader_from_kv(key.0.as_ref()).map(|l| LeaderSummary {
        name: l.record.name,
        address: l.record.address,
        since: l.record.since,
        term: l.term,
        session: l.session,
    });
    let fetches = health
        .0
        .iter()
        .map(|entry| member(http, entry, timeout, leader.as_ref()));
    let mut members = futures::future::join_all(fetches).await;
    members.sort_by(|a, b| a.name.cmp(&b.name));
    replication::annotate(&mut members);
    Ok(ClusterView {
        service: service.to_string(),
        leader,
        members,
        observed_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    })
}

/// `host:port` of an instance: its service address, else its node's address.
pub fn instance_address(entry: &ServiceEntry) -> String {
    let host = if entry.service.address.is_empty() {
        &entry.node.address
    } else {
        &entry.service.address
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    format!("{host}:{}", entry.service.port)
}

/// A member's answer to a status request without the right token.
const UNAUTHORIZED: &str =
    "refused (401): set --read-token / SIMPLELOGGERS_READ_TOKEN to the nodes' --read-token (or --api-token)";

async fn member(
    http: &reqwest::Client,
    entry: &ServiceEntry,
    timeout: Duration,
    leader: Option<&LeaderSummary>,
) -> Member {
    let address = instance_address(entry);
    let name = entry.service.meta.get("node_name").unwrap_or(&entry.service.id);
    let mut m = Member::registered(
        name,
        &address,
        &entry.service.id,
        entry.aggregated_status().as_str(),
    );
    let fetched: Result<Result<Value, &str>, reqwest::Error> = async {
        let resp = http
            .get(format!("http://{address}/api/v1/status"))
            .timeout(timeout)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Ok(Err(UNAUTHORIZED));
        }
        resp.error_for_status()?.json::<Value>().await.map(Ok)
    }
    .await;
    match fetched {
        Ok(Err(refused)) => m.error = Some(refused.to_string()),
        Ok(Ok(status)) => {
            if let Err(err) = m.absorb_status(&status, leader) {
                m.error = Some(format!("unreadable /api/v1/status: {err}"));
            }
        }
        Err(err) => {
            m.error = Some(if err.is_timeout() {
                format!("no answer within {timeout:?}")
            } else {
                err.without_url().to_string()
            });
        }
    }
    m
}

/// Renders the view like `kubectl get`: a header and one aligned row per member. HW, LAG, ISR
/// and CASE come from the replication reports (`-` where no node reports one).
pub fn render_table(view: &ClusterView) -> String {
    let header = [
        "NAME",
        "ROLE",
        "READY",
        "TERM",
        "LOG-END",
        "HW",
        "LAG",
        "ISR",
        "CASE",
        "CONSUL-CHECK",
        "SESSION",
        "ADDRESS",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 12]> = view
        .members
        .iter()
        .map(|m| {
            let session = m.session.as_deref().map_or_else(dash, |s| {
                let short: String = s.chars().take(8).collect();
                if m.holds_lock {
                    format!("{short} (lock)")
                } else {
                    short
                }
            });
            let [hw, lag, isr, case] = replication::cells(m);
            [
                m.name.clone(),
                m.role.clone().unwrap_or_else(|| "unreachable".into()),
                m.ready.map_or_else(dash, |r| r.to_string()),
                m.term.map_or_else(dash, |t| t.to_string()),
                m.log_end_offset.map_or_else(dash, |o| o.to_string()),
                hw,
                lag,
                isr,
                case,
                m.consul_check.clone(),
                session,
                m.address.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: Option<&str>) -> Member {
        Member {
            reachable: role.is_some(),
            role: role.map(str::to_string),
            ready: role.map(|r| r == "leader"),
            term: role.map(|_| 3),
            log_end_offset: role.map(|_| 42),
            session: role.map(|_| "0123456789abcdef".to_string()),
            holds_lock: role == Some("leader"),
            ..Member::registered(
                name,
                "127.0.0.1:3000",
                &format!("simpleloggers-{name}"),
                "passing",
            )
        }
    }

    /// The table has the kubectl-like header, aligned columns, and marks unreachable members.
    #[test]
    fn table() {
        let view = ClusterView {
            service: "simpleloggers".into(),
            leader: None,
            members: vec![member("n0", Some("leader")), member("node-1", None)],
            observed_at_ms: 0,
        };
        let table = render_table(&view);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME     ROLE"), "{table}");
        assert!(lines[0].ends_with("ADDRESS"));
        assert!(
            lines[1].contains("leader") && lines[1].contains("01234567 (lock)"),
            "{table}"
        );
        assert!(lines[2].contains("unreachable"), "{table}");
        let col = lines[0].find("ROLE").unwrap();
        assert_eq!(&lines[1][col..col + 6], "leader");
    }
}
