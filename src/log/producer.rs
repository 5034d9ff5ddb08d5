//! Per-producer idempotence state and its decisions: the last [`PRODUCER_WINDOW`] batches of each
//! producer (sequence range, first offset, time), which answer a retried batch with its original
//! offsets, refuse a batch that would leave a gap ([`SeqCheck::OutOfOrder`], retriable), and are
//! forgotten once the producer has been idle longer than the expiry. Rebuilt on open from the
//! per-segment deltas (`<base>.snapshot`) plus the active segment; see `docs/producer.md`.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{error::LogError, record::ProducerSeq};

/// Most batches a producer may have awaiting an answer at once, and how many recent batches the
/// store remembers per producer. The two must agree: a producer never sends a batch more than
/// `PRODUCER_WINDOW - 1` batches after its oldest unanswered one, so at most that many batches
/// can be stored after it, and a retry of it is still in the history (answered as a duplicate).
pub const PRODUCER_WINDOW: usize = 8;

/// How long a producer may stay idle before its state is forgotten (like Kafka's
/// `transactional.id.expiration.ms` / `producer.id.expiration.ms`, 7 days).
pub const DEFAULT_PRODUCER_ID_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Expired producers are dropped from memory at most this often (they are ignored at once).
const PURGE_EVERY_MS: u64 = 60_000;

/// Milliseconds since the Unix epoch (0 if the clock is before it), the time base of expiry.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One stored batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSeqs {
    /// Sequence of the batch's first record.
    pub first_seq: u64,
    /// Sequence of the batch's last record.
    pub last_seq: u64,
    /// Offset of the batch's first record.
    pub first_offset: u64,
    /// When it was stored (ms since the Unix epoch): the producer's last activity, for expiry.
    /// 0 in snapshots written before expiry existed (taken as "now" when loaded).
    #[serde(default)]
    pub timestamp_ms: u64,
}

/// The recent batches of one producer, oldest first.
pub type History = VecDeque<BatchSeqs>;

/// Serialized form of (part of) the table, in `<base>.snapshot`.
pub type ProducerSnapshot = Vec<(String, History)>;

/// The producer fields of an idempotent append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerBatch {
    /// The producer (`X-Producer-Id`).
    pub producer_id: String,
    /// Sequence of the batch's first record (`X-Producer-Seq`); record `i` carries `seq + i`.
    pub seq: u64,
    /// `X-Producer-Pending-From`: the producer will never send a sequence below this again (all
    /// are acknowledged or given up), so the store may continue here even if it never saw the
    /// ones in between (they went to another leader). `None`: only `last + 1` continues.
    pub pending_from: Option<u64>,
}

impl From<ProducerSeq> for ProducerBatch {
    fn from(p: ProducerSeq) -> Self {
        ProducerBatch {
            producer_id: p.producer_id,
            seq: p.seq,
            pending_from: None,
        }
    }
}

impl ProducerBatch {
    /// Checks the fields for a batch of `count` records and returns the batch's last sequence.
    ///
    /// # Errors
    /// [`LogError::ProducerIdTooLong`] (the format stores the length in 16 bits);
    /// [`LogError::SequenceOverflow`] when `seq + count - 1` does not fit in a `u64`.
    pub fn validate(&self, count: usize) -> Result<u64, LogError> {
        if self.producer_id.len() > u16::MAX as usize {
            return Err(LogError::ProducerIdTooLong {
                len: self.producer_id.len(),
            });
        }
        last_seq(self.seq, count)
    }
}

/// The last sequence of `count` records numbered from `seq`.
///
/// # Errors
/// [`LogError::SequenceOverflow`] when it does not fit in a `u64` (or `count` is 0).
pub fn last_seq(seq: u64, count: usize) -> Result<u64, LogError> {
    u64::try_from(count)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|n| seq.checked_add(n))
        .ok_or(LogError::SequenceOverflow { seq, count })
}

