//! Typed errors of the log store; the HTTP layer maps disk-full to 507 and unavailability to 503.

use std::{io, path::PathBuf};

/// Everything that can go wrong in the log store.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O error other than a full disk.
    #[error("log I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The disk (or quota) is full; the append was not stored. Retry once space returns.
    #[error("disk full during {op} on {}: {source}", path.display())]
    DiskFull {
        /// What the store was doing.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying ENOSPC/EDQUOT error.
        #[source]
        source: io::Error,
    },
    /// A record in the middle of the log (followed by valid data) or in a sealed segment is bad.
    /// The store refuses to open rather than silently dropping data.
    #[error("corrupt log: {} at byte {position}: {reason}", file.display())]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte position of the bad record within that file.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// One payload exceeds `max_record_bytes`.
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Payload size.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// A producer id longer than the format allows (65535 bytes).
    #[error("producer id of {len} bytes exceeds 65535 bytes")]
    ProducerIdTooLong {
        /// Length of the id in bytes.
        len: usize,
    },
    /// An append with no records.
    #[error("empty batch: an append needs at least one record")]
    EmptyBatch,
    /// The append's term is lower than the log's last term: a deposed leader is fenced off.
    #[error("stale term {term}: the log already holds term {last_term}")]
    StaleTerm {
        /// Term of the refused append.
        term: u64,
        /// The log's last term.
        last_term: u64,
    },
    /// A producer retried a batch older than the retained idempotence history.
    #[error("stale sequence {seq} for producer {producer_id:?}: last stored is {last_seq}, history no longer covers it")]
    StaleSequence {
        /// The producer.
        producer_id: String,
        /// The sequence that was retried.
        seq: u64,
        /// The producer's last stored sequence.
        last_seq: u64,
    },
    /// A producer batch would leave a gap after the producer's last stored sequence: the batch
    /// starting at `expected` must be stored first. Nothing was stored; retriable.
    #[error("out-of-order sequence {seq} for producer {producer_id:?}: expected {expected}; send the earlier batch first")]
    OutOfOrderSequence {
        /// The producer.
        producer_id: String,
        /// The batch's first sequence.
        seq: u64,
        /// The sequence the store accepts next from this producer.
        expected: u64,
    },
    /// The batch's sequences do not fit in a `u64` (`seq + count - 1` overflows).
    #[error("sequence {seq} with {count} records overflows the 64-bit sequence range")]
    SequenceOverflow {
        /// The batch's first sequence.
        seq: u64,
        /// Its number of records.
        count: usize,
    },
    /// The requested offset was deleted by retention.
    #[error("offset {offset} trimmed: the log starts at {start}")]
    OffsetTrimmed {
        /// The requested offset.
        offset: u64,
        /// First retained offset.
        start: u64,
    },
    /// `truncate_suffix` below the first retained offset.
    #[error("cannot truncate from {from}: the log starts at {start}")]
    TruncateBeforeStart {
        /// The requested truncation point.
        from: u64,
        /// First retained offset.
        start: u64,
    },
    /// `truncate_suffix` below the high watermark of a replicated log: those records are
    /// committed (readers may have seen them) and are never removed automatically.
    #[error("cannot truncate from {from}: records below the high watermark {hw} are committed")]
    BelowHighWatermark {
        /// The requested truncation point.
        from: u64,
        /// The high watermark (as persisted or being persisted).
        hw: u64,
    },
    /// The store is poisoned: a write or sync failed, and appends are refused until the active
    /// segment has been reopened and its tail re-verified from disk (the store retries by itself).
    /// Nothing was stored; retriable.
    #[error(
        "the log refuses appends until it has re-verified its tail after a failed write or sync: {reason}"
    )]
    Poisoned {
        /// The failure that poisoned the store (and the last recovery error, if any).
        reason: String,
    },
    /// Records `from .. to` were acknowledged (under `interval` or `never` durability) but their
    /// sync failed, so the recovery dropped them: they are not durable and no longer in the log.
    #[error(
        "records {from}..{to} were acknowledged but their sync failed; they were dropped and are not durable"
    )]
    NotDurable {
        /// First dropped offset.
        from: u64,
        /// One past the last dropped offset.
        to: u64,
    },
    /// An append or term start in `term`, after a failed sync dropped records of term `lost`
    /// (at or above it) that this log had already served to followers: the term must not go on
    /// here with other records at those offsets. A new term (another election) must begin.
    #[error(
        "records of term {lost} that followers may hold were lost to a failed sync here; this node must not write in term {term} again (a new term must begin)"
    )]
    TermLost {
        /// The term asked.
        term: u64,
        /// The highest term whose served records were dropped.
        lost: u64,
    },
    /// The store was closed (or its writer thread stopped).
    #[error("log store closed")]
    Closed,
}

