//! Crash and corruption tests: segment files are cut at every byte position of their tail region
//! (what a crash mid-write leaves behind) or damaged in place, then reopened.

#[path = "support/segments.rs"]
mod segments;

use std::path::{Path, PathBuf};

use segments::{data_len, last_segment, segment_files};

use bytes::Bytes;
use simpleloggers::log::{Durability, LogConfig, LogError, LogStore};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("crash-{i}-{}", "y".repeat((i * 13 % 40) as usize)))
}

fn config(dir: &Path, segment_bytes: u64) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = segment_bytes;
    c.index_interval_bytes = 64;
    c.durability = Durability::Always;
    c
}

/// Copy every file of `from` into a fresh directory.
fn copy_dir(from: &Path, to: &Path) -> Result<(), std::io::Error> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// An acknowledged batch: its offsets and where it ends in the segment that holds it.
struct Acked {
    first: u64,
    count: u64,
    segment: PathBuf,
    end_pos: u64,
}

/// Append single records and 3-record batches under `always`, remembering where each
/// acknowledged batch ends on disk.
async fn build_log(dir: &Path, segment_bytes: u64, n: u64) -> Result<Vec<Acked>, Box<dyn std::error::Error>> {
    let log = LogStore::open(config(dir, segment_bytes)).await?;
    let mut acked = Vec::new();
    let mut next = 0;
    while next < n {
        let count = if next % 4 == 3 { 3 } else { 1 };
        let out = log
            .append(1, None, (next..next + count).map(payload).collect())
            .await?;
        assert_eq!(out.first(), next);
        let segment = last_segment(dir)?;
        let end_pos = data_len(&segment)?;
        acked.push(Acked {
            first: next,
            count,
            segment,
            end_pos,
        });
        next += count;
    }
    log.close().await?;
    Ok(acked)
}

/// Cut the last segment at every byte of its tail region and reopen each copy: the log is always
/// exactly the acknowledged batches that end at or before the cut (a prefix, whole batches only:
/// a cut inside a batch drops exactly that batch), reads return them intact, and the store accepts
/// the next append at the recovered end.
async fn cut_every_byte(segment_bytes: u64, n: u64) -> TestResult {
    let src = tempfile::tempdir()?;
    let acked = build_log(src.path(), segment_bytes, n).await?;
    let seg = last_segment(src.path())?;
    let full = std::fs::read(&seg)?;
    let in_last: Vec<&Acked> = acked.iter().filter(|a| a.segment == seg).collect();
    let before_last = in_last.first().map_or(0, |a| a.first);
    assert!(in_last.len() >= 3, "tail region covers several batches");
    // Tail region: the last ~5 batches of the last segment, every byte position.
    let from = in_last.iter().rev().nth(5).map_or(0, |a| a.end_pos);
    for cut in from..=full.len() as u64 {
        let copy = tempfile::tempdir()?;
        copy_dir(src.path(), copy.path())?;
        std::fs::write(
            copy.path().join(seg.file_name().ok_or("name")?),
            &full[..cut as usize],
        )?;
        let expected_end = in_last
            .iter()
            .filter(|a| a.end_pos <= cut)
            .map(|a| a.first + a.count)
            .max()
            .unwrap_or(before_last);
        // Reopen without per-append syncs: only the recovery path is under test here.
        let mut reopen = config(copy.path(), segment_bytes);
        reopen.durability = Durability::Never;
        let log = LogStore::open(reopen.clone()).await?;
        assert_eq!(log.end_offset(), expected_end, "cut at byte {cut}");
        let records = log.read(0, usize::MAX, usize::MAX).await?;
        assert_eq!(records.len() as u64, expected_end, "cut at byte {cut}");
        assert!(
            records.iter().all(|r| r.payload == payload(r.offset)),
            "cut at byte {cut}"
        );
        let next = log.append(1, None, vec![payload(expected_end)]).await?;
        assert_eq!(next.first(), expected_end);
        log.close().await?;
        let log = LogStore::open(reopen).await?;
        assert_eq!(log.end_offset(), expected_end + 1, "repaired log reopens cleanly");
        log.close().await?;
    }
    Ok(())
}

/// Crash at every byte of the tail of a single-segment log under `always`: nothing acknowledged
/// is missing beyond the batch the cut lands in, and the result is always a prefix.
#[tokio::test]
async fn crash_cut_single_segment() -> TestResult {
    cut_every_byte(64 * 1024 * 1024, 30).await
}

/// The same with small segments: the active segment is cut while sealed segments stay intact,
/// and recovery picks up their indexes and the snapshot at the active segment's base.
#[tokio::test]
async fn crash_cut_after_rolls() -> TestResult {
    cut_every_byte(700, 60).await
}

/// Garbage after the last record (zeros from a preallocated extent, or random bytes) is cut as a
/// torn tail; the records before it are intact.
#[tokio::test]
async fn garbage_tail_is_cut() -> TestResult {
    for garbage in [
        vec![0u8; 4096],
        (0..999u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>(),
    ] {
        let dir = tempfile::tempdir()?;
        build_log(dir.path(), 1 << 20, 10).await?;
        let seg = last_segment(dir.path())?;
        let good = std::fs::metadata(&seg)?.len();
        let mut bytes = std::fs::read(&seg)?;
        bytes.extend_from_slice(&garbage);
        std::fs::write(&seg, &bytes)?;
        let log = LogStore::open(config(dir.path(), 1 << 20)).await?;
        assert_eq!(log.end_offset(), 10);
        assert_eq!(
            std::fs::metadata(&seg)?.len(),
            good,
            "file cut back to the last good record"
        );
        log.close().await?;
    }
    Ok(())
}

/// Byte positions of the frames in a segment file (walks the length prefixes).
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 8 <= bytes.len() {
        out.push(p);
        p += 8 + u32::from_le_bytes([bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]]) as usize;
    }
    out
}

