//! Writer-thread maintenance of the segment files: rolling to a new segment (sealing the old one
//! with its index and a producer/term snapshot), deleting old segments for retention, truncating
//! a suffix (rewriting a cut batch's markers so recovery keeps its prefix), and recovering a
//! poisoned store's active segment (reopen, cut to the durable end, re-verify from disk); and of
//! the epoch cache that follows them (`epochs.checkpoint`).

use std::{fs, os::unix::fs::FileExt, sync::Arc};

use bytes::Bytes;

use super::{now_ms, writer::Writer};
use crate::log::{
    epochs::{self, EpochCache},
    error::LogError,
    index::{self, SegmentMeta, SegmentSnapshot, SparseIndex},
    record, recovery,
    segment::{self, drop_cached_pages, FrameInfo, ScanMode, Segment},
};

impl Writer {
    /// The next record (at `next_offset`) is the first of `term`: add it to the epoch cache and
    /// persist the cache before the record is written, so that the file never lacks a term the
    /// log holds (an entry whose record never becomes durable is cut on open).
    ///
    /// # Errors
    /// I/O errors writing `epochs.checkpoint`; nothing changed then.
    pub(super) fn begin_term(&mut self, term: u64) -> Result<(), LogError> {
        let mut next = self.shared.epochs.lock().clone();
        if next.record(term, self.st.next_offset) {
            epochs::save(&self.shared.config.dir, &next)?;
            *self.shared.epochs.lock() = next;
        }
        Ok(())
    }

    /// Persist the epoch cache after truncation or retention changed it. A failure only leaves
    /// the file ahead of the log or holding older terms: open cuts and verifies it, so warn.
    fn save_epochs(&self, cache: Option<EpochCache>) {
        if let Some(cache) = cache {
            if let Err(e) = epochs::save(&self.shared.config.dir, &cache) {
                tracing::warn!(error = %e, "could not persist the epoch cache");
            }
        }
    }

