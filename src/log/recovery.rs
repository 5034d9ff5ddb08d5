//! Opening a log directory: load or rebuild each sealed segment's index, scan the active (last)
//! segment frame by frame, cut a torn tail (logging what was cut), refuse corruption in the middle
//! of the log, and rebuild the per-producer sequence table (from the per-segment deltas), the
//! last term and the epoch cache (`epochs`).

use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions},
    path::Path,
    sync::Arc,
    time::Duration,
};

use super::{
    config::LogConfig,
    epochs::{self, EpochCache},
    error::LogError,
    index::{read_side_file, sync_dir, write_side_file, SegmentMeta, SegmentSnapshot, SparseIndex},
    producer::{now_ms, Producers},
    segment::{self, FrameInfo, ScanMode, Segment},
};

/// Everything the store needs to start serving.
#[derive(Debug)]
pub struct Recovered {
    /// All retained segments in offset order; the last is the active one.
    pub segments: Vec<Segment>,
    /// Per-producer idempotence state as of the end of the log.
    pub producers: Producers,
    /// `(term, offset)` of the last record, or of the last record before the retained log.
    pub last_term: Option<(u64, u64)>,
    /// Term → first offset of the retained log, verified against it (or rebuilt).
    pub epochs: EpochCache,
}

/// Open a segment file for reading and positional writing.
pub fn open_rw(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| LogError::io("open segment", path, e))
}

/// Record one complete batch in the producer table (at the time it was stored).
pub fn apply_batch(producers: &mut Producers, batch: &[FrameInfo]) {
    if let Some(first) = batch.first() {
        if let Some(p) = &first.producer {
            let count = u32::try_from(batch.len()).unwrap_or(u32::MAX);
            producers.record(&p.producer_id, p.seq, count, first.offset, first.timestamp_ms);
        }
    }
}

/// Scan a whole sealed segment strictly and build its metadata.
fn rebuild_meta(path: &Path, base: u64, interval: u32) -> Result<(SegmentMeta, Vec<u8>), LogError> {
    let buf = fs::read(path).map_err(|e| LogError::io("read segment", path, e))?;
    let mut meta = SegmentMeta {
        base,
        end: base,
        file_len: buf.len() as u64,
        last_term: None,
        max_timestamp_ms: 0,
        index: SparseIndex::default(),
        controls: Vec::new(),
    };
    let out = segment::scan(path, &buf, base, ScanMode::Strict, |batch| {
        for f in batch {
            meta.index.maybe_add(f.offset, f.position, interval);
            if f.control {
                meta.controls.push(f.offset);
            }
            meta.last_term = Some((f.term, f.offset));
            meta.max_timestamp_ms = meta.max_timestamp_ms.max(f.timestamp_ms);
        }
    })?;
    meta.end = out.end;
    Ok((meta, buf))
}

/// Producer table and last `(term, offset)` just before the segment at `base`, whose retained
/// predecessors are `earlier`. Each `<base>.snapshot` holds the producers the segment before it
/// changed (a delta; older versions wrote the whole table, which merges the same way), so the
/// table is the first retained segment's snapshot (what came before the retained log) merged with
/// the snapshot after each earlier segment, in order; a missing or damaged one is replaced by
/// scanning that segment. Producers idle longer than `expiry` are dropped.
pub fn state_before(
    dir: &Path,
    earlier: &[Segment],
    base: u64,
    expiry: Duration,
) -> Result<(Producers, Option<(u64, u64)>), LogError> {
    let now = now_ms();
    let mut producers = Producers::new(expiry);
    let first = earlier.first().map_or(base, |s| s.base);
    let mut last_term = None;
    if let Some(s) = read_side_file::<SegmentSnapshot>(&segment::snapshot_path(dir, first)) {
        producers.merge(s.producers, now);
        last_term = s.last_term;
    }
    for (i, seg) in earlier.iter().enumerate() {
        last_term = seg.last_term.or(last_term);
        let next = earlier.get(i + 1).map_or(base, |s| s.base);
        match read_side_file::<SegmentSnapshot>(&segment::snapshot_path(dir, next)) {
            Some(s) => {
                producers.merge(s.producers, now);
                last_term = s.last_term.or(last_term);
            }
            None => {
                let buf = fs::read(&seg.path).map_err(|e| LogError::io("read segment", &seg.path, e))?;
                segment::scan(&seg.path, &buf, seg.base, ScanMode::Strict, |b| {
                    apply_batch(&mut producers, b)
                })?;
            }
        }
    }
    producers.purge(now);
    Ok((producers, last_term))
}

