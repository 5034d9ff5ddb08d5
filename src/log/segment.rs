//! One segment file (`<base>.log`, base = offset of its first record, zero-padded to 20 digits):
//! its in-memory bookkeeping, the scan that validates it frame by frame (used by recovery and
//! truncation), and the positional reads that serve `read`.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;

use super::{
    error::LogError,
    index::SparseIndex,
    record::{self, DecodeError, ProducerSeq, Record, MAX_FRAME_BODY, PREFIX_LEN},
};

/// Bytes read per positional read when serving reads.
const READ_CHUNK: usize = 64 * 1024;

/// Path of the segment file with this base offset.
pub fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Path of the sealed segment's index file.
pub fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// Path of the snapshot taken when the segment was created.
pub fn snapshot_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.snapshot"))
}

/// Base offset encoded in a side or segment file name, with its extension.
pub fn parse_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// In-memory state of one segment, shared (under the store's lock) by the writer and readers.
#[derive(Debug)]
pub struct Segment {
    /// Offset of the first record.
    pub base: u64,
    /// The file path, for errors.
    pub path: PathBuf,
    /// Open read-write handle; readers use positional reads on it.
    pub file: Arc<File>,
    /// One past the last visible record.
    pub end: u64,
    /// Bytes of visible records (the writer may have written more that are not yet visible).
    pub len: u64,
    /// Sparse offset index.
    pub index: SparseIndex,
    /// `(term, offset)` of the last visible record in this segment.
    pub last_term: Option<(u64, u64)>,
    /// Newest record timestamp (for age retention).
    pub max_timestamp_ms: u64,
    /// Offsets of the control records among the visible ones, in order (a handful: one per term
    /// at most), so that readers can tell where the last readable record is.
    pub controls: Vec<u64>,
}

impl Segment {
    /// Whether the record at `offset` (in this segment) is a control record.
    pub fn is_control(&self, offset: u64) -> bool {
        self.controls.binary_search(&offset).is_ok()
    }
}

/// The facts recovery keeps about each scanned frame.
#[derive(Debug, Clone)]
pub struct FrameInfo {
    /// Record offset.
    pub offset: u64,
    /// Byte position of the frame in the file.
    pub position: u64,
    /// Record term.
    pub term: u64,
    /// Record timestamp.
    pub timestamp_ms: u64,
    /// Producer and sequence, if any.
    pub producer: Option<ProducerSeq>,
    /// A control record.
    pub control: bool,
}

/// How a scan treats a bad frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanMode {
    /// Every frame must be valid and the last batch complete (sealed segments).
    Strict,
    /// A bad or partial tail with nothing valid after it is a torn write to cut (active segment).
    RepairTail,
}

/// A torn tail found by a [`ScanMode::RepairTail`] scan.
#[derive(Debug, Clone)]
pub struct TornTail {
    /// Where the valid data ends (the file is cut here).
    pub position: u64,
    /// Bytes past `position`.
    pub dropped_bytes: u64,
    /// Why the first dropped frame was refused.
    pub reason: String,
    /// Whether everything dropped is zeros: space the writer reserved ahead of its writes
    /// (`fallocate`), not a torn write.
    pub only_zeros: bool,
}

/// Result of scanning a segment's bytes.
#[derive(Debug, Clone)]
pub struct ScanOutcome {
    /// Bytes of complete, valid batches.
    pub good_len: u64,
    /// One past the last offset of those batches.
    pub end: u64,
    /// The torn tail, if one was found.
    pub torn: Option<TornTail>,
}

/// The outcome of a scan whose tail from `good` on is cut off for `reason`.
fn torn_tail(buf: &[u8], good: usize, good_end: u64, reason: String) -> ScanOutcome {
    ScanOutcome {
        good_len: good as u64,
        end: good_end,
        torn: Some(TornTail {
            position: good as u64,
            dropped_bytes: (buf.len() - good) as u64,
            reason,
            only_zeros: buf[good..].iter().all(|&b| b == 0),
        }),
    }
}

