//! The in-sync replica set as Consul holds it (`<election key>/isr`), the term key
//! (`<election key>/term`) and the replicas' reports (`<election key>/reports/<name>`): their
//! values, and the transactions that change them. Only the leader changes the ISR, and only
//! through a transaction that checks its session still holds the election key (`docs/replication.md`).
//!
//! [`IsrHandle`] follows the ISR key with blocking queries and changes it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    consul::{ConsulClient, ConsulError, KvPair, TxnOp, TxnOutcome, Watcher},
    shutdown::CancellationToken,
};

/// How long one blocking query on the ISR key may wait.
const WATCH_WAIT: Duration = Duration::from_secs(30);

/// The keys replication keeps next to the election key `E`: `E/term`, `E/isr`, `E/reports/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationKeys {
    /// `E`: the key whose lock is leadership.
    pub election: String,
    /// `E/term`: the last term handed out ([`TermRecord`]).
    pub term: String,
    /// `E/isr`: the in-sync replicas ([`IsrState`]).
    pub isr: String,
    /// `E/reports/`: the prefix of every node's [`Report`].
    pub reports: String,
}

impl ReplicationKeys {
    /// The keys under election key `election`.
    pub fn new(election: &str) -> Self {
        let election = election.trim_end_matches('/');
        Self {
            election: election.to_string(),
            term: format!("{election}/term"),
            isr: format!("{election}/isr"),
            reports: format!("{election}/reports/"),
        }
    }

    /// `E/reports/<name>`.
    pub fn report(&self, name: &str) -> String {
        format!("{}{name}", self.reports)
    }
}

/// The value of the term key: the last term handed out, and to whom. Written only with `cas`, in
/// the transaction that takes the lock, so each term is used by at most one leadership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermRecord {
    /// The term.
    pub term: u64,
    /// The node that took the lock in it.
    pub name: String,
    /// The session that holds (or held) the lock in it.
    pub session: String,
}

/// What a node tells the others about its log, under `E/reports/<name>`, held by its session (so
/// it counts only while the node is alive: a report whose key shows no session is ignored).
/// The election reads the reports only when there is no ISR key (cluster start, Consul lost its
/// state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Node name.
    pub name: String,
    /// The log's incarnation.
    pub incarnation: String,
    /// Term of the log's last record (`None`: the log never held one).
    pub last_term: Option<u64>,
    /// The durable log end.
    pub log_end: u64,
    /// The node's advertise address (`host:port`).
    pub address: String,
}

impl Report {
    /// Whether the log ever held a record (a trimmed log still has a log end above 0).
    pub fn has_records(&self) -> bool {
        self.log_end > 0 || self.last_term.is_some()
    }

    /// The member this report speaks for.
    pub fn member(&self) -> Member {
        Member {
            name: self.name.clone(),
            incarnation: self.incarnation.clone(),
        }
    }
}

/// One replica as the ISR names it: its node name and the incarnation of its log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Node name (`--name`).
    pub name: String,
    /// [`LogStore::incarnation`](crate::log::LogStore::incarnation): a new one after a restart or
    /// an empty volume, so a member that lost its state is not mistaken for the one the ISR names.
    pub incarnation: String,
}

/// The value of the ISR key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrState {
    /// Term of the leader that wrote it.
    pub term: u64,
    /// Name of the leader that wrote it (always a member).
    pub leader: String,
    /// The in-sync replicas, the leader included.
    pub members: Vec<Member>,
}

/// The ISR key as last read: its value and Consul's `ModifyIndex` (for `cas` / `check-index`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrRecord {
    /// The value.
    pub state: IsrState,
    /// The key's `ModifyIndex`.
    pub index: u64,
}

/// Why an ISR change was not made.
#[derive(Debug, thiserror::Error)]
pub enum IsrError {
    /// Our session no longer holds the election key: a deposed leader cannot change the ISR.
    #[error("this node no longer holds the election key; the ISR was not changed")]
    NotLeader,
    /// The key changed since it was read (index mismatch).
    #[error("the ISR key changed since it was read (index {expected})")]
    Conflict {
        /// The index the change was based on.
        expected: u64,
    },
    /// The new set is not allowed (empty, or without the leader).
    #[error("refused ISR change: {0}")]
    Invalid(String),
    /// Consul could not be asked.
    #[error(transparent)]
    Consul(#[from] ConsulError),
}

/// What the election needs to know about the local log to decide whether this node may contend.
pub trait LocalReplica: Send + Sync + 'static {
    /// [`LogStore::incarnation`](crate::log::LogStore::incarnation).
    fn incarnation(&self) -> String;
    /// The term of the log's last record (`None`: the log never held one).
    fn last_term(&self) -> Option<u64>;
    /// The durable log end.
    fn log_end(&self) -> u64;
}

impl LocalReplica for crate::log::LogStore {
    fn incarnation(&self) -> String {
        crate::log::LogStore::incarnation(self)
    }
    fn last_term(&self) -> Option<u64> {
        crate::log::LogStore::last_term(self).map(|(term, _)| term)
    }
    fn log_end(&self) -> u64 {
        self.durable_end()
    }
}

