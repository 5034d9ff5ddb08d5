//! [`LogStore`]: the cheap-`Clone` handle the node uses, and the single writer thread behind it
//! that group-commits appends (one write and one `fdatasync` for everything queued), rolls
//! segments, truncates, enforces retention and rolls back a failed write so the log stays
//! consistent. Reads run on the blocking pool against the visible prefix only.

use std::{
    fs::{self, File},
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use super::{
    config::{Durability, LogConfig},
    error::LogError,
    index::{self, SegmentMeta, SegmentSnapshot, SparseIndex},
    producer::{Admit, History, ProducerBatch, Producers},
    record::{self, ProducerSeq, Record},
    recovery,
    segment::{self, FrameInfo, ReadCursor, ScanMode, Segment},
};

/// A group is written out once this many bytes are queued, even if more appends are waiting.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Encoded bytes are written out in pieces of about this size while a group is still being
/// admitted (one `fdatasync` still covers the whole group): the copy into the page cache then
/// reads data that is still in the CPU cache instead of a cold multi-MiB buffer.
const WRITE_CHUNK: usize = 1024 * 1024;
/// How long the writer polls for the next append before sleeping (see `Writer::recv_soon`).
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(100);

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
}

/// State shared between the handles and the writer thread.
#[derive(Debug)]
struct Shared {
    /// The configuration the store was opened with.
    config: LogConfig,
    /// Visible log shape. Readers hold the read lock while reading files so that truncation and
    /// retention (write lock) never pull a file from under them; the writer takes the write lock
    /// only briefly per group.
    state: RwLock<LogState>,
    /// Producer table, updated when a batch is admitted and rolled back if its write fails.
    producers: Mutex<Producers>,
    /// Visible end offset, for tailing readers.
    visible: watch::Sender<u64>,
    /// False after a failed write or sync, until a write succeeds again (readiness).
    writable: AtomicBool,
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
        let writer_state = WriterState {
            active: active.file.clone(),
            active_path: active.path.clone(),
            written_len: active.len,
            next_offset: end,
            last_term: rec.last_term,
            dirty: false,
            last_sync: Instant::now(),
            needs_repair: false,
        };
        let (visible, _) = watch::channel(end);
        let shared = Arc::new(Shared {
            config,
            state: RwLock::new(LogState {
                segments: rec.segments,
                start,
                end,
                last_term: rec.last_term,
            }),
            producers: Mutex::new(rec.producers),
            visible,
            writable: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            _lock: lock,
        });
        let (tx, rx) = mpsc::channel();
        let syncer = spawn_syncer()?;
        let mut writer = Writer {
            shared: shared.clone(),
            rx,
            st: writer_state,
            part: Part::default(),
            inflight: None,
            syncer,
        };
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::io("spawn writer thread", PathBuf::new(), e))?;
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
    /// [`PRODUCER_WINDOW`](super::PRODUCER_WINDOW) batches per producer are remembered; a retry
    /// partly overlapping stored sequences reports only the stored part). Returns once durable
    /// under the configured durability mode. The rules are in `producer::Producers::check`.
    ///
    /// # Errors
    /// [`LogError::EmptyBatch`], [`LogError::RecordTooLarge`], [`LogError::StaleTerm`] (term below
    /// the log's last term), [`LogError::OutOfOrderSequence`] (a gap: retriable),
    /// [`LogError::StaleSequence`], [`LogError::SequenceOverflow`], [`LogError::DiskFull`]/
    /// [`LogError::Io`] (nothing was stored), [`LogError::Closed`].
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

    /// `fdatasync` everything written so far (useful under `interval`/`never`).
    ///
    /// # Errors
    /// I/O errors from the sync; [`LogError::Closed`].
    pub async fn flush(&self) -> Result<(), LogError> {
        self.send(|reply| Command::Flush { reply })?
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// Final sync and stop the writer; other clones then get [`LogError::Closed`] on writes.
    ///
    /// # Errors
    /// I/O errors from the final sync.
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

    /// False after a failed write or sync until an append succeeds again (for readiness).
    pub fn is_writable(&self) -> bool {
        self.inner.shared.writable.load(Ordering::Acquire)
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.shared.config.dir
    }

    /// Number of retained segments (diagnostics and tests).
    pub fn segment_count(&self) -> usize {
        self.inner.shared.state.read().segments.len()
    }
}

