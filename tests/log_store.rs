//! Black-box tests of the log store's API: appends and reads across segments, batches, fencing,
//! idempotent producers, concurrency, truncation, retention, tailing, disk-error handling (the
//! poisoned state after a failed sync, and its recovery) and reads racing with truncation and
//! retention.

#[path = "support/segments.rs"]
mod segments;

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use simpleloggers::log::{
    AppendOutcome, Durability, FaultInjector, LogConfig, LogError, LogStore, ProducerBatch, ProducerSeq,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("message-{i:05}-{}", "x".repeat((i % 7) as usize)))
}

fn small_config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = 1024;
    c.index_interval_bytes = 128;
    c.durability = Durability::Never;
    c
}

fn producer(id: &str, seq: u64) -> Option<ProducerBatch> {
    Some(
        ProducerSeq {
            producer_id: id.into(),
            seq,
        }
        .into(),
    )
}

/// Records appended one by one and in batches get dense offsets, survive segment rolls and a
/// reopen, and every read window (any start, record and byte limits) returns exactly the expected
/// slice.
#[tokio::test]
async fn append_and_read_across_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    let mut n = 0u64;
    while n < 120 {
        let batch: Vec<Bytes> = (n..n + 1 + n % 3).map(payload).collect();
        let count = batch.len() as u32;
        assert_eq!(
            log.append(1 + n / 50, None, batch).await?,
            AppendOutcome::Appended { first: n, count }
        );
        n += count as u64;
    }
    assert!(log.segment_count() > 5, "small segments must roll");
    assert_eq!(log.end_offset(), n);
    let last_term = log.last_term();
    log.close().await?;
    let log = LogStore::open(small_config(dir.path())).await?;
    assert_eq!(log.end_offset(), n);
    assert_eq!(log.last_term(), last_term);
    for from in 0..n {
        let got = log.read(from, 5, usize::MAX).await?;
        let want = (n - from).min(5) as usize;
        assert_eq!(got.len(), want, "from {from}");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.offset, from + i as u64);
            assert_eq!(r.payload, payload(r.offset));
        }
    }
    // Byte limit: at least one record, never more bytes than asked beyond the first.
    assert_eq!(log.read(3, 100, 1).await?.len(), 1);
    let some = log.read(0, 1000, 60).await?;
    assert!(!some.is_empty() && some.iter().map(|r| r.payload.len()).sum::<usize>() <= 60);
    assert!(log.read(n, 10, 1000).await?.is_empty());
    assert!(log.read(n + 10, 10, 1000).await?.is_empty());
    assert!(log.read(0, 0, 1000).await?.is_empty());
    Ok(())
}

/// Invalid appends are refused before anything is written: empty batch, oversized record, and a
/// term lower than the log's last term (fencing of a deposed leader).
#[tokio::test]
async fn invalid_appends_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = small_config(dir.path());
    cfg.max_record_bytes = 100;
    let log = LogStore::open(cfg).await?;
    assert!(matches!(
        log.append(1, None, vec![]).await,
        Err(LogError::EmptyBatch)
    ));
    let big = Bytes::from(vec![0u8; 101]);
    assert!(matches!(
        log.append(1, None, vec![big]).await,
        Err(LogError::RecordTooLarge { size: 101, max: 100 })
    ));
    log.append(5, None, vec![payload(0)]).await?;
    let err = log
        .append(4, None, vec![payload(1)])
        .await
        .expect_err("stale term");
    assert!(
        matches!(
            err,
            LogError::StaleTerm {
                term: 4,
                last_term: 5
            }
        ),
        "{err}"
    );
    log.append(6, None, vec![payload(1)]).await?;
    assert_eq!(log.end_offset(), 2);
    assert_eq!(log.last_term(), Some((6, 1)));
    Ok(())
}

