//! Black-box tests of the log store's replication interface: raw frames copied from a leader's
//! log to a follower's (`read_frames` → `append_frames`) make identical logs, epochs and producer
//! tables; every refused `append_frames` writes nothing; the high watermark bounds reads, is
//! persisted in `hw.checkpoint` (torn, damaged, missing or stale files handled) and refuses
//! truncation below it; truncation rolls the producer window back exactly; term-start control
//! records are skipped by reads but kept everywhere else; the incarnation is stable.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use simpleloggers::log::{
    AppendOutcome, Durability, FaultInjector, LogConfig, LogError, LogStore, ProducerBatch, ProducerSeq,
    Record,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A refused input: what it is, the bytes, and whether the error is the expected one.
type Refusal = (&'static str, Bytes, fn(&LogError) -> bool);

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("message-{i:05}-{}", "x".repeat((i % 11) as usize)))
}

/// Small segments and a dense index, so that copies cross many segment boundaries.
fn config(dir: &Path, segment_bytes: u64, replicated: bool) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = segment_bytes;
    c.index_interval_bytes = 128;
    c.replicated = replicated;
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

/// Copy everything `leader` has durably past `follower`'s end, `max_bytes` per fetch, the way a
/// follower's fetch loop does; returns the number of fetches.
async fn copy(leader: &LogStore, follower: &LogStore, max_bytes: usize) -> Result<usize, LogError> {
    for fetches in 0..10_000 {
        let from = follower.end_offset();
        let chunk = leader.read_frames(from, max_bytes).await?;
        assert_eq!(chunk.first, from);
        if chunk.bytes.is_empty() {
            assert_eq!(chunk.end, from);
            return Ok(fetches);
        }
        let end = follower.append_frames(chunk.bytes.clone()).await?;
        assert_eq!(end, chunk.end, "append_frames returns the new log end");
        assert_eq!(
            follower.durable_end(),
            end,
            "durable on return whatever the durability"
        );
    }
    panic!("copy did not finish");
}

/// Every record readable from `from`, following reads until an empty answer.
async fn read_all(log: &LogStore, from: u64) -> Result<Vec<Record>, LogError> {
    let mut out: Vec<Record> = Vec::new();
    let mut next = from;
    for _ in 0..10_000 {
        let batch = log.read(next, 7, 4096).await?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        next = last.offset + 1;
        out.extend(batch);
    }
    panic!("read did not finish");
}

/// All raw frames from the start, concatenated (chunking differs with segment sizes).
async fn all_frames(log: &LogStore) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    for _ in 0..10_000 {
        let chunk = log.read_frames(next, 1000).await?;
        if chunk.bytes.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk.bytes);
        next = chunk.end;
    }
    panic!("read_frames did not finish");
}

/// Number of frames in a chunk, and the version byte of each.
fn frame_versions(bytes: &[u8]) -> Vec<u8> {
    let mut versions = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        versions.push(bytes[pos + 8]);
        pos += 8 + len;
    }
    assert_eq!(pos, bytes.len(), "whole frames");
    versions
}

/// What a store answers a retry of every sequence `0..=last` of `id` (a duplicate's original
/// offsets, or stale): the producer's window, observed without writing anything.
async fn window(log: &LogStore, term: u64, id: &str, last: u64) -> Vec<String> {
    let mut out = Vec::new();
    for seq in 0..=last {
        let answer = log.append(term, producer(id, seq), vec![payload(seq)]).await;
        match &answer {
            Ok(AppendOutcome::Appended { .. }) => panic!("probe of seq {seq} stored a record"),
            Ok(AppendOutcome::Duplicate { first, count }) => out.push(format!("dup {first} {count}")),
            Err(LogError::StaleSequence { .. }) => out.push("stale".into()),
            Err(e) => out.push(format!("error {e}")),
        }
    }
    out
}

/// Bytes of every file in `dir` except the lock, for "nothing was written" checks.
fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name() != "LOCK")
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read"))
        })
        .collect();
    v.sort();
    v
}

/// Fill a leader with several terms (with term-start records), two producers (more batches than
/// the producer window), batches of several sizes across many segments.
async fn fill_leader(leader: &LogStore) -> Result<(), LogError> {
    let mut seq_p = 0u64;
    let mut seq_q = 0u64;
    for term in 1..=4u64 {
        leader.begin_term(term).await?;
        for i in 0..12u64 {
            let n = 1 + (i % 3);
            let batch: Vec<Bytes> = (0..n).map(|k| payload(term * 100 + i * 3 + k)).collect();
            match i % 3 {
                0 => {
                    leader.append(term, producer("p", seq_p), batch).await?;
                    seq_p += n;
                }
                1 => {
                    leader.append(term, producer("q", seq_q), batch).await?;
                    seq_q += n;
                }
                _ => {
                    leader.append(term, None, batch).await?;
                }
            }
        }
    }
    Ok(())
}