impl Shared {
    fn read_blocking(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let state = self.state.read();
        if from < state.start {
            return Err(LogError::OffsetTrimmed {
                offset: from,
                start: state.start,
            });
        }
        let mut cursor = ReadCursor {
            next: from,
            end: state.end,
            max_records,
            max_bytes,
            bytes: 0,
            out: Vec::new(),
        };
        if max_records == 0 || from >= state.end {
            return Ok(cursor.out);
        }
        let first = state
            .segments
            .partition_point(|s| s.base <= from)
            .saturating_sub(1);
        for seg in &state.segments[first..] {
            if cursor.full() {
                break;
            }
            seg.read_into(&mut cursor)?;
        }
        Ok(cursor.out)
    }
}

/// Writer-thread view of the active segment and the not-yet-visible tail.
#[derive(Debug)]
struct WriterState {
    /// The active segment file.
    active: Arc<File>,
    /// Its path, for errors.
    active_path: PathBuf,
    /// Bytes of the active segment that hold committed frames; writes go here.
    written_len: u64,
    /// Next offset to assign (includes admitted, unwritten batches).
    next_offset: u64,
    /// Last term including admitted batches (for fencing).
    last_term: Option<(u64, u64)>,
    /// Written but not synced (interval/never).
    dirty: bool,
    /// When the last sync happened (interval mode).
    last_sync: Instant,
    /// A failed write could not be cut back; do it before the next write.
    needs_repair: bool,
}

/// One reply to send once the part it belongs to is durable.
type Pending = (oneshot::Sender<Result<AppendOutcome, LogError>>, AppendOutcome);

/// Appends admitted since the last write: written together, synced together, acknowledged together.
#[derive(Debug, Default)]
struct Part {
    /// Encoded frames.
    buf: Vec<u8>,
    /// `(offset, position)` of each frame, for the sparse index.
    positions: Vec<(u64, u64)>,
    /// Replies (appended batches and duplicates) waiting on this part.
    replies: Vec<Pending>,
    /// Producer table entries to restore if the write fails.
    undo: Vec<(String, Option<History>)>,
    /// Writer state to restore if the write fails: `(next_offset, last_term)` before the part.
    before: Option<(u64, Option<(u64, u64)>)>,
    /// Newest timestamp in the part.
    max_ts: u64,
    /// Bytes of this part already written (at the segment's `written_len`) while admitting.
    flushed: u64,
    /// A failed early write: the whole part fails when committed.
    write_error: Option<LogError>,
    /// Active segment length before the part was written (where a failure cuts back to).
    len_before: u64,
    /// Active segment length after the part was written.
    len_after: u64,
    /// Next offset after the part (its visible end once durable).
    next_after: u64,
    /// Last `(term, offset)` after the part.
    last_term_after: Option<(u64, u64)>,
}

/// A part that is written and whose `fdatasync` is running on the sync thread; the writer
/// encodes and writes the next part meanwhile (write/sync pipelining under `always`).
struct Inflight {
    /// The written part, acknowledged when the sync succeeds.
    part: Part,
    /// Result of the sync.
    done: mpsc::Receiver<std::io::Result<()>>,
}

/// A request to the sync thread: sync this file, report here.
type SyncJob = (Arc<File>, mpsc::SyncSender<std::io::Result<()>>);

