//! Per-producer idempotence state: the last [`HISTORY`] batches of each producer (sequence range
//! and first offset), so that a retried batch is answered with its original offsets instead of
//! being stored twice. Rebuilt on open from the segment snapshot plus the active segment.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// How many recent batches per producer can be answered as duplicates.
pub const HISTORY: usize = 32;

/// One stored batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSeqs {
    /// Sequence of the batch's first record.
    pub first_seq: u64,
    /// Sequence of the batch's last record.
    pub last_seq: u64,
    /// Offset of the batch's first record.
    pub first_offset: u64,
}

/// The recent batches of one producer, oldest first.
pub type History = VecDeque<BatchSeqs>;

/// Serialized form of the whole table (in `<base>.snapshot`).
pub type ProducerSnapshot = Vec<(String, History)>;

/// What to do with an incoming producer batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Not seen before: store it.
    New,
    /// Already stored: answer with these offsets.
    Duplicate {
        /// Offset of the record carrying the retried `seq`.
        first: u64,
        /// How many of the retried records were found stored.
        count: u32,
    },
    /// Older than the retained history.
    Stale {
        /// The producer's last stored sequence.
        last_seq: u64,
    },
}

/// The table of all producers.
#[derive(Debug, Clone, Default)]
pub struct Producers {
    /// Producer id -> recent batches.
    map: HashMap<String, History>,
}

impl Producers {
    /// Rebuild from a snapshot.
    pub fn from_snapshot(snap: ProducerSnapshot) -> Self {
        Producers {
            map: snap.into_iter().collect(),
        }
    }

    /// Snapshot for `<base>.snapshot`.
    pub fn snapshot(&self) -> ProducerSnapshot {
        let mut v: ProducerSnapshot = self.map.iter().map(|(k, h)| (k.clone(), h.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Last stored sequence of a producer.
    pub fn last_seq(&self, id: &str) -> Option<u64> {
        self.map.get(id).and_then(|h| h.back()).map(|b| b.last_seq)
    }

    /// Classify a batch of `count` records starting at `seq`. Sequences above the last stored one
    /// are new (gaps are accepted: a producer may skip numbers after a restart).
    pub fn check(&self, id: &str, seq: u64, count: u32) -> SeqCheck {
        let Some(h) = self.map.get(id) else {
            return SeqCheck::New;
        };
        let Some(last) = h.back() else {
            return SeqCheck::New;
        };
        if seq > last.last_seq {
            return SeqCheck::New;
        }
        for b in h.iter().rev() {
            if b.first_seq <= seq && seq <= b.last_seq {
                let covered = (b.last_seq - seq + 1).min(count as u64) as u32;
                return SeqCheck::Duplicate {
                    first: b.first_offset + (seq - b.first_seq),
                    count: covered,
                };
            }
        }
        SeqCheck::Stale {
            last_seq: last.last_seq,
        }
    }

    /// Store a batch; returns the producer's previous history for [`restore`](Self::restore).
    pub fn record(&mut self, id: &str, first_seq: u64, count: u32, first_offset: u64) -> Option<History> {
        let prior = self.map.get(id).cloned();
        let h = self.map.entry(id.to_owned()).or_default();
        h.push_back(BatchSeqs {
            first_seq,
            last_seq: first_seq + count as u64 - 1,
            first_offset,
        });
        while h.len() > HISTORY {
            h.pop_front();
        }
        prior
    }

    /// Undo a [`record`](Self::record) (when the write that carried it failed).
    pub fn restore(&mut self, id: &str, prior: Option<History>) {
        match prior {
            Some(h) => {
                self.map.insert(id.to_owned(), h);
            }
            None => {
                self.map.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries inside the history are duplicates with their original offsets; older ones are stale.
    #[test]
    fn duplicates_and_stale() {
        let mut p = Producers::default();
        for i in 0..40u64 {
            assert_eq!(p.check("a", i * 2, 2), SeqCheck::New);
            p.record("a", i * 2, 2, 100 + i * 2);
        }
        assert_eq!(p.last_seq("a"), Some(79));
        assert_eq!(p.check("a", 78, 2), SeqCheck::Duplicate { first: 178, count: 2 });
        assert_eq!(p.check("a", 79, 1), SeqCheck::Duplicate { first: 179, count: 1 });
        assert_eq!(p.check("a", 0, 2), SeqCheck::Stale { last_seq: 79 });
        assert_eq!(p.check("a", 80, 1), SeqCheck::New);
        assert_eq!(p.check("b", 0, 1), SeqCheck::New);
    }

    /// A recorded batch can be undone exactly (used when its write fails).
    #[test]
    fn restore_undoes_record() {
        let mut p = Producers::default();
        p.record("a", 0, 3, 0);
        p.record("a", 3, 1, 3);
        assert_eq!(p.last_seq("a"), Some(3));
        let prior = p.record("a", 4, 1, 4);
        p.restore("a", prior);
        assert_eq!(p.last_seq("a"), Some(3));
    }
}