/// A follower copying a leader's frames (in chunks of several sizes, with its own segment size
/// and `never` durability) ends with byte-identical frames, the same records, epochs, last term
/// and producer tables (every retry answered the same), before and after a reopen.
#[tokio::test]
async fn round_trip_makes_identical_logs() -> TestResult {
    for max_bytes in [1usize, 300, 1 << 20] {
        let (ldir, fdir) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let leader = LogStore::open(config(ldir.path(), 1024, true)).await?;
        fill_leader(&leader).await?;
        let mut fcfg = config(fdir.path(), 700, true);
        fcfg.durability = Durability::Never;
        let follower = LogStore::open(fcfg.clone()).await?;
        let fetches = copy(&leader, &follower, max_bytes).await?;
        assert!(fetches > 1 || max_bytes > 4096, "{fetches} fetches");
        assert_eq!(follower.end_offset(), leader.end_offset());
        assert_eq!(all_frames(&follower).await?, all_frames(&leader).await?);
        assert_eq!(follower.epochs(), leader.epochs());
        assert_eq!(follower.epochs().len(), 4);
        assert_eq!(follower.last_term(), leader.last_term());
        assert!(follower.segment_count() > 3);
        for log in [&leader, &follower] {
            log.set_high_watermark(log.durable_end()).await?;
        }
        let records = read_all(&leader, 0).await?;
        assert_eq!(read_all(&follower, 0).await?, records);
        assert_eq!(
            records.len() as u64,
            leader.end_offset() - 4,
            "four control records skipped"
        );
        let (last_p, last_q) = (
            leader.producer_last_seq("p").expect("p known"),
            leader.producer_last_seq("q").expect("q known"),
        );
        assert_eq!(follower.producer_last_seq("p"), Some(last_p));
        assert_eq!(follower.producer_last_seq("q"), Some(last_q));
        let wp = window(&leader, 4, "p", last_p).await;
        assert!(wp.iter().any(|a| a == "stale") && wp.iter().any(|a| a.starts_with("dup")));
        assert_eq!(window(&follower, 4, "p", last_p).await, wp);
        assert_eq!(
            window(&follower, 4, "q", last_q).await,
            window(&leader, 4, "q", last_q).await
        );
        // The next batch is new on both, at the same offset.
        let next = follower
            .append(4, producer("p", last_p + 1), vec![payload(0)])
            .await?;
        assert_eq!(
            leader
                .append(4, producer("p", last_p + 1), vec![payload(0)])
                .await?,
            next
        );

        follower.close().await?;
        let follower = LogStore::open(fcfg).await?;
        assert_eq!(follower.high_watermark(), leader.high_watermark());
        assert_eq!(read_all(&follower, 0).await?, records);
        assert_eq!(follower.epochs(), leader.epochs());
        assert_eq!(
            window(&follower, 4, "q", last_q).await,
            window(&leader, 4, "q", last_q).await
        );
    }
    Ok(())
}