/// Start the thread that runs `fdatasync` for the writer, so that the next group's write overlaps
/// the current group's sync. It stops when the writer drops its sender.
fn spawn_syncer() -> Result<mpsc::Sender<SyncJob>, LogError> {
    let (tx, rx) = mpsc::channel::<SyncJob>();
    std::thread::Builder::new()
        .name("log-sync".into())
        .spawn(move || {
            for (file, done) in rx {
                let _ = done.send(file.sync_data());
            }
        })
        .map_err(|e| LogError::io("spawn sync thread", PathBuf::new(), e))?;
    Ok(tx)
}

/// The single writer: owns all mutations of the log.
struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    st: WriterState,
    part: Part,
    /// The part whose sync is running, if any (only under `always`).
    inflight: Option<Inflight>,
    /// Queue to the sync thread.
    syncer: mpsc::Sender<SyncJob>,
}

impl Writer {
    fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    fn run(&mut self) {
        loop {
            let cmd = match self.config().durability {
                Durability::Interval(every) if self.st.dirty => {
                    let wait = every.saturating_sub(self.st.last_sync.elapsed());
                    match self.rx.recv_timeout(wait) {
                        Ok(cmd) => cmd,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.background_sync();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                // A sync is running: take more work if some is queued, else wait for the sync.
                _ if self.inflight.is_some() => match self.rx.try_recv() {
                    Ok(cmd) => cmd,
                    Err(mpsc::TryRecvError::Empty) => {
                        let _ = self.settle_all();
                        continue;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                },
                _ => match self.recv_soon() {
                    Ok(cmd) => cmd,
                    Err(_) => break,
                },
            };
            if self.process(cmd) {
                return;
            }
            // Group commit: take everything already queued into the same write + sync.
            while let Ok(cmd) = self.rx.try_recv() {
                if self.process(cmd) {
                    return;
                }
                if self.part.flushed as usize + self.part.buf.len() >= MAX_GROUP_BYTES {
                    self.commit_part();
                }
            }
            self.commit_part();
            if let Durability::Interval(every) = self.config().durability {
                if self.st.dirty && self.st.last_sync.elapsed() >= every {
                    self.background_sync();
                }
            }
        }
        if self.drain().is_ok() && self.st.dirty {
            let _ = self.sync();
        }
    }

    /// Under `always`, poll the queue for a short while before sleeping: acknowledged appenders
    /// usually send again within microseconds, and catching them without a futex sleep/wake
    /// round trip shortens every group-commit cycle. Otherwise (or after the spin) block.
    fn recv_soon(&mut self) -> Result<Command, mpsc::RecvError> {
        if self.config().durability == Durability::Always {
            let deadline = Instant::now() + SPIN_BEFORE_SLEEP;
            while Instant::now() < deadline {
                match self.rx.try_recv() {
                    Ok(cmd) => return Ok(cmd),
                    Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(mpsc::TryRecvError::Disconnected) => return Err(mpsc::RecvError),
                }
            }
        }
        self.rx.recv()
    }

    /// Write out the current part and wait for every running sync: afterwards everything
    /// admitted is durable (or failed and rolled back).
    fn drain(&mut self) -> Result<(), LogError> {
        self.commit_part();
        self.settle_all()
    }

    /// Handle one command; true when the writer must stop.
    fn process(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Append {
                term,
                producer,
                payloads,
                reply,
            } => self.admit(term, producer, payloads, reply),
            Command::Truncate { from, reply } => {
                let _ = reply.send(self.drain().and_then(|()| self.truncate(from)));
            }
            Command::Retention { reply } => {
                let _ = self.drain();
                let _ = reply.send(Ok(self.retention()));
            }
            Command::Flush { reply } => {
                let _ = reply.send(self.drain().and_then(|()| self.sync()));
            }
            Command::Close { reply } => {
                let _ = reply.send(self.drain().and_then(|()| self.sync()));
                // Wake tailing readers so that `wait_for` can report the store as closed.
                self.shared.closed.store(true, Ordering::Release);
                self.shared.visible.send_modify(|_| {});
                return true;
            }
        }
        false
    }

    fn admit(
        &mut self,
        term: u64,
        producer: Option<ProducerBatch>,
        payloads: Vec<Bytes>,
        reply: oneshot::Sender<Result<AppendOutcome, LogError>>,
    ) {
        if let Some((last_term, _)) = self.st.last_term {
            if term < last_term {
                let _ = reply.send(Err(LogError::StaleTerm { term, last_term }));
                return;
            }
        }
        let count = payloads.len() as u32;
        if let Some(p) = &producer {
            match self.shared.producers.lock().admit(p, count, now_ms()) {
                Ok(Admit::New) => {}
                Ok(Admit::Duplicate { first, count }) => {
                    // Acknowledged with the current part: the original may still be syncing.
                    self.part
                        .replies
                        .push((reply, AppendOutcome::Duplicate { first, count }));
                    return;
                }
                Err(refused) => {
                    let _ = reply.send(Err(refused));
                    return;
                }
            }
        }
        let pid_len = producer.as_ref().map_or(0, |p| p.producer_id.len());
        let batch_len: u64 = payloads
            .iter()
            .map(|p| record::frame_len(pid_len, p.len()) as u64)
            .sum();
        let used = self.st.written_len + self.part.flushed + self.part.buf.len() as u64;
        if used > 0 && used + batch_len > self.config().segment_bytes {
            if let Err(e) = self.drain().and_then(|()| self.roll()) {
                tracing::error!(error = %e, "segment roll failed");
                self.shared.writable.store(false, Ordering::Release);
                let _ = reply.send(Err(e));
                return;
            }
        }
        if self.part.before.is_none() {
            self.part.before = Some((self.st.next_offset, self.st.last_term));
        }
        let first = self.st.next_offset;
        let timestamp_ms = now_ms();
        for (i, payload) in payloads.into_iter().enumerate() {
            let offset = first + i as u64;
            let rec = Record {
                offset,
                term,
                timestamp_ms,
                producer: producer.as_ref().map(|p| ProducerSeq {
                    producer_id: p.producer_id.clone(),
                    seq: p.seq + i as u64,
                }),
                payload,
            };
            let position = self.st.written_len + self.part.flushed + self.part.buf.len() as u64;
            self.part.positions.push((offset, position));
            record::encode(&mut self.part.buf, &rec, count - 1 - i as u32);
        }
        if let Some(p) = &producer {
            let prior =
                self.shared
                    .producers
                    .lock()
                    .record(&p.producer_id, p.seq, count, first, timestamp_ms);
            self.part.undo.push((p.producer_id.clone(), prior));
        }
        self.part.max_ts = self.part.max_ts.max(timestamp_ms);
        self.st.next_offset = first + count as u64;
        self.st.last_term = Some((term, first + count as u64 - 1));
        self.part
            .replies
            .push((reply, AppendOutcome::Appended { first, count }));
        if self.part.buf.len() >= WRITE_CHUNK {
            self.write_chunk();
        }
    }

    /// Write the encoded bytes of the part being admitted now (no sync, not yet visible).
    fn write_chunk(&mut self) {
        let mut buf = std::mem::take(&mut self.part.buf);
        if self.part.write_error.is_none() {
            let at = self.st.written_len + self.part.flushed;
            match self.write_part(&buf, at) {
                Ok(()) => self.part.flushed += buf.len() as u64,
                Err(e) => self.part.write_error = Some(e),
            }
        }
        buf.clear();
        self.part.buf = buf;
    }

    /// Write the current part. Under `always`, wait for the previous part's sync (which ran while
    /// this part was being admitted and written), then start this part's sync; it is acknowledged
    /// when that sync completes. Otherwise make it visible and acknowledge it right away.
    fn commit_part(&mut self) {
        let mut part = std::mem::take(&mut self.part);
        if part.buf.is_empty() && part.flushed == 0 && part.write_error.is_none() {
            // Only duplicates: they may point into the part still syncing, so they wait for it.
            match &mut self.inflight {
                Some(inflight) => inflight.part.replies.append(&mut part.replies),
                None => {
                    for (reply, outcome) in part.replies {
                        let _ = reply.send(Ok(outcome));
                    }
                }
            }
            return;
        }
        part.len_before = self.st.written_len;
        let written = match part.write_error.take() {
            Some(e) => Err(e),
            None => self.write_part(&part.buf, self.st.written_len + part.flushed),
        };
        if let Err(e) = written {
            // This part failed; the one still syncing may yet succeed. Undo newest first.
            let older = self.settle();
            let mut parts = vec![part];
            parts.extend(older.err().map(|b| b.0));
            self.fail_parts(parts, e);
            return;
        }
        self.st.written_len += part.flushed + part.buf.len() as u64;
        part.len_after = self.st.written_len;
        part.next_after = self.st.next_offset;
        part.last_term_after = self.st.last_term;
        // Keep the encode buffer's allocation for the next group (no regrowth, no page faults).
        let mut buf = std::mem::take(&mut part.buf);
        buf.clear();
        self.part.buf = buf;
        if self.config().durability != Durability::Always {
            self.st.dirty = true;
            self.publish(part);
            return;
        }
        if let Err(failed) = self.settle() {
            let (older, e) = *failed;
            // The earlier sync failed: this part's bytes sit after the bad ones; drop both.
            self.fail_parts(vec![part, older], e);
            return;
        }
        let (tx, done) = mpsc::sync_channel(1);
        match self
            .shared
            .config
            .fault_injector
            .as_ref()
            .and_then(|f| f.sync_error())
        {
            Some(e) => {
                let _ = tx.send(Err(e));
            }
            None => {
                if let Err(mpsc::SendError((file, tx))) = self.syncer.send((self.st.active.clone(), tx)) {
                    let _ = tx.send(file.sync_data()); // sync thread gone: sync inline
                }
            }
        }
        self.inflight = Some(Inflight { part, done });
    }

    /// Wait for the running sync, if any, and acknowledge its part. On failure, return the part
    /// (not yet rolled back: the caller undoes newer parts first).
    fn settle(&mut self) -> Result<(), Box<(Part, LogError)>> {
        let Some(inflight) = self.inflight.take() else {
            return Ok(());
        };
        let res = inflight
            .done
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("sync thread stopped")));
        match res {
            Ok(()) => {
                self.st.last_sync = Instant::now();
                self.publish(inflight.part);
                Ok(())
            }
            Err(e) => Err(Box::new((
                inflight.part,
                LogError::io("sync segment", &self.st.active_path, e),
            ))),
        }
    }

