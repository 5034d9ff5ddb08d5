//! The in-sync replica set as Consul holds it (`<election key>/isr`), the term key
//! (`<election key>/term`) and the replicas' reports (`<election key>/reports/<name>`): their
//! values, and the transactions that change them. Only the leader changes the ISR, and only
//! through a transaction that checks its session still holds the election key (`docs/replication.md`).
//!
//! Interface agreed for the parallel branches; `elect-term` implements the Consul side.

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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
    Consul(#[from] crate::consul::ConsulError),
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

/// Follows the ISR key and changes it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct IsrHandle {
    rx: watch::Receiver<Option<IsrRecord>>,
}

impl IsrHandle {
    /// A watch of the ISR key (`None`: no key).
    pub fn subscribe(&self) -> watch::Receiver<Option<IsrRecord>> {
        self.rx.clone()
    }

    /// The ISR key as last read.
    pub fn current(&self) -> Option<IsrRecord> {
        self.rx.borrow().clone()
    }

    /// Replaces the ISR with `state`, in one transaction that checks that `session` holds the
    /// election key and that the ISR key is still at `expected_index`. Returns the key as written.
    ///
    /// # Errors
    /// [`IsrError::NotLeader`], [`IsrError::Conflict`], [`IsrError::Invalid`] (empty, or without
    /// `state.leader`), [`IsrError::Consul`].
    pub async fn change(
        &self,
        session: &str,
        expected_index: u64,
        state: IsrState,
    ) -> Result<IsrRecord, IsrError> {
        let _ = (session, expected_index, state);
        todo!("elect-term: IsrHandle::change")
    }
}