/// Frames that do not fit are refused and write nothing at all (no segment byte, no epoch, no
/// producer state): a gap or an overlap with the log end, a damaged byte, a partial frame, a
/// partial batch, a term below the log's last term, a payload above the follower's limit.
#[tokio::test]
async fn refused_frames_write_nothing() -> TestResult {
    let (ldir, fdir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let leader = LogStore::open(config(ldir.path(), 1 << 20, true)).await?;
    leader.append(1, None, (0..4).map(payload).collect()).await?;
    leader
        .append(1, producer("p", 0), (0..3).map(payload).collect())
        .await?;
    leader.append(2, None, vec![Bytes::from(vec![b'z'; 200])]).await?;
    leader.append(2, None, (0..2).map(payload).collect()).await?;
    let mut fcfg = config(fdir.path(), 1 << 20, true);
    fcfg.max_record_bytes = 100;
    let follower = LogStore::open(fcfg).await?;
    let first = leader.read_frames(0, 1).await?;
    assert_eq!((first.first, first.end), (0, 4), "one whole batch at least");
    follower.append_frames(first.bytes.clone()).await?;

    let next = leader.read_frames(4, 1).await?; // the producer batch, 4..7
    assert_eq!((next.first, next.end), (4, 7));
    let gap = leader.read_frames(8, 1).await?; // the last batch, 8..10
    let two = leader.read_frames(4, 1 << 20).await?;
    let frame_len = |b: &[u8]| 8 + u32::from_le_bytes(b[0..4].try_into().expect("4")) as usize;
    let mut damaged = next.bytes.to_vec();
    damaged[60] ^= 0x01;
    let one_frame = next.bytes.slice(0..frame_len(&next.bytes));
    let cases: Vec<Refusal> = vec![
        ("overlap", first.bytes.clone(), |e| {
            matches!(e, LogError::Corrupt { .. })
        }),
        ("gap", gap.bytes.clone(), |e| {
            matches!(e, LogError::Corrupt { .. })
        }),
        ("damaged byte", Bytes::from(damaged), |e| {
            matches!(e, LogError::Corrupt { .. })
        }),
        ("partial frame", next.bytes.slice(0..next.bytes.len() - 5), |e| {
            matches!(e, LogError::Corrupt { .. })
        }),
        ("partial batch", one_frame, |e| {
            matches!(e, LogError::Corrupt { .. })
        }),
        ("payload too large", two.bytes.clone(), |e| {
            matches!(e, LogError::RecordTooLarge { .. })
        }),
    ];
    let before = dir_bytes(fdir.path());
    for (what, bytes, expected) in cases {
        let e = follower.append_frames(bytes).await.expect_err(what);
        assert!(expected(&e), "{what}: {e}");
        assert_eq!(follower.end_offset(), 4, "{what}");
        assert_eq!(follower.durable_end(), 4, "{what}");
        assert_eq!(follower.epochs().len(), 1, "{what}");
        assert_eq!(follower.producer_last_seq("p"), None, "{what}");
        assert_eq!(dir_bytes(fdir.path()), before, "{what}: files changed");
    }
    // A term below the follower's last term (it started term 3 on its own) is stale.
    follower.begin_term(3).await?; // offset 4
    let before = dir_bytes(fdir.path());
    let stale = leader.read_frames(5, 1).await?; // the rest of the producer batch, 5..7
    assert_eq!((stale.first, stale.end), (5, 7));
    let e = follower.append_frames(stale.bytes).await.expect_err("stale term");
    assert!(
        matches!(
            e,
            LogError::StaleTerm {
                term: 1,
                last_term: 3
            }
        ),
        "{e}"
    );
    assert_eq!(follower.end_offset(), 5);
    assert_eq!(dir_bytes(fdir.path()), before);
    // And the good frames are still accepted where they fit.
    let (ldir2, fdir2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let l2 = LogStore::open(config(ldir2.path(), 1 << 20, false)).await?;
    l2.append(1, None, (0..4).map(payload).collect()).await?;
    let f2 = LogStore::open(config(fdir2.path(), 1 << 20, false)).await?;
    assert_eq!(f2.append_frames(l2.read_frames(0, 1).await?.bytes).await?, 4);
    assert_eq!(f2.append_frames(Bytes::new()).await?, 4, "empty: nothing to do");
    Ok(())
}

/// The high watermark bounds `read`, `subscribe` and `wait_for`, moves only up and only to the
/// durable end, coalesces concurrent callers, is persisted before it is exposed and is loaded on
/// open; `read_frames` and `durable_end` see past it. Without replication it follows the log end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_watermark_bounds_reads_and_survives_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 1024, true);
    let log = LogStore::open(cfg.clone()).await?;
    for i in 0..10 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    assert_eq!(
        (log.end_offset(), log.durable_end(), log.high_watermark()),
        (10, 10, 0)
    );
    assert_eq!(*log.subscribe_durable().borrow(), 10);
    assert!(log.read(0, 100, 1 << 20).await?.is_empty());
    assert_eq!(*log.subscribe().borrow(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), log.wait_for(0))
            .await
            .is_err(),
        "nothing is committed"
    );
    assert_eq!(
        log.read_frames(0, 1 << 20).await?.end,
        10,
        "followers fetch past the HW"
    );

    let mut visible = log.subscribe();
    let waiter = tokio::spawn({
        let log = log.clone();
        async move { log.wait_for(3).await }
    });
    assert_eq!(log.set_high_watermark(4).await?, 4);
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), waiter).await???, 4);
    visible.changed().await?;
    assert_eq!(*visible.borrow(), 4);
    let read: Vec<u64> = log
        .read(0, 100, 1 << 20)
        .await?
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(read, vec![0, 1, 2, 3]);
    assert_eq!(log.set_high_watermark(2).await?, 4, "never down");
    assert_eq!(
        log.set_high_watermark(1000).await?,
        10,
        "capped at the durable end"
    );
    assert!(dir.path().join("hw.checkpoint").exists());

    // Concurrent callers: each sees at least its own value (capped), the largest wins.
    for i in 10..40 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    let calls: Vec<_> = (11..=40u64)
        .map(|hw| {
            let log = log.clone();
            tokio::spawn(async move { (hw, log.set_high_watermark(hw).await) })
        })
        .collect();
    for call in calls {
        let (asked, got) = call.await?;
        assert!(got? >= asked, "asked {asked}");
    }
    assert_eq!(log.high_watermark(), 40);
    log.close().await?;

    let log = LogStore::open(cfg).await?;
    assert_eq!(log.high_watermark(), 40, "loaded on open");
    assert_eq!(read_all(&log, 0).await?.len(), 40);
    log.append(1, None, vec![payload(40)]).await?;
    assert_eq!(
        read_all(&log, 0).await?.len(),
        40,
        "a new record waits for the HW"
    );
    log.close().await?;

    // Without replication the HW is the log end and set_high_watermark changes nothing.
    let dir = tempfile::tempdir()?;
    let plain = LogStore::open(config(dir.path(), 1024, false)).await?;
    plain.append(1, None, vec![payload(0), payload(1)]).await?;
    assert_eq!(plain.high_watermark(), 2);
    assert_eq!(plain.set_high_watermark(1).await?, 2);
    assert_eq!(read_all(&plain, 0).await?.len(), 2);
    assert!(!dir.path().join("hw.checkpoint").exists());
    Ok(())
}

