//! The cluster as an operator sees it: the service's instances from Consul's health endpoint,
//! the leader from the election key, and each member's own `/api/v1/status` fetched concurrently
//! with a short timeout. Shared by `simpleloggers status` and the node's `/api/v1/cluster`, so
//! the CLI and the dashboard never disagree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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

async fn member(
    http: &reqwest::Client,
    entry: &ServiceEntry,
    timeout: Duration,
    leader: Option<&LeaderSummary>,
) -> Member {
    let address = instance_address(entry);
    let mut m = Member {
        name: entry
            .service
            .meta
            .get("node_name")
            .cloned()
            .unwrap_or_else(|| entry.service.id.clone()),
        address: address.clone(),
        service_id: entry.service.id.clone(),
        consul_check: entry.aggregated_status().as_str().to_string(),
        reachable: false,
        error: None,
        role: None,
        ready: None,
        term: None,
        log_end_offset: None,
        session: None,
        holds_lock: false,
        role_since: None,
    };
    let fetched = async {
        let resp = http
            .get(format!("http://{address}/api/v1/status"))
            .timeout(timeout)
            .send()
            .await?
            .error_for_status()?;
        resp.json::<NodeStatus>().await
    }
    .await;
    match fetched {
        Ok(status) => {
            m.reachable = true;
            m.name = status.name;
            m.role = Some(status.role);
            m.ready = Some(status.ready);
            m.term = Some(status.term);
            m.log_end_offset = Some(status.log_end_offset);
            m.holds_lock = leader.is_some_and(|l| status.session.as_deref() == Some(l.session.as_str()));
            m.session = status.session;
            m.role_since = status.role_since;
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

/// Renders the view like `kubectl get`: a header and one aligned row per member.
pub fn render_table(view: &ClusterView) -> String {
    let header = [
        "NAME",
        "ROLE",
        "READY",
        "TERM",
        "LOG-END",
        "CONSUL-CHECK",
        "SESSION",
        "ADDRESS",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 8]> = view
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
            [
                m.name.clone(),
                m.role.clone().unwrap_or_else(|| "unreachable".into()),
                m.ready.map_or_else(dash, |r| r.to_string()),
                m.term.map_or_else(dash, |t| t.to_string()),
                m.log_end_offset.map_or_else(dash, |o| o.to_string()),
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
            name: name.into(),
            address: "127.0.0.1:3000".into(),
            service_id: format!("simpleloggers-{name}"),
            consul_check: "passing".into(),
            reachable: role.is_some(),
            error: None,
            role: role.map(str::to_string),
            ready: role.map(|r| r == "leader"),
            term: role.map(|_| 3),
            log_end_offset: role.map(|_| 42),
            session: role.map(|_| "0123456789abcdef".to_string()),
            holds_lock: role == Some("leader"),
            role_since: None,
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
