//! Batch assembly and sequence numbers: messages from the source are encoded as NDJSON lines and
//! grouped into [`Batch`]es of at most `batch_max` messages (and about `batch_max_bytes`), waiting
//! up to `linger` to fill one. Each batch gets the sequence number of its first message; line `i`
//! is `seq + i`, so a resent batch is recognised by the node and never stored twice.

use std::time::Duration;

use bytes::Bytes;
use tokio::{sync::mpsc, time::Instant};

/// One request's worth of messages, ready to send (and to resend unchanged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Sequence number of the first message (`X-Producer-Seq`).
    pub seq: u64,
    /// How many messages (lines) the body holds.
    pub count: usize,
    /// The NDJSON body: one JSON string per line, each line ending in `\n`.
    pub body: Bytes,
}

impl Batch {
    /// The messages after the first `n`, numbered from `seq + n`: what is left to send when the
    /// node acknowledged only the first `n`. `None` when nothing is left.
    pub fn rest_after(&self, n: usize) -> Option<Batch> {
        if n >= self.count {
            return None;
        }
        if n == 0 {
            return Some(self.clone());
        }
        // Every line ends in `\n` and a JSON string never contains a raw one.
        let cut = self
            .body
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(n - 1)
            .map(|(i, _)| i + 1)?;
        Some(Batch {
            seq: self.seq.saturating_add(n as u64),
            count: self.count - n,
            body: self.body.slice(cut..),
        })
    }
}

/// Encodes one message as an NDJSON line (a JSON string and `\n`).
pub fn encode_line(message: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(message.len() + 3);
    // Serialising a `&str` into a Vec cannot fail: there is no I/O and no non-string key.
    serde_json::to_writer(&mut line, message).expect("a string always serialises to JSON");
    line.push(b'\n');
    line
}

/// Groups the source's messages into batches. Cancel-safe: every message taken from the channel
/// is kept in `self` until a batch is returned, so dropping a pending [`Batcher::next_batch`]
/// (e.g. in `select!`) loses nothing.
#[derive(Debug)]
pub struct Batcher {
    /// Messages from the source.
    rx: mpsc::Receiver<String>,
    /// The body of the batch being filled.
    body: Vec<u8>,
    /// Messages in `body`.
    count: usize,
    /// A line that did not fit under `max_bytes`; it opens the next batch.
    carry: Option<Vec<u8>>,
    /// When the batch being filled must go out even if not full (first message + linger).
    deadline: Option<Instant>,
    /// Sequence number of the next batch's first message.
    next_seq: u64,
    /// Most messages per batch (at least 1).
    max_count: usize,
    /// Soft cap on a batch's body; a single larger message still goes alone.
    max_bytes: usize,
    /// How long to wait for more messages once a batch has its first one.
    linger: Duration,
    /// The channel has been closed and emptied.
    closed: bool,
}

impl Batcher {
    /// A batcher reading `rx`, numbering messages from `first_seq`.
    pub fn new(
        rx: mpsc::Receiver<String>,
        first_seq: u64,
        max_count: usize,
        max_bytes: usize,
        linger: Duration,
    ) -> Self {
        Self {
            rx,
            body: Vec::new(),
            count: 0,
            carry: None,
            deadline: None,
            next_seq: first_seq,
            max_count: max_count.max(1),
            max_bytes: max_bytes.max(1),
            linger,
            closed: false,
        }
    }

    /// Messages held (taken from the channel, not yet in a returned batch).
    pub fn held(&self) -> usize {
        self.count + usize::from(self.carry.is_some())
    }

    /// Adds one encoded line; returns `false` (keeping it as the carry) when the batch is full.
    fn push(&mut self, line: Vec<u8>) -> bool {
        if self.count > 0 && (self.count >= self.max_count || self.body.len() + line.len() > self.max_bytes) {
            self.carry = Some(line);
            return false;
        }
        if self.count == 0 {
            self.deadline = Some(Instant::now() + self.linger);
        }
        self.body.extend_from_slice(&line);
        self.count += 1;
        true
    }

