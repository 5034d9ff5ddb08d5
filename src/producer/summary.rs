//! What the producer reports: live counters ([`Stats`]), the [`Summary`] they add up to (the
//! one line printed at exit, and what the demo watches), and each [`Ack`] so a caller can later
//! check that every acknowledged message is stored exactly once.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::watch;

/// The producer's counters, in messages unless said otherwise.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// The `X-Producer-Id` this run used.
    pub producer_id: String,
    /// Messages taken from the source (each is acknowledged, failed, or unacknowledged).
    pub sent: u64,
    /// Messages the leader acknowledged as stored (including those reported as duplicates).
    pub acknowledged: u64,
    /// Requests resent after a retryable failure (503, connection error, timeout, 5xx).
    pub retried: u64,
    /// Acknowledged messages the leader reported as already stored by an earlier attempt.
    pub duplicates: u64,
    /// Messages given up on: rejected as bad input (400/413/other 4xx), or still unacknowledged
    /// when `--retry-max-elapsed` ran out.
    pub failed: u64,
    /// Empty input lines, not sent.
    pub skipped: u64,
    /// Batches (requests with distinct sequence numbers) acknowledged.
    pub batches: u64,
    /// Time since the producer started, in milliseconds.
    pub elapsed_ms: u64,
    /// Acknowledged messages per second over `elapsed_ms`.
    pub rate: f64,
    /// Base URL that acknowledged the latest batch.
    pub leader: Option<String>,
}

impl Summary {
    /// Messages with no outcome: neither acknowledged nor failed (the drain timeout ran out).
    pub fn unacknowledged(&self) -> u64 {
        self.sent.saturating_sub(self.acknowledged + self.failed)
    }

    /// Every message sent was acknowledged: the condition for exit status 0.
    pub fn all_acknowledged(&self) -> bool {
        self.acknowledged >= self.sent && self.failed == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} acknowledged={} retried={} duplicates={} failed={} unacknowledged={} skipped={} \
             batches={} elapsed={:.3}s rate={:.1}/s producer_id={}",
            self.sent,
            self.acknowledged,
            self.retried,
            self.duplicates,
            self.failed,
            self.unacknowledged(),
            self.skipped,
            self.batches,
            self.elapsed_ms as f64 / 1000.0,
            self.rate,
            self.producer_id,
        )
    }
}

/// One acknowledgement (of a batch, or of part of one): enough to find its messages in the log
/// and check them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ack {
    /// Sequence number of the batch's first message (message `i` is `seq + i`).
    pub seq: u64,
    /// Messages this answer acknowledges (`seq .. seq + count`): all of the batch, or — when the
    /// node had stored only part of it — that part, the rest being acknowledged separately.
    pub count: u64,
    /// Offset of the first stored message.
    pub first_offset: u64,
    /// Offset of the last stored message.
    pub last_offset: u64,
    /// The leader's term when it stored the batch.
    pub term: u64,
    /// The node said an earlier attempt had already stored it (offsets are the original ones).
    pub duplicate: bool,
    /// Base URL of the node that acknowledged.
    pub leader: String,
}

/// Live counters shared by the source, the senders and the run loop. Counters are atomics so the
/// per-message path takes no lock; `Stats::publish` folds them into a [`Summary`] for watchers.
#[derive(Debug)]
pub struct Stats {
    producer_id: String,
    started: Instant,
    sent: AtomicU64,
    acknowledged: AtomicU64,
    retried: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    batches: AtomicU64,
    /// Latest acknowledging leader (changes once per batch at most, so a lock is fine).
    leader: std::sync::Mutex<Option<String>>,
    /// Where progress is published, if anyone watches.
    progress: Option<watch::Sender<Summary>>,
}

impl Stats {
    /// Zeroed counters for `producer_id`, publishing to `progress` if given.
    pub fn new(producer_id: String, progress: Option<watch::Sender<Summary>>) -> Self {
        Self {
            producer_id,
            started: Instant::now(),
            sent: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            leader: std::sync::Mutex::new(None),
            progress,
        }
    }

    pub(crate) fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_skipped(&self, n: u64) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
        self.publish();
    }

    /// Counts an acknowledged batch; `true` when it came from another node than the last one.
    pub(crate) fn add_ack(&self, ack: &Ack) -> bool {
        self.acknowledged.fetch_add(ack.count, Ordering::Relaxed);
        if ack.duplicate {
            self.duplicates.fetch_add(ack.count, Ordering::Relaxed);
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut changed = false;
        if let Ok(mut leader) = self.leader.lock() {
            if leader.as_deref() != Some(ack.leader.as_str()) {
                *leader = Some(ack.leader.clone());
                changed = true;
            }
        }
        self.publish();
        changed
    }

    /// The counters now.
    pub fn snapshot(&self) -> Summary {
        let elapsed = self.started.elapsed();
        let acknowledged = self.acknowledged.load(Ordering::Relaxed);
        Summary {
            producer_id: self.producer_id.clone(),
            sent: self.sent.load(Ordering::Relaxed),
            acknowledged,
            retried: self.retried.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            rate: rate(acknowledged, elapsed),
            leader: self.leader.lock().ok().and_then(|l| l.clone()),
        }
    }

    /// Sends the current snapshot to the progress watcher, if any.
    pub(crate) fn publish(&self) {
        if let Some(progress) = &self.progress {
            progress.send_replace(self.snapshot());
        }
    }
}

/// Messages per second, 0 before any time has passed.
fn rate(messages: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        messages as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Duplicates count as acknowledged; a failure or a missing outcome breaks "all acknowledged".
    #[test]
    fn accounting() {
        let stats = Stats::new("p".into(), None);
        stats.add_sent(10);
        let ack = |seq, count, duplicate| Ack {
            seq,
            count,
            first_offset: 0,
            last_offset: count - 1,
            term: 1,
            duplicate,
            leader: "http://l".into(),
        };
        stats.add_ack(&ack(0, 6, false));
        stats.add_ack(&ack(6, 4, true));
        let s = stats.snapshot();
        assert_eq!((s.acknowledged, s.duplicates, s.batches), (10, 4, 2));
        assert!(s.all_acknowledged());
        stats.add_sent(3);
        stats.add_failed(1);
        let s = stats.snapshot();
        assert_eq!(s.unacknowledged(), 2);
        assert!(!s.all_acknowledged());
        let line = s.to_string();
        assert!(
            line.starts_with("sent=13 acknowledged=10 retried=0 duplicates=4 failed=1 unacknowledged=2"),
            "{line}"
        );
    }
}
