//! The log's epoch cache (term → first offset, `epochs.checkpoint`) against the records it
//! describes: recorded on appends, answered like Kafka's `OffsetsForLeaderEpoch`, cut by
//! truncation, trimmed by retention, and consistent with the log after every crash and reopen.

#[path = "support/segments.rs"]
mod segments;

use std::path::Path;

use segments::last_segment;

use bytes::Bytes;
use simpleloggers::log::{Durability, Epoch, FaultInjector, LogConfig, LogStore, Record};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("epoch-{i:05}-{}", "z".repeat((i % 11) as usize)))
}

fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = 600;
    c.index_interval_bytes = 64;
    c.durability = Durability::Never;
    c
}

/// The term changes of `records` (read from the log's start), as the cache must hold them.
fn expected(records: &[Record]) -> Vec<Epoch> {
    let mut out: Vec<Epoch> = Vec::new();
    for r in records {
        if out.last().is_none_or(|e| e.term != r.term) {
            out.push(Epoch {
                term: r.term,
                start: r.offset,
            });
        }
    }
    out
}

/// Reference answer to "where does `term` end" over `epochs` for a log ending at `end`.
fn model_end_offset_for(epochs: &[Epoch], term: u64, end: u64) -> Option<(u64, u64)> {
    let first = epochs.first()?;
    if term < first.term {
        return Some((term, first.start));
    }
    let i = epochs.iter().rposition(|e| e.term <= term)?;
    Some((epochs[i].term, epochs.get(i + 1).map_or(end, |n| n.start)))
}

/// Assert the cache describes exactly the records of the log: the same term changes, the first
/// entry covering the first retained offset (its start may be older), and the same answers as
/// the reference for every term up to one past the last.
async fn assert_consistent(log: &LogStore, what: &str) -> TestResult {
    let start = log.start_offset();
    let records = log.read(start, usize::MAX, usize::MAX).await?;
    let want = expected(&records);
    let got = log.epochs();
    if records.is_empty() {
        assert!(got.len() <= 1, "{what}: {got:?}");
        return Ok(());
    }
    assert_eq!(
        got.first().map(|e| e.term),
        want.first().map(|e| e.term),
        "{what}: {got:?}"
    );
    assert!(
        got[0].start <= start,
        "{what}: first entry covers the start: {got:?}"
    );
    assert_eq!(got[1..], want[1..], "{what}");
    let end = log.end_offset();
    let last = want.last().map_or(0, |e| e.term);
    for term in 0..=last + 1 {
        assert_eq!(
            log.end_offset_for(term),
            model_end_offset_for(&got, term, end),
            "{what}: end_offset_for({term})"
        );
    }
    assert_eq!(log.last_term().map(|(t, _)| t), Some(last), "{what}");
    Ok(())
}

/// Append `n` records in runs of `run` per term, starting at `term` and skipping terms, so that
/// term changes fall both inside segments and at their starts. Returns the last term used.
async fn fill(log: &LogStore, mut term: u64, n: u64, run: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let mut i = log.end_offset();
    let stop = i + n;
    while i < stop {
        let count = if i.is_multiple_of(3) { 2 } else { 1 };
        log.append(term, None, (i..i + count).map(payload).collect())
            .await?;
        i += count;
        if i % run < count {
            term += 1 + i % 2;
        }
    }
    Ok(term)
}

/// Copy every file of `from` into `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<(), std::io::Error> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// `(term, start)` pairs stored in the checkpoint file (after its 4-byte CRC).
fn file_epochs(dir: &Path) -> Result<Vec<(u64, u64)>, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(dir.join("epochs.checkpoint"))?;
    let crc = u32::from_le_bytes(bytes[..4].try_into()?);
    assert_eq!(crc, crc32c::crc32c(&bytes[4..]), "checkpoint CRC");
    let json: serde_json::Value = serde_json::from_slice(&bytes[4..])?;
    Ok(serde_json::from_value(json["epochs"].clone())?)
}

/// Write a checkpoint file with a valid CRC holding `epochs`.
fn write_file_epochs(dir: &Path, epochs: &[(u64, u64)]) -> TestResult {
    let json = serde_json::to_vec(&serde_json::json!({ "epochs": epochs }))?;
    let mut bytes = crc32c::crc32c(&json).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    std::fs::write(dir.join("epochs.checkpoint"), bytes)?;
    Ok(())
}

