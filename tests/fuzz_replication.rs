//! Property tests (the CI side of `fuzz/replication_*`, see `docs/fuzzing.md`) for the replication
//! wire format: fetch and end-offset queries survive their query string and any query string is
//! parsed canonically or refused naming a parameter; refusal bodies read back as themselves and
//! garbage is never a refusal of another status; and what a follower does with a fetched body —
//! `LogStore::append_frames` — stores exactly the leader's records or refuses damaged frames
//! without writing anything.

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use simpleloggers::{
    log::{Durability, LogConfig, LogError, LogStore, ProducerBatch, Record},
    replication::protocol::{EndOffsetQuery, FetchQuery, FetchRefusal, MAX_MAX_BYTES, MAX_WAIT},
};

/// A name or incarnation as `FetchQuery::parse` keeps it: trimmed, 1 to 256 bytes.
fn label() -> impl Strategy<Value = String> {
    "\\PC{1,40}".prop_filter_map("blank", |s| {
        let t = s.trim().to_string();
        (!t.is_empty() && t.len() <= 256).then_some(t)
    })
}

fn fetch_query() -> impl Strategy<Value = FetchQuery> {
    (
        (any::<u64>(), prop::option::of(any::<u64>()), any::<u64>()),
        (label(), label()),
        (
            0..=MAX_WAIT.as_millis() as u64,
            1..=MAX_MAX_BYTES,
            prop::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |((from, last_term, term), (name, incarnation), (wait_ms, max_bytes, hw))| FetchQuery {
                from,
                last_term,
                term,
                name,
                incarnation,
                wait: Duration::from_millis(wait_ms),
                max_bytes,
                hw,
            },
        )
}

/// Query strings mixing the real parameters, unknown ones and bad values, percent-encoded or not.
fn query_string() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "from",
        "last_term",
        "term",
        "name",
        "incarnation",
        "wait_ms",
        "max_bytes",
        "hw",
        "colour",
        "",
        "from%00",
    ]);
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        Just(String::new()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just(" 7 ".to_string()),
        Just("%zz".to_string()),
        "\\PC{0,10}",
    ];
    prop::collection::vec((key, value), 0..10).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn refusal() -> impl Strategy<Value = FetchRefusal> {
    prop_oneof![
        (prop::option::of(any::<u64>()), any::<u64>())
            .prop_map(|(term, end)| FetchRefusal::Diverged { term, end }),
        any::<u64>().prop_map(|term| FetchRefusal::StaleTerm { term }),
        any::<u64>().prop_map(|log_start| FetchRefusal::OffsetTrimmed { log_start }),
        Just(FetchRefusal::Unauthorized),
        "\\PC{0,20}".prop_map(|reason| FetchRefusal::NotLeader { reason }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A fetch query parses back from its own query string.
    #[test]
    fn fetch_queries_round_trip(q in fetch_query()) {
        prop_assert_eq!(FetchQuery::parse(Some(&q.to_query())), Ok(q));
    }

    /// Any query string: parsed into a query whose own string parses to the same query, or refused
    /// with a message naming a query parameter. The same for the end-offset question.
    #[test]
    fn any_query_string_is_canonical_or_refused(q in query_string()) {
        match FetchQuery::parse(Some(&q)) {
            Ok(parsed) => {
                prop_assert!(parsed.wait <= MAX_WAIT && parsed.max_bytes >= 1 && parsed.max_bytes <= MAX_MAX_BYTES);
                prop_assert_eq!(FetchQuery::parse(Some(&parsed.to_query())), Ok(parsed));
            }
            Err(e) => prop_assert!(e.0.contains("query parameter"), "{}", e.0),
        }
        match EndOffsetQuery::parse(Some(&q)) {
            Ok(parsed) => prop_assert_eq!(EndOffsetQuery::parse(Some(&parsed.to_query())), Ok(parsed)),
            Err(e) => prop_assert!(e.0.contains("query parameter"), "{}", e.0),
        }
    }

    /// A refusal reads back from its status and body; a body under another status is no refusal.
    #[test]
    fn refusals_round_trip(r in refusal(), other in 100u16..600) {
        let body = serde_json::to_vec(&r.body()).expect("encodable");
        let back = FetchRefusal::parse(r.status(), &body);
        match (&r, &back) {
            (FetchRefusal::NotLeader { .. }, Some(FetchRefusal::NotLeader { reason })) => prop_assert!(!reason.is_empty()),
            _ => prop_assert_eq!(back.as_ref(), Some(&r)),
        }
        if other != r.status() {
            prop_assert_eq!(FetchRefusal::parse(other, &body), None);
        }
    }

    /// Garbage bodies never panic and are only ever refusals of the status they came with.
    #[test]
    fn garbage_refusal_bodies(status in 100u16..600, body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (prop::sample::select(vec!["diverged", "stale_term", "offset_trimmed", "unauthorized", "not_leader", "x"]),
         prop::sample::select(vec!["term", "end", "log_start", "error", "message"]),
         prop_oneof![Just("1".to_string()), Just("-1".to_string()), Just("null".to_string()), Just("\"7\"".to_string()),
                     Just("1.5".to_string()), Just("18446744073709551616".to_string())])
            .prop_map(|(code, field, v)| format!("{{\"code\":\"{code}\",\"{field}\":{v},\"end\":3}}").into_bytes()),
    ]) {
        if let Some(r) = FetchRefusal::parse(status, &body) {
            prop_assert_eq!(r.status(), status);
        }
    }
}

/// The leader's log: records over several terms, a control record each term, producer batches.
async fn leader_log(dir: &std::path::Path) -> Result<LogStore, LogError> {
    let log = LogStore::open(config(dir)).await?;
    for term in 1..=3u64 {
        log.begin_term(term).await?;
        for i in 0..3u64 {
            let producer = (i % 2 == 0).then(|| ProducerBatch {
                producer_id: format!("p{term}"),
                seq: i, // batches 0 and 2: sequences 0-1 and 2-3
                pending_from: None,
            });
            let payloads = (0..2).map(|j| Bytes::from(format!("t{term}-{i}-{j}"))).collect();
            log.append(term, producer, payloads).await?;
        }
    }
    Ok(log)
}

fn config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.durability = Durability::Always;
    c.index_interval_bytes = 64;
    c
}