/// `read_frames` serves only durable records (under `never`, after a flush), whole batches, at
/// least one batch even above `max_bytes`, and refuses offsets removed by retention.
#[tokio::test]
async fn read_frames_serves_durable_whole_batches() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path(), 600, false);
    cfg.durability = Durability::Never;
    let log = LogStore::open(cfg).await?;
    log.append(1, None, (0..5).map(payload).collect()).await?;
    assert_eq!(log.durable_end(), 0);
    assert!(
        log.read_frames(0, 1 << 20).await?.bytes.is_empty(),
        "not durable yet"
    );
    let mut durable = log.subscribe_durable();
    log.flush().await?;
    durable.changed().await?;
    assert_eq!(*durable.borrow(), 5);
    let chunk = log.read_frames(0, 10).await?;
    assert_eq!(
        (chunk.first, chunk.end),
        (0, 5),
        "one whole batch above max_bytes"
    );
    assert_eq!(frame_versions(&chunk.bytes), vec![1; 5]);
    for i in 5..60 {
        log.append(1, None, vec![payload(i), payload(i + 1000)]).await?;
    }
    log.flush().await?;
    let chunk = log.read_frames(5, 400).await?;
    assert!(chunk.bytes.len() <= 400 && chunk.end > 5);
    assert_eq!((chunk.end - 5) % 2, 0, "whole two-record batches");
    let mut cfg = config(dir.path(), 600, false);
    cfg.retention_bytes = Some(1500);
    log.close().await?;
    let log = LogStore::open(cfg).await?;
    let start = log.enforce_retention().await?;
    assert!(start > 0);
    assert!(matches!(
        log.read_frames(0, 100).await,
        Err(LogError::OffsetTrimmed { offset: 0, .. })
    ));
    Ok(())
}