/// Recover the log in `config.dir` (creating an empty one if needed).
pub fn recover(config: &LogConfig) -> Result<Recovered, LogError> {
    let dir = &config.dir;
    fs::create_dir_all(dir).map_err(|e| LogError::io("create log directory", dir, e))?;
    let mut bases = BTreeSet::new();
    let mut side_files = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| LogError::io("list log directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("list log directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match segment::parse_name(name) {
            Some((base, "log")) => {
                bases.insert(base);
            }
            Some((base, "index" | "snapshot")) => side_files.push((base, entry.path())),
            Some((_, "tmp")) => {
                // A side file whose write was interrupted; the rename never happened.
                let _ = fs::remove_file(entry.path());
            }
            _ => {}
        }
    }
    if bases.is_empty() {
        let path = segment::log_path(dir, 0);
        File::create(&path).map_err(|e| LogError::io("create segment", &path, e))?;
        sync_dir(dir)?;
        bases.insert(0);
    }
    for (base, path) in side_files {
        if !bases.contains(&base) {
            let _ = fs::remove_file(path); // left behind by a deletion or an interrupted roll
        }
    }
    let bases: Vec<u64> = bases.into_iter().collect();
    let (sealed, active_base) = bases.split_at(bases.len() - 1);
    let active_base = active_base[0];
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
    let check_continuity = |segments: &[Segment], base: u64, path: &Path| match segments.last() {
        Some(prev) if prev.end != base => Err(LogError::Corrupt {
            file: path.to_owned(),
            position: 0,
            reason: format!(
                "segment starts at offset {base} but the previous one ends at {}",
                prev.end
            ),
        }),
        _ => Ok(()),
    };

    for &base in sealed {
        let path = segment::log_path(dir, base);
        let file = open_rw(&path)?;
        let file_len = file
            .metadata()
            .map_err(|e| LogError::io("stat segment", &path, e))?
            .len();
        let ipath = segment::index_path(dir, base);
        let loaded =
            read_side_file::<SegmentMeta>(&ipath).filter(|m| m.base == base && m.file_len == file_len);
        let meta = match loaded {
            Some(m) => m,
            None => {
                tracing::info!(file = %path.display(), "rebuilding the index of a sealed segment");
                let (m, _) = rebuild_meta(&path, base, config.index_interval_bytes)?;
                if let Err(e) = write_side_file(&ipath, &m) {
                    tracing::warn!(error = %e, "could not persist a rebuilt segment index");
                }
                m
            }
        };
        check_continuity(&segments, base, &path)?;
        segments.push(Segment {
            base,
            path,
            file: Arc::new(file),
            end: meta.end,
            len: meta.file_len,
            index: meta.index,
            last_term: meta.last_term,
            max_timestamp_ms: meta.max_timestamp_ms,
            controls: meta.controls,
        });
    }

    // Producer table and last term as of the active segment's base.
    let (mut producers, before_active) =
        state_before(dir, &segments, active_base, config.producer_id_expiry)?;

    let path = segment::log_path(dir, active_base);
    check_continuity(&segments, active_base, &path)?;
    let file = open_rw(&path)?;
    let buf = fs::read(&path).map_err(|e| LogError::io("read segment", &path, e))?;
    let mut active = Segment {
        base: active_base,
        path: path.clone(),
        file: Arc::new(file),
        end: active_base,
        len: 0,
        index: SparseIndex::default(),
        last_term: None,
        max_timestamp_ms: 0,
        controls: Vec::new(),
    };
    let out = segment::scan(&path, &buf, active_base, ScanMode::RepairTail, |batch| {
        apply_batch(&mut producers, batch);
        for f in batch {
            active
                .index
                .maybe_add(f.offset, f.position, config.index_interval_bytes);
            if f.control {
                active.controls.push(f.offset);
            }
            active.last_term = Some((f.term, f.offset));
            active.max_timestamp_ms = active.max_timestamp_ms.max(f.timestamp_ms);
        }
    })?;
    if let Some(torn) = &out.torn {
        if torn.only_zeros {
            tracing::debug!(
                file = %path.display(),
                position = torn.position,
                reserved_bytes = torn.dropped_bytes,
                "cutting the space reserved ahead of the writes from the active segment"
            );
        } else {
            tracing::warn!(
                file = %path.display(),
                position = torn.position,
                dropped_bytes = torn.dropped_bytes,
                kept_until_offset = out.end,
                reason = %torn.reason,
                "cutting a torn tail from the active segment"
            );
        }
        active
            .file
            .set_len(out.good_len)
            .map_err(|e| LogError::io("truncate torn tail", &path, e))?;
        active
            .file
            .sync_all()
            .map_err(|e| LogError::io("sync segment", &path, e))?;
    }
    active.end = out.end;
    active.len = out.good_len;
    // The active segment is not sealed: a leftover index from an interrupted roll is stale.
    let _ = fs::remove_file(segment::index_path(dir, active_base));
    let last_term = active.last_term.or(before_active);
    producers.purge(now_ms());
    segments.push(active);
    let epochs = epochs::recover(dir, &segments, last_term)?;
    Ok(Recovered {
        segments,
        producers,
        last_term,
        epochs,
    })
}