    /// Seal the active segment (sync it, persist its index) and start a new one at the current
    /// end, with a the last term and the producers the sealed segment changed; then apply retention.
    pub(super) fn roll(&mut self) -> Result<(), LogError> {
        // A sealed segment holds its records and nothing else: its index records that length, and
        // recovery scans it strictly. The sync makes the cut durable before the next segment exists.
        if self.st.allocated_len > self.st.written_len {
            self.cut_file(self.st.written_len).map_err(|e| {
                LogError::io(
                    "cut the reserved space of a full segment",
                    &self.st.active_path,
                    e,
                )
            })?;
        }
        self.sync()?;
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
                controls: seg.controls.clone(),
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
            controls: Vec::new(),
        });
        self.st.active = file;
        self.st.active_path = path;
        self.st.written_len = 0;
        self.st.allocated_len = 0;
        self.st.synced_len = 0;
        self.st.synced_end = base;
        tracing::debug!(base, "rolled to a new segment");
        self.retention();
        Ok(())
    }

    /// Delete whole segments from the front while over the byte or age limit (never the active
    /// one). Returns the first retained offset.
    pub(super) fn retention(&mut self) -> u64 {
        let cfg = &self.shared.config;
        let cutoff = cfg
            .retention_age
            .map(|age| now_ms().saturating_sub(age.as_millis() as u64));
        let mut doomed = Vec::new();
        let (start, epochs) = {
            let mut state = self.shared.state.write();
            let mut total: u64 = state.segments.iter().map(|s| s.len).sum();
            while state.segments.len() > 1 {
                let first = &state.segments[0];
                let too_big = cfg.retention_bytes.is_some_and(|max| total > max);
                let too_old = cutoff.is_some_and(|c| first.max_timestamp_ms < c);
                // A replicated log keeps what is not committed yet (followers may still need it).
                let uncommitted = state.replicated && first.end > state.hw;
                if !(too_big || too_old) || uncommitted {
                    break;
                }
                total -= first.len;
                doomed.push(state.segments.remove(0));
            }
            state.start = state.segments.first().map_or(state.end, |s| s.base);
            let mut cache = self.shared.epochs.lock();
            let epochs = cache.fit(state.start, state.end).then(|| cache.clone());
            (state.start, epochs)
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
        self.save_epochs(epochs);
        start
    }

    /// Drop every record at offsets `>= from`. A batch cut in the middle keeps its prefix, whose
    /// batch markers are rewritten so that recovery sees a complete batch and keeps it.
    pub(super) fn truncate(&mut self, from: u64) -> Result<(), LogError> {
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
        if state.replicated && from < state.hw_reserved {
            return Err(LogError::BelowHighWatermark {
                from,
                hw: state.hw_reserved,
            });
        }
        // The records from `from` on are going: they no longer count as durable (so the HW cannot
        // move past `from`, nor `read_frames` serve them, even if this truncation fails midway
        // and is redone by the recovery).
        state.durable = state.durable.min(from);
        // Readers reading without the lock discard what they read from here on.
        state.rewrites += 1;
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
        seg.file
            .set_len(position)
            .map_err(|e| LogError::io("truncate segment", &seg.path, e))?;
        seg.file
            .sync_all()
            .map_err(|e| LogError::io("sync segment", &seg.path, e))?;
        // Only now, so that a failed truncation leaves every segment in the state and can be redone.
        let removed: Vec<Segment> = state.segments.drain(k + 1..).collect();
        let seg = &mut state.segments[k];
        seg.len = position;
        seg.end = from;
        seg.index.truncate(from);
        seg.controls.retain(|&o| o < from);
        seg.last_term = in_seg;
        let (active, active_path, seg_base) = (seg.file.clone(), seg.path.clone(), seg.base);
        state.end = from;
        state.durable = state.durable.min(from);
        state.last_term = last_term;
        let epochs = {
            let mut cache = self.shared.epochs.lock();
            cache.truncate_from(from).then(|| cache.clone())
        };
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
        self.save_epochs(epochs);
        self.shared.producers.lock().roll_back(from, &producers);
        self.st.active = active;
        self.st.active_path = active_path;
        self.st.written_len = position;
        self.st.allocated_len = position;
        self.st.next_offset = from;
        self.st.last_term = last_term;
        self.st.synced_len = position;
        self.st.synced_end = from;
        self.shared.refresh_durable();
        self.shared.refresh_visible();
        tracing::warn!(from, "log truncated");
        Ok(())
    }

    /// Empty the log and make `start` its first and next offset (`LogStore::reset`). Crash-safe
    /// by ordering: the new empty segment is created under a temporary name, the old segments
    /// are deleted newest first (a crash leaves a shorter prefix of the old log, which a follower
    /// resets again), then the new one is renamed into place and the directory synced.
    pub(super) fn reset(&mut self, start: u64) -> Result<(), LogError> {
        let dir = self.shared.config.dir.clone();
        {
            let state = self.shared.state.read();
            if state.replicated && start < state.hw_reserved {
                return Err(LogError::BelowHighWatermark {
                    from: start,
                    hw: state.hw_reserved,
                });
            }
        }
        let final_path = segment::log_path(&dir, start);
        let tmp = dir.join(format!("{start:020}.log.reset-tmp"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| LogError::io("create segment", &tmp, e))?;
        file.sync_all()
            .map_err(|e| LogError::io("sync segment", &tmp, e))?;
        let removed: Vec<Segment> = {
            let mut state = self.shared.state.write();
            // Readers reading without the lock discard what they read from here on.
            state.rewrites += 1;
            let removed = state.segments.drain(..).collect();
            state.segments.push(Segment {
                base: start,
                path: final_path.clone(),
                file: Arc::new(file),
                end: start,
                len: 0,
                index: SparseIndex::default(),
                last_term: None,
                max_timestamp_ms: 0,
                controls: Vec::new(),
            });
            state.start = start;
            state.end = start;
            state.durable = start;
            state.last_term = None;
            state.hw = state.hw.max(start);
            state.hw_reserved = state.hw_reserved.max(start);
            removed
        };
        for s in removed.iter().rev() {
            for p in [
                s.path.clone(),
                segment::index_path(&dir, s.base),
                segment::snapshot_path(&dir, s.base),
            ] {
                if let Err(e) = fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(file = %p.display(), error = %e, "reset: could not delete");
                    }
                }
            }
        }
        index::sync_dir(&dir)?;
        fs::rename(&tmp, &final_path).map_err(|e| LogError::io("rename segment", &final_path, e))?;
        index::sync_dir(&dir)?;
        *self.shared.epochs.lock() = EpochCache::new();
        self.save_epochs(Some(EpochCache::new()));
        let expiry = self.shared.config.producer_id_expiry;
        *self.shared.producers.lock() = crate::log::producer::Producers::new(expiry);
        let segment = self.shared.state.read().segments[0].file.clone();
        self.st.active = segment;
        self.st.active_path = final_path;
        self.st.written_len = 0;
        self.st.allocated_len = 0;
        self.st.next_offset = start;
        self.st.last_term = None;
        self.st.synced_len = 0;
        self.st.synced_end = start;
        self.shared.refresh_durable();
        self.shared.refresh_visible();
        tracing::warn!(start, "log emptied: it now starts at {start}");
        Ok(())
    }

    /// Recovery of a poisoned store: reopen the active segment through a fresh descriptor (the
    /// failed one's error state is not trusted), cut it to `len` bytes (offset `end`: what was
    /// durable, see `Repair::Tail`), make the cut durable, and re-verify from disk (cached pages
    /// dropped first) that every frame up to there passes its CRC and that the last batch ends
    /// exactly there. Records past `end` that were visible (acknowledged under `interval` or
    /// `never`, but their sync failed) are dropped from the visible log first; the producer table
    /// and last term are rebuilt without them and the next flush reports them.
    ///
    /// # Errors
    /// I/O errors (the store stays poisoned and retries); [`LogError::Corrupt`] when data that was
    /// durable does not verify (the store stays poisoned: nothing is appended after damage).
    pub(super) fn recover_tail(&mut self, len: u64, end: u64) -> Result<(), LogError> {
        let dir = self.shared.config.dir.clone();
        let path = self.st.active_path.clone();
        let file = Arc::new(recovery::open_rw(&path)?);
        let (base, visible_end) = {
            let mut state = self.shared.state.write();
            let visible_end = state.end;
            let seg = state.segments.last_mut().ok_or(LogError::Closed)?;
            seg.file = file.clone();
            let base = seg.base;
            if end < visible_end {
                seg.len = len;
                seg.end = end;
                seg.index.truncate(end);
                seg.controls.retain(|&o| o < end);
                state.end = end;
                state.durable = state.durable.min(end);
                state.hw = state.hw.min(end);
                state.rewrites += 1;
            }
            (base, visible_end)
        };
        if end < visible_end {
            self.shared.refresh_durable();
            self.shared.refresh_visible();
        }
        file.set_len(len)
            .map_err(|e| LogError::io("cut the tail back to the durable end", &path, e))?;
        if let Some(e) = self.injected_sync_error(false) {
            return Err(LogError::io("sync the recovered segment", &path, e));
        }
        file.sync_all()
            .map_err(|e| LogError::io("sync the recovered segment", &path, e))?;
        drop_cached_pages(&file);
        let bytes = segment::read_at(&file, &path, 0, len as usize)?;
        // Producers and last term are rebuilt only when records are dropped (otherwise the
        // in-memory ones are exactly those of the verified prefix).
        let dropped = end < self.st.next_offset;
        let mut rebuilt = if dropped {
            let state = self.shared.state.read();
            let k = state.segments.len() - 1;
            let expiry = self.shared.config.producer_id_expiry;
            Some(recovery::state_before(&dir, &state.segments[..k], base, expiry)?)
        } else {
            None
        };
        let mut in_seg = None;
        let scan = segment::scan(&path, &bytes, base, ScanMode::Strict, |batch| {
            if let Some((producers, last_term)) = &mut rebuilt {
                recovery::apply_batch(producers, batch);
                if let Some(f) = batch.last() {
                    *last_term = Some((f.term, f.offset));
                    in_seg = *last_term;
                }
            }
        })?;
        if scan.end != end || scan.good_len != len {
            return Err(LogError::Corrupt {
                file: path,
                position: scan.good_len,
                reason: format!(
                    "re-verified segment ends at offset {} (byte {}), but offset {end} (byte {len}) was durable",
                    scan.end, scan.good_len
                ),
            });
        }
        if let Some((producers, last_term)) = rebuilt {
            tracing::error!(
                from = end,
                to = self.st.next_offset,
                "acknowledged records were dropped: their sync failed"
            );
            self.lost = Some(match self.lost {
                Some((from, to)) => (from.min(end), to.max(self.st.next_offset)),
                None => (end, self.st.next_offset),
            });
            {
                let mut state = self.shared.state.write();
                state.last_term = last_term;
                if let Some(seg) = state.segments.last_mut() {
                    seg.last_term = in_seg;
                }
            }
            *self.shared.producers.lock() = producers;
            self.st.last_term = last_term;
        }
        self.st.active = file;
        self.st.written_len = len;
        self.st.allocated_len = len;
        self.st.synced_len = len;
        self.st.synced_end = end;
        self.st.next_offset = end;
        self.st.dirty = false;
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
        record::encode_frame(&mut buf, &f.record, (n - 1 - i) as u32, f.control);
        bytes[pos..pos + f.len].copy_from_slice(&buf);
        infos.push(FrameInfo {
            offset: f.record.offset,
            position: at + pos as u64,
            term: f.record.term,
            timestamp_ms: f.record.timestamp_ms,
            producer: f.record.producer,
            control: f.control,
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