/// The first record of each new term adds an entry, persisted before the record; the cache
/// answers like Kafka's `OffsetsForLeaderEpoch` and survives a reopen; a fenced stale term adds
/// nothing.
#[tokio::test]
async fn terms_are_recorded_and_answered() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(config(dir.path())).await?;
    assert!(log.epochs().is_empty());
    assert_eq!(log.end_offset_for(1), None, "a log that never held a record");
    log.append(1, None, vec![payload(0), payload(1), payload(2)])
        .await?;
    log.append(3, None, vec![payload(3)]).await?;
    log.append(3, None, vec![payload(4)]).await?;
    log.append(7, None, vec![payload(5)]).await?;
    assert!(log.append(6, None, vec![payload(6)]).await.is_err(), "stale term");
    let want = vec![
        Epoch { term: 1, start: 0 },
        Epoch { term: 3, start: 3 },
        Epoch { term: 7, start: 5 },
    ];
    assert_eq!(log.epochs(), want);
    assert_eq!(file_epochs(dir.path())?, vec![(1, 0), (3, 3), (7, 5)]);
    assert_eq!(log.end_offset_for(1), Some((1, 3)));
    assert_eq!(log.end_offset_for(2), Some((1, 3)));
    assert_eq!(log.end_offset_for(3), Some((3, 5)));
    assert_eq!(log.end_offset_for(5), Some((3, 5)));
    assert_eq!(log.end_offset_for(7), Some((7, 6)));
    assert_eq!(log.end_offset_for(9), Some((7, 6)));
    assert_eq!(log.end_offset_for(0), Some((0, 0)));
    assert_consistent(&log, "after appends").await?;
    log.close().await?;
    let log = LogStore::open(config(dir.path())).await?;
    assert_eq!(log.epochs(), want, "reopened");
    Ok(())
}

/// Truncation cuts the cache back with the log (inside a term, exactly at a term's first record,
/// across segments), persistently, and a new term after it starts where the log now ends.
#[tokio::test]
async fn truncation_cuts_the_cache() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(config(dir.path())).await?;
    let last = fill(&log, 1, 120, 9).await?;
    assert!(log.segment_count() > 3);
    assert_consistent(&log, "filled").await?;
    let starts: Vec<u64> = log.epochs().iter().map(|e| e.start).collect();
    // Inside a term, then at a term's first record, then into an earlier segment.
    for from in [
        starts[starts.len() - 1] + 1,
        starts[starts.len() - 2],
        starts[3] + 2,
        5,
    ] {
        log.truncate_suffix(from).await?;
        assert_eq!(log.end_offset(), from);
        assert!(log.epochs().iter().all(|e| e.start < from));
        assert_consistent(&log, &format!("truncated to {from}")).await?;
        let persisted: Vec<Epoch> = file_epochs(dir.path())?
            .into_iter()
            .map(|(term, start)| Epoch { term, start })
            .collect();
        assert_eq!(persisted, log.epochs(), "the file follows the truncation");
    }
    log.append(last + 5, None, vec![payload(5)]).await?;
    assert_eq!(
        log.epochs().last(),
        Some(&Epoch {
            term: last + 5,
            start: 5
        })
    );
    log.close().await?;
    let log = LogStore::open(config(dir.path())).await?;
    assert_consistent(&log, "reopened after truncation").await?;
    assert_eq!(log.epochs().len(), 2);
    Ok(())
}

/// A crash at any byte of the active segment's tail (a torn write, including the first record of
/// a term whose entry the checkpoint already holds): on reopen the cache is exactly the surviving
/// records' terms, and a new term appended after recovery is recorded and survives another reopen.
#[tokio::test]
async fn crash_at_every_byte_keeps_the_cache_consistent() -> TestResult {
    let src = tempfile::tempdir()?;
    let log = LogStore::open(config(src.path())).await?;
    // Short runs: the last segment holds several term changes.
    let last = fill(&log, 2, 60, 2).await?;
    log.close().await?;
    let seg = last_segment(src.path())?;
    let full = std::fs::read(&seg)?;
    for cut in 0..=full.len() {
        let copy = tempfile::tempdir()?;
        copy_dir(src.path(), copy.path())?;
        std::fs::write(copy.path().join(seg.file_name().ok_or("name")?), &full[..cut])?;
        let log = LogStore::open(config(copy.path())).await?;
        assert_consistent(&log, &format!("cut at byte {cut}")).await?;
        let end = log.end_offset();
        log.append(last + 10, None, vec![payload(end)]).await?;
        assert_eq!(
            log.epochs().last(),
            Some(&Epoch {
                term: last + 10,
                start: end
            })
        );
        log.close().await?;
        let log = LogStore::open(config(copy.path())).await?;
        assert_consistent(&log, &format!("cut at byte {cut}, appended, reopened")).await?;
        log.close().await?;
    }
    Ok(())
}