/// A retried producer batch returns its original offsets and is stored once, also after a reopen
/// (the producer table is rebuilt from the log, across segment rolls); a retry older than the
/// history (the last `PRODUCER_WINDOW` batches) is refused as stale.
#[tokio::test]
async fn idempotent_producer_retries() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    let first = log
        .append(1, producer("p", 0), vec![payload(0), payload(1)])
        .await?;
    assert_eq!(first, AppendOutcome::Appended { first: 0, count: 2 });
    log.append(1, None, vec![payload(2)]).await?;
    assert_eq!(
        log.append(1, producer("p", 0), vec![payload(0), payload(1)])
            .await?,
        AppendOutcome::Duplicate { first: 0, count: 2 }
    );
    assert_eq!(log.end_offset(), 3);
    // Many more batches so that segments roll and seq 0 leaves the history.
    for s in 1..60u64 {
        log.append(1, producer("p", s * 2), vec![payload(s), payload(s)])
            .await?;
    }
    assert_eq!(log.producer_last_seq("p"), Some(119));
    let end = log.end_offset();
    log.close().await?;

    let log = LogStore::open(small_config(dir.path())).await?;
    assert_eq!(log.producer_last_seq("p"), Some(119));
    let dup = log
        .append(1, producer("p", 118), vec![payload(0), payload(0)])
        .await?;
    assert_eq!(
        dup,
        AppendOutcome::Duplicate {
            first: end - 2,
            count: 2
        }
    );
    let stale = log
        .append(1, producer("p", 0), vec![payload(0)])
        .await
        .expect_err("stale");
    assert!(
        matches!(
            stale,
            LogError::StaleSequence {
                seq: 0,
                last_seq: 119,
                ..
            }
        ),
        "{stale}"
    );
    assert_eq!(log.end_offset(), end);
    Ok(())
}

/// Two concurrent retries of the same producer sequence store it once: one is appended, the
/// others are answered as duplicates with the same offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_store_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = small_config(dir.path());
    cfg.durability = Durability::Always;
    let log = LogStore::open(cfg).await?;
    for seq in 0..20u64 {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move { log.append(1, producer("q", seq), vec![payload(seq)]).await })
            })
            .collect();
        let mut appended = 0;
        let mut offsets = HashSet::new();
        for t in tasks {
            let out = t.await??;
            if matches!(out, AppendOutcome::Appended { .. }) {
                appended += 1;
            }
            offsets.insert(out.first());
        }
        assert_eq!(appended, 1, "seq {seq} stored once");
        assert_eq!(offsets.len(), 1, "all retries see the same offset");
    }
    assert_eq!(log.end_offset(), 20);
    Ok(())
}

/// Many tasks appending at once under `always` (group commit) get distinct, dense offsets, and
/// every record is readable at its offset with its own payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_get_dense_offsets() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = LogConfig::new(dir.path());
    cfg.segment_bytes = 16 * 1024;
    let log = LogStore::open(cfg).await?;
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..25u64 {
                    let body = Bytes::from(format!("task{t}-{i}"));
                    let out = log.append(1, None, vec![body.clone(), body]).await?;
                    got.push((out.first(), t, i));
                }
                Ok::<_, LogError>(got)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let offsets: HashSet<u64> = all.iter().map(|&(o, _, _)| o).collect();
    assert_eq!(offsets.len(), 32 * 25);
    assert_eq!(log.end_offset(), 32 * 25 * 2);
    let records = log.read(0, usize::MAX, usize::MAX).await?;
    assert_eq!(records.len(), 32 * 25 * 2);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
    }
    for (first, t, i) in all {
        let want = format!("task{t}-{i}");
        assert_eq!(records[first as usize].payload, want.as_bytes());
        assert_eq!(records[first as usize + 1].payload, want.as_bytes());
    }
    Ok(())
}

