//! What a test sees of replication from outside: a node's `replication` object of
//! `GET /api/v1/status` (as `docs/replication.md` "Observability" specifies it), bounded waits
//! until every running node agrees on the in-sync set or reached a high watermark, and every
//! running node's whole log for exactly-once and in-order checks.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::Value;

use super::{LocalCluster, LocalClusterError};
use crate::cli::tail::TailEntry;

/// How often the replication waits ask every node (a status round trip per node).
const STATUS_POLL: Duration = Duration::from_millis(50);

/// One member as the leader sees it (`replication.members`; followers list none).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its node name.
    pub name: String,
    /// Its disk's incarnation (a UUID created with its data directory).
    #[serde(default)]
    pub incarnation: String,
    /// Its durable log end as its last verified fetch told (`None`: no fetch in this term).
    #[serde(default)]
    pub log_end: Option<u64>,
    /// How many records it is behind the leader's log end (`None`: not known in this term).
    #[serde(default)]
    pub lag_records: Option<u64>,
    /// Whether the in-sync set in Consul lists it.
    #[serde(default)]
    pub in_isr: bool,
    /// How long ago it last caught up to the leader's log end (`None`: never in this term).
    #[serde(default)]
    pub caught_up_ms_ago: Option<u64>,
}

/// A node's `replication` object of `/api/v1/status`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ReplicationStatus {
    /// `--replicas`.
    pub replicas: u32,
    /// `--min-insync` (or its default).
    pub min_insync: u32,
    /// `--acks` (`all` or `leader`).
    #[serde(default)]
    pub acks: String,
    /// The high watermark this node knows: readers see nothing at or above it.
    pub high_watermark: u64,
    /// Its log end (records above the high watermark included).
    pub log_end: u64,
    /// Its first retained offset.
    #[serde(default)]
    pub log_start: u64,
    /// The election case as the election publishes it (`"normal"`, or an object such as
    /// `{"state_loss_waiting": {"reported": .., "missing": [..]}}`).
    #[serde(default)]
    pub case: Value,
    /// The in-sync set as Consul holds it (names).
    pub isr: Vec<String>,
    /// Every follower as the leader sees it; empty on followers.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// The leader this node knows of.
    #[serde(default)]
    pub leader: Option<String>,
    /// Why writes are refused now (`not_enough_replicas: ...`), if they are.
    #[serde(default)]
    pub writes_refused: Option<String>,
    /// A truncation this node refused (divergence point, high watermark, reason), if any.
    #[serde(default)]
    pub truncation_refused: Option<Value>,
}

impl ReplicationStatus {
    /// The case's name: the string itself, or the one key of an externally tagged object, or
    /// the `kind`/`case` field of an internally tagged one.
    pub fn case_name(&self) -> Option<&str> {
        match &self.case {
            Value::String(name) => Some(name),
            Value::Object(map) => match (map.get("kind").or(map.get("case")), map.len()) {
                (Some(Value::String(name)), _) => Some(name),
                (_, 1) => map.keys().next().map(String::as_str),
                _ => None,
            },
            _ => None,
        }
    }

