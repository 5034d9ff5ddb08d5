//! Checks, after a run, that every message a producer saw acknowledged is stored exactly once:
//! at the offsets and term of its acknowledgement, in the log of the node that acknowledged it,
//! and nowhere else except as an earlier, unacknowledged attempt on a leader that failed before
//! answering (an older term; such copies disappear once logs are replicated).

use std::{collections::BTreeMap, path::Path};

use serde::Serialize;

use crate::{
    log::{LogConfig, LogError, LogStore, Record},
    producer::Ack,
};

/// One stored copy of a producer's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// The node whose log holds it.
    pub node: String,
    /// Its offset there.
    pub offset: u64,
    /// The term it was written in.
    pub term: u64,
}

/// The verdict.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Verification {
    /// Acknowledged messages checked.
    pub acknowledged: u64,
    /// Acknowledged messages found at their acknowledged position.
    pub verified: u64,
    /// Acknowledged messages missing or different at their acknowledged position.
    pub missing: Vec<String>,
    /// Acknowledged messages stored more than once as acknowledged copies, or again after they
    /// were acknowledged.
    pub duplicated: Vec<String>,
    /// Extra copies from attempts a failed leader never acknowledged (older term).
    pub unacknowledged_attempts: u64,
}

impl Verification {
    /// True when every acknowledged message is stored exactly once.
    pub fn holds(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty() && self.verified == self.acknowledged
    }
}

/// Compares the acknowledgements of `producer_id` with the copies found in the logs, given as
/// `(node name, node base URL, records)`.
pub fn verify(producer_id: &str, acks: &[Ack], logs: &[(String, String, Vec<Record>)]) -> Verification {
    // Every stored copy of each of this producer's sequence numbers.
    let mut copies: BTreeMap<u64, Vec<Copy>> = BTreeMap::new();
    for (node, _, records) in logs {
        for record in records {
            if let Some(p) = record.producer.as_ref().filter(|p| p.producer_id == producer_id) {
                copies.entry(p.seq).or_default().push(Copy {
                    node: node.clone(),
                    offset: record.offset,
                    term: record.term,
                });
            }
        }
    }
    let node_of_url: BTreeMap<&str, &str> = logs
        .iter()
        .map(|(name, url, _)| (url.trim_end_matches('/'), name.as_str()))
        .collect();
    let mut result = Verification::default();
    for ack in acks {
        let node = node_of_url
            .get(ack.leader.trim_end_matches('/'))
            .copied()
            .unwrap_or("?");
        for i in 0..ack.count {
            let seq = ack.seq + i;
            result.acknowledged += 1;
            let found = copies.get(&seq).map(Vec::as_slice).unwrap_or_default();
            let offset = ack.first_offset + i;
            // A duplicate answer names the offsets of the original copy, written in an earlier
            // term of the same node; a fresh answer names the term it was written in.
            let stored = found
                .iter()
                .find(|c| c.node == node && c.offset == offset && (ack.duplicate || c.term == ack.term));
            let Some(expected) = stored.cloned() else {
                result.missing.push(format!(
                    "seq {seq}: expected at {node} offset {offset} term {}",
                    ack.term
                ));
                continue;
            };
            result.verified += 1;
            for copy in found.iter().filter(|c| **c != expected) {
                if copy.term < expected.term {
                    result.unacknowledged_attempts += 1;
                } else {
                    result.duplicated.push(format!(
                        "seq {seq}: acknowledged at {node} offset {} term {}, also at {} offset {} term {}",
                        expected.offset, expected.term, copy.node, copy.offset, copy.term
                    ));
                }
            }
        }
    }
    result
}

/// Reads a node's whole log from its data directory (the node must be stopped).
///
/// # Errors
/// The log cannot be opened or read.
pub async fn read_all(dir: &Path) -> Result<Vec<Record>, LogError> {
    let store = LogStore::open(LogConfig::new(dir)).await?;
    let mut records = Vec::new();
    let mut from = store.start_offset();
    loop {
        let chunk = store.read(from, 10_000, 64 << 20).await?;
        let Some(last) = chunk.last() else { break };
        from = last.offset + 1;
        records.extend(chunk);
    }
    store.close().await?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::log::ProducerSeq;

    fn rec(offset: u64, term: u64, seq: u64) -> Record {
        Record {
            offset,
            term,
            timestamp_ms: 0,
            producer: Some(ProducerSeq {
                producer_id: "p".into(),
                seq,
            }),
            payload: Bytes::from_static(b"m"),
        }
    }

    fn ack(seq: u64, count: u64, first: u64, term: u64, leader: &str) -> Ack {
        Ack {
            seq,
            count,
            first_offset: first,
            last_offset: first + count - 1,
            term,
            duplicate: false,
            leader: leader.into(),
        }
    }

    /// Acknowledged copies verify; an older-term unacknowledged attempt elsewhere is allowed and
    /// counted; a missing or repeated acknowledged message fails.
    #[test]
    fn verdicts() {
        let logs = vec![
            (
                "a".to_string(),
                "http://a".to_string(),
                vec![rec(0, 1, 0), rec(1, 1, 1), rec(2, 1, 2)],
            ),
            (
                "b".to_string(),
                "http://b".to_string(),
                vec![rec(0, 2, 2), rec(1, 2, 3)],
            ),
        ];
        let good = verify(
            "p",
            &[ack(0, 2, 0, 1, "http://a"), ack(2, 2, 0, 2, "http://b")],
            &logs,
        );
        assert!(good.holds(), "{good:?}");
        assert_eq!((good.verified, good.unacknowledged_attempts), (4, 1));

        let missing = verify("p", &[ack(5, 1, 9, 2, "http://b")], &logs);
        assert!(!missing.holds());
        assert_eq!(missing.missing.len(), 1);

        // seq 2 acknowledged by a (term 1) but stored again by b in a later term: a duplicate.
        let dup = verify("p", &[ack(2, 1, 2, 1, "http://a")], &logs);
        assert!(!dup.holds());
        assert_eq!(dup.duplicated.len(), 1);
    }
}