/// A damaged last record (CRC mismatch) is a torn tail: it alone is dropped. The same damage in a
/// record followed by valid ones is corruption: open fails naming the file and the record's byte
/// position, and nothing is truncated.
#[tokio::test]
async fn corruption_in_the_middle_is_refused_and_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    // 12 single records (multiples of 4 are followed by batches, so use n where all are singles).
    let log = LogStore::open(config(dir.path(), 1 << 20)).await?;
    for i in 0..12 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    log.close().await?;
    let seg = last_segment(dir.path())?;
    let bytes = std::fs::read(&seg)?;
    let starts = record_starts(&bytes);
    assert_eq!(starts.len(), 12);

    for (victim, byte) in [(5usize, 30usize), (0, 2), (10, 50), (7, 9)] {
        let copy = tempfile::tempdir()?;
        copy_dir(dir.path(), copy.path())?;
        let path = copy.path().join(seg.file_name().ok_or("name")?);
        let mut bad = bytes.clone();
        bad[starts[victim] + byte] ^= 0x5a;
        std::fs::write(&path, &bad)?;
        match LogStore::open(config(copy.path(), 1 << 20)).await {
            Err(LogError::Corrupt {
                file,
                position,
                reason,
            }) => {
                assert_eq!(file, path);
                assert_eq!(position, starts[victim] as u64, "{reason}");
            }
            other => panic!("victim {victim}: expected corruption, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path)?, bad, "a refused log is left untouched");
    }

    let mut bad = bytes.clone();
    let last = starts[11];
    bad[last + 40] ^= 0x01;
    std::fs::write(&seg, &bad)?;
    let log = LogStore::open(config(dir.path(), 1 << 20)).await?;
    assert_eq!(log.end_offset(), 11, "only the damaged last record is cut");
    assert_eq!(std::fs::metadata(&seg)?.len(), last as u64);
    Ok(())
}

/// Dropping every handle without `close` still leaves a log that reopens with everything that
/// was acknowledged (the writer thread finishes and is joined on drop).
#[tokio::test]
async fn drop_without_close_reopens() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let log = LogStore::open(config(dir.path(), 4096)).await?;
        for i in 0..50 {
            log.append(3, None, vec![payload(i)]).await?;
        }
    }
    let log = LogStore::open(config(dir.path(), 4096)).await?;
    assert_eq!(log.end_offset(), 50);
    assert_eq!(log.last_term(), Some((3, 49)));
    Ok(())
}

/// The writer reserves space ahead of its writes (zeros at the end of the active segment, so that
/// its syncs need not write the file's size): a copy taken while the log is open, which is what a
/// crash leaves, reopens with every record and appends right after them; the segments sealed
/// meanwhile hold exactly their records (their indexes are used as they are, and their strict
/// scan would refuse zeros); a clean close leaves no reserved space behind.
#[tokio::test]
async fn reserved_space_is_cut_by_the_recovery_and_at_close() -> TestResult {
    let dir = tempfile::tempdir()?;
    let segment_bytes = 8 * 1024;
    let log = LogStore::open(config(dir.path(), segment_bytes)).await?;
    let n = 300;
    for i in 0..n {
        log.append(1, None, vec![payload(i)]).await?;
    }
    let mut segments = segment_files(dir.path())?;
    let active = segments.pop().ok_or("no segment")?;
    assert!(
        segments.len() >= 2,
        "the log rolled: {} sealed segments",
        segments.len()
    );
    for sealed in &segments {
        assert_eq!(
            std::fs::metadata(sealed)?.len(),
            data_len(sealed)?,
            "{} holds its records only",
            sealed.display()
        );
    }
    let data = data_len(&active)?;
    assert!(
        std::fs::metadata(&active)?.len() > data,
        "space is reserved after the {data} bytes of records"
    );

    let copy = tempfile::tempdir()?;
    copy_dir(dir.path(), copy.path())?;
    let reopened = LogStore::open(config(copy.path(), segment_bytes)).await?;
    assert_eq!(reopened.end_offset(), n);
    let records = reopened.read(0, usize::MAX, usize::MAX).await?;
    assert_eq!(records.len() as u64, n);
    assert!(records.iter().all(|r| r.payload == payload(r.offset)));
    let copied = copy.path().join(active.file_name().ok_or("name")?);
    assert_eq!(
        std::fs::metadata(&copied)?.len(),
        data,
        "the reserved zeros are cut, nothing else"
    );
    let next = reopened.append(1, None, vec![payload(n)]).await?;
    assert_eq!(next.first(), n);
    reopened.close().await?;

    log.close().await?;
    let active = last_segment(dir.path())?;
    assert_eq!(
        std::fs::metadata(&active)?.len(),
        data_len(&active)?,
        "a clean close keeps no reserved space"
    );
    Ok(())
}
