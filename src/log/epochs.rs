//! The epoch cache: at which offset each term's records begin (Kafka's leader-epoch checkpoint,
//! KIP-101/279). Replication asks it "where does term T end?" to find where a follower's log
//! diverges from the leader's; truncating by epoch, never to the high watermark, is what keeps
//! committed records through a double failover. The writer records a term when the first record
//! of it is appended, cuts the cache back with the log and trims it with retention; the cache is
//! persisted in the `epochs.checkpoint` side file and verified against the log on open.

use std::{fs, path::Path};

use serde::{Deserialize, Serialize};

use super::{
    error::LogError,
    index::{read_side_file, write_side_file},
    segment::{self, ReadCursor, ScanMode, Segment},
};

/// File name of the persisted cache in the log directory.
pub const EPOCHS_FILE: &str = "epochs.checkpoint";

/// One entry of the cache: the records of `term` begin at offset `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// The term (the fencing token of the leader that wrote the records).
    pub term: u64,
    /// Offset of the first record of that term (for the entry covering the log's start, possibly
    /// an offset retention has since deleted).
    pub start: u64,
}

/// Term → first offset, in increasing order of both (terms only go up along a log).
///
/// Entries describe a log whose end the caller supplies: an entry at or past that end (the first
/// record of a term whose write failed or is not yet durable) is ignored by every query, cut by
/// the next [`record`](Self::record) or [`truncate_from`](Self::truncate_from), and dropped on open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    /// Strictly increasing in `term` and in `start`.
    entries: Vec<Epoch>,
}

/// The side file's JSON: `{"epochs": [[term, start], …]}`.
#[derive(Debug, Serialize, Deserialize)]
struct EpochFile {
    /// `(term, start)` pairs in order.
    epochs: Vec<(u64, u64)>,
}

impl EpochCache {
    /// An empty cache (a log that never held a record).
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache from entries; `None` unless both terms and starts strictly increase.
    pub fn from_epochs(entries: Vec<Epoch>) -> Option<Self> {
        let ordered = entries
            .windows(2)
            .all(|w| w[0].term < w[1].term && w[0].start < w[1].start);
        ordered.then_some(EpochCache { entries })
    }

    /// Every entry, oldest first.
    pub fn epochs(&self) -> &[Epoch] {
        &self.entries
    }

    /// The newest term the cache knows, if any.
    pub fn last_term(&self) -> Option<u64> {
        self.entries.last().map(|e| e.term)
    }

    /// The entries that describe a log ending (exclusive) at `log_end`.
    fn below(&self, log_end: u64) -> &[Epoch] {
        let n = self.entries.partition_point(|e| e.start < log_end);
        &self.entries[..n]
    }

    /// Note that the record at `start` is the first of `term`. A no-op (returns false) when the
    /// cache already has `term` as its newest term starting at or before `start`. Otherwise every
    /// entry at or past `start`, or of a term not below `term`, is removed first (left by a write
    /// that was rolled back), and the entry is added. Returns whether the cache changed.
    pub fn record(&mut self, term: u64, start: u64) -> bool {
        if let Some(last) = self.entries.last() {
            if last.term == term && last.start <= start {
                return false;
            }
        }
        self.entries.retain(|e| e.term < term && e.start < start);
        self.entries.push(Epoch { term, start });
        true
    }

    /// Forget every entry at or past `end` (the log was truncated to `end`). Returns whether the
    /// cache changed.
    pub fn truncate_from(&mut self, end: u64) -> bool {
        let n = self.entries.partition_point(|e| e.start < end);
        let changed = n < self.entries.len();
        self.entries.truncate(n);
        changed
    }

    /// Forget entries that retention made irrelevant: of those starting at or before the log's
    /// new first offset `log_start`, only the last (the one covering `log_start`) is kept, with its
    /// original start. Returns whether the cache changed.
    pub fn trim_to(&mut self, log_start: u64) -> bool {
        let covering = self.entries.partition_point(|e| e.start <= log_start);
        if covering <= 1 {
            return false;
        }
        self.entries.drain(..covering - 1);
        true
    }