    /// [`settle`](Self::settle), rolling back on failure.
    fn settle_all(&mut self) -> Result<(), LogError> {
        self.settle().map_err(|failed| {
            let (part, e) = *failed;
            let copy = e.duplicate();
            self.fail_parts(vec![part], e);
            copy
        })
    }

    /// Make a written (and, under `always`, synced) part visible and acknowledge it.
    fn publish(&mut self, part: Part) {
        let end = part.next_after;
        {
            let mut state = self.shared.state.write();
            let interval = self.shared.config.index_interval_bytes;
            if let Some(seg) = state.segments.last_mut() {
                for &(offset, position) in &part.positions {
                    seg.index.maybe_add(offset, position, interval);
                }
                seg.len = part.len_after;
                seg.end = end;
                seg.last_term = part.last_term_after;
                seg.max_timestamp_ms = seg.max_timestamp_ms.max(part.max_ts);
            }
            state.end = end;
            state.last_term = part.last_term_after;
        }
        self.shared.writable.store(true, Ordering::Release);
        self.shared.visible.send_replace(end);
        for (reply, outcome) in part.replies {
            let _ = reply.send(Ok(outcome));
        }
    }

    /// Roll back failed parts (newest first): restore the producer table and offsets, cut the
    /// file back to where the oldest one started, and fail every reply.
    fn fail_parts(&mut self, parts: Vec<Part>, e: LogError) {
        tracing::error!(error = %e, "append failed; rolling back to the last good position");
        self.shared.writable.store(false, Ordering::Release);
        let mut replies = Vec::new();
        let mut cut_to = self.st.written_len;
        for part in parts {
            let mut producers = self.shared.producers.lock();
            for (id, prior) in part.undo.into_iter().rev() {
                producers.restore(&id, prior);
            }
            drop(producers);
            if let Some((next, last_term)) = part.before {
                self.st.next_offset = next;
                self.st.last_term = last_term;
            }
            cut_to = cut_to.min(part.len_before);
            replies.extend(part.replies);
        }
        self.st.written_len = cut_to;
        self.cut_back();
        for (reply, _) in replies {
            let _ = reply.send(Err(e.duplicate()));
        }
    }