/// A full disk fails the append with a disk-full error (nothing stored, the store poisoned), the
/// partial write is cut back so the log stays consistent, and appends succeed again once space
/// returns; a failing fdatasync is reported as unavailable and rolled back the same way.
#[tokio::test]
async fn disk_errors_fail_cleanly_and_recover() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = FaultInjector::new();
    let mut cfg = LogConfig::new(dir.path());
    cfg.fault_injector = Some(faults.clone());
    let log = LogStore::open(cfg.clone()).await?;
    log.append(1, producer("p", 0), vec![payload(0), payload(1)])
        .await?;
    let seg = dir.path().join(format!("{:020}.log", 0));
    // What the frames fill (the file also holds the space reserved ahead of the writes).
    let good_len = segments::data_len(&seg)?;

    faults.fail_writes(libc::ENOSPC);
    let err = log
        .append(1, producer("p", 2), vec![payload(2); 3])
        .await
        .expect_err("disk full");
    assert!(err.is_disk_full(), "{err}");
    let health = log.write_health();
    assert!(
        health.failures == 1 && health.last_failure.is_some_and(|f| f.contains("disk full")),
        "the failure poisoned the store"
    );
    assert_eq!(log.end_offset(), 2);
    assert_eq!(std::fs::metadata(&seg)?.len(), good_len, "partial write cut back");
    assert_eq!(log.producer_last_seq("p"), Some(1), "producer table rolled back");
    // A batch big enough to be written out in pieces while still being admitted fails the same way.
    let big = vec![Bytes::from(vec![7u8; 4096]); 600];
    let err = log.append(1, None, big).await.expect_err("disk full");
    assert!(err.is_disk_full(), "{err}");
    assert_eq!(log.end_offset(), 2);
    assert_eq!(
        std::fs::metadata(&seg)?.len(),
        good_len,
        "partial chunks cut back"
    );

    faults.clear();
    // Space returned: the store recovers (by itself soon; here at once), before a sync fails.
    log.recover().await?;
    faults.fail_syncs(1, libc::EIO);
    let err = log
        .append(1, None, vec![payload(2)])
        .await
        .expect_err("sync fails");
    assert!(err.is_unavailable() && !err.is_disk_full(), "{err}");
    assert_eq!(std::fs::metadata(&seg)?.len(), good_len);

    let ok = log
        .append(1, producer("p", 2), vec![payload(2), payload(3)])
        .await?;
    assert_eq!(ok, AppendOutcome::Appended { first: 2, count: 2 });
    assert!(log.is_writable());
    log.close().await?;
    let log = LogStore::open(cfg).await?;
    let all: Vec<Bytes> = log
        .read(0, 100, usize::MAX)
        .await?
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(all, (0..4).map(payload).collect::<Vec<_>>());
    Ok(())
}

/// A failing fdatasync in the middle of heavy concurrent load (pipelined group commit) fails only
/// appends that were not acknowledged: every acknowledged record is present at its offset, offsets
/// stay dense, and the log reopens with exactly those records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_failure_under_load_keeps_acknowledged_records() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = FaultInjector::new();
    let mut cfg = LogConfig::new(dir.path());
    cfg.segment_bytes = 8 * 1024;
    cfg.fault_injector = Some(faults.clone());
    let log = LogStore::open(cfg.clone()).await?;
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let (log, faults) = (log.clone(), faults.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut failed = 0;
                for i in 0..30u64 {
                    if t == 0 && i % 10 == 5 {
                        faults.fail_syncs(1, libc::EIO);
                    }
                    let body = Bytes::from(format!("t{t}-{i}"));
                    match log.append(1, None, vec![body.clone()]).await {
                        Ok(out) => acked.push((out.first(), body)),
                        Err(e) => {
                            assert!(e.is_unavailable(), "{e}");
                            failed += 1;
                        }
                    }
                }
                (acked, failed)
            })
        })
        .collect();
    let mut acked = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (a, f) = t.await?;
        acked.extend(a);
        failed += f;
    }
    assert!(failed > 0, "the injected sync failures hit some appends");
    assert_eq!(
        log.end_offset(),
        acked.len() as u64,
        "offsets stay dense: failed appends left no gap"
    );
    log.close().await?;
    let log = LogStore::open(cfg).await?;
    let records = log.read(0, usize::MAX, usize::MAX).await?;
    assert_eq!(records.len(), acked.len());
    for (offset, body) in acked {
        assert_eq!(records[offset as usize].payload, body);
    }
    Ok(())
}

/// Truncate-suffix drops records from any offset (inside the active or a sealed segment), is
/// durable across a reopen, restores the last term, rolls back producer history, and appends
/// continue at the truncation point.
#[tokio::test]
async fn truncate_suffix_across_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    for i in 0..80u64 {
        log.append(1 + i / 10, producer("p", i), vec![payload(i)]).await?;
    }
    let segments = log.segment_count();
    log.truncate_suffix(75).await?;
    assert_eq!((log.end_offset(), log.last_term()), (75, Some((8, 74))));
    log.truncate_suffix(33).await?;
    assert!(log.segment_count() < segments);
    assert_eq!((log.end_offset(), log.last_term()), (33, Some((4, 32))));
    assert_eq!(log.producer_last_seq("p"), Some(32));
    log.truncate_suffix(1000).await?; // past the end: no-op
                                      // A lower term is accepted again after truncation back into earlier terms.
    assert_eq!(
        log.append(4, producer("p", 33), vec![payload(33)]).await?.first(),
        33
    );
    log.close().await?;
    let log = LogStore::open(small_config(dir.path())).await?;
    assert_eq!((log.end_offset(), log.last_term()), (34, Some((4, 33))));
    assert_eq!(log.producer_last_seq("p"), Some(33));
    let all = log.read(0, 1000, usize::MAX).await?;
    assert_eq!(all.len(), 34);
    assert!(all.iter().all(|r| r.payload == payload(r.offset)));
    log.truncate_suffix(0).await?;
    assert_eq!((log.end_offset(), log.last_term()), (0, None));
    Ok(())
}