/// A checkpoint that is missing (a log written before it existed), damaged, stale (from before
/// later terms), wrong with a valid CRC, or left as a `.tmp` by an interrupted save is rebuilt
/// from the segments (term changes inside sealed segments included) and rewritten.
#[tokio::test]
async fn bad_checkpoints_are_rebuilt() -> TestResult {
    let src = tempfile::tempdir()?;
    let log = LogStore::open(config(src.path())).await?;
    fill(&log, 1, 40, 5).await?;
    let stale = file_epochs(src.path())?;
    fill(&log, 20, 60, 7).await?;
    let good = log.epochs();
    assert!(good.len() > stale.len() + 3);
    log.close().await?;

    type Damage = fn(&Path, &[(u64, u64)]) -> TestResult;
    let cases: Vec<(&str, Damage)> = vec![
        ("missing", |dir, _| {
            Ok(std::fs::remove_file(dir.join("epochs.checkpoint"))?)
        }),
        ("damaged", |dir, _| {
            let p = dir.join("epochs.checkpoint");
            let mut bytes = std::fs::read(&p)?;
            let i = bytes.len() - 4;
            bytes[i] ^= 0x08;
            Ok(std::fs::write(p, bytes)?)
        }),
        ("stale", |dir, stale| write_file_epochs(dir, stale)),
        ("a term moved by one", |dir, _| {
            let mut e = file_epochs(dir)?;
            let k = e.len() / 2;
            e[k].1 += 1;
            write_file_epochs(dir, &e)
        }),
        ("a term missing", |dir, _| {
            let mut e = file_epochs(dir)?;
            e.remove(e.len() / 2);
            write_file_epochs(dir, &e)
        }),
        ("out of order", |dir, _| write_file_epochs(dir, &[(9, 0), (3, 4)])),
        ("a leftover temp file", |dir, _| {
            Ok(std::fs::write(dir.join("epochs.tmp"), b"half a save")?)
        }),
    ];
    for (what, damage) in cases {
        let copy = tempfile::tempdir()?;
        copy_dir(src.path(), copy.path())?;
        damage(copy.path(), &stale)?;
        let log = LogStore::open(config(copy.path())).await?;
        assert_eq!(log.epochs(), good, "{what}");
        assert_consistent(&log, what).await?;
        let rewritten: Vec<Epoch> = file_epochs(copy.path())?
            .into_iter()
            .map(|(term, start)| Epoch { term, start })
            .collect();
        assert_eq!(rewritten, good, "{what}: the file is rewritten");
        assert!(!copy.path().join("epochs.tmp").exists(), "{what}");
        log.close().await?;
    }
    Ok(())
}

/// Retention drops the entries of deleted segments but keeps the one covering the new first
/// offset, with its original start; the trimmed cache survives a reopen.
#[tokio::test]
async fn retention_keeps_the_entry_covering_the_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    let log = LogStore::open(cfg.clone()).await?;
    fill(&log, 1, 150, 13).await?;
    let before = log.epochs();
    log.close().await?;
    cfg.retention_bytes = Some(2000);
    let log = LogStore::open(cfg.clone()).await?;
    let start = log.enforce_retention().await?;
    assert!(start > before[2].start, "retention deleted several terms");
    let after = log.epochs();
    let covering = before
        .iter()
        .rposition(|e| e.start <= start)
        .ok_or("no covering entry")?;
    assert_eq!(
        after,
        before[covering..],
        "only the covering entry and later ones are kept"
    );
    assert_consistent(&log, "after retention").await?;
    log.close().await?;
    let log = LogStore::open(cfg).await?;
    assert_eq!(
        log.epochs(),
        after,
        "reopened: the covering entry keeps its original start"
    );
    Ok(())
}

/// The first record of a new term whose write fails leaves no visible entry (the term is not in
/// the log), a different term can then take its place, and a crash right after the failure
/// reopens without the phantom term.
#[tokio::test]
async fn a_failed_first_write_of_a_term_leaves_no_entry() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = FaultInjector::new();
    let mut cfg = config(dir.path());
    cfg.fault_injector = Some(faults.clone());
    let log = LogStore::open(cfg.clone()).await?;
    log.append(1, None, vec![payload(0), payload(1)]).await?;
    faults.fail_writes(libc::EIO);
    assert!(log.append(5, None, vec![payload(2)]).await.is_err());
    assert_eq!(log.epochs(), vec![Epoch { term: 1, start: 0 }]);
    assert_eq!(log.end_offset_for(5), Some((1, 2)));
    // Crash now: the checkpoint holds term 5 at offset 2, the log does not.
    let crashed = tempfile::tempdir()?;
    copy_dir(dir.path(), crashed.path())?;
    assert_eq!(file_epochs(crashed.path())?, vec![(1, 0), (5, 2)]);
    let reopened = LogStore::open(config(crashed.path())).await?;
    assert_eq!(reopened.epochs(), vec![Epoch { term: 1, start: 0 }]);
    assert_eq!(
        file_epochs(crashed.path())?,
        vec![(1, 0)],
        "the phantom term is cut from the file"
    );
    reopened.close().await?;

    faults.clear();
    log.append(4, None, vec![payload(2)]).await?;
    let want = vec![Epoch { term: 1, start: 0 }, Epoch { term: 4, start: 2 }];
    assert_eq!(log.epochs(), want);
    assert_eq!(file_epochs(dir.path())?, vec![(1, 0), (4, 2)]);
    log.close().await?;
    let log = LogStore::open(cfg).await?;
    assert_eq!(log.epochs(), want);
    Ok(())
}
