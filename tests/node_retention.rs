//! Retention is reachable from the node's flags: with small segments, `--retention-bytes` drops
//! old segments as writes roll them, and `--retention-age` drops them later without any write
//! (the node's periodic retention task). Observed black-box: the log start offset in
//! `/api/v1/status` moves forward.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{eventually, Cluster};

/// Offsets `(start, end)` of node 0's log.
async fn offsets(c: &Cluster) -> (u64, u64) {
    let s = c.get_json(format!("{}/api/v1/status", c.url(0))).await;
    (
        s["log_start_offset"].as_u64().expect("start"),
        s["log_end_offset"].as_u64().expect("end"),
    )
}

/// 20 batches of 4 × 200-byte messages into 1 KiB segments (one batch per segment) with 4 KiB of
/// retention: old segments go as the log rolls, so the log keeps only its last few segments; then,
/// with no more writes, age retention leaves only the active segment (the last batch).
#[tokio::test]
async fn retention_flags_drop_old_segments() {
    let c = Cluster::start(
        1,
        &[
            "--segment-bytes",
            "1KiB",
            "--retention-bytes",
            "4KiB",
            "--retention-age",
            "2s",
            "--retention-interval",
            "200ms",
        ],
    )
    .await;
    c.wait_leader(Duration::from_secs(20)).await;
    let message = serde_json::to_string(&"x".repeat(200)).unwrap();
    let batch = format!("{message}\n").repeat(4);
    for _ in 0..20 {
        let resp = c
            .http()
            .post(format!("{}/api/v1/log", c.url(0)))
            .header("content-type", "application/x-ndjson")
            .body(batch.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let (start, end) = offsets(&c).await;
    assert_eq!(end, 80);
    assert!(start > 0, "size retention dropped the oldest segments");
    assert!(
        end - start <= 4 * 5,
        "about 4 KiB of 1 KiB segments (one batch each) are kept: start {start}, end {end}"
    );
    let aged = eventually(Duration::from_secs(20), || async {
        let (start, _) = offsets(&c).await;
        (start == 76).then_some(())
    })
    .await;
    assert!(
        aged.is_some(),
        "age retention ran without writes and kept only the active segment: {:?}",
        offsets(&c).await
    );
    let read = c.get_json(format!("{}/api/v1/log?from=76", c.url(0))).await;
    assert_eq!(read["entries"].as_array().map(Vec::len), Some(4), "{read}");
}