/// Retention by bytes deletes whole old segments (never the active one), reads below the new
/// start are refused with the start offset, and start offset and last term survive a reopen;
/// retention by age deletes every sealed segment once its records are old enough.
#[tokio::test]
async fn retention_by_bytes_and_age() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = small_config(dir.path());
    cfg.retention_bytes = Some(3000);
    let log = LogStore::open(cfg.clone()).await?;
    for i in 0..200u64 {
        log.append(2, None, vec![payload(i)]).await?;
    }
    let start = log.enforce_retention().await?;
    assert!(start > 0 && start == log.start_offset());
    let err = log.read(0, 10, usize::MAX).await.expect_err("trimmed");
    assert!(
        matches!(err, LogError::OffsetTrimmed { offset: 0, start: s } if s == start),
        "{err}"
    );
    assert_eq!(log.read(start, 1, usize::MAX).await?[0].offset, start);
    log.close().await?;

    cfg.retention_bytes = None;
    cfg.retention_age = Some(Duration::from_millis(1));
    let log = LogStore::open(cfg).await?;
    assert_eq!(log.start_offset(), start);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let start = log.enforce_retention().await?;
    assert_eq!(log.segment_count(), 1, "only the active segment is left");
    assert_eq!(log.last_term(), Some((2, 199)));
    log.close().await?;
    let log = LogStore::open(small_config(dir.path())).await?;
    assert_eq!(log.start_offset(), start);
    assert_eq!(
        log.last_term(),
        Some((2, 199)),
        "fencing survives retention and reopen"
    );
    Ok(())
}

/// A tailing reader waiting for the next offset wakes when a record is appended, `subscribe`
/// reports the new visible end, and closing the store releases waiters with `Closed`.
#[tokio::test]
async fn tailing_wakes_on_append() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    let mut watch = log.subscribe();
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move { log.wait_for(0).await })
    };
    log.append(1, None, vec![payload(0)]).await?;
    assert_eq!(waiter.await??, 1);
    watch.changed().await?;
    assert_eq!(*watch.borrow(), 1);
    // A reader waiting past the end is released with `Closed` when the store closes.
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move { log.wait_for(5).await })
    };
    tokio::task::yield_now().await;
    log.close().await?;
    assert!(matches!(waiter.await?, Err(LogError::Closed)));
    Ok(())
}

/// Under `interval:<ms>` appends are acknowledged and visible, and `flush`/`close` make them
/// durable for a reopen.
#[tokio::test]
async fn interval_durability_flushes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = small_config(dir.path());
    cfg.durability = "interval:20".parse()?;
    let log = LogStore::open(cfg.clone()).await?;
    for i in 0..30 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    assert_eq!(log.read(29, 1, usize::MAX).await?[0].payload, payload(29));
    log.flush().await?;
    log.close().await?;
    let log = LogStore::open(cfg).await?;
    assert_eq!(log.end_offset(), 30);
    Ok(())
}