/// A replicated log under `always` serves written records before their sync (a leader's
/// followers fetch while it syncs); the high watermark never passes its durable end. When that
/// sync fails, the records are dropped and the term is lost for writing: appends in it are refused
/// (a follower may hold the dropped records at offsets the leader would otherwise reuse with other
/// records in the same term), the next term starts at the rolled-back end, and the leader's
/// answer for the lost term makes the follower cut the copies.
#[tokio::test]
async fn served_records_lost_to_a_failed_sync_end_the_term() -> TestResult {
    let (ldir, fdir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let faults = FaultInjector::new();
    let mut cfg = config(ldir.path(), 1 << 20, true);
    cfg.fault_injector = Some(faults.clone());
    let leader = LogStore::open(cfg).await?;
    let follower = LogStore::open(config(fdir.path(), 1 << 20, true)).await?;
    leader.append(1, None, (0..3).map(payload).collect()).await?;
    copy(&leader, &follower, 1 << 20).await?;
    assert_eq!(leader.advance_high_watermark(3), 3);

    // The next append's sync is slow and then fails; meanwhile its record is servable.
    faults.slow_syncs(Duration::from_millis(400));
    faults.fail_syncs(1, libc::EIO);
    let writer = leader.clone();
    let append = tokio::spawn(async move { writer.append(1, None, vec![payload(3)]).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leader.servable_end() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the written record never became servable"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(leader.durable_end(), 3, "servable before it is durable");
    assert_eq!(
        leader.advance_high_watermark(4),
        3,
        "the HW never passes the durable end"
    );
    let served = leader.read_frames(3, 1 << 20).await?;
    assert_eq!((served.first, served.end), (3, 4));
    assert_eq!(
        follower.append_frames(served.bytes).await?,
        4,
        "the follower stores it"
    );
    let failed = append.await?.expect_err("the sync failed");
    assert!(matches!(failed, LogError::Io { .. }), "{failed}");
    faults.clear();
    assert_eq!(leader.write_health().lost_term, Some(1));

    // Term 1 is over for writing here; a new term starts where the log was rolled back to.
    let refused = leader
        .append(1, None, vec![payload(9)])
        .await
        .expect_err("term 1 was lost");
    assert!(
        matches!(refused, LogError::TermLost { term: 1, lost: 1 }),
        "{refused}"
    );
    assert_eq!(leader.begin_term(2).await?, 3, "offset 3 is reused, in term 2");
    assert_eq!(leader.append(2, None, vec![payload(4)]).await?.first(), 4);
    // The follower holds a term-1 record at 3 that the leader does not: the leader's answer for
    // term 1 (it ends at 3) is where the follower cuts (the truncation rule), then it copies.
    assert_eq!(leader.end_offset_for(1), Some((1, 3)));
    follower.truncate_suffix(3).await?;
    copy(&leader, &follower, 1 << 20).await?;
    assert_eq!(all_frames(&follower).await?, all_frames(&leader).await?);
    Ok(())
}

/// A frame damaged on the leader's disk after it was stored is served as it is (the leader walks
/// frame structure only, not CRCs) and refused by the follower, which verifies every frame before
/// it stores anything: the damage never spreads, and the follower's log is unchanged.
#[tokio::test]
async fn damage_on_the_leader_is_caught_by_the_follower() -> TestResult {
    let (ldir, fdir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let leader = LogStore::open(config(ldir.path(), 1 << 20, true)).await?;
    leader.append(1, None, (0..3).map(payload).collect()).await?;
    leader
        .append(1, None, vec![Bytes::from_static(b"to-be-damaged")])
        .await?;
    let follower = LogStore::open(config(fdir.path(), 1 << 20, true)).await?;
    copy(&leader, &follower, 1 << 20).await?;
    assert_eq!(follower.durable_end(), 4);
    leader
        .append(1, None, vec![Bytes::from_static(b"second-victim")])
        .await?;
    // Flip one payload byte in the segment file behind the store's back (bit rot).
    let segment = ldir.path().join(format!("{:020}.log", 0));
    let mut file = std::fs::read(&segment)?;
    let at = file
        .windows(13)
        .rposition(|w| w == b"second-victim")
        .ok_or("payload not in the segment")?;
    file[at] ^= 0x20;
    std::fs::write(&segment, &file)?;
    let served = leader.read_frames(4, 1 << 20).await?;
    assert_eq!((served.first, served.end), (4, 5), "served as stored");
    assert!(served.bytes.windows(13).any(|w| w == b"Second-victim"));
    let refused = follower
        .append_frames(served.bytes)
        .await
        .expect_err("CRC mismatch");
    assert!(matches!(refused, LogError::Corrupt { .. }), "{refused}");
    assert_eq!(follower.durable_end(), 4, "nothing stored");
    Ok(())
}

/// A replicated log refuses to truncate below its high watermark (also after a reopen) and
/// changes nothing then; at or above it truncation works and the HW stays.
#[tokio::test]
async fn truncation_below_the_high_watermark_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 1024, true);
    let log = LogStore::open(cfg.clone()).await?;
    for i in 0..10 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    log.set_high_watermark(6).await?;
    let e = log.truncate_suffix(5).await.expect_err("below the HW");
    assert!(
        matches!(e, LogError::BelowHighWatermark { from: 5, hw: 6 }),
        "{e}"
    );
    assert_eq!(log.end_offset(), 10);
    log.truncate_suffix(7).await?;
    assert_eq!((log.end_offset(), log.high_watermark()), (7, 6));
    log.close().await?;
    let log = LogStore::open(cfg).await?;
    assert!(matches!(
        log.truncate_suffix(0).await,
        Err(LogError::BelowHighWatermark { from: 0, hw: 6 })
    ));
    log.truncate_suffix(6).await?;
    assert_eq!(
        (log.end_offset(), log.high_watermark(), log.durable_end()),
        (6, 6, 6)
    );
    Ok(())
}

/// Truncation gives every producer exactly the window it had at the truncation point, rebuilt
/// from the kept log (batches the dropped ones pushed out of the window come back, a producer
/// only in the dropped part is forgotten, a cut batch keeps its prefix), the same as a log that
/// only ever held the kept records; across segment rolls and after a reopen.
#[tokio::test]
async fn truncation_rolls_the_producer_window_back_exactly() -> TestResult {
    async fn history(log: &LogStore, batches: std::ops::Range<u64>) -> Result<u64, LogError> {
        // Producer "p" stores batches of 1..=3 records; plain records in between.
        let mut seq = log.producer_last_seq("p").map_or(0, |s| s + 1);
        for i in batches {
            let n = 1 + i % 3;
            log.append(
                1,
                producer("p", seq),
                (0..n).map(|k| payload(i * 10 + k)).collect(),
            )
            .await?;
            seq += n;
            log.append(1, None, vec![payload(i)]).await?;
        }
        Ok(seq)
    }
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 400, false);
    let log = LogStore::open(cfg.clone()).await?;
    history(&log, 0..6).await?;
    // The point to cut at: inside p's next (3-record) batch, after its first 2 records.
    let cut_batch_first = log.end_offset();
    log.append(
        1,
        producer("p", log.producer_last_seq("p").expect("p") + 1),
        vec![payload(1), payload(2), payload(3)],
    )
    .await?;
    let cut = cut_batch_first + 2;
    history(&log, 6..20).await?;
    log.append(1, producer("q", 0), vec![payload(0)]).await?;
    assert!(log.segment_count() > 3);

    // The reference: a log holding exactly the kept records.
    let rdir = tempfile::tempdir()?;
    let reference = LogStore::open(config(rdir.path(), 400, false)).await?;
    history(&reference, 0..6).await?;
    let seq = reference.producer_last_seq("p").expect("p") + 1;
    reference
        .append(1, producer("p", seq), vec![payload(1), payload(2)])
        .await?;
    assert_eq!(reference.end_offset(), cut);

    log.truncate_suffix(cut).await?;
    let last = reference.producer_last_seq("p").expect("p");
    assert_eq!(log.producer_last_seq("p"), Some(last));
    assert_eq!(log.producer_last_seq("q"), None, "only in the dropped part");
    let expected = window(&reference, 1, "p", last).await;
    assert!(expected.iter().filter(|a| a.starts_with("dup")).count() > 8);
    assert_eq!(window(&log, 1, "p", last).await, expected);
    log.close().await?;
    let log = LogStore::open(cfg).await?;
    assert_eq!(window(&log, 1, "p", last).await, expected);
    // The dropped third record's sequence is new again, stored at the cut.
    assert_eq!(
        log.append(1, producer("p", last + 1), vec![payload(9)]).await?,
        AppendOutcome::Appended { first: cut, count: 1 }
    );
    Ok(())
}

/// Term-start control records (format version 2) take an offset, are in `read_frames`, the epoch
/// cache and a follower's copy, but `read` skips them (a gap of one); a reader waiting at a
/// trailing control record is woken only when a readable record follows; all of it after reopen
/// (sealed segment indexes remember them; a rebuilt index finds them again).
#[tokio::test]
async fn control_records_are_skipped_by_reads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 300, false);
    let log = LogStore::open(cfg.clone()).await?;
    assert_eq!(log.begin_term(1).await?, 0);
    log.append(1, None, (1..4).map(payload).collect()).await?; // 1..4
    assert_eq!(log.begin_term(2).await?, 4);
    log.append(2, None, vec![payload(5), payload(6)]).await?; // 5, 6
    assert!(matches!(
        log.begin_term(1).await,
        Err(LogError::StaleTerm {
            term: 1,
            last_term: 2
        })
    ));
    let offsets = |records: Vec<Record>| records.iter().map(|r| r.offset).collect::<Vec<_>>();
    assert_eq!(offsets(read_all(&log, 0).await?), vec![1, 2, 3, 5, 6]);
    assert_eq!(offsets(log.read(4, 1, 1 << 20).await?), vec![5]);
    let epochs: Vec<(u64, u64)> = log.epochs().iter().map(|e| (e.term, e.start)).collect();
    assert_eq!(epochs, vec![(1, 0), (2, 4)]);
    let frames = all_frames(&log).await?;
    assert_eq!(frame_versions(&frames), vec![2, 1, 1, 1, 2, 1, 1]);

    // A trailing control record: readers end before it and wait for a readable record.
    assert_eq!(log.begin_term(3).await?, 7);
    assert_eq!((log.end_offset(), *log.subscribe().borrow()), (8, 7));
    assert!(log.read(7, 10, 1 << 20).await?.is_empty());
    assert!(tokio::time::timeout(Duration::from_millis(100), log.wait_for(7))
        .await
        .is_err());
    let waiter = tokio::spawn({
        let log = log.clone();
        async move { log.wait_for(7).await }
    });
    log.append(3, None, vec![payload(8)]).await?;
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), waiter).await???, 9);
    assert_eq!(offsets(log.read(7, 10, 1 << 20).await?), vec![8]);
    for i in 9..40 {
        log.append(3, None, vec![payload(i)]).await?;
    }
    assert!(
        log.segment_count() > 2,
        "the control records are in sealed segments now"
    );

    // A follower's copy has them too.
    let fdir = tempfile::tempdir()?;
    let follower = LogStore::open(config(fdir.path(), 500, false)).await?;
    copy(&log, &follower, 256).await?;
    assert_eq!(follower.epochs(), log.epochs());
    let all = read_all(&log, 0).await?;
    assert_eq!(read_all(&follower, 0).await?, all);
    assert_eq!(all.len(), 40 - 3);
    log.close().await?;

    let log = LogStore::open(cfg.clone()).await?;
    assert_eq!(read_all(&log, 0).await?, all);
    log.close().await?;
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "index") {
            std::fs::remove_file(path)?;
        }
    }
    let log = LogStore::open(cfg).await?;
    assert_eq!(read_all(&log, 0).await?, all);
    assert_eq!(log.epochs(), follower.epochs());
    Ok(())
}