    /// Write encoded bytes at position `at` of the active segment (no sync).
    fn write_part(&mut self, buf: &[u8], at: u64) -> Result<(), LogError> {
        let path = &self.st.active_path;
        if self.st.needs_repair {
            self.st
                .active
                .set_len(self.st.written_len)
                .map_err(|e| LogError::io("truncate segment", path, e))?;
            self.st.needs_repair = false;
        }
        if let Some(e) = self
            .shared
            .config
            .fault_injector
            .as_ref()
            .and_then(|f| f.write_error())
        {
            // Simulate a disk filling up mid-write: half the bytes land, then the error.
            let _ = self.st.active.write_all_at(&buf[..buf.len() / 2], at);
            return Err(LogError::io("write segment", path, e));
        }
        self.st
            .active
            .write_all_at(buf, at)
            .map_err(|e| LogError::io("write segment", path, e))
    }

    /// After a failed write or sync: remove whatever part of it reached the file.
    fn cut_back(&mut self) {
        if let Err(e) = self.st.active.set_len(self.st.written_len) {
            tracing::error!(error = %e, "could not cut a failed write back; will retry before the next write");
            self.st.needs_repair = true;
        }
    }

    fn sync(&mut self) -> Result<(), LogError> {
        let path = &self.st.active_path;
        if let Some(e) = self
            .shared
            .config
            .fault_injector
            .as_ref()
            .and_then(|f| f.sync_error())
        {
            return Err(LogError::io("sync segment", path, e));
        }
        self.st
            .active
            .sync_data()
            .map_err(|e| LogError::io("sync segment", path, e))?;
        self.st.dirty = false;
        self.st.last_sync = Instant::now();
        Ok(())
    }