/// What to do with an incoming producer batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The next batch: store it.
    New,
    /// Already stored: answer with these offsets.
    Duplicate {
        /// Offset of the record carrying the retried `seq`.
        first: u64,
        /// How many of the retried records were found stored (may be fewer than sent).
        count: u32,
    },
    /// It would leave a gap: the batch starting at `expected` must come first. Retriable.
    OutOfOrder {
        /// The sequence the store accepts next from this producer.
        expected: u64,
    },
    /// At or below the last stored sequence but no longer in the history: never stored again.
    Stale {
        /// The producer's last stored sequence.
        last_seq: u64,
    },
}

/// What the store's writer does with a producer batch that is not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Store it.
    New,
    /// Answer these original offsets; store nothing.
    Duplicate {
        /// Offset of the record carrying the retried `seq`.
        first: u64,
        /// How many of the retried records were found stored.
        count: u32,
    },
}

/// The table of all producers.
#[derive(Debug, Clone)]
pub struct Producers {
    /// Producer id -> recent batches.
    map: HashMap<String, History>,
    /// Idle time after which a producer is forgotten, in ms.
    expiry_ms: u64,
    /// When expired producers were last dropped from `map`.
    last_purge_ms: u64,
}

impl Default for Producers {
    fn default() -> Self {
        Producers::new(DEFAULT_PRODUCER_ID_EXPIRY)
    }
}