    /// Where `term` ends in a log ending (exclusive) at `log_end`, as `(term found, end offset)`,
    /// with the semantics of Kafka's `OffsetsForLeaderEpoch`:
    /// - for a term the log holds: the start of the next higher term, or `log_end` for the last;
    /// - for a term it does not hold, above its first: the largest term below it and that term's
    ///   end (so a term above the last gives `(last term, log_end)`);
    /// - for a term below every term it knows: `(term, start of the first known term)`;
    /// - `None` when the log holds no record and never did.
    pub fn end_offset_for(&self, term: u64, log_end: u64) -> Option<(u64, u64)> {
        let known = self.below(log_end);
        let first = known.first()?;
        if term < first.term {
            return Some((term, first.start));
        }
        let i = known.partition_point(|e| e.term <= term) - 1;
        let end = known.get(i + 1).map_or(log_end, |next| next.start);
        Some((known[i].term, end))
    }

    /// The term of the record at `offset` according to the cache (`None` before the first entry).
    pub fn term_at(&self, offset: u64) -> Option<u64> {
        let i = self.entries.partition_point(|e| e.start <= offset);
        i.checked_sub(1).map(|i| self.entries[i].term)
    }

    /// Cut the cache to a log spanning `[log_start, log_end)`: drop entries at or past the end,
    /// then keep only the one covering the start. Returns whether the cache changed.
    pub fn fit(&mut self, log_start: u64, log_end: u64) -> bool {
        let cut = self.truncate_from(log_end);
        self.trim_to(log_start) || cut
    }
}

/// Path of the side file in `dir`.
pub(crate) fn path(dir: &Path) -> std::path::PathBuf {
    dir.join(EPOCHS_FILE)
}

/// Persist `cache` to `<dir>/epochs.checkpoint` atomically (temp file, fsync, rename, fsync dir).
///
/// # Errors
/// [`LogError::Io`] / [`LogError::DiskFull`] when the file cannot be written.
pub(crate) fn save(dir: &Path, cache: &EpochCache) -> Result<(), LogError> {
    let file = EpochFile {
        epochs: cache.entries.iter().map(|e| (e.term, e.start)).collect(),
    };
    write_side_file(&path(dir), &file)
}

/// The persisted cache; `None` when missing, damaged (CRC) or out of order.
fn load(dir: &Path) -> Option<EpochCache> {
    let file: EpochFile = read_side_file(&path(dir))?;
    let entries = file
        .epochs
        .into_iter()
        .map(|(term, start)| Epoch { term, start })
        .collect();
    let cache = EpochCache::from_epochs(entries);
    if cache.is_none() {
        tracing::warn!(path = %path(dir).display(), "epoch checkpoint out of order; rebuilding it");
    }
    cache
}

/// The term of the record at `offset` (CRC-checked read).
fn term_in_log(segments: &[Segment], offset: u64) -> Result<u64, LogError> {
    let i = segments.partition_point(|s| s.base <= offset).saturating_sub(1);
    let mut cursor = ReadCursor {
        next: offset,
        end: offset + 1,
        max_records: 1,
        max_bytes: usize::MAX,
        bytes: 0,
        out: Vec::new(),
        skip_control: false, // a term-start record has its term like any other
    };
    segments[i].view(offset).read_into(&mut cursor)?;
    cursor
        .out
        .first()
        .map(|r| r.term)
        .ok_or_else(|| LogError::Corrupt {
            file: segments[i].path.clone(),
            position: 0,
            reason: format!("offset {offset} not found in its segment"),
        })
}