    /// The `interval` timer fired: sync what is written. Records are already acknowledged, so a
    /// failure can only be reported (and readiness dropped) until a later sync succeeds.
    fn background_sync(&mut self) {
        match self.sync() {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "background sync failed");
                self.shared.writable.store(false, Ordering::Release);
                self.st.last_sync = Instant::now();
            }
        }
    }

    /// Seal the active segment (sync it, persist its index) and start a new one at the current
    /// end, with the last term and the producers the sealed segment changed; then apply retention.
    fn roll(&mut self) -> Result<(), LogError> {
        self.st
            .active
            .sync_data()
            .map_err(|e| LogError::io("sync segment", &self.st.active_path, e))?;
        self.st.dirty = false;
        let dir = self.shared.config.dir.clone();
        let (meta, base) = {
            let state = self.shared.state.read();
            let seg = state.segments.last().ok_or(LogError::Closed)?;
            let meta = SegmentMeta {
                base: seg.base,
                end: seg.end,
                file_len: seg.len,
                last_term: seg.last_term,
                max_timestamp_ms: seg.max_timestamp_ms,
                index: seg.index.clone(),
            };
            (meta, seg.end)
        };
        index::write_side_file(&segment::index_path(&dir, meta.base), &meta)?;
        let snapshot = SegmentSnapshot {
            last_term: self.st.last_term,
            producers: self.shared.producers.lock().changed_since(meta.base),
        };
        index::write_side_file(&segment::snapshot_path(&dir, base), &snapshot)?;
        let path = segment::log_path(&dir, base);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| LogError::io("create segment", &path, e))?;
        if let Err(e) = index::sync_dir(&dir) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        let file = Arc::new(file);
        self.shared.state.write().segments.push(Segment {
            base,
            path: path.clone(),
            file: file.clone(),
            end: base,
            len: 0,
            index: SparseIndex::default(),
            last_term: None,
            max_timestamp_ms: 0,
        });
        self.st.active = file;
        self.st.active_path = path;
        self.st.written_len = 0;
        self.st.needs_repair = false;
        tracing::debug!(base, "rolled to a new segment");
        self.retention();
        Ok(())
    }

    /// Delete whole segments from the front while over the byte or age limit (never the active
    /// one). Returns the first retained offset.
    fn retention(&mut self) -> u64 {
        let cfg = &self.shared.config;
        let cutoff = cfg
            .retention_age
            .map(|age| now_ms().saturating_sub(age.as_millis() as u64));
        let mut doomed = Vec::new();
        let start = {
            let mut state = self.shared.state.write();
            let mut total: u64 = state.segments.iter().map(|s| s.len).sum();
            while state.segments.len() > 1 {
                let first = &state.segments[0];
                let too_big = cfg.retention_bytes.is_some_and(|max| total > max);
                let too_old = cutoff.is_some_and(|c| first.max_timestamp_ms < c);
                if !(too_big || too_old) {
                    break;
                }
                total -= first.len;
                doomed.push(state.segments.remove(0));
            }
            state.start = state.segments.first().map_or(state.end, |s| s.base);
            state.start
        };
        for seg in doomed {
            tracing::info!(file = %seg.path.display(), base = seg.base, end = seg.end, "retention: deleting segment");
            for p in [
                seg.path.clone(),
                segment::index_path(&cfg.dir, seg.base),
                segment::snapshot_path(&cfg.dir, seg.base),
            ] {
                if let Err(e) = fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(file = %p.display(), error = %e, "retention: could not delete");
                    }
                }
            }
        }
        if let Err(e) = index::sync_dir(&cfg.dir) {
            tracing::warn!(error = %e, "retention: could not sync the directory");
        }
        start
    }

    /// Drop every record at offsets `>= from`. A batch cut in the middle keeps its prefix, whose
    /// batch markers are rewritten so that recovery sees a complete batch and keeps it.
    fn truncate(&mut self, from: u64) -> Result<(), LogError> {
        let dir = self.shared.config.dir.clone();
        let mut state = self.shared.state.write();
        if from >= state.end {
            return Ok(());
        }
        if from < state.start {
            return Err(LogError::TruncateBeforeStart {
                from,
                start: state.start,
            });
        }
        let k = state
            .segments
            .partition_point(|s| s.base <= from)
            .saturating_sub(1);
        let seg = &state.segments[k];
        let position = locate(seg, from)?;
        // Rebuild the producer table and last term from the segment's snapshot and its kept prefix.
        let expiry = self.shared.config.producer_id_expiry;
        let (mut producers, mut last_term) =
            recovery::state_before(&dir, &state.segments[..k], seg.base, expiry)?;
        let mut prefix = segment::read_at(&seg.file, &seg.path, 0, position as usize)?;
        let scan = segment::scan(&seg.path, &prefix, seg.base, ScanMode::RepairTail, |batch| {
            recovery::apply_batch(&mut producers, batch);
            if let Some(f) = batch.last() {
                last_term = Some((f.term, f.offset));
            }
        })?;
        if let Some(torn) = scan.torn {
            let cut = &mut prefix[torn.position as usize..];
            let frames = rewrite_batch_tail(cut, &seg.path, torn.position)?;
            seg.file
                .write_all_at(cut, torn.position)
                .map_err(|e| LogError::io("rewrite batch markers", &seg.path, e))?;
            recovery::apply_batch(&mut producers, &frames);
            if let Some(f) = frames.last() {
                last_term = Some((f.term, f.offset));
            }
        }
        let in_seg = last_term.filter(|&(_, o)| o >= seg.base);
        let removed: Vec<Segment> = state.segments.drain(k + 1..).collect();
        let seg = &mut state.segments[k];
        seg.file
            .set_len(position)
            .map_err(|e| LogError::io("truncate segment", &seg.path, e))?;
        seg.file
            .sync_all()
            .map_err(|e| LogError::io("sync segment", &seg.path, e))?;
        seg.len = position;
        seg.end = from;
        seg.index.truncate(from);
        seg.last_term = in_seg;
        let (active, active_path, seg_base) = (seg.file.clone(), seg.path.clone(), seg.base);
        state.end = from;
        state.last_term = last_term;
        drop(state);
        let _ = fs::remove_file(segment::index_path(&dir, seg_base)); // no longer sealed
        for s in removed {
            for p in [
                s.path.clone(),
                segment::index_path(&dir, s.base),
                segment::snapshot_path(&dir, s.base),
            ] {
                let _ = fs::remove_file(p);
            }
        }
        index::sync_dir(&dir)?;
        *self.shared.producers.lock() = producers;
        self.st.active = active;
        self.st.active_path = active_path;
        self.st.written_len = position;
        self.st.next_offset = from;
        self.st.last_term = last_term;
        self.st.needs_repair = false;
        self.shared.visible.send_replace(from);
        tracing::warn!(from, "log truncated");
        Ok(())
    }
}

