//! Leader discovery through Consul: the election key's value names the leader, and a held lock
//! (a `Session` on the key) means that leader is current. Producers, `tail` and followers that
//! forward writes all follow the key with one blocking query, so they learn of a new leader as
//! soon as Consul does.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    consul::{ConsulClient, KvPair, Watcher},
    shutdown::CancellationToken,
};

/// The KV key whose lock is leadership, unless configured otherwise.
pub const DEFAULT_ELECTION_KEY: &str = "service/simpleloggers/leader";
/// The Consul service name nodes register under, unless configured otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "simpleloggers";

/// How long one blocking query on the election key may wait.
const WATCH_WAIT: Duration = Duration::from_secs(60);

/// The JSON value the leader stores under the election key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leader's node name.
    pub name: String,
    /// The address (`host:port`) others dial to reach its HTTP API.
    pub address: String,
    /// Where followers fetch from (`host:port`) when the leader serves the internal replication
    /// endpoint on its own listener (`--replication-listen`); absent: at `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_address: Option<String>,
    /// When it became leader (RFC 3339).
    pub since: String,
    /// The leader's term (from the term key), written by replicated electors. Records written
    /// before terms were kept in Consul lack it; then the lock's `LockIndex` stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

impl LeaderRecord {
    /// The leader's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// A current leader: the record plus its term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentLeader {
    /// What the leader wrote.
    pub record: LeaderRecord,
    /// The fencing term: the record's `term`, or the lock's `LockIndex` for a record without one.
    pub term: u64,
    /// The session holding the lock.
    pub session: String,
}

/// Reads the leader out of the election key: `None` when the key is absent, not held, or its
/// value is not a leader record (then nobody can be sent to).
pub fn leader_from_kv(pair: Option<&KvPair>) -> Option<CurrentLeader> {
    let pair = pair?;
    let session = pair.session.clone()?;
    let record: LeaderRecord = serde_json::from_slice(&pair.value).ok()?;
    Some(CurrentLeader {
        term: record.term.unwrap_or(pair.lock_index),
        record,
        session,
    })
}

/// Follows the election key and publishes the current leader. The channel starts at `None`
/// and changes only when the leader (or its absence) changes.
pub fn watch_leader(
    consul: ConsulClient,
    key: String,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<CurrentLeader>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut watcher = Watcher::new(WATCH_WAIT);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                next = watcher.next(|opts| {
                    let consul = consul.clone();
                    let key = key.clone();
                    async move { consul.kv_get(&key, &opts).await }
                }) => next,
            };
            match next {
                Ok(pair) => {
                    let leader = leader_from_kv(pair.as_ref());
                    tx.send_if_modified(|current| {
                        if *current == leader {
                            false
                        } else {
                            *current = leader;
                            true
                        }
                    });
                }
                Err(err) => tracing::debug!(%err, key, "leader watch failed; retrying"),
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(session: Option<&str>, value: &[u8]) -> KvPair {
        KvPair {
            key: "k".into(),
            value: value.to_vec(),
            session: session.map(str::to_owned),
            lock_index: 3,
            ..KvPair::default()
        }
    }

    /// Only a held key with a well-formed value names a leader.
    #[test]
    fn leader_needs_session_and_record() {
        let value = br#"{"name":"n1","address":"127.0.0.1:3000","since":"2026-01-01T00:00:00Z"}"#;
        let leader = leader_from_kv(Some(&pair(Some("s"), value))).unwrap();
        assert_eq!(leader.record.name, "n1");
        assert_eq!(leader.term, 3);
        assert_eq!(leader.record.url(), "http://127.0.0.1:3000");
        assert!(
            leader_from_kv(Some(&pair(None, value))).is_none(),
            "released lock: no leader"
        );
        assert!(leader_from_kv(Some(&pair(Some("s"), b"garbage"))).is_none());
        assert!(leader_from_kv(None).is_none());
    }

    /// A record with a term names it; one without (an older node) falls back to `LockIndex`, and
    /// the field is left out when absent so older readers see the record they know.
    #[test]
    fn term_from_record_or_lock_index() {
        let with = br#"{"name":"n1","address":"a:1","since":"t","term":9}"#;
        assert_eq!(leader_from_kv(Some(&pair(Some("s"), with))).unwrap().term, 9);
        let without = br#"{"name":"n1","address":"a:1","since":"t"}"#;
        let leader = leader_from_kv(Some(&pair(Some("s"), without))).unwrap();
        assert_eq!((leader.term, leader.record.term), (3, None));
        assert_eq!(
            serde_json::to_value(&leader.record).unwrap(),
            serde_json::json!({"name":"n1","address":"a:1","since":"t"})
        );
    }
}