/// `hw.checkpoint` crash safety: a torn newest slot falls back to the previous (last exposed)
/// value; a damaged or missing file starts from 0 (the HW moves again from the leader); a leftover
/// temporary file is ignored; a checkpoint past the log end (records lost) is capped at the end.
#[tokio::test]
async fn checkpoint_damage_and_crashes_are_handled() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 1 << 20, true);
    let log = LogStore::open(cfg.clone()).await?;
    for i in 0..10 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    log.set_high_watermark(5).await?; // sequence 1: slot 1 (byte 4096)
    log.set_high_watermark(8).await?; // sequence 2: slot 0 (byte 0)
    log.close().await?;
    let path = dir.path().join("hw.checkpoint");
    let good = std::fs::read(&path)?;

    let mut torn = good.clone();
    torn[20] ^= 0xff; // slot 0's value, as a crash in the middle of its write leaves it
    std::fs::write(&path, &torn)?;
    std::fs::write(dir.path().join("hw.checkpoint.tmp"), b"left by a crash")?;
    let log = LogStore::open(cfg.clone()).await?;
    assert_eq!(log.high_watermark(), 5);
    assert!(!dir.path().join("hw.checkpoint.tmp").exists());
    assert_eq!(log.set_high_watermark(9).await?, 9, "writes on after a torn slot");
    log.close().await?;
    assert_eq!(LogStore::open(cfg.clone()).await?.high_watermark(), 9);

    std::fs::write(&path, vec![0x5a; good.len()])?;
    let log = LogStore::open(cfg.clone()).await?;
    assert_eq!(log.high_watermark(), 0, "damaged: starts from 0");
    assert!(read_all(&log, 0).await?.is_empty());
    assert_eq!(log.set_high_watermark(10).await?, 10);
    log.close().await?;

    std::fs::remove_file(&path)?;
    let log = LogStore::open(cfg.clone()).await?;
    assert_eq!(log.high_watermark(), 0, "missing: starts from 0");
    log.set_high_watermark(10).await?;
    log.close().await?;

    // The disk lost the last records (the file cut back to 6 of 10 equal-sized frames).
    let segment = dir.path().join(format!("{:020}.log", 0));
    let len = std::fs::metadata(&segment)?.len();
    let frames = all_frames(&LogStore::open(cfg.clone()).await?).await?;
    let sizes = frame_versions(&frames).len();
    assert_eq!(sizes, 10);
    let mut cut = 0usize;
    for _ in 0..6 {
        cut += 8 + u32::from_le_bytes(frames[cut..cut + 4].try_into()?) as usize;
    }
    assert!((cut as u64) < len);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)?
        .set_len(cut as u64)?;
    let log = LogStore::open(cfg).await?;
    assert_eq!(
        (log.end_offset(), log.high_watermark()),
        (6, 6),
        "capped at the log end"
    );
    Ok(())
}