/// Re-encode the frames of a batch prefix (all of `bytes`, starting at file position `at`) so
/// their batch markers count down to 0 at the last kept frame. Returns their frame facts.
fn rewrite_batch_tail(bytes: &mut [u8], path: &std::path::Path, at: u64) -> Result<Vec<FrameInfo>, LogError> {
    let mut frames = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let f = record::decode(&bytes[pos..], |r| Bytes::copy_from_slice(&bytes[pos..][r])).map_err(|e| {
            LogError::Corrupt {
                file: path.to_owned(),
                position: at + pos as u64,
                reason: format!("{e:?}"),
            }
        })?;
        frames.push((pos, f));
        pos += frames.last().map_or(0, |(_, f)| f.len);
    }
    let n = frames.len();
    let mut infos = Vec::with_capacity(n);
    for (i, (pos, f)) in frames.into_iter().enumerate() {
        let mut buf = Vec::with_capacity(f.len);
        record::encode(&mut buf, &f.record, (n - 1 - i) as u32);
        bytes[pos..pos + f.len].copy_from_slice(&buf);
        infos.push(FrameInfo {
            offset: f.record.offset,
            position: at + pos as u64,
            term: f.record.term,
            timestamp_ms: f.record.timestamp_ms,
            producer: f.record.producer,
        });
    }
    Ok(infos)
}

/// Byte position of record `offset` in `seg`.
fn locate(seg: &Segment, offset: u64) -> Result<u64, LogError> {
    let (mut off, mut pos) = seg.index.lookup(offset, seg.base);
    while off < offset {
        let head = segment::read_at(&seg.file, &seg.path, pos, record::PREFIX_LEN)?;
        let body = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let frame = segment::read_at(&seg.file, &seg.path, pos, record::PREFIX_LEN + body)?;
        let f = record::decode(&frame, |_| Bytes::new()).map_err(|e| LogError::Corrupt {
            file: seg.path.clone(),
            position: pos,
            reason: format!("{e:?}"),
        })?;
        off += 1;
        pos += f.len as u64;
    }
    Ok(pos)
}
