//! The single writer thread and its sync thread: admits appends into a group (one write and one
//! `fdatasync` for everything queued), pipelines the next group's write with the current group's
//! sync under `always`, publishes durable groups to readers, and rolls back a failed write or sync.
//! Replicated frames (`append_frames`) and term-start control records join the same groups; they
//! are written as received and synced before their reply whatever the durability mode.
//! A failed write or sync poisons the store: appends are refused until the active segment has
//! been reopened and its tail re-verified from disk (`maintenance::recover_tail`), because after a
//! failed `fdatasync` the kernel may have dropped the dirty pages and a retried sync can falsely
//! succeed (PostgreSQL's "fsyncgate"). Roll, retention, truncation and recovery live in
//! `maintenance`.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{atomic::Ordering, mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{now_ms, AppendOutcome, Command, LogState, Shared};
use crate::log::{
    config::{Durability, LogConfig},
    error::LogError,
    fault::FaultInjector,
    frames::VerifiedFrames,
    producer::{Admit, History, ProducerBatch},
    record::{self, ProducerSeq, Record},
    segment::Segment,
};

/// A group is written out once this many bytes are queued, even if more appends are waiting.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Encoded bytes are written out in pieces of about this size while a group is still being
/// admitted (one `fdatasync` still covers the whole group): the copy into the page cache then
/// reads data that is still in the CPU cache instead of a cold multi-MiB buffer.
const WRITE_CHUNK: usize = 1024 * 1024;
/// Space reserved ahead of the writes in the active segment (`fallocate`), so that most
/// `fdatasync`s write the data only: an append that grows the file makes every sync write the
/// inode too (its size), one more device write on each commit (issue 14; BENCHMARKS.md). The
/// reserved tail reads as zeros, which the recovery cuts like any torn tail, and a roll cuts it
/// before the segment is sealed.
const PREALLOCATE_BYTES: u64 = 4 * 1024 * 1024;
/// How long the writer polls for the next append before sleeping (see `Writer::recv_soon`), when
/// the last group had more than one command.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(100);
/// A poisoned store retries its recovery by itself after this long, doubling per failed attempt
/// up to [`RECOVERY_RETRY_MAX`] (a re-verification reads the active segment from disk).
const RECOVERY_RETRY_MIN: Duration = Duration::from_millis(100);
/// See [`RECOVERY_RETRY_MIN`].
const RECOVERY_RETRY_MAX: Duration = Duration::from_secs(10);

/// Writer-thread view of the active segment and the not-yet-visible tail.
#[derive(Debug)]
pub(super) struct WriterState {
    /// The active segment file.
    pub(super) active: Arc<File>,
    /// Its path, for errors.
    pub(super) active_path: PathBuf,
    /// Bytes of the active segment that hold committed frames; writes go here.
    pub(super) written_len: u64,
    /// Next offset to assign (includes admitted, unwritten batches).
    pub(super) next_offset: u64,
    /// Last term including admitted batches (for fencing).
    pub(super) last_term: Option<(u64, u64)>,
    /// Written but not synced (interval/never).
    pub(super) dirty: bool,
    /// When the last sync happened (interval mode).
    last_sync: Instant,
    /// Bytes of the active segment covered by the last successful sync (or found on disk at open):
    /// the most a recovery after a failed sync may keep.
    pub(super) synced_len: u64,
    /// The offset at `synced_len`.
    pub(super) synced_end: u64,
    /// Bytes of the active segment's file reserved so far (its length: `written_len` plus the
    /// zeros [`PREALLOCATE_BYTES`] reserved ahead). Only a hint: a low value costs one more
    /// `fallocate`, a high one plain growing appends; every cut of the file resets it.
    pub(super) allocated_len: u64,
}

impl WriterState {
    /// Positioned at the end of the recovered `active` segment, with the recovered last term.
    pub(super) fn at_end(active: &Segment, last_term: Option<(u64, u64)>) -> WriterState {
        WriterState {
            active: active.file.clone(),
            active_path: active.path.clone(),
            written_len: active.len,
            next_offset: active.end,
            last_term,
            dirty: false,
            last_sync: Instant::now(),
            synced_len: active.len,
            synced_end: active.end,
            allocated_len: active.len,
        }
    }
}

/// One reply to send once the part it belongs to is durable (or failed).
enum Reply {
    /// An `append`, with its outcome.
    Append(oneshot::Sender<Result<AppendOutcome, LogError>>, AppendOutcome),
    /// An `append_frames` (the new log end) or a `begin_term` (the record's offset).
    Offset(oneshot::Sender<Result<u64, LogError>>, u64),
}

impl Reply {
    /// Answer with the outcome.
    fn ok(self) {
        match self {
            Reply::Append(tx, outcome) => {
                let _ = tx.send(Ok(outcome));
            }
            Reply::Offset(tx, offset) => {
                let _ = tx.send(Ok(offset));
            }
        }
    }