impl IsrState {
    /// Whether `member` (name and incarnation) is in the set.
    pub fn contains(&self, member: &Member) -> bool {
        self.members.contains(member)
    }

    /// Checks the rule every written ISR keeps: not empty, and the leader is a member.
    ///
    /// # Errors
    /// [`IsrError::Invalid`] naming what is wrong.
    pub fn validate(&self) -> Result<(), IsrError> {
        if self.members.is_empty() {
            return Err(IsrError::Invalid("the in-sync set may not be empty".into()));
        }
        if !self.members.iter().any(|m| m.name == self.leader) {
            return Err(IsrError::Invalid(format!(
                "the in-sync set must contain its leader {:?}",
                self.leader
            )));
        }
        Ok(())
    }
}

impl IsrRecord {
    /// Decodes the ISR key as read (`None` for an absent key).
    ///
    /// # Errors
    /// A value that is not an [`IsrState`].
    pub fn from_kv(pair: Option<&KvPair>) -> Result<Option<Self>, serde_json::Error> {
        pair.map(|p| {
            serde_json::from_slice(&p.value).map(|state| IsrRecord {
                state,
                index: p.modify_index,
            })
        })
        .transpose()
    }
}

/// The watched ISR key plus the Consul index it was seen at, so an older answer still in flight
/// never overwrites what [`IsrHandle::change`] just wrote.
struct Published {
    tx: watch::Sender<Option<IsrRecord>>,
    /// The Consul index of the last published value.
    seen: Mutex<u64>,
}

impl Published {
    /// Publishes `value` read at Consul index `at`, unless a fresher value was published (a
    /// committed [`IsrHandle::change`] racing a blocking query that answered before it). With
    /// `reset`, Consul's index went backwards (its state was lost and restarted): every index seen
    /// before is meaningless, so the value is published and the index restarts from `at`.
    fn publish_at(&self, value: Option<IsrRecord>, at: u64, reset: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if at < *seen && !reset {
            return;
        }
        *seen = at;
        self.tx.send_if_modified(|current| {
            if *current == value {
                false
            } else {
                *current = value;
                true
            }
        });
    }
}

/// Follows the ISR key and changes it. Cheap to clone.
#[derive(Clone)]
pub struct IsrHandle {
    published: Arc<Published>,
    rx: watch::Receiver<Option<IsrRecord>>,
    consul: ConsulClient,
    keys: ReplicationKeys,
}

impl std::fmt::Debug for IsrHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsrHandle")
            .field("keys", &self.keys)
            .field("current", &*self.rx.borrow())
            .finish()
    }
}

impl IsrHandle {
    /// Starts following `E/isr` (with `?consistent` blocking queries) until `stop` is cancelled.
    /// [`Elector::isr`](crate::election::Elector::isr) hands out the one its elector started.
    pub fn start(consul: ConsulClient, election_key: &str, stop: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(None);
        let handle = Self {
            published: Arc::new(Published {
                tx,
                seen: Mutex::new(0),
            }),
            rx,
            consul,
            keys: ReplicationKeys::new(election_key),
        };
        tokio::spawn(follow(handle.clone(), stop));
        handle
    }

    /// The replicas' reports that a session holds (the nodes Consul considers alive).
    ///
    /// # Errors
    /// Consul could not be asked.
    pub async fn live_reports(&self) -> Result<Vec<Report>, ConsulError> {
        crate::election::read_reports(&self.consul, &self.keys.election).await
    }

    /// The keys it works on.
    pub fn keys(&self) -> &ReplicationKeys {
        &self.keys
    }

    /// A watch of the ISR key (`None`: no key).
    pub fn subscribe(&self) -> watch::Receiver<Option<IsrRecord>> {
        self.rx.clone()
    }

    /// The ISR key as last read.
    pub fn current(&self) -> Option<IsrRecord> {
        self.rx.borrow().clone()
    }

    /// Replaces the ISR with `state`, in one transaction that checks that `session` holds the
    /// election key and that the ISR key is still at `expected_index`. Returns the key as written
    /// (and publishes it on [`subscribe`](Self::subscribe) at once).
    ///
    /// # Errors
    /// [`IsrError::NotLeader`] (the transaction's session check failed: a deposed leader cannot
    /// change the ISR), [`IsrError::Conflict`] (the key is no longer at `expected_index`),
    /// [`IsrError::Invalid`] (empty, or without `state.leader`; nothing is sent),
    /// [`IsrError::Consul`].
    pub async fn change(
        &self,
        session: &str,
        expected_index: u64,
        state: IsrState,
    ) -> Result<IsrRecord, IsrError> {
        state.validate()?;
        let value = serde_json::to_vec(&state).map_err(|e| IsrError::Invalid(e.to_string()))?;
        let ops = [
            TxnOp::CheckSession {
                key: self.keys.election.clone(),
                session: session.to_string(),
            },
            TxnOp::Cas {
                key: self.keys.isr.clone(),
                value,
                flags: 0,
                index: expected_index,
            },
        ];
        match self.consul.txn(&ops).await? {
            TxnOutcome::Committed(results) => {
                let index = results
                    .iter()
                    .find(|p| p.key == self.keys.isr)
                    .map(|p| p.modify_index)
                    .ok_or_else(|| ConsulError::Decode {
                        what: "txn",
                        message: "the committed ISR change returned no entry for the ISR key".into(),
                    })?;
                let record = IsrRecord { state, index };
                self.published.publish_at(Some(record.clone()), index, false);
                Ok(record)
            }
            TxnOutcome::RolledBack(errors) => {
                if errors.iter().any(|e| e.op_index == 0) {
                    Err(IsrError::NotLeader)
                } else {
                    Err(IsrError::Conflict {
                        expected: expected_index,
                    })
                }
            }
        }
    }
}