/// Every readable record (control records are skipped by reads).
async fn all_records(log: &LogStore) -> Result<Vec<Record>, LogError> {
    log.read(0, 10_000, usize::MAX).await
}

/// A follower appending the leader's fetched frames, damaged anywhere: either it refuses them and
/// its log is unchanged, or it stores exactly the leader's records up to a batch boundary.
#[test]
fn damaged_fetch_bodies_are_refused_or_stored_exactly() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let leader_dir = tempfile::tempdir()?;
    let (frames, leader_records, leader_end) = rt.block_on(async {
        let leader = leader_log(leader_dir.path()).await?;
        let chunk = leader.read_frames(0, 1 << 20).await?;
        let records = all_records(&leader).await?;
        let end = leader.end_offset();
        leader.close().await?;
        Ok::<_, LogError>((chunk.bytes, records, end))
    })?;
    assert_eq!(leader_end, 21, "3 terms of a control record and 3 batches of 2");
    assert!(!frames.is_empty());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    let damage = prop::collection::vec((0.0..1.0f64, 0u8..=255, 0u8..3), 0..3);
    runner
        .run(&damage, |hits| {
            let mut bytes = frames.to_vec();
            for (at, value, how) in &hits {
                let p = ((at * bytes.len() as f64) as usize).min(bytes.len() - 1);
                match how {
                    0 => bytes[p] ^= value | 1,
                    1 => bytes.truncate(p.max(1)),
                    _ => bytes.insert(p, *value),
                }
            }
            let changed = bytes != frames;
            rt.block_on(async {
                let fail = |e: LogError| TestCaseError::fail(e.to_string());
                let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut follower_config = config(dir.path());
                follower_config.replicated = true;
                let follower = LogStore::open(follower_config).await.map_err(fail)?;
                match follower.append_frames(Bytes::from(bytes)).await {
                    Ok(end) => {
                        prop_assert_eq!(follower.set_high_watermark(end).await.map_err(fail)?, end);
                        let got = all_records(&follower).await.map_err(fail)?;
                        let want: Vec<Record> = leader_records
                            .iter()
                            .filter(|r| r.offset < end)
                            .cloned()
                            .collect();
                        prop_assert_eq!(got, want);
                        prop_assert!(end <= leader_end);
                        prop_assert!(
                            !changed || end < leader_end,
                            "damaged frames stored as the whole log"
                        );
                    }
                    Err(LogError::Corrupt { .. } | LogError::RecordTooLarge { .. }) => {
                        prop_assert!(changed, "refused the leader's own frames");
                        prop_assert_eq!(follower.durable_end(), 0);
                    }
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
                follower.close().await.map_err(fail)?;
                Ok(())
            })
        })
        .map_err(|e| e.to_string().into())
}