/// Validate the frames of a segment's contents. `on_batch` sees every complete atomic batch in
/// order. A bad frame is corruption (named by file and byte position) unless the mode allows tail
/// repair and no valid frame follows it anywhere in the file.
pub fn scan(
    path: &Path,
    buf: &[u8],
    base: u64,
    mode: ScanMode,
    mut on_batch: impl FnMut(&[FrameInfo]),
) -> Result<ScanOutcome, LogError> {
    let mut pos = 0usize;
    let mut expected = base;
    let mut batch: Vec<FrameInfo> = Vec::new();
    let mut prev_remaining: Option<u32> = None;
    let (mut good, mut good_end) = (0usize, base);
    let corrupt = |position: usize, reason: String| LogError::Corrupt {
        file: path.to_owned(),
        position: position as u64,
        reason,
    };
    while pos < buf.len() {
        let failure = match record::decode(&buf[pos..], |_| Bytes::new()) {
            Ok(f) if f.record.offset != expected => Some(format!(
                "record offset {} where {expected} was expected",
                f.record.offset
            )),
            Ok(f) if prev_remaining.is_some_and(|p| f.batch_remaining.checked_add(1) != Some(p)) => {
                Some("batch marker out of sequence".to_owned())
            }
            Ok(f) => {
                batch.push(FrameInfo {
                    offset: f.record.offset,
                    position: pos as u64,
                    term: f.record.term,
                    timestamp_ms: f.record.timestamp_ms,
                    producer: f.record.producer,
                    control: f.control,
                });
                expected += 1;
                pos += f.len;
                if f.batch_remaining == 0 {
                    on_batch(&batch);
                    batch.clear();
                    prev_remaining = None;
                    (good, good_end) = (pos, expected);
                } else {
                    prev_remaining = Some(f.batch_remaining);
                }
                None
            }
            Err(DecodeError::Incomplete { .. }) => Some("file ends inside the record".to_owned()),
            Err(DecodeError::Invalid(reason)) => Some(reason),
        };
        if let Some(reason) = failure {
            // Zeros to the end are reserved space (and hold no frame): no need to look further.
            let zeros_after = buf[pos..].iter().all(|&b| b == 0);
            if mode == ScanMode::Strict || (!zeros_after && valid_frame_after(buf, pos + 1)) {
                return Err(corrupt(pos, reason));
            }
            return Ok(torn_tail(buf, good, good_end, reason));
        }
    }
    if !batch.is_empty() {
        let reason = "file ends inside an atomic batch".to_owned();
        if mode == ScanMode::Strict {
            return Err(corrupt(good, reason));
        }
        return Ok(torn_tail(buf, good, good_end, reason));
    }
    Ok(ScanOutcome {
        good_len: good as u64,
        end: good_end,
        torn: None,
    })
}

/// Whether any position at or after `from` holds a complete frame with a valid CRC: if so, the
/// damage before it is not a torn tail but corruption in the middle of the log.
fn valid_frame_after(buf: &[u8], from: usize) -> bool {
    (from..buf.len().saturating_sub(PREFIX_LEN)).any(|p| {
        let len = u32::from_le_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]) as u64;
        len <= MAX_FRAME_BODY
            && p as u64 + PREFIX_LEN as u64 + len <= buf.len() as u64
            && record::decode(&buf[p..], |_| Bytes::new()).is_ok()
    })
}

/// Ask the kernel to drop the file's clean cached pages (best effort), so that the next reads come
/// from the disk: a recovery re-verifies what is on disk, not what the page cache still holds.
pub fn drop_cached_pages(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: an advisory call on a valid, owned descriptor; no memory is passed.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Read `len` bytes at `pos` of a segment file.
pub fn read_at(file: &File, path: &Path, pos: u64, len: usize) -> Result<Vec<u8>, LogError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, pos)
        .map_err(|e| LogError::io("read segment", path, e))?;
    Ok(buf)
}

/// Limits and accumulators of one `read` call across segments.
#[derive(Debug)]
pub struct ReadCursor {
    /// Next offset wanted.
    pub next: u64,
    /// Stop before this offset (the visible end).
    pub end: u64,
    /// Stop after this many records.
    pub max_records: usize,
    /// Stop before exceeding this many payload bytes (at least one record is always returned).
    pub max_bytes: usize,
    /// Payload bytes collected so far.
    pub bytes: usize,
    /// Records collected so far.
    pub out: Vec<Record>,
    /// Leave control records out (what `read` does; they count toward nothing).
    pub skip_control: bool,
}