    /// Answer with `e`.
    fn fail(self, e: LogError) {
        match self {
            Reply::Append(tx, _) => {
                let _ = tx.send(Err(e));
            }
            Reply::Offset(tx, _) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Append(_, outcome) => write!(f, "Append({outcome:?})"),
            Reply::Offset(_, offset) => write!(f, "Offset({offset})"),
        }
    }
}

/// Appends admitted since the last write: written together, synced together, acknowledged together.
#[derive(Debug, Default)]
struct Part {
    /// Encoded frames.
    buf: Vec<u8>,
    /// `(offset, position)` of each frame, for the sparse index.
    positions: Vec<(u64, u64)>,
    /// Replies (appended batches and duplicates) waiting on this part.
    replies: Vec<Reply>,
    /// Offsets of the control records in the part.
    controls: Vec<u64>,
    /// The part holds replicated frames or a term-start record: synced before it is acknowledged
    /// whatever the durability mode.
    force_sync: bool,
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
    /// Its records were made visible to `read_frames` once written, before their sync (a
    /// replicated log under `always`: see [`Writer::expose_written`]).
    exposed: bool,
}

/// A part that is written and whose `fdatasync` is running on the sync thread; the writer
/// encodes and writes the next part meanwhile (write/sync pipelining under `always`).
struct Inflight {
    /// The written part, acknowledged when the sync succeeds.
    part: Part,
    /// Result of the sync.
    done: mpsc::Receiver<std::io::Result<()>>,
}

/// What a recovery must restore before the store accepts appends again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Repair {
    /// Keep the active segment up to `len` bytes (offset `end`) and re-verify it from disk: the
    /// last synced position after a failed sync, the rolled-back written position after a failed
    /// write (whose earlier bytes the recovery's own sync then makes durable).
    Tail {
        /// Bytes to keep.
        len: u64,
        /// The offset at `len`.
        end: u64,
    },
    /// A suffix truncation failed midway: redo it (it rescans and rewrites what it keeps).
    Truncate {
        /// The truncation point.
        from: u64,
    },
}

/// Why the store refuses appends, and how it gets out of that state.
#[derive(Debug)]
struct Poison {
    /// What recovery must restore.
    repair: Repair,
    /// The failure that poisoned the store.
    failure: String,
    /// Why the last recovery attempt failed, if one did.
    recovery_error: Option<String>,
    /// Failed recovery attempts so far (for the backoff).
    attempts: u32,
    /// When the writer retries the recovery by itself.
    retry_at: Instant,
}

impl Poison {
    /// The reason quoted in refusals and in the store's write health.
    fn reason(&self) -> String {
        match &self.recovery_error {
            Some(e) => format!("{}; recovery failed: {e}", self.failure),
            None => self.failure.clone(),
        }
    }
}

/// Extend the visible log's shape by a written part: the active segment's index entries, control
/// records, length, end, last term and newest timestamp, and the log's end and last term.
fn apply_shape(state: &mut LogState, part: &Part, index_interval: u32) {
    if let Some(seg) = state.segments.last_mut() {
        for &(offset, position) in &part.positions {
            seg.index.maybe_add(offset, position, index_interval);
        }
        seg.controls.extend_from_slice(&part.controls);
        seg.len = part.len_after;
        seg.end = part.next_after;
        seg.last_term = part.last_term_after;
        seg.max_timestamp_ms = seg.max_timestamp_ms.max(part.max_ts);
    }
    state.end = part.next_after;
    state.last_term = part.last_term_after;
}

/// A request to the sync thread: sync this file, report here.
type SyncJob = (Arc<File>, mpsc::SyncSender<std::io::Result<()>>);

/// Start the thread that runs `fdatasync` for the writer, so that the next group's write overlaps
/// the current group's sync. It stops when the writer drops its sender. A test's slow-sync fault
/// (`faults`) delays each sync here, where the disk would.
fn spawn_syncer(faults: Option<FaultInjector>) -> Result<mpsc::Sender<SyncJob>, LogError> {
    let (tx, rx) = mpsc::channel::<SyncJob>();
    std::thread::Builder::new()
        .name("log-sync".into())
        .spawn(move || {
            for (file, done) in rx {
                if let Some(faults) = &faults {
                    faults.before_sync();
                }
                let _ = done.send(file.sync_data());
            }
        })
        .map_err(|e| LogError::io("spawn sync thread", PathBuf::new(), e))?;
    Ok(tx)
}

/// Start the writer thread (and its sync thread) over `shared`, positioned at `st`. Returns the
/// queue to the writer and its handle; the writer stops when every sender is dropped.
///
/// # Errors
/// [`LogError::Io`] when a thread cannot be spawned.
pub(super) fn spawn(
    shared: Arc<Shared>,
    st: WriterState,
) -> Result<(mpsc::Sender<Command>, JoinHandle<()>), LogError> {
    let (tx, rx) = mpsc::channel();
    let syncer = spawn_syncer(shared.config.fault_injector.clone())?;
    let mut writer = Writer {
        shared,
        rx,
        st,
        part: Part::default(),
        inflight: None,
        syncer,
        poison: None,
        lost: None,
        crowded: false,
        spin: SpinLuck::default(),
        stashed: None,
    };
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| LogError::io("spawn writer thread", PathBuf::new(), e))?;
    Ok((tx, thread))
}