/// A sealed segment whose index file is missing is rescanned and served; one whose bytes are
/// damaged is refused on open with the file and byte position of the bad record.
#[tokio::test]
async fn sealed_segment_index_rebuild_and_damage() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    for i in 0..40u64 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    log.close().await?;
    let index = dir.path().join(format!("{:020}.index", 0));
    std::fs::remove_file(&index)?;
    let log = LogStore::open(small_config(dir.path())).await?;
    assert_eq!(log.read(0, 100, usize::MAX).await?.len(), 40);
    log.close().await?;
    assert!(index.exists(), "rebuilt index persisted");

    std::fs::remove_file(&index)?;
    let seg = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&seg)?;
    let second = record_starts(&bytes)[1];
    bytes[second + 60] ^= 0xff;
    std::fs::write(&seg, &bytes)?;
    match LogStore::open(small_config(dir.path())).await {
        Err(LogError::Corrupt { file, position, .. }) => {
            assert_eq!(file, seg);
            assert_eq!(position, second as u64);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    Ok(())
}

/// Damage inside a sealed segment whose index is intact is not scanned on open, but a read that
/// reaches it fails with `Corrupt` naming the file and the frame's byte position (never returns
/// bad data), while reads elsewhere keep working.
#[tokio::test]
async fn damaged_sealed_record_fails_the_read() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    for i in 0..40u64 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    log.close().await?;
    let seg = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&seg)?;
    let third = record_starts(&bytes)[2];
    bytes[third + 50] ^= 0x10; // inside the payload: same length, bad CRC
    std::fs::write(&seg, &bytes)?;
    let log = LogStore::open(small_config(dir.path())).await?;
    match log.read(0, 10, usize::MAX).await {
        Err(LogError::Corrupt { file, position, .. }) => {
            assert_eq!((file, position), (seg, third as u64));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(log.read(30, 5, usize::MAX).await?.len(), 5);
    Ok(())
}

/// A second store cannot open a directory that an open store holds; once the first is closed,
/// it can.
#[tokio::test]
async fn directory_is_locked_while_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    let err = LogStore::open(small_config(dir.path()))
        .await
        .expect_err("locked");
    assert!(err.to_string().contains("another store"), "{err}");
    log.close().await?;
    LogStore::open(small_config(dir.path())).await?.close().await?;
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

/// The producers named in a `<base>.snapshot` side file.
fn snapshot_producers(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).expect("read snapshot");
    let json: serde_json::Value = serde_json::from_slice(&bytes[4..]).expect("snapshot JSON");
    json["producers"]
        .as_array()
        .expect("producers")
        .iter()
        .map(|p| p[0].as_str().expect("id").to_string())
        .collect()
}

/// Sealing a segment writes only the producers that segment changed, not the whole table, and
/// reopening merges those deltas back into the whole table (every producer's last sequence).
#[tokio::test]
async fn snapshots_hold_only_the_producers_a_segment_changed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    for i in 0..50u64 {
        log.append(1, producer(&format!("p{i:02}"), 0), vec![payload(i)])
            .await?;
    }
    for s in 0..60u64 {
        log.append(1, producer("busy", s), vec![payload(s)]).await?;
    }
    let mut snapshots: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snapshot"))
        .collect();
    snapshots.sort();
    assert!(snapshots.len() >= 6, "{snapshots:?}");
    let last = snapshots.last().expect("a snapshot");
    assert_eq!(snapshot_producers(last), ["busy"], "only the producer that wrote");
    let total: usize = snapshots.iter().map(|p| snapshot_producers(p).len()).sum();
    assert!(
        total < 50 + snapshots.len() * 2,
        "deltas, not the whole table per roll: {total} entries in {} snapshots",
        snapshots.len()
    );
    log.close().await?;

    let log = LogStore::open(small_config(dir.path())).await?;
    for i in 0..50u64 {
        assert_eq!(log.producer_last_seq(&format!("p{i:02}")), Some(0), "p{i:02}");
    }
    assert_eq!(log.producer_last_seq("busy"), Some(59));
    assert!(matches!(
        log.append(1, producer("p07", 0), vec![payload(0)]).await?,
        AppendOutcome::Duplicate { count: 1, .. }
    ));
    Ok(())
}

/// A producer idle longer than `producer_id_expiry` is forgotten when the log is reopened: it
/// is unknown, and its next batch may start anywhere.
#[tokio::test]
async fn idle_producers_are_forgotten_on_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    for s in 0..30u64 {
        log.append(1, producer("idle", s), vec![payload(s)]).await?;
    }
    log.close().await?;
    let mut cfg = small_config(dir.path());
    cfg.producer_id_expiry = std::time::Duration::from_millis(1);
    // Only needs the clock to pass the 1 ms expiry; any longer wait gives the same result.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let log = LogStore::open(cfg).await?;
    assert_eq!(log.producer_last_seq("idle"), None);
    assert!(matches!(
        log.append(1, producer("idle", 1000), vec![payload(0)]).await?,
        AppendOutcome::Appended { .. }
    ));
    Ok(())
}