impl ReadCursor {
    /// Offer the record at `off`; records before `next` are skipped. Returns false when the byte
    /// limit stops the read (the cursor is then full).
    fn take(&mut self, off: u64, record: Record, control: bool) -> bool {
        if off < self.next {
            return true;
        }
        if control && self.skip_control {
            self.next = off + 1;
            return true;
        }
        let size = record.payload.len();
        if !self.out.is_empty() && self.bytes + size > self.max_bytes {
            self.end = off;
            return false;
        }
        self.bytes += size;
        self.out.push(record);
        self.next = off + 1;
        true
    }

    /// True once no more records may be added.
    pub fn full(&self) -> bool {
        self.out.len() >= self.max_records || self.next >= self.end
    }
}

impl Segment {
    /// What a reader needs to read this segment from offset `from` on without the store's lock:
    /// the file handle, the visible bounds and the index entry to start from.
    pub fn view(&self, from: u64) -> SegmentView {
        SegmentView {
            path: self.path.clone(),
            file: self.file.clone(),
            end: self.end,
            len: self.len,
            start: self.index.lookup(from, self.base),
        }
    }
}

/// A reader's snapshot of one segment, taken under the store's lock and read without it. The
/// handle keeps the file readable even if retention deletes it meanwhile (an unlinked file's data
/// stays until its last descriptor closes); bytes below `len` change in place only through
/// suffix truncation or recovery, which the store detects and the read retries (see
/// `LogState::rewrites`).
#[derive(Debug, Clone)]
pub struct SegmentView {
    /// The file path, for errors.
    pub path: PathBuf,
    /// The open handle.
    pub file: Arc<File>,
    /// One past the last visible record when the snapshot was taken.
    pub end: u64,
    /// Bytes of visible records when the snapshot was taken.
    pub len: u64,
    /// `(offset, position)` of the index entry at or before the first wanted offset.
    pub start: (u64, u64),
}

impl SegmentView {
    /// Append this segment's records from `cursor.next` on, within the cursor's limits. Every frame
    /// is CRC-checked; a bad one is reported as corruption with its byte position.
    pub fn read_into(&self, cursor: &mut ReadCursor) -> Result<(), LogError> {
        let seg_end = self.end.min(cursor.end);
        let (mut off, mut pos) = self.start;
        let corrupt = |position: u64, reason: String| LogError::Corrupt {
            file: self.path.clone(),
            position,
            reason,
        };
        while off < seg_end && !cursor.full() {
            let want = READ_CHUNK.min((self.len - pos) as usize);
            let chunk = Bytes::from(read_at(&self.file, &self.path, pos, want)?);
            let mut i = 0usize;
            let mut need_more = None;
            while off < seg_end && !cursor.full() {
                match record::decode(&chunk[i..], |r| chunk.slice(i + r.start..i + r.end)) {
                    Ok(f) => {
                        if f.record.offset != off {
                            let reason =
                                format!("record offset {} where {off} was expected", f.record.offset);
                            return Err(corrupt(pos + i as u64, reason));
                        }
                        if !cursor.take(off, f.record, f.control) {
                            return Ok(());
                        }
                        off += 1;
                        i += f.len;
                    }
                    Err(DecodeError::Incomplete { need }) => {
                        need_more = Some(need.unwrap_or(PREFIX_LEN));
                        break;
                    }
                    Err(DecodeError::Invalid(reason)) => return Err(corrupt(pos + i as u64, reason)),
                }
            }
            pos += i as u64;
            if let Some(need) = need_more {
                if pos + need as u64 > self.len {
                    return Err(corrupt(pos, "record runs past the segment's valid length".into()));
                }
                if i == 0 {
                    // The frame is larger than a chunk: read exactly it.
                    let frame = Bytes::from(read_at(&self.file, &self.path, pos, need)?);
                    let f = record::decode(&frame, |r| frame.slice(r))
                        .map_err(|e| corrupt(pos, format!("{e:?}")))?;
                    if f.record.offset != off {
                        let reason = format!("record offset {} where {off} was expected", f.record.offset);
                        return Err(corrupt(pos, reason));
                    }
                    if !cursor.take(off, f.record, f.control) {
                        return Ok(());
                    }
                    off += 1;
                    pos += f.len as u64;
                }
            }
        }
        Ok(())
    }
}

/// Raw frames of whole batches, as [`SegmentView::read_frames`] returns them.
#[derive(Debug, Clone)]
pub struct RawFrames {
    /// Offset of the first frame.
    pub first: u64,
    /// One past the last frame.
    pub end: u64,
    /// The frames, byte for byte as stored.
    pub bytes: Bytes,
}