/// The single writer: owns all mutations of the log (maintenance in `super::maintenance`).
pub(super) struct Writer {
    /// State shared with the handles.
    pub(super) shared: Arc<Shared>,
    /// Commands from the handles.
    rx: mpsc::Receiver<Command>,
    /// The active segment and the not-yet-visible tail.
    pub(super) st: WriterState,
    /// The group being admitted.
    part: Part,
    /// The part whose sync is running, if any (only under `always`).
    inflight: Option<Inflight>,
    /// Queue to the sync thread.
    syncer: mpsc::Sender<SyncJob>,
    /// Set after a failed write or sync until the tail is re-verified: appends are refused.
    poison: Option<Poison>,
    /// Offsets `from .. to` that were acknowledged (visible) but dropped by a recovery because
    /// their sync failed; the next flush or close reports them instead of claiming success.
    pub(super) lost: Option<(u64, u64)>,
    /// Whether the last group gathered more than one command: several appenders are active, so
    /// the next one is likely to arrive within [`SPIN_BEFORE_SLEEP`]. A lone appender (one HTTP
    /// connection, a follower's fetch loop) comes back only after a network round trip; spinning
    /// for it burned the CPU the rest of the node needs (issue 14).
    crowded: bool,
    /// Whether spinning has been paying off (see [`SpinLuck`]).
    spin: SpinLuck,
    /// A command taken from the queue only to see whether one was waiting (see
    /// [`commit_part`](Self::commit_part)); processed before anything else is received.
    stashed: Option<Command>,
}

/// Whether the writer's spin before sleeping has been catching commands. Appenders that send
/// again as soon as they are acknowledged (`--acks leader`, the log benchmark) arrive within the
/// spin; appenders acknowledged later, when the replicas have the records (`--acks all`), do not,
/// and spinning for them only took a core from the tasks and the followers that the commit waits
/// for (issue 14). After a spin that caught nothing, the writer sleeps at once for the next
/// [`SPIN_RETRY_AFTER`] groups, then tries again.
#[derive(Debug, Default)]
struct SpinLuck {
    /// Groups since the last spin that caught nothing (`None`: the last spin caught something).
    since_miss: Option<u32>,
}

/// Groups after a fruitless spin before the writer spins again.
const SPIN_RETRY_AFTER: u32 = 16;

impl SpinLuck {
    /// Whether to spin now (one call per sleep).
    fn try_now(&mut self) -> bool {
        match &mut self.since_miss {
            None => true,
            Some(n) if *n >= SPIN_RETRY_AFTER => true,
            Some(n) => {
                *n += 1;
                false
            }
        }
    }

    /// What the spin came to.
    fn caught(&mut self, something: bool) {
        self.since_miss = if something { None } else { Some(0) };
    }
}