/// A gap after a producer's last sequence is refused (retriable) and stores nothing, unless the
/// producer says the missing sequences are settled (`pending_from`); a sequence range passing
/// `u64::MAX` is refused before it reaches the writer.
#[tokio::test]
async fn gaps_and_overflow_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(small_config(dir.path())).await?;
    log.append(1, producer("g", 0), vec![payload(0), payload(1)])
        .await?;
    let err = log
        .append(1, producer("g", 5), vec![payload(5)])
        .await
        .expect_err("gap");
    assert!(
        matches!(
            err,
            LogError::OutOfOrderSequence {
                seq: 5,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(log.end_offset(), 2);
    let settled = ProducerBatch {
        producer_id: "g".into(),
        seq: 5,
        pending_from: Some(5),
    };
    assert_eq!(
        log.append(1, Some(settled), vec![payload(5)]).await?,
        AppendOutcome::Appended { first: 2, count: 1 }
    );
    let err = log
        .append(1, producer("o", u64::MAX), vec![payload(0), payload(1)])
        .await
        .expect_err("overflow");
    assert!(matches!(err, LogError::SequenceOverflow { .. }), "{err}");
    log.append(1, producer("o", u64::MAX - 1), vec![payload(0), payload(1)])
        .await?;
    assert_eq!(log.producer_last_seq("o"), Some(u64::MAX));
    assert!(log.is_writable());
    Ok(())
}

/// Waits (bounded) until `cond` holds; false if it never did.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Every record of the log, in order.
async fn all_records(log: &LogStore) -> Result<Vec<simpleloggers::log::Record>, LogError> {
    log.read(log.start_offset(), usize::MAX, usize::MAX).await
}

/// Under `always`, a failed fdatasync fails that group's appends and poisons the store: later
/// appends and flushes are refused (a typed, retriable error) while the disk stays bad, even
/// though a retried sync might "succeed"; once the disk works, the store recovers by itself
/// (reopen, cut to the durable end, re-verify) and appends continue at the next offset. After a
/// reopen the log holds exactly the acknowledged records.
#[tokio::test]
async fn failed_sync_poisons_until_the_tail_is_reverified() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = FaultInjector::new();
    let mut cfg = LogConfig::new(dir.path());
    cfg.fault_injector = Some(faults.clone());
    let log = LogStore::open(cfg.clone()).await?;
    let mut acked = Vec::new();
    for i in 0..3 {
        log.append(1, None, vec![payload(i)]).await?;
        acked.push(payload(i));
    }

    faults.fail_syncs_until_clear(libc::EIO);
    let err = log
        .append(1, None, vec![payload(10), payload(11)])
        .await
        .expect_err("the group's sync fails");
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    for _ in 0..3 {
        let err = log
            .append(1, None, vec![payload(12)])
            .await
            .expect_err("poisoned");
        assert!(
            matches!(&err, LogError::Poisoned { reason } if reason.contains("sync")),
            "{err}"
        );
        assert!(err.is_unavailable(), "a 503 for the node");
    }
    assert!(!log.is_writable(), "readiness follows the poisoned state");
    assert!(matches!(log.flush().await, Err(LogError::Poisoned { .. })));
    let err = log.recover().await.expect_err("the disk is still bad");
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(log.end_offset(), 3);

    faults.clear();
    assert!(
        eventually(|| log.is_writable()).await,
        "the store recovers by itself once the disk works"
    );
    let ok = log.append(1, None, vec![payload(3)]).await?;
    assert_eq!(ok, AppendOutcome::Appended { first: 3, count: 1 });
    acked.push(payload(3));
    assert_eq!(log.write_health().failures, 1);
    log.close().await?;

    let log = LogStore::open(cfg).await?;
    let stored: Vec<Bytes> = all_records(&log).await?.into_iter().map(|r| r.payload).collect();
    assert_eq!(stored, acked, "exactly the acknowledged records");
    Ok(())
}

/// Under `interval`, a failed background sync poisons the store too: appends and flushes are
/// refused until recovery, which drops the records written since the last good sync (the pages
/// are zeroed, as after the kernel dropped them), so they are never reported durable: the next
/// flush names them, and offsets continue from the durable end.
#[tokio::test]
async fn failed_background_sync_poisons_and_is_never_reported_durable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = FaultInjector::new();
    let mut cfg = LogConfig::new(dir.path());
    cfg.durability = "interval:10".parse()?;
    cfg.fault_injector = Some(faults.clone());
    let log = LogStore::open(cfg.clone()).await?;
    for i in 0..5 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    log.flush().await?;
    let seg = dir.path().join(format!("{:020}.log", 0));
    // What the frames fill (the file also holds the space reserved ahead of the writes).
    let durable_len = segments::data_len(&seg)?;

    faults.lose_unsynced_on_sync_failure();
    faults.fail_syncs_until_clear(libc::EIO);
    let out = log.append(1, None, (5..10).map(payload).collect()).await?;
    assert_eq!(
        out.first(),
        5,
        "acknowledged (not yet durable, as interval promises)"
    );
    assert!(
        eventually(|| !log.is_writable()).await,
        "the failed background sync poisons the store"
    );
    let err = log
        .append(1, None, vec![payload(99)])
        .await
        .expect_err("poisoned");
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
    let err = log.flush().await.expect_err("flush must not claim success");
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");

    faults.clear();
    log.recover().await?;
    assert_eq!(log.end_offset(), 5, "the records whose sync failed are gone");
    assert_eq!(
        std::fs::metadata(&seg)?.len(),
        durable_len,
        "cut to the durable end"
    );
    let err = log.flush().await.expect_err("the loss is reported");
    assert!(matches!(err, LogError::NotDurable { from: 5, to: 10 }), "{err}");
    log.flush().await?;
    let out = log.append(1, None, vec![payload(5)]).await?;
    assert_eq!(out.first(), 5, "offsets continue from the durable end");
    log.close().await?;

    let log = LogStore::open(cfg).await?;
    let stored: Vec<Bytes> = all_records(&log).await?.into_iter().map(|r| r.payload).collect();
    assert_eq!(stored, (0..6).map(payload).collect::<Vec<_>>());
    Ok(())
}

