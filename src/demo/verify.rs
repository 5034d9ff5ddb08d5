//! Checks, after a run, that every message a producer saw acknowledged is stored exactly once in
//! every node's log, at the offset of its acknowledgement (and in the term it names, unless the
//! answer was a duplicate's, which names the original offset): replication keeps every node's
//! log a copy of the leader's, so a message missing from one node, stored at another offset, or
//! stored twice anywhere is a failure.

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
    let mut result = Verification::default();
    let mut acknowledged = std::collections::BTreeSet::new();
    for ack in acks {
        for i in 0..ack.count {
            let seq = ack.seq + i;
            if !acknowledged.insert(seq) {
                // Answered twice (a retry answered as a duplicate): checked once.
                continue;
            }
            result.acknowledged += 1;
            let offset = ack.first_offset + i;
            let found = copies.get(&seq).map(Vec::as_slice).unwrap_or_default();
            let mut ok = true;
            for (node, _, _) in logs {
                let here: Vec<&Copy> = found.iter().filter(|c| &c.node == node).collect();
                match here.as_slice() {
                    [c] if c.offset == offset && (ack.duplicate || c.term == ack.term) => {}
                    [] => {
                        ok = false;
                        result.missing.push(format!(
                            "seq {seq}: not in {node}'s log (acknowledged at offset {offset}, term {})",
                            ack.term
                        ));
                    }
                    [c] => {
                        ok = false;
                        result.missing.push(format!(
                            "seq {seq}: {node} holds it at offset {} term {}, acknowledged at offset {offset} term {}",
                            c.offset, c.term, ack.term
                        ));
                    }
                    more => {
                        ok = false;
                        let at: Vec<String> = more
                            .iter()
                            .map(|c| format!("{} (term {})", c.offset, c.term))
                            .collect();
                        result.duplicated.push(format!(
                            "seq {seq}: {node} holds it {} times, at {}",
                            more.len(),
                            at.join(", ")
                        ));
                    }
                }
            }
            if ok {
                result.verified += 1;
            }
        }
    }
    result.unacknowledged_attempts = copies
        .iter()
        .filter(|(seq, _)| !acknowledged.contains(seq))
        .map(|(_, c)| c.len() as u64)
        .sum();
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

    fn node(name: &str, records: Vec<Record>) -> (String, String, Vec<Record>) {
        (name.to_string(), format!("http://{name}"), records)
    }

    /// Acknowledged messages held once by every node at their offsets verify; a node missing
    /// one, holding it elsewhere or twice fails; a duplicate answer may name an older term.
    #[test]
    fn verdicts() {
        let full = || vec![rec(0, 1, 0), rec(1, 1, 1), rec(2, 2, 2)];
        let acks = [ack(0, 2, 0, 1, "http://a"), ack(2, 1, 2, 2, "http://b")];
        let good = verify(
            "p",
            &acks,
            &[node("a", full()), node("b", full()), node("c", full())],
        );
        assert!(good.holds(), "{good:?}");
        assert_eq!(
            (good.acknowledged, good.verified, good.unacknowledged_attempts),
            (3, 3, 0)
        );

        // A retry answered as a duplicate names the original offset (and its own term).
        let mut retry = ack(1, 1, 1, 3, "http://b");
        retry.duplicate = true;
        let with_retry = verify(
            "p",
            &[acks[0].clone(), acks[1].clone(), retry],
            &[node("a", full())],
        );
        assert!(with_retry.holds(), "{with_retry:?}");

        // c lacks seq 2: missing.
        let short = verify("p", &acks, &[node("a", full()), node("c", full()[..2].to_vec())]);
        assert!(!short.holds());
        assert_eq!(short.missing.len(), 1, "{short:?}");

        // b holds seq 1 at another offset: missing (not where it was acknowledged).
        let moved = vec![rec(0, 1, 0), rec(1, 1, 9), rec(2, 2, 2), rec(3, 2, 1)];
        let elsewhere = verify("p", &acks, &[node("a", full()), node("b", moved)]);
        assert_eq!(elsewhere.missing.len(), 1, "{elsewhere:?}");

        // b holds seq 2 twice: duplicated.
        let twice = vec![rec(0, 1, 0), rec(1, 1, 1), rec(2, 2, 2), rec(3, 2, 2)];
        let dup = verify("p", &acks, &[node("a", full()), node("b", twice)]);
        assert!(!dup.holds());
        assert_eq!(dup.duplicated.len(), 1, "{dup:?}");

        // A stored copy nobody acknowledged is counted, not a failure.
        let extra = vec![rec(0, 1, 0), rec(1, 1, 1), rec(2, 2, 2), rec(3, 2, 7)];
        let attempts = verify("p", &acks, &[node("a", extra)]);
        assert!(attempts.holds());
        assert_eq!(attempts.unacknowledged_attempts, 1);
    }
}