/// Whether `cache` (already [fitted](EpochCache::fit) to the log) describes the log exactly. Terms never go down along a
/// log, so it suffices that the record at each entry's start has the entry's term and the record
/// just before it the previous entry's term (two reads per term change), the first record has
/// the first entry's term and the last record the last entry's.
fn matches(
    cache: &EpochCache,
    segments: &[Segment],
    last_term: Option<(u64, u64)>,
) -> Result<bool, LogError> {
    let start = segments.first().map_or(0, |s| s.base);
    let end = segments.last().map_or(0, |s| s.end);
    let entries = cache.epochs();
    if start == end {
        // No retained record: the cache holds (at most) the term of the last record before.
        return Ok(cache.last_term() == last_term.map(|(t, _)| t) && entries.len() <= 1);
    }
    let Some(first) = entries.first() else {
        return Ok(false);
    };
    if first.start > start || cache.last_term() != last_term.map(|(t, _)| t) {
        return Ok(false);
    }
    if term_in_log(segments, start)? != first.term {
        return Ok(false);
    }
    for pair in entries.windows(2) {
        if term_in_log(segments, pair[1].start)? != pair[1].term
            || term_in_log(segments, pair[1].start - 1)? != pair[0].term
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Build the cache from the segments themselves: the first record of each segment is read, and
/// only a segment whose first and last records differ in term is scanned for its term changes.
/// `hint` (the persisted cache) supplies the original start of the term covering the log's start.
fn rebuild(
    segments: &[Segment],
    last_term: Option<(u64, u64)>,
    hint: Option<&EpochCache>,
) -> Result<EpochCache, LogError> {
    let mut cache = EpochCache::new();
    for seg in segments.iter().filter(|s| s.end > s.base) {
        let first = term_in_log(segments, seg.base)?;
        cache.record(first, seg.base);
        if seg.last_term.map(|(t, _)| t) != Some(first) {
            let buf = segment::read_at(&seg.file, &seg.path, 0, seg.len as usize)?;
            segment::scan(&seg.path, &buf, seg.base, ScanMode::Strict, |batch| {
                for f in batch {
                    cache.record(f.term, f.offset);
                }
            })?;
        }
    }
    if cache.entries.is_empty() {
        // Nothing retained: keep the term of the last record before the retained log.
        if let Some((term, offset)) = last_term {
            cache.record(term, offset);
        }
    }
    if let (Some(first), Some(hint)) = (cache.entries.first_mut(), hint) {
        if let Some(h) = hint.entries.iter().find(|h| h.term == first.term) {
            first.start = first.start.min(h.start);
        }
    }
    Ok(cache)
}

/// The epoch cache for a just-recovered log (`segments` in order, the last one active, with
/// `last_term` the `(term, offset)` of its last record or of the last record before it). The
/// persisted cache is cut to the log (an entry past the end is a term whose first record never
/// became durable; entries before the start were left by an interrupted retention), verified
/// against the records, and rebuilt from the segments when missing, damaged or wrong. The file is
/// rewritten whenever the result differs from it.
///
/// # Errors
/// [`LogError::Corrupt`] when a rebuild scans a damaged segment; I/O errors reading segments.
pub(crate) fn recover(
    dir: &Path,
    segments: &[Segment],
    last_term: Option<(u64, u64)>,
) -> Result<EpochCache, LogError> {
    let _ = fs::remove_file(dir.join("epochs.tmp")); // a save interrupted before its rename
    let start = segments.first().map_or(0, |s| s.base);
    let end = segments.last().map_or(0, |s| s.end);
    let loaded = load(dir);
    let mut candidate = loaded.clone().unwrap_or_default();
    candidate.fit(start, end);
    let verified = match matches(&candidate, segments, last_term) {
        Ok(ok) => ok,
        Err(e) => {
            // A damaged record is reported by the read that reaches it; keep what the file says.
            tracing::warn!(error = %e, "could not verify the epoch checkpoint against the log");
            true
        }
    };
    let cache = if verified && loaded.is_some() {
        candidate
    } else {
        let rebuilt = rebuild(segments, last_term, loaded.as_ref())?;
        match &loaded {
            None if end > start => {
                tracing::info!(dir = %dir.display(), "epoch checkpoint missing; rebuilt from the log")
            }
            None => {}
            Some(old) => tracing::warn!(
                dir = %dir.display(),
                file = ?old.epochs(),
                log = ?rebuilt.epochs(),
                "epoch checkpoint disagreed with the log; rebuilt from the log"
            ),
        }
        rebuilt
    };
    if loaded.as_ref() != Some(&cache) && !(loaded.is_none() && cache.entries.is_empty()) {
        if let Err(e) = save(dir, &cache) {
            tracing::warn!(error = %e, "could not persist the recovered epoch checkpoint");
        }
    }
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(pairs: &[(u64, u64)]) -> EpochCache {
        EpochCache::from_epochs(pairs.iter().map(|&(term, start)| Epoch { term, start }).collect())
            .expect("ordered")
    }

    /// Kafka's `OffsetsForLeaderEpoch` answers: the next term's start for a held term, the log end
    /// for the last, the largest term below for one in between or above, the first start below.
    #[test]
    fn end_offset_for_follows_kafka() {
        let c = cache(&[(2, 0), (5, 10), (9, 30)]);
        assert_eq!(c.end_offset_for(2, 40), Some((2, 10)));
        assert_eq!(c.end_offset_for(5, 40), Some((5, 30)));
        assert_eq!(c.end_offset_for(9, 40), Some((9, 40)));
        assert_eq!(
            c.end_offset_for(3, 40),
            Some((2, 10)),
            "between: largest term below"
        );
        assert_eq!(c.end_offset_for(7, 40), Some((5, 30)));
        assert_eq!(c.end_offset_for(12, 40), Some((9, 40)), "above: the last term");
        assert_eq!(c.end_offset_for(1, 40), Some((1, 0)), "below: the first start");
        assert_eq!(EpochCache::new().end_offset_for(3, 0), None);
        // An entry at or past the log end (a first record not yet durable) is not part of the log.
        assert_eq!(c.end_offset_for(9, 30), Some((5, 30)));
        assert_eq!(c.end_offset_for(12, 30), Some((5, 30)));
    }

    /// `record` adds a term once, ignores the same term again, and replaces entries left by a
    /// rolled-back write (at or past the new start, or of a term not below).
    #[test]
    fn record_is_idempotent_and_heals() {
        let mut c = EpochCache::new();
        assert!(c.record(1, 0));
        assert!(!c.record(1, 5));
        assert!(c.record(4, 7));
        assert_eq!(c, cache(&[(1, 0), (4, 7)]));
        // The first record of term 4 at offset 7 was never written; term 6 starts there instead.
        assert!(c.record(6, 7));
        assert_eq!(c, cache(&[(1, 0), (6, 7)]));
        assert_eq!(c.last_term(), Some(6));
        assert_eq!(c.term_at(6), Some(1));
        assert_eq!(c.term_at(100), Some(6));
    }

    /// Truncation cuts entries at or past the new end; retention keeps only the entry covering
    /// the new start, with its original start offset.
    #[test]
    fn truncate_and_trim() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 20), (8, 25)]);
        assert!(c.truncate_from(20));
        assert_eq!(c, cache(&[(1, 0), (3, 10)]));
        assert!(!c.truncate_from(21));
        let mut c = cache(&[(1, 0), (3, 10), (4, 20), (8, 25)]);
        assert!(c.trim_to(22));
        assert_eq!(c, cache(&[(4, 20), (8, 25)]));
        assert!(!c.trim_to(22));
        assert!(c.trim_to(25));
        assert_eq!(c, cache(&[(8, 25)]));
        assert_eq!(
            c.end_offset_for(4, 30),
            Some((4, 25)),
            "a trimmed term is below the first"
        );
    }

    /// Only strictly increasing entries make a cache.
    #[test]
    fn from_epochs_checks_order() {
        let e = |term, start| Epoch { term, start };
        assert!(EpochCache::from_epochs(vec![e(1, 0), e(2, 0)]).is_none());
        assert!(EpochCache::from_epochs(vec![e(2, 0), e(2, 5)]).is_none());
        assert!(EpochCache::from_epochs(vec![e(3, 0), e(2, 5)]).is_none());
        assert!(EpochCache::from_epochs(vec![e(1, 0), e(2, 5)]).is_some());
    }

    /// The side file round-trips; a damaged or disordered one loads as missing.
    #[test]
    fn side_file_round_trip_and_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cache(&[(1, 0), (7, 12)]);
        save(dir.path(), &c).expect("save");
        assert_eq!(load(dir.path()), Some(c));
        let p = path(dir.path());
        let mut bytes = fs::read(&p).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        fs::write(&p, bytes).expect("write");
        assert_eq!(load(dir.path()), None);
        write_side_file(
            &p,
            &EpochFile {
                epochs: vec![(5, 0), (3, 9)],
            },
        )
        .expect("write");
        assert_eq!(load(dir.path()), None);
    }
}
