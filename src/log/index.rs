//! The sparse offset index of a segment (offset -> byte position every `index_interval_bytes`),
//! and the small side files that persist it and the producer state: `<base>.index` is written when
//! a segment is sealed, `<base>.snapshot` (the producers the previous segment changed) when a
//! segment is created. Both are a CRC32C followed by
//! JSON, written to a temporary file, synced and renamed into place.

use std::{
    fs::{self, File},
    io::Write,
    path::Path,
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{error::LogError, producer::ProducerSnapshot};

/// Sparse map from record offsets to byte positions within one segment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SparseIndex {
    /// `(offset, position)` pairs in increasing order; the first record is always indexed.
    entries: Vec<(u64, u64)>,
}

impl SparseIndex {
    /// Record that `offset` starts at `position`, if it is at least `interval` bytes past the last
    /// entry (or the index is empty).
    pub fn maybe_add(&mut self, offset: u64, position: u64, interval: u32) {
        match self.entries.last() {
            Some(&(_, last)) if position < last + interval as u64 => {}
            _ => self.entries.push((offset, position)),
        }
    }

    /// The closest indexed `(offset, position)` at or before `offset`; `(base, 0)` if none.
    pub fn lookup(&self, offset: u64, base: u64) -> (u64, u64) {
        let i = self.entries.partition_point(|&(o, _)| o <= offset);
        if i == 0 {
            (base, 0)
        } else {
            self.entries[i - 1]
        }
    }

    /// Drop the entries for offsets `>= from` (after a truncation).
    pub fn truncate(&mut self, from: u64) {
        let i = self.entries.partition_point(|&(o, _)| o < from);
        self.entries.truncate(i);
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// What `<base>.index` records about a sealed segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Offset of the segment's first record.
    pub base: u64,
    /// One past the segment's last offset.
    pub end: u64,
    /// Segment file size when sealed; a mismatch on open means the file changed and is rescanned.
    pub file_len: u64,
    /// `(term, offset)` of the segment's last record, if it has one.
    pub last_term: Option<(u64, u64)>,
    /// Newest record timestamp in the segment (for age retention).
    pub max_timestamp_ms: u64,
    /// The sparse index.
    pub index: SparseIndex,
    /// Offsets of the segment's control records (absent in indexes written before they existed,
    /// whose segments have none).
    #[serde(default)]
    pub controls: Vec<u64>,
}

/// What `<base>.snapshot` records: the last term just before the segment's first record, and the
/// producers whose state the previous segment changed (a delta: recovery merges the snapshots of
/// all retained segments in order; see `recovery::state_before`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SegmentSnapshot {
    /// `(term, offset)` of the last record before this segment (keeps fencing across retention).
    pub last_term: Option<(u64, u64)>,
    /// The history, at that point, of every producer that stored a batch in the previous
    /// segment (older snapshots hold every producer; they merge the same way).
    pub producers: ProducerSnapshot,
}

/// Write `value` as CRC32C + JSON to `path`, atomically (temp file, sync, rename, sync dir).
pub fn write_side_file<T: Serialize>(path: &Path, value: &T) -> Result<(), LogError> {
    let json = serde_json::to_vec(value).map_err(|e| LogError::Io {
        op: "encode side file",
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    let tmp = path.with_extension("tmp");
    let io = |op| move |e| LogError::io(op, path, e);
    let mut f = File::create(&tmp).map_err(io("create side file"))?;
    f.write_all(&crc32c::crc32c(&json).to_le_bytes())
        .map_err(io("write side file"))?;
    f.write_all(&json).map_err(io("write side file"))?;
    f.sync_all().map_err(io("sync side file"))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("rename side file"))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Read a side file written by [`write_side_file`]; `None` when missing or damaged (the caller
/// then rebuilds what it held from the segments themselves).
pub fn read_side_file<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() < 4 {
        return None;
    }
    let (crc, json) = bytes.split_at(4);
    if u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) != crc32c::crc32c(json) {
        tracing::warn!(path = %path.display(), "side file fails its CRC; rebuilding it");
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// `fsync` a directory so that file creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries are only added every `interval` bytes and lookups return the floor entry.
    #[test]
    fn sparse_lookup_returns_floor() {
        let mut ix = SparseIndex::default();
        for i in 0..100u64 {
            ix.maybe_add(10 + i, i * 100, 1000);
        }
        assert_eq!(ix.len(), 10);
        assert_eq!(ix.lookup(10, 10), (10, 0));
        assert_eq!(ix.lookup(25, 10), (20, 1000));
        assert_eq!(ix.lookup(5, 10), (10, 0));
        ix.truncate(30);
        assert_eq!(ix.lookup(99, 10), (20, 1000));
    }

    /// A side file round-trips, and a damaged one reads as missing instead of as wrong data.
    #[test]
    fn side_file_detects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.index");
        let snap = SegmentSnapshot {
            last_term: Some((3, 9)),
            producers: Default::default(),
        };
        write_side_file(&path, &snap).expect("write");
        let back: SegmentSnapshot = read_side_file(&path).expect("read back");
        assert_eq!(back.last_term, Some((3, 9)));
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        fs::write(&path, bytes).expect("write");
        assert!(read_side_file::<SegmentSnapshot>(&path).is_none());
    }
}