/// Recovery re-verifies the tail from disk rather than trusting memory: the bytes of a group whose
/// sync failed (zeroed, as after lost pages) are cut and the next append takes their offset; and
/// when durable data no longer passes its CRC, the store stays poisoned (refusing appends with
/// the corruption named) instead of appending after damage.
#[tokio::test]
async fn recovery_reverifies_the_tail_from_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = FaultInjector::new();
    let mut cfg = LogConfig::new(dir.path());
    cfg.fault_injector = Some(faults.clone());
    let log = LogStore::open(cfg.clone()).await?;
    for i in 0..3 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    let seg = dir.path().join(format!("{:020}.log", 0));
    // What the frames fill (the file also holds the space reserved ahead of the writes).
    let durable_len = segments::data_len(&seg)?;

    faults.lose_unsynced_on_sync_failure();
    faults.fail_syncs(1, libc::EIO);
    log.append(1, None, vec![payload(50), payload(51)])
        .await
        .expect_err("sync fails");
    log.recover().await?;
    assert_eq!(
        std::fs::metadata(&seg)?.len(),
        durable_len,
        "the lost bytes are cut"
    );
    let out = log.append(1, None, vec![payload(3)]).await?;
    assert_eq!(out, AppendOutcome::Appended { first: 3, count: 1 });
    let stored: Vec<Bytes> = all_records(&log).await?.into_iter().map(|r| r.payload).collect();
    assert_eq!(stored, (0..4).map(payload).collect::<Vec<_>>());

    // Damage a durable record behind the store's back, then make a sync fail.
    let bytes = std::fs::read(&seg)?;
    let starts = record_starts(&bytes);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg)?;
        f.write_all_at(&[bytes[starts[1] + 20] ^ 0xff], (starts[1] + 20) as u64)?;
    }
    faults.fail_syncs(1, libc::EIO);
    log.append(1, None, vec![payload(4)])
        .await
        .expect_err("sync fails");
    let err = log.recover().await.expect_err("durable data does not verify");
    assert!(
        matches!(&err, LogError::Corrupt { position, .. } if *position == starts[1] as u64),
        "{err}"
    );
    let err = log
        .append(1, None, vec![payload(4)])
        .await
        .expect_err("still poisoned");
    assert!(
        matches!(&err, LogError::Poisoned { reason } if reason.contains("corrupt")),
        "{err}"
    );
    assert!(!log.is_writable());
    Ok(())
}