    /// Hands out the batch being filled and starts the next one with the carry, if any.
    fn take(&mut self) -> Batch {
        let batch = Batch {
            seq: self.next_seq,
            count: self.count,
            body: Bytes::from(std::mem::take(&mut self.body)),
        };
        // The node refuses sequences that would pass u64::MAX; never overflow here.
        self.next_seq = self.next_seq.saturating_add(self.count as u64);
        self.count = 0;
        self.deadline = None;
        if let Some(line) = self.carry.take() {
            self.push(line);
        }
        batch
    }

    fn full(&self) -> bool {
        self.carry.is_some() || self.count >= self.max_count
    }

    /// The next batch: waits for a first message, then takes what is already queued and waits
    /// at most `linger` for more, up to the limits. `None` once the source is closed and every
    /// message has been handed out.
    pub async fn next_batch(&mut self) -> Option<Batch> {
        loop {
            if self.count > 0 && (self.full() || self.closed) {
                return Some(self.take());
            }
            if self.closed {
                return None;
            }
            if self.count == 0 {
                match self.rx.recv().await {
                    Some(message) => {
                        self.push(encode_line(&message));
                    }
                    None => self.closed = true,
                }
                continue;
            }
            // Take whatever is queued already without waiting.
            loop {
                match self.rx.try_recv() {
                    Ok(message) => {
                        if !self.push(encode_line(&message)) {
                            break;
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.closed = true;
                        break;
                    }
                }
            }
            if self.full() || self.closed {
                continue;
            }
            let deadline = self.deadline.unwrap_or_else(Instant::now);
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(message)) => {
                    self.push(encode_line(&message));
                }
                Ok(None) => self.closed = true,
                Err(_elapsed) => return Some(self.take()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(batch: &Batch) -> Vec<String> {
        std::str::from_utf8(&batch.body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<String>(l).unwrap())
            .collect()
    }

    /// Lines are JSON strings, so quotes, backslashes and newlines inside a message survive.
    #[test]
    fn encoding_escapes() {
        assert_eq!(encode_line("Message: 1"), b"\"Message: 1\"\n");
        assert_eq!(encode_line("a\"b\\c\nd"), b"\"a\\\"b\\\\c\\nd\"\n");
    }

    /// Queued messages are cut into batches of at most `batch_max`, with consecutive sequence
    /// numbers, and the last partial batch comes out once the source closes.
    #[tokio::test(start_paused = true)]
    async fn batches_respect_max_and_number_consecutively() {
        let (tx, rx) = mpsc::channel(100);
        for i in 0..7 {
            tx.send(format!("m{i}")).await.unwrap();
        }
        drop(tx);
        let mut b = Batcher::new(rx, 10, 3, usize::MAX, Duration::from_millis(5));
        let first = b.next_batch().await.unwrap();
        assert_eq!((first.seq, first.count), (10, 3));
        assert_eq!(lines(&first), ["m0", "m1", "m2"]);
        let second = b.next_batch().await.unwrap();
        assert_eq!((second.seq, second.count), (13, 3));
        let third = b.next_batch().await.unwrap();
        assert_eq!((third.seq, third.count), (16, 1));
        assert_eq!(lines(&third), ["m6"]);
        assert!(b.next_batch().await.is_none());
    }

    /// A batch that is not full goes out when the linger elapses, without waiting for more.
    #[tokio::test(start_paused = true)]
    async fn linger_bounds_the_wait() {
        let (tx, rx) = mpsc::channel(100);
        tx.send("a".to_string()).await.unwrap();
        let mut b = Batcher::new(rx, 0, 10, usize::MAX, Duration::from_millis(5));
        let started = Instant::now();
        let batch = b.next_batch().await.unwrap();
        assert_eq!(batch.count, 1);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(5),
            "paused clock: exactly the linger"
        );
        drop(tx);
        assert!(b.next_batch().await.is_none());
    }

    /// The byte cap splits batches, but a message larger than the cap still goes (alone).
    #[tokio::test(start_paused = true)]
    async fn byte_cap_splits_without_losing_messages() {
        let (tx, rx) = mpsc::channel(100);
        for m in ["aaaa", "bbbb", "a-very-long-message", "c"] {
            tx.send(m.to_string()).await.unwrap();
        }
        drop(tx);
        // "aaaa" encodes to 7 bytes.
        let mut b = Batcher::new(rx, 0, 100, 14, Duration::ZERO);
        let mut got = Vec::new();
        let mut seqs = Vec::new();
        while let Some(batch) = b.next_batch().await {
            assert!(batch.count >= 1);
            seqs.push((batch.seq, batch.count));
            got.extend(lines(&batch));
        }
        assert_eq!(got, ["aaaa", "bbbb", "a-very-long-message", "c"]);
        assert_eq!(seqs, [(0, 2), (2, 1), (3, 1)]);
    }

    proptest::proptest! {
        /// For any messages and limits: batches hand out every message once, in order, with
        /// consecutive sequence numbers, within the count cap, and within the byte cap unless
        /// a single message is larger.
        #[test]
        fn batches_partition_the_input(
            messages in proptest::collection::vec(".{0,20}", 0..60),
            max_count in 1usize..10,
            max_bytes in 1usize..80,
            first_seq in 0u64..1000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let batches = rt.block_on(async {
                let (tx, rx) = mpsc::channel(100);
                for m in &messages {
                    tx.send(m.clone()).await.unwrap();
                }
                drop(tx);
                let mut b = Batcher::new(rx, first_seq, max_count, max_bytes, Duration::from_millis(1));
                let mut out = Vec::new();
                while let Some(batch) = b.next_batch().await {
                    out.push(batch);
                }
                out
            });
            let mut seq = first_seq;
            let mut all = Vec::new();
            for batch in &batches {
                proptest::prop_assert_eq!(batch.seq, seq);
                proptest::prop_assert!(batch.count >= 1 && batch.count <= max_count);
                proptest::prop_assert!(batch.body.len() <= max_bytes || batch.count == 1);
                let got = lines(batch);
                proptest::prop_assert_eq!(got.len(), batch.count);
                seq += batch.count as u64;
                all.extend(got);
            }
            proptest::prop_assert_eq!(all, messages);
        }
    }

    /// What is left of a batch after a partial acknowledgement is its tail, renumbered.
    #[tokio::test(start_paused = true)]
    async fn rest_after_a_partial_ack() {
        let (tx, rx) = mpsc::channel(100);
        for m in ["a", "b\nwith a newline", "c", "d"] {
            tx.send(m.to_string()).await.unwrap();
        }
        drop(tx);
        let batch = Batcher::new(rx, 10, 10, usize::MAX, Duration::ZERO)
            .next_batch()
            .await
            .unwrap();
        let rest = batch.rest_after(2).unwrap();
        assert_eq!((rest.seq, rest.count), (12, 2));
        assert_eq!(lines(&rest), ["c", "d"]);
        assert_eq!(batch.rest_after(0).as_ref(), Some(&batch));
        let last = batch.rest_after(3).unwrap();
        assert_eq!((last.seq, lines(&last)), (13, vec!["d".to_string()]));
        assert!(batch.rest_after(4).is_none());
        assert!(batch.rest_after(9).is_none());
    }

    /// Dropping `next_batch` mid-wait (as `select!` does) keeps the messages already taken.
    #[tokio::test(start_paused = true)]
    async fn next_batch_is_cancel_safe() {
        let (tx, rx) = mpsc::channel(100);
        tx.send("kept".to_string()).await.unwrap();
        let mut b = Batcher::new(rx, 0, 10, usize::MAX, Duration::from_secs(10));
        let cancelled = tokio::time::timeout(Duration::from_millis(1), b.next_batch()).await;
        assert!(cancelled.is_err(), "still lingering");
        assert_eq!(b.held(), 1);
        drop(tx);
        let batch = b.next_batch().await.unwrap();
        assert_eq!(lines(&batch), ["kept"]);
    }
}