/// Follows the ISR key with blocking queries and publishes each change.
async fn follow(handle: IsrHandle, stop: CancellationToken) {
    let mut watcher = Watcher::new(WATCH_WAIT).consistent();
    // The watcher's index after its previous answer: one going backwards means Consul lost its
    // state (a restarted dev Consul, a cluster rebuilt without a snapshot).
    let mut previous = 0;
    loop {
        let fetched = tokio::select! {
            _ = stop.cancelled() => return,
            fetched = watcher.next(|opts| {
                let consul = handle.consul.clone().with_timeout(Duration::from_secs(5));
                let key = handle.keys.isr.clone();
                async move { consul.kv_get(&key, &opts).await }
            }) => fetched,
        };
        let at = watcher.index();
        let reset = at < previous;
        if reset {
            tracing::info!(
                from = previous,
                to = at,
                "Consul's index went backwards: following the ISR key afresh"
            );
        }
        match fetched {
            Ok(pair) => {
                previous = at;
                match IsrRecord::from_kv(pair.as_ref()) {
                    Ok(record) => handle.published.publish_at(record, at, reset),
                    Err(err) => {
                        tracing::warn!(%err, key = %handle.keys.isr, "the ISR key holds no ISR; treated as absent (and nobody may contend)");
                        handle.published.publish_at(None, at, reset);
                    }
                }
            }
            Err(err) => tracing::debug!(%err, "watch of the ISR key failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value read at a lower index than one already published is a stale answer and dropped,
    /// unless Consul's index went backwards (state loss): then it replaces the old value.
    #[test]
    fn published_values_follow_a_consul_reset() {
        let (tx, rx) = watch::channel(None);
        let published = Published {
            tx,
            seen: Mutex::new(0),
        };
        let record = |leader: &str, index| IsrRecord {
            state: IsrState {
                term: 1,
                leader: leader.into(),
                members: vec![member(leader)],
            },
            index,
        };
        published.publish_at(Some(record("n0", 34)), 34, false);
        published.publish_at(Some(record("n1", 5)), 5, false);
        assert_eq!(
            rx.borrow().as_ref().map(|r| r.state.leader.clone()),
            Some("n0".into())
        );
        published.publish_at(Some(record("n1", 5)), 5, true);
        assert_eq!(rx.borrow().as_ref().map(|r| r.index), Some(5));
        published.publish_at(Some(record("n2", 6)), 6, false);
        assert_eq!(rx.borrow().as_ref().map(|r| r.index), Some(6));
    }

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            incarnation: format!("inc-{name}"),
        }
    }

    /// An ISR must be non-empty and contain its leader (by name).
    #[test]
    fn validate_rules() {
        let ok = IsrState {
            term: 3,
            leader: "a".into(),
            members: vec![member("a"), member("b")],
        };
        assert!(ok.validate().is_ok());
        let empty = IsrState {
            members: vec![],
            ..ok.clone()
        };
        assert!(matches!(empty.validate(), Err(IsrError::Invalid(m)) if m.contains("empty")));
        let leaderless = IsrState {
            leader: "c".into(),
            ..ok.clone()
        };
        assert!(matches!(leaderless.validate(), Err(IsrError::Invalid(m)) if m.contains("\"c\"")));
    }

    /// The keys sit under the election key; the JSON shapes are the ones the spec names.
    #[test]
    fn keys_and_shapes() {
        let keys = ReplicationKeys::new("service/simpleloggers/leader");
        assert_eq!(keys.term, "service/simpleloggers/leader/term");
        assert_eq!(keys.isr, "service/simpleloggers/leader/isr");
        assert_eq!(keys.report("n1"), "service/simpleloggers/leader/reports/n1");
        let report = Report {
            name: "n1".into(),
            incarnation: "u".into(),
            last_term: None,
            log_end: 0,
            address: "127.0.0.1:1".into(),
        };
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({"name":"n1","incarnation":"u","last_term":null,"log_end":0,"address":"127.0.0.1:1"})
        );
        assert!(!report.has_records());
        assert!(Report {
            log_end: 4,
            ..report.clone()
        }
        .has_records());
        let term = TermRecord {
            term: 7,
            name: "n1".into(),
            session: "s".into(),
        };
        assert_eq!(
            serde_json::to_value(&term).unwrap(),
            serde_json::json!({"term":7,"name":"n1","session":"s"})
        );
    }
}