impl LogError {
    /// True when the append failed because the disk is full (HTTP 507).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::DiskFull { .. })
    }

    /// True when the store cannot serve right now but may later (HTTP 503): I/O errors, a closed
    /// or poisoned store, corruption, records lost to a failed sync.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            LogError::Io { .. }
                | LogError::Closed
                | LogError::Corrupt { .. }
                | LogError::Poisoned { .. }
                | LogError::NotDurable { .. }
                | LogError::TermLost { .. }
        )
    }

    /// Classify an I/O error: ENOSPC/EDQUOT become [`LogError::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => {
                LogError::DiskFull { op, path, source }
            }
            _ => LogError::Io { op, path, source },
        }
    }

    /// A copy for fanning one failure out to every appender of a group (io::Error is not Clone).
    pub(crate) fn duplicate(&self) -> Self {
        let copy_io = |e: &io::Error| match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        };
        match self {
            LogError::Io { op, path, source } => LogError::Io {
                op,
                path: path.clone(),
                source: copy_io(source),
            },
            LogError::DiskFull { op, path, source } => LogError::DiskFull {
                op,
                path: path.clone(),
                source: copy_io(source),
            },
            LogError::Corrupt {
                file,
                position,
                reason,
            } => LogError::Corrupt {
                file: file.clone(),
                position: *position,
                reason: reason.clone(),
            },
            LogError::RecordTooLarge { size, max } => LogError::RecordTooLarge {
                size: *size,
                max: *max,
            },
            LogError::ProducerIdTooLong { len } => LogError::ProducerIdTooLong { len: *len },
            LogError::EmptyBatch => LogError::EmptyBatch,
            LogError::StaleTerm { term, last_term } => LogError::StaleTerm {
                term: *term,
                last_term: *last_term,
            },
            LogError::TermLost { term, lost } => LogError::TermLost {
                term: *term,
                lost: *lost,
            },
            LogError::StaleSequence {
                producer_id,
                seq,
                last_seq,
            } => LogError::StaleSequence {
                producer_id: producer_id.clone(),
                seq: *seq,
                last_seq: *last_seq,
            },
            LogError::OutOfOrderSequence {
                producer_id,
                seq,
                expected,
            } => LogError::OutOfOrderSequence {
                producer_id: producer_id.clone(),
                seq: *seq,
                expected: *expected,
            },
            LogError::SequenceOverflow { seq, count } => LogError::SequenceOverflow {
                seq: *seq,
                count: *count,
            },
            LogError::OffsetTrimmed { offset, start } => LogError::OffsetTrimmed {
                offset: *offset,
                start: *start,
            },
            LogError::TruncateBeforeStart { from, start } => LogError::TruncateBeforeStart {
                from: *from,
                start: *start,
            },
            LogError::BelowHighWatermark { from, hw } => {
                LogError::BelowHighWatermark { from: *from, hw: *hw }
            }
            LogError::Poisoned { reason } => LogError::Poisoned {
                reason: reason.clone(),
            },
            LogError::NotDurable { from, to } => LogError::NotDurable { from: *from, to: *to },
            LogError::Closed => LogError::Closed,
        }
    }
}