/// Bytes of a segment file from a fixed position on, read on demand (no more than `avail`).
struct Window<'a> {
    /// The view read from.
    view: &'a SegmentView,
    /// File position of `buf[0]`.
    at: u64,
    /// Bytes readable from `at` (up to the visible length).
    avail: usize,
    /// What was read so far.
    buf: Vec<u8>,
}

impl Window<'_> {
    /// Make sure `n` bytes from `at` are read; false when the visible bytes end before.
    fn ensure(&mut self, n: usize, hint: usize) -> Result<bool, LogError> {
        if self.buf.len() >= n {
            return Ok(true);
        }
        if n > self.avail {
            return Ok(false);
        }
        let want = n.max(self.buf.len() + hint).min(self.avail);
        let old = self.buf.len();
        self.buf.resize(want, 0);
        self.view
            .file
            .read_exact_at(&mut self.buf[old..], self.at + old as u64)
            .map_err(|e| LogError::io("read segment", &self.view.path, e))?;
        Ok(true)
    }
}

impl SegmentView {
    /// Whole batches of raw frames from `from` up to offset `bound` (exclusive; at most this
    /// segment's end), stopping before `max_bytes` would be exceeded but returning at least one
    /// batch. Every frame's structure (length, version, flags) and offset are checked, not its
    /// CRC: what this serves goes to followers, which verify every frame before storing it
    /// (`frames::verify`), so checking here too spent the leader's CPU twice on each frame (and on
    /// the frames between the index entry and `from`) for nothing (issue 14). Only the fixed
    /// headers are decoded (to find offsets and batch ends), and the bytes are returned as read,
    /// usually from one `pread`. A `from` inside a batch returns the rest of that batch first (a valid batch on
    /// its own: a batch starts at any marker and counts down to 0).
    ///
    /// # Errors
    /// [`LogError::Corrupt`] for a bad frame; I/O errors.
    pub fn read_frames(&self, from: u64, bound: u64, max_bytes: usize) -> Result<RawFrames, LogError> {
        let seg_end = self.end.min(bound);
        let empty = RawFrames {
            first: from,
            end: from,
            bytes: Bytes::new(),
        };
        let (mut off, at) = self.start;
        if from >= seg_end || off > from {
            return Ok(empty);
        }
        let corrupt = |position: u64, reason: String| LogError::Corrupt {
            file: self.path.clone(),
            position,
            reason,
        };
        let avail = usize::try_from(self.len.saturating_sub(at)).unwrap_or(usize::MAX);
        let first_read = max_bytes.saturating_add(READ_CHUNK);
        let mut w = Window {
            view: self,
            at,
            avail,
            buf: Vec::new(),
        };
        let mut i = 0usize;
        let mut from_at: Option<usize> = None;
        let mut batch_end: Option<(usize, u64)> = None;
        while off < seg_end {
            let pos = at + i as u64;
            let past = || corrupt(pos, "record runs past the segment's valid length".into());
            if !w.ensure(i + PREFIX_LEN, first_read)? {
                return Err(past());
            }
            let body = u32::from_le_bytes([w.buf[i], w.buf[i + 1], w.buf[i + 2], w.buf[i + 3]]) as u64;
            let total = PREFIX_LEN + usize::try_from(body.min(MAX_FRAME_BODY + 1)).unwrap_or(usize::MAX);
            if body <= MAX_FRAME_BODY && !w.ensure(i + total, READ_CHUNK)? {
                return Err(past());
            }
            let head = record::peek_structure(&w.buf[i..]).map_err(|e| corrupt(pos, format!("{e:?}")))?;
            if head.offset != off {
                return Err(corrupt(
                    pos,
                    format!("record offset {} where {off} was expected", head.offset),
                ));
            }
            if off == from {
                from_at = Some(i);
            }
            if let (Some(start), Some(_)) = (from_at, batch_end) {
                if i + head.len - start > max_bytes {
                    break; // the batch this frame belongs to would exceed the limit
                }
            }
            i += head.len;
            off += 1;
            if head.batch_remaining == 0 && from_at.is_some() {
                batch_end = Some((i, off));
            }
        }
        let (Some(start), Some((stop, end))) = (from_at, batch_end) else {
            return Ok(empty);
        };
        w.buf.truncate(stop);
        let bytes = Bytes::from(w.buf).slice(start..stop);
        Ok(RawFrames {
            first: from,
            end,
            bytes,
        })
    }
}
