//! [`LogStore`]: the cheap-`Clone` handle the node uses, and the state it shares with the writer
//! thread (visible log shape, producer table, write health, the command queue). Reads run here, on
//! the blocking pool, against the visible prefix only, holding no lock across disk reads. Every
//! mutation is a `Command` to the single writer: `writer` group-commits appends and poisons the
//! store on a failed write or sync; `maintenance` rolls segments, enforces retention, truncates a
//! suffix and recovers a poisoned store.

mod maintenance;
mod writer;

use std::{
    fs::{self, File},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use self::writer::WriterState;
use super::{
    config::LogConfig,
    epochs::{Epoch, EpochCache},
    error::LogError,
    producer::{ProducerBatch, Producers},
    record::Record,
    recovery,
    segment::{ReadCursor, Segment, SegmentView},
};

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The batch was stored at offsets `first .. first + count`.
    Appended {
        /// Offset of the batch's first record.
        first: u64,
        /// Number of records.
        count: u32,
    },
    /// The producer already stored this batch; nothing was written. These are the original offsets.
    Duplicate {
        /// Offset of the first record of the original batch (from the retried sequence on).
        first: u64,
        /// Number of retried records found stored.
        count: u32,
    },
}

impl AppendOutcome {
    /// Offset of the first record, whichever the outcome.
    pub fn first(&self) -> u64 {
        match *self {
            AppendOutcome::Appended { first, .. } | AppendOutcome::Duplicate { first, .. } => first,
        }
    }
}

/// Lock-free attempts of a read that races with in-place rewrites before it holds the lock.
const LOCK_FREE_READ_ATTEMPTS: usize = 3;

/// The visible (acknowledged) shape of the log, shared by readers and the writer.
#[derive(Debug)]
struct LogState {
    /// Retained segments in offset order; the last one is active.
    segments: Vec<Segment>,
    /// First retained offset.
    start: u64,
    /// One past the last visible offset.
    end: u64,
    /// `(term, offset)` of the last visible record (or the last before the retained log).
    last_term: Option<(u64, u64)>,
    /// Bumped (under the write lock, before the bytes change) whenever visible bytes of a segment
    /// are changed in place: suffix truncation, or recovery dropping records whose sync failed.
    /// Readers read without the lock and discard a read during which this changed. Appends only
    /// add bytes past the visible end and retention only unlinks files, so neither bumps it.
    rewrites: u64,
}

/// Whether the store can take appends, for readiness and the Consul check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteHealth {
    /// Why appends are refused right now: a write or sync failed and the active segment's tail is
    /// not yet re-verified from disk (the writer retries by itself, backing off). `None`: appends
    /// are accepted.
    pub poisoned: Option<String>,
    /// How many times the store has been poisoned since it was opened, so a watcher notices a
    /// failure that was recovered from before it looked.
    pub failures: u64,
    /// The most recent failure, kept after recovery.
    pub last_failure: Option<String>,
}

/// State shared between the handles and the writer thread.
#[derive(Debug)]
struct Shared {
    /// The configuration the store was opened with.
    config: LogConfig,
    /// Visible log shape. Readers hold the read lock only to snapshot what they need (segment
    /// handles, bounds; see `read_blocking`), never across disk reads; the writer takes the write
    /// lock only briefly per group.
    state: RwLock<LogState>,
    /// Producer table, updated when a batch is admitted and rolled back if its write fails.
    producers: Mutex<Producers>,
    /// Term → first offset (`epochs.checkpoint`); changed only by the writer, after the file.
    /// May hold the first record of a term not yet visible: queries cut it at the visible end.
    /// Lock order: `state` before `epochs`.
    epochs: Mutex<EpochCache>,
    /// Visible end offset, for tailing readers.
    visible: watch::Sender<u64>,
    /// Poisoned or not, and the failure history (written by the writer only).
    health: Mutex<WriteHealth>,
    /// Set once the writer has stopped (after `close`).
    closed: AtomicBool,
    /// The exclusive `flock` on `<dir>/LOCK`, released when the last user of the store is gone.
    _lock: File,
}