/// The incarnation is a UUID created with the data directory: the same across reopens, new for a
/// new (or emptied) directory.
#[tokio::test]
async fn incarnation_is_stable_and_new_for_a_new_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = LogStore::open(config(dir.path(), 1024, true)).await?;
    let first = log.incarnation();
    assert_eq!(first.len(), 32);
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
    log.append(1, None, vec![payload(0)]).await?;
    log.close().await?;
    let log = LogStore::open(config(dir.path(), 1024, true)).await?;
    assert_eq!(log.incarnation(), first);
    log.close().await?;
    let other = tempfile::tempdir()?;
    let log = LogStore::open(config(other.path(), 1024, true)).await?;
    assert_ne!(log.incarnation(), first);
    log.close().await?;
    std::fs::remove_dir_all(dir.path())?;
    let log = LogStore::open(config(dir.path(), 1024, true)).await?;
    assert_ne!(log.incarnation(), first, "an emptied volume is a new incarnation");
    Ok(())
}

/// The newest valid slot's HW in `hw.checkpoint`, read from the file as a restarted node would
/// (format: docs/log-format.md, "The high watermark"); `None` while neither slot is valid.
fn checkpointed_hw(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join("hw.checkpoint")).ok()?;
    let slot = |at: usize| -> Option<(u64, u64)> {
        let b = bytes.get(at..at + 24)?;
        let crc = u32::from_le_bytes(b[4..8].try_into().ok()?);
        (b[0..4] == *b"SLHW" && crc == crc32c::crc32c(&b[8..24])).then(|| {
            (
                u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
                u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            )
        })
    };
    [slot(0), slot(4096)]
        .into_iter()
        .flatten()
        .max_by_key(|&(seq, _)| seq)
        .map(|(_, hw)| hw)
}

