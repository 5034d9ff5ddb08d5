//! [`LogStore`]: the cheap-`Clone` handle the node uses, and the state it shares with the writer
//! thread (visible log shape, durable end, high watermark, producer table, write health, the
//! command queue). Reads run here, on the blocking pool, up to the high watermark only, holding no
//! lock across disk reads; so do `read_frames` (raw frames for followers, up to the servable end),
//! `advance_high_watermark` (which exposes a new HW at once and persists `hw.checkpoint` behind
//! it, one write at a time) and `set_high_watermark` (which persists before exposing). Every
//! mutation of the log is a `Command` to the single writer: `writer` group-commits appends (and
//! replicated frames, and term-start records) and poisons the store on a failed write or sync;
//! `maintenance` rolls segments, enforces retention, truncates a suffix and recovers a poisoned
//! store.

mod maintenance;
mod writer;

use std::{
    fs::{self, File},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Weak,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use self::writer::WriterState;
use super::{
    config::LogConfig,
    epochs::{Epoch, EpochCache},
    error::LogError,
    frames::{self, VerifiedFrames},
    hw::{self, HwCheckpoint},
    incarnation,
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
    /// One past the last durable (synced) record: `end` under `always`, possibly less under
    /// `interval`/`never`. What a follower reports and what `read_frames` serves up to.
    durable: u64,
    /// `LogConfig::replicated`: whether reads stop at `hw` (else at `end`).
    replicated: bool,
    /// [`LogConfig::serves_written`], for [`LogState::servable`].
    serve_written: bool,
    /// The exposed high watermark of a replicated log (at most `durable`): reads stop here.
    hw: u64,
    /// The highest HW that is or may soon be in `hw.checkpoint` (at or above `hw`: an exposed
    /// value and one being persisted count already), the floor below which truncation is refused.
    hw_reserved: u64,
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
    /// The highest term of records a failed sync dropped after `read_frames` could serve them
    /// (a replicated log under `always`): appends and term starts in that term or below are
    /// refused ([`LogError::TermLost`]), and a node leading such a term must step down.
    pub lost_term: Option<u64>,
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
    /// Where reads end ([`LogState::read_end`]: the HW, or the visible end when not replicated),
    /// for tailing readers. Only sent through [`Shared::refresh_visible`].
    visible: watch::Sender<u64>,
    /// [`LogState::durable`], for `subscribe_durable`. Only sent through
    /// [`Shared::refresh_durable`].
    durable: watch::Sender<u64>,
    /// Where [`LogStore::read_frames`] ends ([`LogState::servable`]), for `subscribe_servable`.
    /// Only sent through [`Shared::refresh_servable`] (which `refresh_durable` also calls).
    servable: watch::Sender<u64>,
    /// The largest HW asked of `set_high_watermark` and not yet taken by a persisting caller (0:
    /// none pending): the caller holding `hw_file` persists it for every caller waiting behind it.
    hw_pending: Mutex<u64>,
    /// `hw.checkpoint`; held while one caller persists a new HW (the others wait and are usually
    /// served by that one write). Shared with the background checkpoint writer, which must not
    /// keep the store alive while it waits for it.
    hw_file: Arc<tokio::sync::Mutex<HwCheckpoint>>,
    /// Set while a background checkpoint writer ([`persist_behind`]) runs: at most one at a time,
    /// each writing the newest exposed HW, so a burst of HW moves costs one or two `fdatasync`s.
    hw_persisting: AtomicBool,
    /// The runtime the store was opened on, where the background checkpoint writer runs.
    runtime: tokio::runtime::Handle,
    /// The data directory's incarnation (`<dir>/incarnation`).
    incarnation: String,
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
    /// Append verified frames from a leader as they are (empty: only make the log durable).
    AppendFrames {
        frames: VerifiedFrames,
        reply: oneshot::Sender<Result<u64, LogError>>,
    },
    /// Append a term-start control record.
    BeginTerm {
        term: u64,
        reply: oneshot::Sender<Result<u64, LogError>>,
    },
    /// Drop every record from `from` on.
    Truncate {
        from: u64,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Empty the log; `start` becomes its first offset.
    Reset {
        start: u64,
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
            Command::AppendFrames { .. } => "AppendFrames",
            Command::BeginTerm { .. } => "BeginTerm",
            Command::Truncate { .. } => "Truncate",
            Command::Reset { .. } => "Reset",
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
        let (lock, incarnation, rec, (checkpoint, loaded_hw)) = tokio::task::spawn_blocking(move || {
            let lock = lock_dir(&cfg.dir)?;
            let incarnation = incarnation::load_or_create(&cfg.dir)?;
            let rec = recovery::recover(&cfg)?;
            Ok::<_, LogError>((lock, incarnation, rec, HwCheckpoint::load(&cfg.dir)?))
        })
        .await
        .map_err(|_| LogError::Closed)??;
        let start = rec.segments.first().map_or(0, |s| s.base);
        let end = rec.segments.last().map_or(0, |s| s.end);
        let active = rec.segments.last().ok_or(LogError::Closed)?;
        let writer_state = WriterState::at_end(active, rec.last_term);
        let hw = loaded_hw.unwrap_or(0);
        if config.replicated && hw > end {
            tracing::warn!(
                hw,
                end,
                "the persisted high watermark is past the log end; capping it"
            );
        }
        let hw = hw.min(end);
        let state = LogState {
            segments: rec.segments,
            start,
            end,
            last_term: rec.last_term,
            rewrites: 0,
            durable: end,
            replicated: config.replicated,
            serve_written: config.serves_written(),
            hw,
            hw_reserved: hw,
        };
        let (visible, _) = watch::channel(state.read_end());
        let (durable, _) = watch::channel(end);
        let (servable, _) = watch::channel(end);
        let shared = Arc::new(Shared {
            config,
            state: RwLock::new(state),
            producers: Mutex::new(rec.producers),
            epochs: Mutex::new(rec.epochs),
            visible,
            durable,
            servable,
            hw_pending: Mutex::new(0),
            hw_file: Arc::new(tokio::sync::Mutex::new(checkpoint)),
            hw_persisting: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            incarnation,
            health: Mutex::new(WriteHealth::default()),
            closed: AtomicBool::new(false),
            _lock: lock,
        });
        let (tx, thread) = writer::spawn(shared.clone(), writer_state)?;
        tracing::info!(dir = %shared.config.dir.display(), start, end, hw, "log store opened");
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
    /// records below the [high watermark](Self::high_watermark) are visible. Control records are
    /// skipped (the offsets returned then have a gap of one). `from` at or past the end returns an
    /// empty list.
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

    /// The log end: next offset to assign, one past the last written record (the durable end
    /// under `always`, except on a replicated log, whose written groups count before their sync
    /// completes: see [`servable_end`](Self::servable_end)). Readers stop earlier, at the
    /// [high watermark](Self::high_watermark).
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

    /// A watch of where reads end, for tailing: read up to the value, then `changed().await`. It
    /// follows the [high watermark](Self::high_watermark), except that a control record just below
    /// it is not counted (nothing readable is there: a reader waiting at its offset is woken only
    /// once a readable record follows). Without replication the value can go down after
    /// [`truncate_suffix`](Self::truncate_suffix). Writers waiting for their own records to be
    /// stored (not committed) should watch [`subscribe_durable`](Self::subscribe_durable).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.visible.subscribe()
    }

    /// Wait until a readable record at or after `offset` is below the high watermark; returns where
    /// reads end (> `offset`, see [`subscribe`](Self::subscribe)).
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
    /// return. The producer table is rolled back exactly: every producer with a dropped batch gets
    /// its window as of `from` again, rebuilt from the kept log.
    ///
    /// # Errors
    /// [`LogError::TruncateBeforeStart`] if `from` is below the first retained offset;
    /// [`LogError::BelowHighWatermark`] (replicated logs) if `from` is below the high watermark
    /// (committed records are never removed); I/O errors.
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
        self.send(|reply| Command::Reset { start, reply })?
            .await
            .map_err(|_| LogError::Closed)?
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
        // Let a background checkpoint write finish (the writer is stopped: no new one starts),
        // then write the exposed HW if it is not on disk yet, so that a reopened store starts at
        // the HW this one exposed and the directory has one `hw.checkpoint` writer at a time.
        let persisted = persist_exposed(&inner.shared).await;
        res.and(persisted)
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
    // ---- Replication (issue 11): `docs/replication.md`, formats in `docs/log-format.md`.

    /// Raw frames of whole batches from `from` (which should be a batch start, as every fetch
    /// offset is; from inside a batch, the rest of that batch comes first), at most `max_bytes`
    /// but at least one batch when any exists, up to the [servable end](Self::servable_end)
    /// (records above the high watermark included: followers need them; on a replicated log under
    /// `always`, records written and not yet synced too), never past the end of
    /// the segment holding `from` (the next call continues in the next one). Control records are
    /// included. What the leader answers a fetch with. Every frame's structure and offset are
    /// checked, not its CRC (the follower verifies each frame before storing it); the bytes are
    /// returned as stored, read with (usually) one `pread`, payloads not decoded. A read of the
    /// last few KiB of the log (a caught-up follower's fetch: the pages were just written, so
    /// they are in the page cache) runs on the calling task; a longer one on the blocking pool.
    ///
    /// # Errors
    /// [`LogError::OffsetTrimmed`] below the first retained offset; [`LogError::Corrupt`].
    pub async fn read_frames(&self, from: u64, max_bytes: usize) -> Result<FrameChunk, LogError> {
        let shared = self.inner.shared.clone();
        if shared.config.fault_injector.is_none() && shared.frames_span(from) <= INLINE_READ_BYTES {
            // Two thread hand-offs (to the blocking pool and back) cost more than this `pread`
            // from the page cache (issue 14: once per follower per commit round).
            return shared.read_frames_blocking(from, max_bytes);
        }
        tokio::task::spawn_blocking(move || shared.read_frames_blocking(from, max_bytes))
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// Appends frames fetched from the leader as they are (offsets, terms, timestamps, producer
    /// ids and sequences, batch boundaries, control records): `bytes` must start at this log's end
    /// and hold whole batches with dense offsets and terms not below the log's last term. Every
    /// frame is verified before anything is written; the bytes are then written unchanged (one
    /// write per run of batches that fits the active segment). Term changes go to the epoch cache
    /// (persisted before the records), producer batches to the producer table. Durable on return
    /// whatever `--durability` says (a fetch from N promises everything below N is durable);
    /// returns the new log end. Empty `bytes` write nothing but still make the log durable.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] for frames that fail their CRC or do not fit (not whole batches, not
    /// dense, not starting at the log end; nothing is written), [`LogError::RecordTooLarge`],
    /// [`LogError::StaleTerm`] (first term below the log's last term; nothing is written), I/O
    /// errors (the store is then poisoned; batches before a segment roll may already be stored),
    /// [`LogError::Poisoned`], [`LogError::Closed`].
    pub async fn append_frames(&self, bytes: Bytes) -> Result<u64, LogError> {
        let cfg = &self.inner.shared.config;
        let (max, interval) = (cfg.max_record_bytes, cfg.index_interval_bytes);
        // CRC of a large chunk is worth taking off the async workers.
        let frames = if bytes.len() > VERIFY_INLINE_BYTES {
            tokio::task::spawn_blocking(move || frames::verify(bytes, max, interval))
                .await
                .map_err(|_| LogError::Closed)??
        } else {
            frames::verify(bytes, max, interval)?
        };
        self.send(|reply| Command::AppendFrames { frames, reply })?
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// A new leader's first record: a term-start control record (no payload, skipped by reads)
    /// for `term`, durable on return whatever `--durability` says; returns its offset. The high
    /// watermark moves in a term only past this record (`docs/replication.md`, commit).
    ///
    /// # Errors
    /// As [`append`](Self::append) ([`LogError::StaleTerm`] for a term below the log's last).
    pub async fn begin_term(&self, term: u64) -> Result<u64, LogError> {
        self.send(|reply| Command::BeginTerm { term, reply })?
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// One past the last durable record: the log end a follower reports and the leader counts.
    /// At or above [`high_watermark`](Self::high_watermark) on a replicated log (and under
    /// `always`, equal to [`end_offset`](Self::end_offset)).
    pub fn durable_end(&self) -> u64 {
        self.inner.shared.state.read().durable
    }

    /// One past the last record [`read_frames`](Self::read_frames) serves: the log end of a
    /// replicated log under `always` (written records before their sync included: a leader's
    /// followers fetch while it syncs), else [`durable_end`](Self::durable_end).
    pub fn servable_end(&self) -> u64 {
        self.inner.shared.state.read().servable()
    }

    /// A watch of [`servable_end`](Self::servable_end), for a leader holding a fetch.
    pub fn subscribe_servable(&self) -> watch::Receiver<u64> {
        self.inner.shared.servable.subscribe()
    }

    /// A watch of [`durable_end`](Self::durable_end) (it goes down only with a truncation). What a
    /// writer waiting for its own (or an earlier) record to be stored should watch, since
    /// [`subscribe`](Self::subscribe) follows the high watermark.
    pub fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.inner.shared.durable.subscribe()
    }

    /// One past the last committed record. Reads ([`read`](Self::read),
    /// [`subscribe`](Self::subscribe), [`wait_for`](Self::wait_for)) stop here. With
    /// `LogConfig::replicated` false it follows the log end by itself ([`end_offset`]: the durable
    /// end under `always`; under `interval`/`never` acknowledged records are readable before
    /// their sync, as they always were).
    ///
    /// [`end_offset`]: Self::end_offset
    pub fn high_watermark(&self) -> u64 {
        self.inner.shared.state.read().high_watermark()
    }

    /// Moves the high watermark up to `hw` (capped at the durable end; never down: a lower value
    /// is ignored) and exposes it at once; `hw.checkpoint` follows in the background (one write
    /// at a time, each of the newest HW, so the `fdatasync` is off the commit path and shared by
    /// every move made meanwhile). Returns the HW now exposed. What replication uses: an HW is
    /// computed from durable log ends, so the records below it are already on every in-sync
    /// replica's disk; the checkpoint only sets where a restarted node starts serving reads and
    /// refusing truncation (docs/replication.md, "The high watermark checkpoint"). A failed
    /// checkpoint write is logged and retried with the next move. Without
    /// `LogConfig::replicated` it changes nothing and returns [`high_watermark`](Self::high_watermark).
    pub fn advance_high_watermark(&self, hw: u64) -> u64 {
        let shared = &self.inner.shared;
        if !shared.config.replicated {
            return self.high_watermark();
        }
        let exposed = {
            let mut state = shared.state.write();
            let target = hw.min(state.durable);
            if target <= state.hw {
                return state.high_watermark();
            }
            state.hw = target;
            state.hw_reserved = state.hw_reserved.max(target);
            state.high_watermark()
        };
        shared.refresh_visible();
        if !shared.hw_persisting.swap(true, Ordering::AcqRel) {
            shared.runtime.spawn(persist_behind(Arc::downgrade(shared)));
        }
        exposed
    }

    /// Moves the high watermark up to `hw` (capped at the durable end; never down: a lower value
    /// is ignored), persisting it in `hw.checkpoint` before readers see it (and with it any HW
    /// [`advance_high_watermark`](Self::advance_high_watermark) exposed before). Concurrent
    /// callers are coalesced: the one writing persists the largest value asked meanwhile, so one
    /// `fdatasync` serves them all. Returns the HW now exposed, which is on disk when this returns.
    /// Without `LogConfig::replicated` it changes nothing and returns
    /// [`high_watermark`](Self::high_watermark).
    ///
    /// # Errors
    /// I/O errors writing the checkpoint (the HW then stays where it was).
    pub async fn set_high_watermark(&self, hw: u64) -> Result<u64, LogError> {
        let shared = &self.inner.shared;
        if !shared.config.replicated {
            return Ok(self.high_watermark());
        }
        {
            let mut pending = shared.hw_pending.lock();
            *pending = (*pending).max(hw);
        }
        let mut checkpoint = shared.hw_file.lock().await;
        let target = {
            let mut state = shared.state.write();
            // Take what every caller waiting so far asked; they find it done when their turn comes.
            let asked = std::mem::take(&mut *shared.hw_pending.lock()).max(hw);
            // At least what is exposed already, which may not be on disk yet.
            let target = asked.min(state.durable).max(state.hw);
            state.hw_reserved = state.hw_reserved.max(target);
            if target <= checkpoint.persisted() {
                // On disk already (a checkpoint loaded past a log end that was cut back holds
                // more): only expose it.
                state.hw = target;
                None
            } else {
                Some(target)
            }
        };
        let Some(target) = target else {
            drop(checkpoint);
            shared.refresh_visible();
            return Ok(self.high_watermark());
        };
        let (file, path, seq) = checkpoint.next_write();
        let file = tokio::task::spawn_blocking(move || hw::store(file, &path, seq, target))
            .await
            .map_err(|_| LogError::Closed)??;
        checkpoint.stored(file, seq, target);
        let exposed = {
            let mut state = shared.state.write();
            state.hw = state.hw.max(target.min(state.durable));
            state.high_watermark()
        };
        drop(checkpoint);
        shared.refresh_visible();
        Ok(exposed)
    }

    /// This data directory's incarnation: a UUID (v4, 32 hex digits) created with the directory
    /// (`<dir>/incarnation`) and never changed. A node that comes back with an empty volume is
    /// a new ISR member (KIP-903); a restart on the same disk is not (followers report only
    /// durable offsets, so a restart loses nothing they reported).
    pub fn incarnation(&self) -> String {
        self.inner.shared.incarnation.clone()
    }
}

/// The background checkpoint writer started by [`LogStore::advance_high_watermark`]: writes the
/// exposed HW to `hw.checkpoint` until the file holds the newest one, then ends. Holds the store
/// only through `shared` (weak) and never across a wait, so it never keeps a closed store's
/// directory locked; it stops once the store is closed or gone.
/// Least time between two `hw.checkpoint` writes behind [`LogStore::advance_high_watermark`]
/// (Kafka checkpoints its HW every 5 s).
const HW_CHECKPOINT_SPACING: Duration = Duration::from_millis(100);

async fn persist_behind(shared: Weak<Shared>) {
    loop {
        let Some(file) = shared.upgrade().map(|s| s.hw_file.clone()) else {
            return;
        };
        let mut checkpoint = file.lock_owned().await;
        let target = {
            let Some(s) = shared.upgrade() else { return };
            if s.closed.load(Ordering::Acquire) {
                s.hw_persisting.store(false, Ordering::Release);
                return;
            }
            let target = s.state.read().hw;
            if target <= checkpoint.persisted() {
                s.hw_persisting.store(false, Ordering::Release);
                // An advance between the look and the flag saw it still set and started nobody.
                if s.state.read().hw <= checkpoint.persisted() || s.hw_persisting.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                continue;
            }
            target
        };
        let (file, path, seq) = checkpoint.next_write();
        match tokio::task::spawn_blocking(move || hw::store(file, &path, seq, target)).await {
            Ok(Ok(file)) => {
                checkpoint.stored(file, seq, target);
                drop(checkpoint);
                // Spaced out: every HW move of a busy log would otherwise cost an `fdatasync`
                // beside the log's own (one per commit round on every node, all on the same
                // disk), and nothing needs the file sooner (`close` writes the last value).
                tokio::time::sleep(HW_CHECKPOINT_SPACING).await;
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, hw = target, "cannot persist the high watermark; retrying with its next move");
                if let Some(s) = shared.upgrade() {
                    s.hw_persisting.store(false, Ordering::Release);
                }
                return;
            }
            // The runtime is shutting down.
            Err(_) => return,
        }
    }
}

/// Write the exposed HW to `hw.checkpoint` unless it is there already (after `close`).
///
/// # Errors
/// I/O errors writing the checkpoint.
async fn persist_exposed(shared: &Arc<Shared>) -> Result<(), LogError> {
    let mut checkpoint = shared.hw_file.lock().await;
    let target = shared.state.read().hw;
    if !shared.config.replicated || target <= checkpoint.persisted() {
        return Ok(());
    }
    let (file, path, seq) = checkpoint.next_write();
    let file = tokio::task::spawn_blocking(move || hw::store(file, &path, seq, target))
        .await
        .map_err(|_| LogError::Closed)??;
    checkpoint.stored(file, seq, target);
    Ok(())
}

/// Fetched chunks up to this size are verified on the calling task; larger ones on the blocking
/// pool.
const VERIFY_INLINE_BYTES: usize = 256 * 1024;
/// Largest [`LogStore::read_frames`] done on the calling task instead of the blocking pool.
const INLINE_READ_BYTES: u64 = 64 * 1024;

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
            if cursor.full() || view.end >= cursor.end || cursor.next == before {
                break;
            }
        }
        Ok(cursor.out)
    }

    /// How many bytes a [`LogStore::read_frames`] from `from` would read at most: from the index
    /// entry at or before `from` to the end of the segment's synced records (0: nothing to read,
    /// or `from` is not in the log, which the read reports).
    fn frames_span(&self, from: u64) -> u64 {
        let guard = self.state.read();
        if from < guard.start || from >= guard.servable() {
            return 0;
        }
        guard
            .view(from)
            .map_or(0, |view| view.len.saturating_sub(view.start.1))
    }

    /// [`LogStore::read_frames`] on the blocking pool: like [`read_blocking`](Self::read_blocking),
    /// without the lock across the disk read, retried if the log was rewritten in place meanwhile.
    fn read_frames_blocking(&self, from: u64, max_bytes: usize) -> Result<FrameChunk, LogError> {
        for attempt in 0..=LOCK_FREE_READ_ATTEMPTS {
            let locked = attempt == LOCK_FREE_READ_ATTEMPTS;
            let guard = self.state.read();
            if from < guard.start {
                return Err(LogError::OffsetTrimmed {
                    offset: from,
                    start: guard.start,
                });
            }
            let bound = guard.servable();
            let view = (from < bound).then(|| guard.view(from)).flatten();
            let Some(view) = view else {
                return Ok(FrameChunk {
                    first: from,
                    end: from,
                    bytes: Bytes::new(),
                });
            };
            let rewrites = guard.rewrites;
            // The last attempt keeps the read lock: it cannot race with a rewrite.
            let guard = if locked {
                Some(guard)
            } else {
                drop(guard);
                None
            };
            if let (None, Some(faults)) = (&guard, &self.config.fault_injector) {
                faults.before_read();
            }
            let read = view.read_frames(from, bound, max_bytes);
            if guard.is_none() && self.state.read().rewrites != rewrites {
                continue; // what was read (or the error) may mix old and new bytes
            }
            let raw = read?;
            return Ok(FrameChunk {
                first: raw.first,
                end: raw.end,
                bytes: raw.bytes,
            });
        }
        Err(LogError::Closed) // not reached: the last attempt returns
    }

    /// Publish where reads end now. Computed inside the watch's lock from the current state, so
    /// concurrent refreshes (the writer, `set_high_watermark`) never publish an older value last.
    /// Never call it while holding `state`.
    fn refresh_visible(&self) {
        self.visible.send_if_modified(|v| {
            let now = self.state.read().read_end();
            let changed = *v != now;
            *v = now;
            changed
        });
    }

    /// Publish the durable end now (as [`refresh_visible`](Self::refresh_visible)), and where
    /// `read_frames` ends.
    fn refresh_durable(&self) {
        self.durable.send_if_modified(|v| {
            let now = self.state.read().durable;
            let changed = *v != now;
            *v = now;
            changed
        });
        self.refresh_servable();
    }

    /// Publish where `read_frames` ends now ([`LogState::servable`]).
    fn refresh_servable(&self) {
        self.servable.send_if_modified(|v| {
            let now = self.state.read().servable();
            let changed = *v != now;
            *v = now;
            changed
        });
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
    /// Where [`LogStore::read_frames`] ends: the log end for a replicated log under `always`
    /// (records written and not yet synced included, see `Writer::expose_written`), else the
    /// durable end.
    fn servable(&self) -> u64 {
        if self.serve_written {
            self.end
        } else {
            self.durable
        }
    }

    /// The high watermark: `hw` for a replicated log, else the visible end.
    fn high_watermark(&self) -> u64 {
        if self.replicated {
            self.hw.min(self.end)
        } else {
            self.end
        }
    }

    /// Whether the retained record at `offset` is a control record.
    fn is_control(&self, offset: u64) -> bool {
        let k = self.segments.partition_point(|s| s.base <= offset);
        k.checked_sub(1)
            .and_then(|k| self.segments.get(k))
            .is_some_and(|s| s.is_control(offset))
    }

    /// Where reads end: the high watermark, less the control records just below it (so that a
    /// reader waiting at a control record's offset is woken only when a readable record follows;
    /// control records are rare, one per leadership, so this walks back a step or two at most).
    fn read_end(&self) -> u64 {
        let mut end = self.high_watermark();
        while end > self.start && self.is_control(end - 1) {
            end -= 1;
        }
        end
    }

    /// A read cursor from `from` up to where reads end; `None` when there is nothing to read.
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
        let end = self.read_end();
        if max_records == 0 || from >= end {
            return Ok(None);
        }
        Ok(Some(ReadCursor {
            next: from,
            end,
            max_records,
            max_bytes,
            bytes: 0,
            out: Vec::new(),
            skip_control: true,
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