/// Take an exclusive lock on the log directory so that two stores (or two processes) never
/// write the same log.
///
/// # Errors
/// [`LogError::Io`] (`EWOULDBLOCK`) when another store holds the directory.
fn lock_dir(dir: &std::path::Path) -> Result<File, LogError> {
    use std::os::fd::AsRawFd;
    fs::create_dir_all(dir).map_err(|e| LogError::io("create log directory", dir, e))?;
    let path = dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LogError::io("open lock file", &path, e))?;
    // SAFETY: flock on a valid, owned file descriptor; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(LogError::io(
            "lock log directory (is another store open on it?)",
            &path,
            e,
        ));
    }
    Ok(file)
}

/// Messages to the writer thread.
enum Command {
    /// Append one atomic batch.
    Append {
        term: u64,
        producer: Option<ProducerBatch>,
        payloads: Vec<Bytes>,
        reply: oneshot::Sender<Result<AppendOutcome, LogError>>,
    },
    /// Drop every record from `from` on.
    Truncate {
        from: u64,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Delete old segments per the retention settings.
    Retention {
        reply: oneshot::Sender<Result<u64, LogError>>,
    },
    /// `fdatasync` whatever is written.
    Flush {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// If poisoned, try the recovery now.
    Recover {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Final sync, then stop.
    Close {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// Owner of the writer thread; dropping the last handle stops and joins it.
#[derive(Debug)]
struct Inner {
    /// Queue to the writer; `None` once dropping.
    tx: Option<mpsc::Sender<Command>>,
    /// Shared state.
    shared: Arc<Shared>,
    /// The writer thread, joined on drop so a directory can be reopened right after.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Append { .. } => "Append",
            Command::Truncate { .. } => "Truncate",
            Command::Retention { .. } => "Retention",
            Command::Flush { .. } => "Flush",
            Command::Recover { .. } => "Recover",
            Command::Close { .. } => "Close",
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// Handle to a durable segmented log. Cheap to clone; all clones share one writer thread.
#[derive(Debug, Clone)]
pub struct LogStore {
    /// The shared owner.
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LogStore {
    /// Open (or create) the log in `config.dir`, running recovery: sealed segment indexes are
    /// loaded (or rebuilt), the active segment is scanned, a torn tail is cut and logged, and the
    /// producer table and last term are rebuilt.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] for damage in the middle of the log, I/O errors otherwise.
    pub async fn open(config: LogConfig) -> Result<LogStore, LogError> {
        let cfg = config.clone();
        let (lock, rec) = tokio::task::spawn_blocking(move || {
            let lock = lock_dir(&cfg.dir)?;
            Ok::<_, LogError>((lock, recovery::recover(&cfg)?))
        })
        .await
        .map_err(|_| LogError::Closed)??;
        let start = rec.segments.first().map_or(0, |s| s.base);
        let end = rec.segments.last().map_or(0, |s| s.end);
        let active = rec.segments.last().ok_or(LogError::Closed)?;
        let writer_state = WriterState::at_end(active, rec.last_term);
        let (visible, _) = watch::channel(end);
        let shared = Arc::new(Shared {
            config,
            state: RwLock::new(LogState {
                segments: rec.segments,
                start,
                end,
                last_term: rec.last_term,
                rewrites: 0,
            }),
            producers: Mutex::new(rec.producers),
            epochs: Mutex::new(rec.epochs),
            visible,
            health: Mutex::new(WriteHealth::default()),
            closed: AtomicBool::new(false),
            _lock: lock,
        });
        let (tx, thread) = writer::spawn(shared.clone(), writer_state)?;
        tracing::info!(dir = %shared.config.dir.display(), start, end, "log store opened");
        Ok(LogStore {
            inner: Arc::new(Inner {
                tx: Some(tx),
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<oneshot::Receiver<T>, LogError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(LogError::Closed)?;
        tx.send(make(reply)).map_err(|_| LogError::Closed)?;
        Ok(rx)
    }

    /// Append an atomic batch (at least one record). Record `i` carries producer sequence
    /// `seq + i` when `producer` is given. A retry of a recently stored producer batch writes
    /// nothing and returns [`AppendOutcome::Duplicate`] with the original offsets (the last
    /// [`PRODUCER_WINDOW`](crate::log::PRODUCER_WINDOW) batches per producer are remembered; a retry
    /// partly overlapping stored sequences reports only the stored part). Returns once durable
    /// under the configured durability mode. The rules are in `producer::Producers::check`.
    ///
    /// # Errors
    /// [`LogError::EmptyBatch`], [`LogError::RecordTooLarge`], [`LogError::StaleTerm`] (term below
    /// the log's last term), [`LogError::OutOfOrderSequence`] (a gap: retriable),
    /// [`LogError::StaleSequence`], [`LogError::SequenceOverflow`], [`LogError::DiskFull`]/
    /// [`LogError::Io`] (nothing was stored; the store is then poisoned),
    /// [`LogError::Poisoned`] (refused: a failed write or sync is not yet recovered from),
    /// [`LogError::Closed`].
    pub async fn append(
        &self,
        term: u64,
        producer: Option<ProducerBatch>,
        payloads: Vec<Bytes>,
    ) -> Result<AppendOutcome, LogError> {
        if payloads.is_empty() {
            return Err(LogError::EmptyBatch);
        }
        let max = self.inner.shared.config.max_record_bytes;
        if let Some(p) = payloads.iter().find(|p| p.len() > max) {
            return Err(LogError::RecordTooLarge { size: p.len(), max });
        }
        if let Some(p) = &producer {
            p.validate(payloads.len())?;
        }
        let rx = self.send(|reply| Command::Append {
            term,
            producer,
            payloads,
            reply,
        })?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Read up to `max_records` records from offset `from`, stopping before `max_bytes` of payload
    /// would be exceeded (at least one record is returned if any is available). Only acknowledged
    /// records are visible. `from` at or past the end returns an empty list.
    ///
    /// # Errors
    /// [`LogError::OffsetTrimmed`] when `from` was deleted by retention; [`LogError::Corrupt`] if a
    /// stored frame fails its CRC.
    pub async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || shared.read_blocking(from, max_records, max_bytes))
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// Next offset to assign: the number of visible records since offset 0.
    pub fn end_offset(&self) -> u64 {
        self.inner.shared.state.read().end
    }

    /// First retained offset.
    pub fn start_offset(&self) -> u64 {
        self.inner.shared.state.read().start
    }

    /// `(term, offset)` of the last visible record; after retention removed everything, the last
    /// record before the retained log. `None` for a log that never held a record.
    pub fn last_term(&self) -> Option<(u64, u64)> {
        self.inner.shared.state.read().last_term
    }

    /// The epoch cache of the visible log: `(term, first offset)` of every term it holds, oldest
    /// first; the first entry covers the first retained offset (its start may be older).
    pub fn epochs(&self) -> Vec<Epoch> {
        let state = self.inner.shared.state.read();
        let mut cache = self.inner.shared.epochs.lock().clone();
        cache.truncate_from(state.end);
        cache.epochs().to_vec()
    }

    /// Where `term` ends in the visible log, as `(term found, end offset)`: what a leader answers a
    /// follower whose last term is `term` (Kafka's `OffsetsForLeaderEpoch`; see
    /// [`EpochCache::end_offset_for`]). `None` for a log that never held a record.
    pub fn end_offset_for(&self, term: u64) -> Option<(u64, u64)> {
        let state = self.inner.shared.state.read();
        let cache = self.inner.shared.epochs.lock();
        cache.end_offset_for(term, state.end)
    }

    /// A watch of the visible end offset, for tailing: read up to the value, then `changed().await`.
    /// The value can go down after [`truncate_suffix`](Self::truncate_suffix).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.visible.subscribe()
    }

    /// Wait until the record at `offset` is visible; returns the visible end offset (> `offset`).
    /// Cancel-safe: drop the future (e.g. in `select!` with a shutdown token) to stop waiting.
    ///
    /// # Errors
    /// [`LogError::Closed`] if the store is closed while waiting.
    pub async fn wait_for(&self, offset: u64) -> Result<u64, LogError> {
        let mut rx = self.subscribe();
        loop {
            let end = *rx.borrow_and_update();
            if end > offset {
                return Ok(end);
            }
            if self.inner.shared.closed.load(Ordering::Acquire) {
                return Err(LogError::Closed);
            }
            rx.changed().await.map_err(|_| LogError::Closed)?;
        }
    }

    /// Drop every record at offsets `>= from` (no-op if `from` is at or past the end). Durable on
    /// return. Producer history of the dropped records is forgotten.
    ///
    /// # Errors
    /// [`LogError::TruncateBeforeStart`] if `from` is below the first retained offset; I/O errors.
    pub async fn truncate_suffix(&self, from: u64) -> Result<(), LogError> {
        self.send(|reply| Command::Truncate { from, reply })?
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// Empties the log and makes `start` its first (and next) offset: every segment, the epoch
    /// cache and the producer table are dropped, the high watermark becomes `start`. For a
    /// follower whose position is not in the leader's log (below the leader's first retained
    /// offset, or diverging before its own): it then fetches from `start`. Durable on return.
    ///
    /// # Errors
    /// [`LogError::BelowHighWatermark`] when records below the high watermark would be dropped
    /// (`start` below it); I/O errors; [`LogError::Closed`].
    pub async fn reset(&self, start: u64) -> Result<(), LogError> {
        let _ = start;
        todo!("repl-core: LogStore::reset, once log-repl's store is merged")
    }

    /// Delete whole old segments per `retention_bytes` / `retention_age` (never the active one);
    /// also runs on every segment roll. Returns the new first retained offset.
    ///
    /// # Errors
    /// [`LogError::Closed`].
    pub async fn enforce_retention(&self) -> Result<u64, LogError> {
        self.send(|reply| Command::Retention { reply })?
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// Last stored sequence of a producer (including a batch whose sync is in progress).
    /// `None` for an unknown producer or one idle longer than `producer_id_expiry`.
    pub fn producer_last_seq(&self, producer_id: &str) -> Option<u64> {
        self.inner.shared.producers.lock().last_seq(producer_id, now_ms())
    }

    /// `fdatasync` everything written so far (useful under `interval`/`never`). `Ok` means every
    /// record acknowledged before the call is durable.
    ///
    /// # Errors
    /// I/O errors from the sync (the store is then poisoned); [`LogError::Poisoned`] while a
    /// failed write or sync is not recovered from; [`LogError::NotDurable`] (once) when a recovery
    /// dropped acknowledged records whose sync had failed since the last flush; [`LogError::Closed`].
    pub async fn flush(&self) -> Result<(), LogError> {
        self.send(|reply| Command::Flush { reply })?
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// Final sync and stop the writer; other clones then get [`LogError::Closed`] on writes.
    ///
    /// # Errors
    /// As [`flush`](Self::flush), for the final sync.
    pub async fn close(self) -> Result<(), LogError> {
        let res = match self.send(|reply| Command::Close { reply }) {
            Ok(rx) => rx.await.unwrap_or(Err(LogError::Closed)),
            Err(_) => Ok(()), // already closed
        };
        let inner = self.inner.clone();
        drop(self);
        // Join the writer off the async workers (it has already stopped or is about to).
        let handle = inner.thread.lock().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        res
    }

    /// If the store is poisoned (a failed write or sync), try to recover now instead of waiting
    /// for the writer's own retry: reopen the active segment, cut it to the durable end and
    /// re-verify it from disk. `Ok` when the store accepts appends afterwards.
    ///
    /// # Errors
    /// Why the recovery failed (the store stays poisoned); [`LogError::Closed`].
    pub async fn recover(&self) -> Result<(), LogError> {
        self.send(|reply| Command::Recover { reply })?
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// False while the store is poisoned: a write or sync failed and appends are refused until
    /// the tail is re-verified (which the writer retries by itself). For readiness.
    pub fn is_writable(&self) -> bool {
        self.inner.shared.health.lock().poisoned.is_none()
    }

    /// Poisoned or not, and how often it was (see [`WriteHealth`]).
    pub fn write_health(&self) -> WriteHealth {
        self.inner.shared.health.lock().clone()
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.shared.config.dir
    }

    /// Number of retained segments (diagnostics and tests).
    pub fn segment_count(&self) -> usize {
        self.inner.shared.state.read().segments.len()
    }
    // ---- Replication (issue 11). Interface agreed for the parallel branches; `log-repl`
    // ---- implements it (until then these panic and nothing calls them).

    /// Raw frames of whole batches from `from` (which must be a batch start, as every fetch
    /// offset is), at most `max_bytes` but at least one batch when any exists, up to the durable
    /// log end (records above the high watermark included: followers need them). Control
    /// records are included. What the leader answers a fetch with.
    ///
    /// # Errors
    /// [`LogError::OffsetTrimmed`] below the first retained offset; [`LogError::Corrupt`].
    pub async fn read_frames(&self, from: u64, max_bytes: usize) -> Result<FrameChunk, LogError> {
        let _ = (from, max_bytes);
        todo!("log-repl: read_frames")
    }

    /// Appends frames fetched from the leader as they are (offsets, terms, timestamps, producer
    /// ids and sequences, batch boundaries, control records): `bytes` must start at this log's end
    /// and hold whole batches with dense offsets and terms not below the log's last term. Term
    /// changes go to the epoch cache, producer batches to the producer table. Durable on return
    /// whatever `--durability` says (a fetch from N promises everything below N is durable);
    /// returns the new log end.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] for frames that fail their CRC or do not fit (nothing is written),
    /// I/O errors (the store is then poisoned), [`LogError::Closed`].
    pub async fn append_frames(&self, bytes: Bytes) -> Result<u64, LogError> {
        let _ = bytes;
        todo!("log-repl: append_frames")
    }

    /// A new leader's first record: a term-start control record (no payload, skipped by reads)
    /// for `term`, durable on return; returns its offset. The high watermark moves in a term
    /// only past this record (`docs/replication.md`, commit).
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub async fn begin_term(&self, term: u64) -> Result<u64, LogError> {
        let _ = term;
        todo!("log-repl: begin_term")
    }

    /// One past the last durable record: the log end a follower reports and the leader counts.
    /// At or above [`high_watermark`](Self::high_watermark).
    pub fn durable_end(&self) -> u64 {
        todo!("log-repl: durable_end")
    }

    /// A watch of [`durable_end`](Self::durable_end).
    pub fn subscribe_durable(&self) -> watch::Receiver<u64> {
        todo!("log-repl: subscribe_durable")
    }

    /// One past the last committed record. Reads ([`read`](Self::read),
    /// [`subscribe`](Self::subscribe), [`wait_for`](Self::wait_for)) stop here. With
    /// `LogConfig::replicated` false it follows the durable end by itself.
    pub fn high_watermark(&self) -> u64 {
        todo!("log-repl: high_watermark")
    }

    /// Moves the high watermark up to `hw` (capped at the durable end; never down: a lower value
    /// is ignored), persisting it in `hw.checkpoint` before readers see it. Returns the HW now
    /// exposed.
    ///
    /// # Errors
    /// I/O errors writing the checkpoint (the HW then stays where it was).
    pub async fn set_high_watermark(&self, hw: u64) -> Result<u64, LogError> {
        let _ = hw;
        todo!("log-repl: set_high_watermark")
    }

    /// This log's incarnation, `<uuid>:<boot>`: a UUID created with the data directory and a
    /// counter raised on every open. A node that comes back with an empty volume (or restarted)
    /// is a new ISR member (KIP-903).
    pub fn incarnation(&self) -> String {
        todo!("log-repl: incarnation")
    }
}

/// Whole batches of raw frames, as [`LogStore::read_frames`] returns them.
#[derive(Debug, Clone)]
pub struct FrameChunk {
    /// Offset of the first frame.
    pub first: u64,
    /// One past the last frame (`first` when empty).
    pub end: u64,
    /// The frames, byte for byte as stored.
    pub bytes: Bytes,
}

impl Shared {
    /// Serve a read without holding the state lock across disk reads, so that a long replay never
    /// delays the writer publishing a group. Each segment is read from a [`SegmentView`] taken under
    /// the lock; a read that raced with an in-place rewrite (truncation, recovery) is discarded and
    /// retried, and the last attempt holds the read lock throughout (it cannot race).
    fn read_blocking(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        for _ in 0..LOCK_FREE_READ_ATTEMPTS {
            if let Some(records) = self.read_unlocked(from, max_records, max_bytes)? {
                return Ok(records);
            }
        }
        let state = self.state.read();
        let Some(mut cursor) = state.cursor(from, max_records, max_bytes)? else {
            return Ok(Vec::new());
        };
        while let Some(view) = state.view(cursor.next) {
            let before = cursor.next;
            view.read_into(&mut cursor)?;
            if cursor.full() || view.end >= state.end || cursor.next == before {
                break;
            }
        }
        Ok(cursor.out)
    }

    /// One attempt of a lock-free read; `None` when the log was rewritten in place meanwhile.
    fn read_unlocked(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<Record>>, LogError> {
        let (rewrites, cursor) = {
            let state = self.state.read();
            (state.rewrites, state.cursor(from, max_records, max_bytes)?)
        };
        let Some(mut cursor) = cursor else {
            return Ok(Some(Vec::new()));
        };
        loop {
            let view = {
                let state = self.state.read();
                if state.rewrites != rewrites {
                    return Ok(None);
                }
                // Retention removed what comes next: what was read is still the log's prefix.
                if cursor.next < state.start {
                    break;
                }
                state.view(cursor.next)
            };
            let Some(view) = view else { break };
            if let Some(faults) = &self.config.fault_injector {
                faults.before_read();
            }
            let before = cursor.next;
            let read = view.read_into(&mut cursor);
            if self.state.read().rewrites != rewrites {
                return Ok(None); // what was read (or the error) may mix old and new bytes
            }
            read?;
            if cursor.full() || view.end >= cursor.end || cursor.next == before {
                break;
            }
        }
        Ok(Some(cursor.out))
    }
}

impl LogState {
    /// A read cursor from `from` up to the visible end; `None` when there is nothing to read.
    ///
    /// # Errors
    /// [`LogError::OffsetTrimmed`] when `from` is below the first retained offset.
    fn cursor(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<ReadCursor>, LogError> {
        if from < self.start {
            return Err(LogError::OffsetTrimmed {
                offset: from,
                start: self.start,
            });
        }
        if max_records == 0 || from >= self.end {
            return Ok(None);
        }
        Ok(Some(ReadCursor {
            next: from,
            end: self.end,
            max_records,
            max_bytes,
            bytes: 0,
            out: Vec::new(),
        }))
    }

    /// A snapshot of the segment holding `offset`, positioned for reading it.
    fn view(&self, offset: u64) -> Option<SegmentView> {
        let k = self
            .segments
            .partition_point(|s| s.base <= offset)
            .checked_sub(1)?;
        self.segments.get(k).map(|s| s.view(offset))
    }
}