/// `advance_high_watermark` (what replication uses): the HW is exposed on return — readers see
/// the records, truncation below it is refused — without waiting for `hw.checkpoint`, which a
/// background write brings to the newest exposed value by itself; `close` leaves the exposed HW
/// on disk, so a reopened store starts there. Never down, capped at the durable end.
#[tokio::test]
async fn advance_exposes_at_once_and_persists_behind() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), 1 << 20, true);
    let log = LogStore::open(cfg.clone()).await?;
    for i in 0..20 {
        log.append(1, None, vec![payload(i)]).await?;
    }
    assert_eq!(log.advance_high_watermark(4), 4);
    assert_eq!(log.high_watermark(), 4);
    assert_eq!(read_all(&log, 0).await?.len(), 4, "readable on return");
    assert!(
        matches!(
            log.truncate_suffix(3).await,
            Err(LogError::BelowHighWatermark { from: 3, hw: 4 })
        ),
        "the exposed HW is the truncation floor at once"
    );
    assert_eq!(log.advance_high_watermark(2), 4, "never down");
    assert_eq!(log.advance_high_watermark(1000), 20, "capped at the durable end");

    // The background write catches up with the newest exposed HW without any further call.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while checkpointed_hw(dir.path()) != Some(20) {
        assert!(
            std::time::Instant::now() < deadline,
            "hw.checkpoint holds {:?}, not 20",
            checkpointed_hw(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Many moves in a row, then close at once: the last exposed value is on disk after close.
    for i in 20..60 {
        log.append(1, None, vec![payload(i)]).await?;
        assert_eq!(log.advance_high_watermark(i + 1), i + 1);
    }
    log.close().await?;
    assert_eq!(checkpointed_hw(dir.path()), Some(60));
    let log = LogStore::open(cfg).await?;
    assert_eq!(log.high_watermark(), 60, "loaded on open");
    assert_eq!(read_all(&log, 0).await?.len(), 60);
    log.close().await?;
    Ok(())
}