/// Reads hold no lock across disk reads: while a reader is held between its snapshot and its
/// file reads, appends complete, and retention deletes the very segment it is reading; the reader
/// then reads the deleted file through its handle, consistently (exactly the records it had), and
/// stops at the new start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_hold_no_lock_and_survive_retention() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = FaultInjector::new();
    let mut cfg = small_config(dir.path());
    cfg.durability = Durability::Always;
    cfg.fault_injector = Some(faults.clone());
    let log = LogStore::open(cfg.clone()).await?;
    for i in 0..60u64 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    log.close().await?;
    cfg.retention_bytes = Some(1);
    let log = LogStore::open(cfg).await?;
    assert!(log.segment_count() > 2);
    let before = all_records(&log).await?;

    faults.pause_reads();
    let reader = tokio::spawn({
        let log = log.clone();
        async move { log.read(0, usize::MAX, usize::MAX).await }
    });
    assert!(
        eventually(|| faults.paused_readers() == 1).await,
        "the reader is held"
    );
    let append = tokio::time::timeout(Duration::from_secs(30), log.append(1, None, vec![payload(60)]))
        .await
        .expect("an append completes while a reader is mid-read")?;
    assert_eq!(append.first(), 60);
    let start = log.enforce_retention().await?;
    assert!(start > 0);
    assert!(
        !dir.path().join(format!("{:020}.log", 0)).exists(),
        "the segment being read is deleted"
    );
    faults.resume_reads();
    let got = reader.await??;
    assert!(
        !got.is_empty() && got.len() as u64 <= start,
        "{} records",
        got.len()
    );
    for (i, r) in got.iter().enumerate() {
        assert_eq!((r.offset, &r.payload), (i as u64, &before[i].payload));
    }
    let err = log.read(0, 1, usize::MAX).await.expect_err("trimmed now");
    assert!(matches!(err, LogError::OffsetTrimmed { .. }), "{err}");
    Ok(())
}

/// A reader held mid-read while the suffix it is reading is truncated and rewritten with other
/// records (of other sizes, so the old positions no longer hold frame starts) never returns a mix
/// or a spurious error: it notices the rewrite and reads again, returning exactly the log as it
/// now is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_a_truncation_return_the_current_log() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = FaultInjector::new();
    let mut cfg = LogConfig::new(dir.path());
    cfg.durability = Durability::Never;
    cfg.fault_injector = Some(faults.clone());
    let log = LogStore::open(cfg).await?;
    for i in 0..40u64 {
        log.append(1, None, vec![Bytes::from(format!("old-{i}-{}", "o".repeat(50)))])
            .await?;
    }
    faults.pause_reads();
    let reader = tokio::spawn({
        let log = log.clone();
        async move { log.read(0, usize::MAX, usize::MAX).await }
    });
    assert!(
        eventually(|| faults.paused_readers() == 1).await,
        "the reader is held"
    );
    log.truncate_suffix(20).await?;
    for i in 20..30u64 {
        log.append(2, None, vec![Bytes::from(format!("new-{i}"))]).await?;
    }
    faults.resume_reads();
    let got = reader.await??;
    let now = all_records(&log).await?;
    assert_eq!(got.len(), 30);
    assert_eq!(got, now, "the reader returns the log as it is now");
    assert!(got[20].payload.starts_with(b"new-20") && got[20].term == 2);
    Ok(())
}

/// A slow-sync fault makes every durable append wait at least the armed delay (and still
/// succeed, nothing lost); once cleared, appends go on and everything is readable.
#[tokio::test]
async fn slow_syncs_delay_appends_without_failing_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = FaultInjector::new();
    let mut cfg = LogConfig::new(dir.path());
    cfg.fault_injector = Some(faults.clone());
    let log = LogStore::open(cfg).await?;
    log.append(1, None, vec![payload(0)]).await?;

    let delay = Duration::from_millis(300);
    faults.slow_syncs(delay);
    for i in 1..3 {
        let started = std::time::Instant::now();
        log.append(1, None, vec![payload(i)]).await?;
        assert!(
            started.elapsed() >= delay,
            "append {i} was acknowledged after {:?}, before its slow sync",
            started.elapsed()
        );
    }
    faults.clear();
    log.append(1, None, vec![payload(3)]).await?;
    let stored: Vec<Bytes> = all_records(&log).await?.into_iter().map(|r| r.payload).collect();
    assert_eq!(stored, (0..4).map(payload).collect::<Vec<_>>());
    assert!(log.is_writable());
    Ok(())
}