impl Producers {
    /// An empty table forgetting producers idle longer than `expiry`.
    pub fn new(expiry: Duration) -> Self {
        Producers {
            map: HashMap::new(),
            expiry_ms: u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX),
            last_purge_ms: 0,
        }
    }

    /// Applies a snapshot (a delta or a whole table): each producer in it takes the history it
    /// names, others keep theirs. Histories are cut to the window; unknown times become `now_ms`.
    pub fn merge(&mut self, snapshot: ProducerSnapshot, now_ms: u64) {
        for (id, mut history) in snapshot {
            while history.len() > PRODUCER_WINDOW {
                history.pop_front();
            }
            for b in history.iter_mut().filter(|b| b.timestamp_ms == 0) {
                b.timestamp_ms = now_ms;
            }
            if history.is_empty() {
                self.map.remove(&id);
            } else {
                self.map.insert(id, history);
            }
        }
    }

    /// The producers whose newest batch starts at or after `offset` (those a segment starting
    /// there changed), sorted by id: the delta written when that segment is sealed.
    pub fn changed_since(&self, offset: u64) -> ProducerSnapshot {
        let mut v: ProducerSnapshot = self
            .map
            .iter()
            .filter(|(_, h)| h.back().is_some_and(|b| b.first_offset >= offset))
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Producers in memory (expired ones included until the next purge).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    fn expired(&self, history: &History, now_ms: u64) -> bool {
        history
            .back()
            .is_none_or(|b| now_ms.saturating_sub(b.timestamp_ms) > self.expiry_ms)
    }

    /// The producer's history, unless it is unknown or has expired.
    fn live(&self, id: &str, now_ms: u64) -> Option<&History> {
        self.map.get(id).filter(|h| !self.expired(h, now_ms))
    }

    /// Last stored sequence of a producer that has not expired.
    pub fn last_seq(&self, id: &str, now_ms: u64) -> Option<u64> {
        self.live(id, now_ms).and_then(|h| h.back()).map(|b| b.last_seq)
    }

    /// Classifies a batch of `count` records starting at `seq`, sent while the producer's oldest
    /// unanswered sequence was `pending_from`:
    /// - inside a remembered batch: [`SeqCheck::Duplicate`] with the original offsets;
    /// - at the expected sequence — `last + 1`, or `pending_from` when higher (the sequences in
    ///   between were settled elsewhere), or anything for an unknown producer without
    ///   `pending_from` — [`SeqCheck::New`];
    /// - above it: [`SeqCheck::OutOfOrder`]; below it: [`SeqCheck::Stale`].
    pub fn check(&self, id: &str, seq: u64, count: u32, pending_from: Option<u64>, now_ms: u64) -> SeqCheck {
        // A producer's own batch is pending, so a claim above `seq` is invalid: ignore it.
        let pending_from = pending_from.filter(|&p| p <= seq);
        let Some(last) = self.live(id, now_ms).and_then(|h| h.back()) else {
            return match pending_from {
                Some(expected) if expected < seq => SeqCheck::OutOfOrder { expected },
                _ => SeqCheck::New,
            };
        };
        if let Some(h) = self.map.get(id) {
            for b in h.iter().rev() {
                if b.first_seq <= seq && seq <= b.last_seq {
                    let covered = (b.last_seq - seq).saturating_add(1).min(u64::from(count));
                    return SeqCheck::Duplicate {
                        first: b.first_offset + (seq - b.first_seq),
                        count: u32::try_from(covered).unwrap_or(count),
                    };
                }
            }
        }
        let Some(next) = last.last_seq.checked_add(1) else {
            return SeqCheck::Stale {
                last_seq: last.last_seq,
            };
        };
        let expected = pending_from.map_or(next, |p| p.max(next));
        match seq.cmp(&expected) {
            std::cmp::Ordering::Equal => SeqCheck::New,
            std::cmp::Ordering::Greater => SeqCheck::OutOfOrder { expected },
            std::cmp::Ordering::Less => SeqCheck::Stale {
                last_seq: last.last_seq,
            },
        }
    }

    /// [`check`](Self::check) for the store's writer: what to do with the batch of `count`
    /// records, or the refusal to answer.
    ///
    /// # Errors
    /// [`LogError::OutOfOrderSequence`] (a gap, retriable), [`LogError::StaleSequence`].
    pub fn admit(&self, p: &ProducerBatch, count: u32, now_ms: u64) -> Result<Admit, LogError> {
        match self.check(&p.producer_id, p.seq, count, p.pending_from, now_ms) {
            SeqCheck::New => Ok(Admit::New),
            SeqCheck::Duplicate { first, count } => Ok(Admit::Duplicate { first, count }),
            SeqCheck::OutOfOrder { expected } => Err(LogError::OutOfOrderSequence {
                producer_id: p.producer_id.clone(),
                seq: p.seq,
                expected,
            }),
            SeqCheck::Stale { last_seq } => Err(LogError::StaleSequence {
                producer_id: p.producer_id.clone(),
                seq: p.seq,
                last_seq,
            }),
        }
    }

    /// Stores a batch (stored at `now_ms`); returns the producer's previous history for
    /// [`restore`](Self::restore). Drops expired producers at most once a minute.
    pub fn record(
        &mut self,
        id: &str,
        first_seq: u64,
        count: u32,
        first_offset: u64,
        now_ms: u64,
    ) -> Option<History> {
        if now_ms.saturating_sub(self.last_purge_ms) >= PURGE_EVERY_MS {
            self.purge(now_ms);
        }
        let prior = self.map.get(id).cloned();
        let h = self.map.entry(id.to_owned()).or_default();
        h.push_back(BatchSeqs {
            first_seq,
            last_seq: first_seq.saturating_add(u64::from(count.saturating_sub(1))),
            first_offset,
            timestamp_ms: now_ms,
        });
        while h.len() > PRODUCER_WINDOW {
            h.pop_front();
        }
        prior
    }

    /// Undoes a [`record`](Self::record) (when the write that carried it failed).
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

    /// Rolls the table back to a log truncated at `from`: every producer with a batch at or past
    /// `from` takes its history from `rebuilt` (the table rebuilt from the kept log: its window as
    /// of `from`, including batches the dropped ones had pushed out of the window, and the kept
    /// prefix of a cut batch), or is removed when the kept log has none; the others are unchanged.
    pub fn roll_back(&mut self, from: u64, rebuilt: &Producers) {
        let affected: Vec<String> = self
            .map
            .iter()
            .filter(|(_, h)| {
                h.back()
                    .is_some_and(|b| b.first_offset.saturating_add(b.last_seq - b.first_seq) >= from)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in affected {
            match rebuilt.map.get(&id) {
                Some(h) => {
                    self.map.insert(id, h.clone());
                }
                None => {
                    self.map.remove(&id);
                }
            }
        }
    }

    /// Every producer's history, sorted by id (tests compare tables with it).
    #[cfg(test)]
    pub fn histories(&self) -> Vec<(String, History)> {
        let mut v: Vec<_> = self.map.iter().map(|(k, h)| (k.clone(), h.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Forgets every producer idle longer than the expiry; returns how many.
    pub fn purge(&mut self, now_ms: u64) -> usize {
        self.last_purge_ms = now_ms;
        let before = self.map.len();
        let expiry_ms = self.expiry_ms;
        self.map.retain(|_, h| {
            h.back()
                .is_some_and(|b| now_ms.saturating_sub(b.timestamp_ms) <= expiry_ms)
        });
        before - self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn table() -> Producers {
        Producers::new(Duration::from_secs(60))
    }

    /// Retries inside the window are duplicates with their original offsets; a batch older than
    /// the window is stale; the next sequence is new.
    #[test]
    fn duplicates_and_stale() {
        let mut p = table();
        for i in 0..40u64 {
            assert_eq!(p.check("a", i * 2, 2, None, NOW), SeqCheck::New);
            p.record("a", i * 2, 2, 100 + i * 2, NOW);
        }
        assert_eq!(p.last_seq("a", NOW), Some(79));
        assert_eq!(
            p.check("a", 78, 2, None, NOW),
            SeqCheck::Duplicate { first: 178, count: 2 }
        );
        assert_eq!(
            p.check("a", 79, 1, None, NOW),
            SeqCheck::Duplicate { first: 179, count: 1 }
        );
        let oldest_kept = 80 - 2 * PRODUCER_WINDOW as u64;
        assert!(matches!(
            p.check("a", oldest_kept, 2, None, NOW),
            SeqCheck::Duplicate { .. }
        ));
        assert_eq!(
            p.check("a", oldest_kept - 2, 2, None, NOW),
            SeqCheck::Stale { last_seq: 79 }
        );
        assert_eq!(p.check("a", 80, 1, None, NOW), SeqCheck::New);
        assert_eq!(p.check("b", 0, 1, None, NOW), SeqCheck::New);
    }

    /// A batch after a gap is out of order (naming the expected sequence) until the gap is filled
    /// or the producer says the missing sequences are settled (`pending_from`).
    #[test]
    fn gaps_are_out_of_order() {
        let mut p = table();
        p.record("a", 0, 10, 0, NOW);
        assert_eq!(
            p.check("a", 20, 5, None, NOW),
            SeqCheck::OutOfOrder { expected: 10 }
        );
        assert_eq!(
            p.check("a", 20, 5, Some(10), NOW),
            SeqCheck::OutOfOrder { expected: 10 }
        );
        assert_eq!(
            p.check("a", 20, 5, Some(15), NOW),
            SeqCheck::OutOfOrder { expected: 15 }
        );
        assert_eq!(
            p.check("a", 20, 5, Some(20), NOW),
            SeqCheck::New,
            "10..19 settled elsewhere"
        );
        assert_eq!(p.check("a", 10, 10, Some(10), NOW), SeqCheck::New);
        // An unknown producer starts wherever its oldest pending batch is.
        assert_eq!(
            p.check("new", 7, 1, Some(3), NOW),
            SeqCheck::OutOfOrder { expected: 3 }
        );
        assert_eq!(p.check("new", 3, 1, Some(3), NOW), SeqCheck::New);
        assert_eq!(
            p.check("new", 7, 1, None, NOW),
            SeqCheck::New,
            "no claim: any start"
        );
        // A claim above the batch itself is impossible and ignored.
        assert_eq!(
            p.check("a", 30, 1, Some(99), NOW),
            SeqCheck::OutOfOrder { expected: 10 }
        );
    }

    /// A retry that overlaps a stored batch only partly is answered for the stored part only.
    #[test]
    fn partial_duplicates_report_what_is_stored() {
        let mut p = table();
        p.record("a", 0, 3, 40, NOW);
        assert_eq!(
            p.check("a", 0, 5, Some(0), NOW),
            SeqCheck::Duplicate { first: 40, count: 3 }
        );
        assert_eq!(
            p.check("a", 2, 5, Some(0), NOW),
            SeqCheck::Duplicate { first: 42, count: 1 }
        );
        assert_eq!(p.check("a", 3, 2, Some(0), NOW), SeqCheck::New);
    }

    /// Sequences at the top of the range never overflow: the last possible one is stored, and
    /// nothing can follow it.
    #[test]
    fn top_of_the_sequence_range() {
        assert_eq!(last_seq(u64::MAX, 1).ok(), Some(u64::MAX));
        assert_eq!(last_seq(u64::MAX - 1, 2).ok(), Some(u64::MAX));
        assert!(matches!(
            last_seq(u64::MAX, 2),
            Err(LogError::SequenceOverflow {
                seq: u64::MAX,
                count: 2
            })
        ));
        assert!(last_seq(5, 0).is_err());
        let mut p = table();
        p.record("a", u64::MAX, 1, 0, NOW);
        assert_eq!(
            p.check("a", u64::MAX, 1, None, NOW),
            SeqCheck::Duplicate { first: 0, count: 1 }
        );
        assert_eq!(
            p.check("a", 5, 1, None, NOW),
            SeqCheck::Stale { last_seq: u64::MAX }
        );
    }

    /// A producer idle longer than the expiry is forgotten: unknown to checks and lookups at
    /// once, and dropped from memory by the next purge; an active one is kept.
    #[test]
    fn idle_producers_expire() {
        let mut p = table();
        p.record("old", 0, 1, 0, NOW);
        p.record("busy", 0, 1, 1, NOW);
        let later = NOW + 60_000;
        assert_eq!(p.last_seq("old", later), Some(0), "exactly the expiry: kept");
        p.record("busy", 1, 1, 2, later);
        let much_later = later + 1;
        assert_eq!(p.last_seq("old", much_later), None);
        assert_eq!(
            p.check("old", 500, 1, None, much_later),
            SeqCheck::New,
            "forgotten: any start"
        );
        assert_eq!(p.last_seq("busy", much_later), Some(1));
        assert_eq!(p.purge(much_later), 1);
        assert_eq!(p.len(), 1);
        // Recording purges by itself, at most once a minute.
        let mut p = table();
        p.record("old", 0, 1, 0, NOW);
        p.record("new", 0, 1, 1, NOW + 30_000);
        assert_eq!(p.len(), 2, "not yet expired, and not purged again so soon");
        p.record("new", 1, 1, 2, NOW + 70_000);
        assert_eq!(p.len(), 1, "a minute after the last purge: `old` dropped");
    }

    /// The delta of a segment holds only the producers that stored a batch in it; merging the
    /// deltas in order rebuilds the table; unknown times (old snapshots) count as now.
    #[test]
    fn deltas_rebuild_the_table() {
        let mut p = table();
        for i in 0..50u64 {
            p.record(&format!("p{i}"), 0, 1, i, NOW);
        }
        // The next segment starts at offset 50; only p7 writes in it.
        p.record("p7", 1, 2, 50, NOW);
        p.record("p7", 3, 1, 52, NOW);
        let first = p.changed_since(0);
        let second = p.changed_since(50);
        assert_eq!(first.len(), 50);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].0, "p7");
        let mut rebuilt = table();
        rebuilt.merge(first.clone(), NOW);
        rebuilt.merge(second, NOW);
        for i in 0..50u64 {
            let id = format!("p{i}");
            assert_eq!(rebuilt.last_seq(&id, NOW), p.last_seq(&id, NOW), "{id}");
        }
        assert_eq!(rebuilt.last_seq("p7", NOW), Some(3));
        let mut old = first;
        for (_, h) in old.iter_mut() {
            h.iter_mut().for_each(|b| b.timestamp_ms = 0);
        }
        let mut loaded = table();
        loaded.merge(old, NOW + 1_000_000);
        assert_eq!(loaded.last_seq("p3", NOW + 1_000_000), Some(0));
    }

    /// A recorded batch can be undone exactly (used when its write fails).
    #[test]
    fn restore_undoes_record() {
        let mut p = table();
        p.record("a", 0, 3, 0, NOW);
        p.record("a", 3, 1, 3, NOW);
        assert_eq!(p.last_seq("a", NOW), Some(3));
        let prior = p.record("a", 4, 1, 4, NOW);
        p.restore("a", prior);
        assert_eq!(p.last_seq("a", NOW), Some(3));
    }
}