impl Writer {
    fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    fn run(&mut self) {
        loop {
            if self.poison.as_ref().is_some_and(|p| Instant::now() >= p.retry_at) {
                let _ = self.try_recover();
            }
            let cmd = match self.config().durability {
                // A command looked at by `nothing_queued` comes first, whatever the state.
                _ if self.stashed.is_some() => self.stashed.take().expect("checked"),
                // Poisoned: nothing to sync or settle; wait for work or for the next recovery.
                _ if self.poison.is_some() => {
                    let wait = self.poison.as_ref().map_or(Duration::ZERO, |p| {
                        p.retry_at.saturating_duration_since(Instant::now())
                    });
                    match self.rx.recv_timeout(wait) {
                        Ok(cmd) => cmd,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
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
            let mut grouped = 1usize;
            while let Some(cmd) = self.stashed.take().or_else(|| self.rx.try_recv().ok()) {
                grouped += 1;
                if self.process(cmd) {
                    return;
                }
                if self.part.flushed as usize + self.part.buf.len() >= MAX_GROUP_BYTES {
                    self.commit_part();
                }
            }
            self.commit_part();
            self.crowded = grouped > 1;
            if let Durability::Interval(every) = self.config().durability {
                if self.st.dirty && self.st.last_sync.elapsed() >= every {
                    self.background_sync();
                }
            }
        }
        // Every handle dropped without `close`: close all the same (nobody hears the outcome).
        let _ = self.close_out();
    }

    /// Closing: everything admitted is written and synced, and the reserved space is cut (a log
    /// closed cleanly holds exactly its records), then [`flush`](Self::flush)'s answer.
    fn close_out(&mut self) -> Result<(), LogError> {
        self.drain()?;
        if self.poison.is_none() && self.st.allocated_len > self.st.written_len {
            if let Err(e) = self.cut_file(self.st.written_len) {
                tracing::debug!(error = %e, "cannot cut the reserved space at close");
            }
        }
        self.flush()
    }

    /// Under `always`, after a group of several commands, poll the queue for a short while before
    /// sleeping: concurrent appenders usually send again within microseconds, and catching them
    /// without a futex sleep/wake round trip shortens every group-commit cycle. Otherwise (or
    /// after the spin) block.
    fn recv_soon(&mut self) -> Result<Command, mpsc::RecvError> {
        if self.config().durability == Durability::Always && self.crowded && self.spin.try_now() {
            let deadline = Instant::now() + SPIN_BEFORE_SLEEP;
            while Instant::now() < deadline {
                match self.rx.try_recv() {
                    Ok(cmd) => {
                        self.spin.caught(true);
                        return Ok(cmd);
                    }
                    Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(mpsc::TryRecvError::Disconnected) => return Err(mpsc::RecvError),
                }
            }
            self.spin.caught(false);
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
            Command::AppendFrames { frames, reply } => self.admit_frames(frames, reply),
            Command::BeginTerm { term, reply } => self.admit_term_start(term, reply),
            Command::Truncate { from, reply } => {
                let res = self
                    .recover_now()
                    .and_then(|()| self.drain())
                    .and_then(|()| self.truncate(from));
                if let Err(e) = &res {
                    if e.is_disk_full() || matches!(e, LogError::Io { .. }) {
                        self.poison(e, Repair::Truncate { from });
                    }
                }
                let _ = reply.send(res);
            }
            Command::Reset { start, reply } => {
                let res = self
                    .recover_now()
                    .and_then(|()| self.drain())
                    .and_then(|()| self.reset(start));
                let _ = reply.send(res);
            }
            Command::Retention { reply } => {
                let _ = self.drain();
                let _ = reply.send(Ok(self.retention()));
            }
            Command::Flush { reply } => {
                let _ = reply.send(self.flush());
            }
            Command::Recover { reply } => {
                let _ = reply.send(self.recover_now());
            }
            Command::Close { reply } => {
                let _ = reply.send(self.close_out());
                // Wake tailing readers so that `wait_for` can report the store as closed.
                self.shared.closed.store(true, Ordering::Release);
                self.shared.visible.send_modify(|_| {});
                self.shared.durable.send_modify(|_| {});
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
        // A poisoned store retries its recovery first when due (at once after the failure).
        if self.poison.as_ref().is_some_and(|p| Instant::now() >= p.retry_at) {
            let _ = self.try_recover();
        }
        if let Some(p) = &self.poison {
            let _ = reply.send(Err(LogError::Poisoned { reason: p.reason() }));
            return;
        }
        if let Some((last_term, _)) = self.st.last_term {
            if term < last_term {
                let _ = reply.send(Err(LogError::StaleTerm { term, last_term }));
                return;
            }
        }
        if let Some(lost) = self.lost_term_refusal(term) {
            let _ = reply.send(Err(lost));
            return;
        }
        let count = payloads.len() as u32;
        if let Some(p) = &producer {
            match self.shared.producers.lock().admit(p, count, now_ms()) {
                Ok(Admit::New) => {}
                Ok(Admit::Duplicate { first, count }) => {
                    // Acknowledged with the current part: the original may still be syncing.
                    self.part
                        .replies
                        .push(Reply::Append(reply, AppendOutcome::Duplicate { first, count }));
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
                let synced = self.synced();
                self.poison(&e, synced);
                let _ = reply.send(Err(e));
                return;
            }
        }
        if let Err(e) = self.enter_term(term) {
            let _ = reply.send(Err(e));
            return;
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
            .push(Reply::Append(reply, AppendOutcome::Appended { first, count }));
        if self.part.buf.len() >= WRITE_CHUNK {
            self.write_chunk();
        }
    }

    /// Refuse work while poisoned (retrying the recovery first when due); true when refused.
    fn refuse_poisoned<T>(&mut self, reply: &mut Option<oneshot::Sender<Result<T, LogError>>>) -> bool {
        if self.poison.as_ref().is_some_and(|p| Instant::now() >= p.retry_at) {
            let _ = self.try_recover();
        }
        match (&self.poison, reply.take()) {
            (Some(p), Some(tx)) => {
                let _ = tx.send(Err(LogError::Poisoned { reason: p.reason() }));
                true
            }
            (_, tx) => {
                *reply = tx;
                false
            }
        }
    }

    /// Roll to a new segment first if `len` more bytes would push the active one past its limit
    /// (a batch is never split). On failure the store is poisoned and the error returned.
    /// Before appending records of `term` at the log end: records a new term in the epoch cache
    /// (before its first record, see `begin_term`) and notes where the part started, for its
    /// rollback.
    fn enter_term(&mut self, term: u64) -> Result<(), LogError> {
        if self.st.last_term.is_none_or(|(t, _)| term > t) {
            self.begin_term(term)?;
        }
        self.mark_part_start();
        Ok(())
    }

    /// Remembers the log end and last term as of the first append of the current part.
    fn mark_part_start(&mut self) {
        if self.part.before.is_none() {
            self.part.before = Some((self.st.next_offset, self.st.last_term));
        }
    }

    fn roll_if_full(&mut self, len: u64) -> Result<(), LogError> {
        let used = self.st.written_len + self.part.flushed + self.part.buf.len() as u64;
        if used > 0 && used + len > self.config().segment_bytes {
            let drained = self.drain();
            if let Some(p) = &self.poison {
                // The drain's write or sync failed: what was admitted before is rolled back.
                return Err(LogError::Poisoned { reason: p.reason() });
            }
            if let Err(e) = drained.and_then(|()| self.roll()) {
                tracing::error!(error = %e, "segment roll failed");
                let synced = self.synced();
                self.poison(&e, synced);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Append verified frames from a leader as they are: they must start at the log end and not
    /// go below its last term. New terms go to the epoch cache (persisted first), producer batches
    /// to the producer table; each run of batches that fits the active segment is one write of
    /// the received bytes. Acknowledged with the new log end once synced.
    fn admit_frames(&mut self, frames: VerifiedFrames, reply: oneshot::Sender<Result<u64, LogError>>) {
        let mut reply = Some(reply);
        if self.refuse_poisoned(&mut reply) {
            return;
        }
        let Some(reply) = reply else { return };
        let (Some(first), Some(first_term)) = (frames.first(), frames.first_term()) else {
            // Nothing to append: only make what is stored durable (a fetch promises it).
            let res = self.drain().and_then(|()| {
                if self.st.dirty {
                    if let Err(e) = self.sync() {
                        let synced = self.synced();
                        self.poison(&e, synced);
                        return Err(e);
                    }
                }
                Ok(self.st.next_offset)
            });
            let _ = reply.send(res);
            return;
        };
        if first != self.st.next_offset {
            let _ = reply.send(Err(LogError::Corrupt {
                file: "(fetched frames)".into(),
                position: 0,
                reason: format!(
                    "frames start at offset {first} but the log ends at {}",
                    self.st.next_offset
                ),
            }));
            return;
        }
        if let Some((last_term, _)) = self.st.last_term {
            if first_term < last_term {
                let _ = reply.send(Err(LogError::StaleTerm {
                    term: first_term,
                    last_term,
                }));
                return;
            }
        }
        let mut k = 0;
        let mut index = frames.index.iter().peekable();
        while k < frames.batches.len() {
            // The run of batches from `k` that fits the active segment (at least one).
            let mut run = k + 1;
            let first_len = frames.batches[k].range.len() as u64;
            if let Err(e) = self.roll_if_full(first_len) {
                let _ = reply.send(Err(e));
                return;
            }
            let limit = self.config().segment_bytes;
            let used = self.st.written_len + self.part.flushed + self.part.buf.len() as u64;
            let mut len = first_len;
            while let Some(b) = frames.batches.get(run) {
                if used + len + b.range.len() as u64 > limit {
                    break;
                }
                len += b.range.len() as u64;
                run += 1;
            }
            let batches = &frames.batches[k..run];
            // Every new term of the run, persisted before any of its records is written (after
            // the roll: retention on a roll cuts the cache to the log).
            let mut cache = self.shared.epochs.lock().clone();
            let mut term = self.st.last_term.map(|(t, _)| t);
            let mut changed = false;
            for b in batches {
                if term.is_none_or(|t| b.term > t) {
                    changed |= cache.record(b.term, b.first);
                    term = Some(b.term);
                }
            }
            if changed {
                if let Err(e) = crate::log::epochs::save(&self.shared.config.dir, &cache) {
                    let _ = reply.send(Err(e));
                    return;
                }
                *self.shared.epochs.lock() = cache;
            }
            let start = batches[0].range.start;
            let stop = batches[run - k - 1].range.end;
            // Encoded appends of this part go first, then the received bytes, unchanged.
            if !self.part.buf.is_empty() {
                self.write_chunk();
            }
            self.mark_part_start();
            let at = self.st.written_len + self.part.flushed;
            if self.part.write_error.is_none() {
                match self.write_part(&frames.bytes[start..stop], at) {
                    Ok(()) => self.part.flushed += (stop - start) as u64,
                    Err(e) => self.part.write_error = Some(e),
                }
            }
            while let Some(&&(offset, pos)) = index.peek() {
                if pos >= stop {
                    break;
                }
                self.part.positions.push((offset, at + (pos - start) as u64));
                index.next();
            }
            let mut producers = self.shared.producers.lock();
            for b in batches {
                if let Some((id, seq)) = &b.producer {
                    let prior = producers.record(id, *seq, b.count, b.first, b.timestamp_ms);
                    self.part.undo.push((id.clone(), prior));
                }
                if b.control {
                    self.part.controls.push(b.first);
                }
                self.part.max_ts = self.part.max_ts.max(b.max_timestamp_ms);
                let last = b.first + u64::from(b.count) - 1;
                self.st.next_offset = last + 1;
                self.st.last_term = Some((b.term, last));
            }
            drop(producers);
            self.part.force_sync = true;
            k = run;
        }
        let end = self.st.next_offset;
        self.part.replies.push(Reply::Offset(reply, end));
    }

    /// Append a term-start control record for `term` (its own batch, no payload); acknowledged
    /// with its offset once synced.
    fn admit_term_start(&mut self, term: u64, reply: oneshot::Sender<Result<u64, LogError>>) {
        let mut reply = Some(reply);
        if self.refuse_poisoned(&mut reply) {
            return;
        }
        let Some(reply) = reply else { return };
        if let Some((last_term, _)) = self.st.last_term {
            if term < last_term {
                let _ = reply.send(Err(LogError::StaleTerm { term, last_term }));
                return;
            }
        }
        if let Some(lost) = self.lost_term_refusal(term) {
            let _ = reply.send(Err(lost));
            return;
        }
        if let Err(e) = self.roll_if_full(record::frame_len(0, 0) as u64) {
            let _ = reply.send(Err(e));
            return;
        }
        if let Err(e) = self.enter_term(term) {
            let _ = reply.send(Err(e));
            return;
        }
        let offset = self.st.next_offset;
        let timestamp_ms = now_ms();
        let rec = Record {
            offset,
            term,
            timestamp_ms,
            producer: None,
            payload: Bytes::new(),
        };
        let position = self.st.written_len + self.part.flushed + self.part.buf.len() as u64;
        self.part.positions.push((offset, position));
        record::encode_frame(&mut self.part.buf, &rec, 0, true);
        self.part.controls.push(offset);
        self.part.max_ts = self.part.max_ts.max(timestamp_ms);
        self.part.force_sync = true;
        self.st.next_offset = offset + 1;
        self.st.last_term = Some((term, offset));
        self.part.replies.push(Reply::Offset(reply, offset));
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
                    for reply in part.replies {
                        reply.ok();
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
        if self.config().serves_written() {
            self.expose_written(&mut part);
        }
        // Keep the encode buffer's allocation for the next group (no regrowth, no page faults).
        let mut buf = std::mem::take(&mut part.buf);
        buf.clear();
        self.part.buf = buf;
        if self.config().durability != Durability::Always {
            self.st.dirty = true;
            if part.force_sync {
                // Replicated frames and term-start records are durable before they are answered.
                if let Err(e) = self.sync() {
                    let copy = e.duplicate();
                    self.fail_parts(vec![part], e);
                    // Records written before this part since the last sync are not trusted either.
                    let synced = self.synced();
                    self.poison(&copy, synced);
                    return;
                }
            }
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
        match self.injected_sync_error(true) {
            Some(e) => {
                // A failing disk takes its time too (a test's slow-sync fault applies).
                if let Some(faults) = &self.shared.config.fault_injector {
                    faults.before_sync();
                }
                let _ = tx.send(Err(e));
            }
            // Nothing queued to write meanwhile: sync here. Handing the sync to the sync thread
            // and waiting for it would overlap nothing and cost two thread wake-ups per group
            // (every group of a lone appender: one connection, a follower's fetch loop; issue 14).
            None if self.nothing_queued() => {
                if let Some(faults) = &self.shared.config.fault_injector {
                    faults.before_sync();
                }
                let _ = tx.send(self.st.active.sync_data());
            }
            None => {
                if let Err(mpsc::SendError((file, tx))) = self.syncer.send((self.st.active.clone(), tx)) {
                    let _ = tx.send(file.sync_data()); // sync thread gone: sync inline
                }
            }
        }
        self.inflight = Some(Inflight { part, done });
    }

    /// Whether no command is waiting in the queue (one that is, is kept in `stashed`).
    fn nothing_queued(&mut self) -> bool {
        if self.stashed.is_none() {
            self.stashed = self.rx.try_recv().ok();
        }
        self.stashed.is_none()
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
                self.st.synced_len = inflight.part.len_after;
                self.st.synced_end = inflight.part.next_after;
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
        {
            let mut state = self.shared.state.write();
            // An exposed part's shape is visible already (and later parts' may be too): only
            // durability moves then.
            if !part.exposed {
                apply_shape(&mut state, &part, self.shared.config.index_interval_bytes);
            }
            state.durable = self.st.synced_end.min(state.end);
        }
        self.shared.refresh_durable();
        self.shared.refresh_visible();
        for reply in part.replies {
            reply.ok();
        }
    }

    /// Make a written part's records visible to [`read_frames`](super::LogStore::read_frames)
    /// before its sync: the log's shape (segment length, end, index, control records, last term)
    /// moves now, its durable end and its replies when the sync completes
    /// ([`publish`](Self::publish)). A leader's followers then fetch while the leader syncs, so
    /// one `fdatasync` is on the commit path instead of two in series (docs/replication.md, "The
    /// leader serves what it has written"). Reads of records stop at the high watermark, which is
    /// never above this log's durable end, so nothing unsynced is ever read as committed.
    fn expose_written(&mut self, part: &mut Part) {
        apply_shape(
            &mut self.shared.state.write(),
            part,
            self.shared.config.index_interval_bytes,
        );
        part.exposed = true;
        self.shared.refresh_servable();
    }

    /// The refusal of an append or term start in `term` when a failed sync dropped records of
    /// that term (or a later one) that followers may already hold: writing other records at
    /// their offsets in the same term would break log matching, which no term change would
    /// reveal. Leading needs a new term (the node's Consul check fails meanwhile).
    fn lost_term_refusal(&self, term: u64) -> Option<LogError> {
        let lost = self.shared.health.lock().lost_term?;
        (term <= lost).then_some(LogError::TermLost { term, lost })
    }

    /// Roll back failed parts (newest first): restore the producer table and offsets, cut the
    /// file back to where the oldest one started, poison the store (recovery keeps that
    /// position: under `always` it is the last synced one, since a part is only visible once
    /// synced) and fail every reply.
    fn fail_parts(&mut self, parts: Vec<Part>, e: LogError) {
        tracing::error!(error = %e, "append failed; rolling back to the last good position");
        let mut replies = Vec::new();
        let mut cut_to = self.st.written_len;
        let lost = parts
            .iter()
            .filter(|p| p.exposed)
            .filter_map(|p| p.last_term_after.map(|(term, _)| term))
            .max();
        if let Some(lost) = lost {
            let mut health = self.shared.health.lock();
            health.lost_term = health.lost_term.max(Some(lost));
            tracing::error!(
                term = lost,
                "records of this term that followers may hold were dropped: this node will not write in it again"
            );
        }
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
        let keep = Repair::Tail {
            len: cut_to,
            end: self.st.next_offset,
        };
        self.poison(&e, keep);
        for reply in replies {
            reply.fail(e.duplicate());
        }
    }

    /// Write encoded bytes at position `at` of the active segment (no sync).
    fn write_part(&mut self, buf: &[u8], at: u64) -> Result<(), LogError> {
        if let Some(e) = self
            .shared
            .config
            .fault_injector
            .as_ref()
            .and_then(|f| f.write_error())
        {
            // Simulate a disk filling up mid-write: half the bytes land, then the error.
            let _ = self.st.active.write_all_at(&buf[..buf.len() / 2], at);
            return Err(LogError::io("write segment", &self.st.active_path, e));
        }
        let end = at + buf.len() as u64;
        if end > self.st.allocated_len {
            self.reserve(end);
        }
        let path = &self.st.active_path;
        self.st
            .active
            .write_all_at(buf, at)
            .map_err(|e| LogError::io("write segment", path, e))
    }

    /// Reserves the active segment's file up to at least `end`: [`PREALLOCATE_BYTES`] more, up
    /// to the segment size. A failure (a full disk, a file system without `fallocate`) only
    /// means the writes grow the file as they go.
    fn reserve(&mut self, end: u64) {
        let from = self.st.allocated_len;
        let to = end.max((from + PREALLOCATE_BYTES).min(self.config().segment_bytes));
        match preallocate(&self.st.active, from, to) {
            Ok(()) => self.st.allocated_len = to,
            Err(e) => tracing::debug!(error = %e, from, to, "cannot reserve segment space ahead"),
        }
    }

    /// Cuts the active segment's file back to `len` (what it holds), reserved space included.
    pub(super) fn cut_file(&mut self, len: u64) -> std::io::Result<()> {
        self.st.active.set_len(len)?;
        self.st.allocated_len = len;
        Ok(())
    }

    /// After a failed write or sync: remove whatever part of it reached the file at once (the
    /// recovery cuts again through a fresh descriptor; this only keeps the file tidy meanwhile).
    fn cut_back(&mut self) {
        if let Err(e) = self.cut_file(self.st.written_len) {
            tracing::error!(error = %e, "could not cut a failed write back; the recovery will");
        }
    }

    /// The injected sync failure, if one is armed (tests). When the injector says the pages are
    /// lost with it and `lose_pages` is set, the bytes written since the last good sync are zeroed
    /// first, as they would read back after the kernel dropped them.
    pub(super) fn injected_sync_error(&self, lose_pages: bool) -> Option<std::io::Error> {
        let (e, lost) = self.shared.config.fault_injector.as_ref()?.sync_failure()?;
        if lost && lose_pages && self.st.written_len > self.st.synced_len {
            let zeros = vec![0u8; (self.st.written_len - self.st.synced_len) as usize];
            let _ = self.st.active.write_all_at(&zeros, self.st.synced_len);
        }
        Some(e)
    }

    /// `fdatasync` what is written; on success that is the new durable position.
    pub(super) fn sync(&mut self) -> Result<(), LogError> {
        let path = &self.st.active_path;
        if let Some(e) = self.injected_sync_error(true) {
            return Err(LogError::io("sync segment", path, e));
        }
        if let Some(faults) = &self.shared.config.fault_injector {
            faults.before_sync();
        }
        self.st
            .active
            .sync_data()
            .map_err(|e| LogError::io("sync segment", path, e))?;
        self.st.dirty = false;
        self.st.last_sync = Instant::now();
        self.st.synced_len = self.st.written_len;
        self.st.synced_end = self.st.next_offset;
        {
            let mut state = self.shared.state.write();
            state.durable = self.st.synced_end.min(state.end);
        }
        self.shared.refresh_durable();
        Ok(())
    }

    /// What a recovery after a failed sync keeps: the last synced position.
    fn synced(&self) -> Repair {
        Repair::Tail {
            len: self.st.synced_len,
            end: self.st.synced_end,
        }
    }

    /// `flush` and `close`: make everything acknowledged durable, or say why it is not. Never
    /// claims success while poisoned, nor for records a recovery dropped since the last flush.
    fn flush(&mut self) -> Result<(), LogError> {
        if let Some(p) = &self.poison {
            return Err(LogError::Poisoned { reason: p.reason() });
        }
        self.drain()?;
        if let Err(e) = self.sync() {
            let synced = self.synced();
            self.poison(&e, synced);
            return Err(e);
        }
        match self.lost.take() {
            Some((from, to)) => Err(LogError::NotDurable { from, to }),
            None => Ok(()),
        }
    }

    /// The `interval` timer fired: sync what is written. Records are already acknowledged and
    /// visible; if the sync fails, those written since the last good sync cannot be trusted to be
    /// on disk (nor can a retried sync be trusted), so the store is poisoned and the recovery
    /// drops them; the next flush reports them lost.
    fn background_sync(&mut self) {
        if self.poison.is_some() {
            return;
        }
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "background sync failed");
            self.st.last_sync = Instant::now();
            let synced = self.synced();
            self.poison(&e, synced);
        }
    }

    /// Enter (or stay in) the poisoned state after `e`; `repair` is what recovery restores. A
    /// second failure while poisoned only makes the repair more conservative.
    pub(super) fn poison(&mut self, e: &LogError, repair: Repair) {
        let reason = e.to_string();
        if let Some(p) = &mut self.poison {
            if let (Repair::Tail { len, .. }, Repair::Tail { len: new, .. }) = (p.repair, repair) {
                if new < len {
                    p.repair = repair;
                }
            }
            return;
        }
        tracing::error!(error = %e, ?repair, "log store poisoned: appends are refused until the tail is re-verified from disk");
        self.poison = Some(Poison {
            repair,
            failure: reason.clone(),
            recovery_error: None,
            attempts: 0,
            retry_at: Instant::now(),
        });
        let mut health = self.shared.health.lock();
        health.poisoned = Some(reason.clone());
        health.failures += 1;
        health.last_failure = Some(reason);
    }

    /// If poisoned, try the recovery now (whatever the backoff says).
    fn recover_now(&mut self) -> Result<(), LogError> {
        if self.poison.is_none() {
            return Ok(());
        }
        self.try_recover()
    }

    /// One recovery attempt; on success the store accepts appends again, on failure it retries
    /// later (backing off) and a tail repair falls back to the last synced position.
    fn try_recover(&mut self) -> Result<(), LogError> {
        let Some(repair) = self.poison.as_ref().map(|p| p.repair) else {
            return Ok(());
        };
        let res = match repair {
            Repair::Tail { len, end } => self.recover_tail(len, end),
            Repair::Truncate { from } => self.truncate(from),
        };
        let synced = self.synced();
        let Some(p) = &mut self.poison else {
            return res;
        };
        match res {
            Ok(()) => {
                tracing::info!(
                    ?repair,
                    "log store recovered: tail re-verified from disk, accepting appends"
                );
                self.poison = None;
                self.shared.health.lock().poisoned = None;
                Ok(())
            }
            Err(e) => {
                p.attempts += 1;
                let delay = RECOVERY_RETRY_MIN
                    .saturating_mul(1 << p.attempts.min(10).saturating_sub(1))
                    .min(RECOVERY_RETRY_MAX);
                p.retry_at = Instant::now() + delay;
                if let Repair::Tail { .. } = p.repair {
                    // What the recovery's own sync was to make durable is not trusted either.
                    p.repair = synced;
                }
                tracing::warn!(error = %e, retry_in = ?delay, "log store recovery failed");
                p.recovery_error = Some(e.to_string());
                self.shared.health.lock().poisoned = Some(p.reason());
                Err(e)
            }
        }
    }
}

/// `fallocate(2)` of `from .. to` (mode 0: the file's length becomes at least `to`, the new range
/// reads as zeros).
fn preallocate(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to.saturating_sub(from))) else {
        return Err(std::io::Error::other("offset out of range"));
    };
    // SAFETY: a plain system call on an open descriptor; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer spins while spinning catches commands; after a miss it sleeps at once for
    /// `SPIN_RETRY_AFTER` groups, then tries again.
    #[test]
    fn spin_only_while_it_pays() {
        let mut luck = SpinLuck::default();
        assert!(luck.try_now(), "spins at first");
        luck.caught(true);
        assert!(luck.try_now(), "a hit keeps it spinning");
        luck.caught(false);
        for group in 0..SPIN_RETRY_AFTER {
            assert!(!luck.try_now(), "no spin for group {group} after a miss");
        }
        assert!(luck.try_now(), "tries again");
        luck.caught(false);
        assert!(!luck.try_now(), "another miss: back to sleeping at once");
        for _ in 1..SPIN_RETRY_AFTER {
            luck.try_now();
        }
        assert!(luck.try_now());
        luck.caught(true);
        assert!(luck.try_now() && luck.try_now(), "a hit: spinning every time");
    }
}