    /// The names `state_loss_waiting` says are still missing (empty for any other case).
    pub fn missing(&self) -> Vec<String> {
        let details = match &self.case {
            Value::Object(map) => map.get("state_loss_waiting").unwrap_or(&self.case),
            _ => return Vec::new(),
        };
        details["missing"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The in-sync set as a set of names.
    pub fn isr_set(&self) -> BTreeSet<String> {
        self.isr.iter().cloned().collect()
    }
}

impl LocalCluster {
    /// Node `index`'s whole `/api/v1/status` body.
    ///
    /// # Errors
    /// The node is not running, unreachable or answers badly.
    pub async fn status(&self, index: usize) -> Result<Value, LocalClusterError> {
        let node = self.nodes.get(index).filter(|n| n.is_running()).ok_or_else(|| {
            LocalClusterError::NotRunning {
                name: format!("node {index}"),
            }
        })?;
        self.get_json(&format!("{}/api/v1/status", node.url())).await
    }

    /// Node `index`'s `replication` status.
    ///
    /// # Errors
    /// As [`LocalCluster::status`], or the status has no (well-formed) `replication` object.
    pub async fn replication(&self, index: usize) -> Result<ReplicationStatus, LocalClusterError> {
        let status = self.status(index).await?;
        serde_json::from_value(status["replication"].clone()).map_err(|e| LocalClusterError::Http {
            url: format!("{}/api/v1/status", self.url(index)),
            message: format!("bad replication object {}: {e}", status["replication"]),
        })
    }

    /// The `replication` status of each of `nodes`, by index (`None`: it did not answer).
    pub async fn replications(&self, nodes: &[usize]) -> Vec<(usize, Option<ReplicationStatus>)> {
        let mut all = Vec::new();
        for &index in nodes {
            all.push((index, self.replication(index).await.ok()));
        }
        all
    }

    /// The indices of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// [`LocalCluster::wait_replication_on`] every running node.
    ///
    /// # Errors
    /// As [`LocalCluster::wait_replication_on`].
    pub async fn wait_replication<F>(
        &self,
        what: &str,
        within: Duration,
        settled: F,
    ) -> Result<Vec<(usize, ReplicationStatus)>, LocalClusterError>
    where
        F: FnMut(&[(usize, ReplicationStatus)]) -> bool,
    {
        self.wait_replication_on(&self.running(), what, within, settled)
            .await
    }

    /// Polls the replication status of `nodes` until every one answers and `settled` holds for
    /// the lot; answers those statuses, by index. (A paused node answers nothing: leave it out.)
    ///
    /// # Errors
    /// [`LocalClusterError::Unsettled`] with the last statuses seen, after `within`.
    pub async fn wait_replication_on<F>(
        &self,
        nodes: &[usize],
        what: &str,
        within: Duration,
        mut settled: F,
    ) -> Result<Vec<(usize, ReplicationStatus)>, LocalClusterError>
    where
        F: FnMut(&[(usize, ReplicationStatus)]) -> bool,
    {
        let deadline = Instant::now() + within;
        loop {
            let all = self.replications(nodes).await;
            let answered: Vec<(usize, ReplicationStatus)> =
                all.iter().filter_map(|(i, s)| Some((*i, s.clone()?))).collect();
            if !all.is_empty() && answered.len() == all.len() && settled(&answered) {
                return Ok(answered);
            }
            if Instant::now() >= deadline {
                return Err(LocalClusterError::Unsettled {
                    what: what.to_string(),
                    after: within,
                    last: format!("{all:#?}"),
                });
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }

    /// Waits until every running node reports the in-sync set `names` (in any order).
    ///
    /// # Errors
    /// As [`LocalCluster::wait_replication`].
    pub async fn wait_isr(&self, names: &[&str], within: Duration) -> Result<(), LocalClusterError> {
        self.wait_isr_on(&self.running(), names, within).await
    }

    /// Waits until each of `nodes` reports the in-sync set `names` (in any order).
    ///
    /// # Errors
    /// As [`LocalCluster::wait_replication_on`].
    pub async fn wait_isr_on(
        &self,
        nodes: &[usize],
        names: &[&str],
        within: Duration,
    ) -> Result<(), LocalClusterError> {
        let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        self.wait_replication_on(
            nodes,
            &format!("in-sync set {want:?} on {nodes:?}"),
            within,
            |all| all.iter().all(|(_, s)| s.isr_set() == want),
        )
        .await
        .map(drop)
    }

    /// Waits until every running node's high watermark is at least `at_least`.
    ///
    /// # Errors
    /// As [`LocalCluster::wait_replication`].
    pub async fn wait_high_watermark(
        &self,
        at_least: u64,
        within: Duration,
    ) -> Result<(), LocalClusterError> {
        self.wait_replication(
            &format!("high watermark >= {at_least} on every node"),
            within,
            |all| all.iter().all(|(_, s)| s.high_watermark >= at_least),
        )
        .await
        .map(drop)
    }

    /// Waits until every running node holds and has committed the same log: one log end, and
    /// every node's high watermark equal to it. Answers that offset.
    ///
    /// # Errors
    /// As [`LocalCluster::wait_replication`].
    pub async fn wait_converged(&self, within: Duration) -> Result<u64, LocalClusterError> {
        let all = self
            .wait_replication("one log end = high watermark on every node", within, |all| {
                let ends: BTreeSet<(u64, u64)> =
                    all.iter().map(|(_, s)| (s.log_end, s.high_watermark)).collect();
                ends.len() == 1 && ends.iter().all(|(end, hw)| end == hw)
            })
            .await?;
        Ok(all[0].1.log_end)
    }

    /// Every running node's whole log over HTTP (`GET /api/v1/log`, page by page, up to the
    /// high watermark that node knows), by index.
    ///
    /// # Errors
    /// A node is unreachable or answers with an error.
    pub async fn read_logs(&self) -> Result<Vec<(usize, Vec<TailEntry>)>, LocalClusterError> {
        let mut logs = Vec::new();
        for index in self.running() {
            logs.push((index, self.read_log(index).await?));
        }
        Ok(logs)
    }
}
