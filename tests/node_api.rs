//! The node's HTTP API on a single-node cluster: writes, batches, idempotent retries, reads,
//! and every kind of bad input answered with its status and a JSON error, storing nothing.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::Cluster;
use serde_json::Value;

async fn leader() -> (Cluster, String) {
    let cluster = Cluster::start(1, &["--max-message-bytes", "16", "--max-batch-bytes", "64"]).await;
    cluster.wait_leader(Duration::from_secs(20)).await;
    let url = cluster.url(0);
    (cluster, url)
}

async fn end_offset(c: &Cluster, url: &str) -> u64 {
    let status: Value = c.get_json(format!("{url}/api/v1/status")).await;
    status["log_end_offset"].as_u64().unwrap()
}

/// Single messages, batches, idempotent retries and reads (UTF-8 and binary) round-trip.
#[tokio::test]
async fn writes_and_reads() {
    let (c, url) = leader().await;
    let log = format!("{url}/api/v1/log");
    let one: Value = c
        .http()
        .post(&log)
        .body("hello")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["offset"], 0);
    let binary: Value = c
        .http()
        .post(&log)
        .body(vec![0xff, 0x00, 0x80])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(binary["offset"], 1);
    let batch = || {
        c.http()
            .post(&log)
            .header("content-type", "application/x-ndjson")
            .header("x-producer-id", "p-1")
            .header("x-producer-seq", "10")
            .body("\"a\"\n\"b\"\n\"c\"\n")
    };
    let first: Value = batch().send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (first["first_offset"].as_u64(), first["count"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(first["duplicate"], false);
    let retry: Value = batch().send().await.unwrap().json().await.unwrap();
    assert_eq!(retry["duplicate"], true);
    assert_eq!(
        retry["first_offset"], first["first_offset"],
        "a retry answers the original offsets"
    );
    assert_eq!(end_offset(&c, &url).await, 5, "the retry stored nothing");

    let read: Value = c.get_json(format!("{log}?from=0&limit=10")).await;
    let entries = read["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0]["message"], "hello");
    assert_eq!(entries[1]["message_base64"], "/wCA");
    assert!(entries[1].get("message").is_none());
    assert_eq!(entries[4]["message"], "c");
    assert_eq!(read["next"], 5);
    let page: Value = c.get_json(format!("{log}?from=3&limit=1")).await;
    assert_eq!(page["entries"][0]["offset"], 3);
    assert_eq!(page["next"], 4);
}

/// Every malformed request gets its status and a JSON `error`, and nothing is stored.
#[tokio::test]
async fn bad_input_is_refused_and_stores_nothing() {
    let (c, url) = leader().await;
    let log = format!("{url}/api/v1/log");
    let ndjson = |body: &'static str| {
        c.http()
            .post(&log)
            .header("content-type", "application/x-ndjson")
            .body(body)
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("empty body", c.http().post(&log), 400, "empty message"),
        (
            "message too large",
            c.http().post(&log).body("x".repeat(17)),
            413,
            "--max-message-bytes",
        ),
        (
            "malformed line",
            ndjson("\"ok\"\n{\"no\":1}\n\"ok\"\n"),
            400,
            "line 2",
        ),
        ("non-string line", ndjson("\"ok\"\n42\n"), 400, "line 2"),
        ("empty batch", ndjson("\n\n"), 400, "empty batch"),
        (
            "batch line too large",
            ndjson("\"ok\"\n\"0123456789abcdefg\"\n"),
            413,
            "line 2",
        ),
        (
            "batch too large",
            ndjson("\"0123456789\"\n\"0123456789\"\n\"0123456789\"\n\"0123456789\"\n\"0123456789\"\n"),
            413,
            "--max-batch-bytes",
        ),
        (
            "seq without id",
            c.http().post(&log).header("x-producer-seq", "1").body("m"),
            400,
            "together",
        ),
        (
            "non-numeric seq",
            c.http()
                .post(&log)
                .header("x-producer-id", "p")
                .header("x-producer-seq", "one")
                .body("m"),
            400,
            "X-Producer-Seq",
        ),
        ("bad from", c.http().get(format!("{log}?from=abc")), 400, "from"),
        ("zero limit", c.http().get(format!("{log}?limit=0")), 400, "limit"),
        (
            "unknown parameter",
            c.http().get(format!("{log}?color=red")),
            400,
            "color",
        ),
        (
            "unknown path",
            c.http().get(format!("{url}/api/v1/nope")),
            404,
            "no such endpoint",
        ),
        ("wrong method", c.http().delete(&log), 405, "method not allowed"),
    ];
    for (what, request, status, needle) in cases {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}: JSON body"
        );
        let body: Value = resp.json().await.unwrap();
        let error = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error field in {body}"));
        assert!(
            error.contains(needle),
            "{what}: {error:?} should mention {needle:?}"
        );
    }
    assert_eq!(
        end_offset(&c, &url).await,
        0,
        "nothing of any refused request was stored"
    );
}

/// Probes and metrics: the leader is live and ready; metrics carry the prefix and count writes.
#[tokio::test]
async fn probes_and_metrics() {
    let (c, url) = leader().await;
    assert_eq!(
        c.http()
            .get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = c.get_json(format!("{url}/readyz")).await;
    assert_eq!(ready["role"], "leader");
    c.http()
        .post(format!("{url}/api/v1/log"))
        .body("m")
        .send()
        .await
        .unwrap();
    let text = c
        .http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("simpleloggers_messages_appended_total 1"), "{text}");
    assert!(text.contains("simpleloggers_is_leader 1"));
    assert!(
        text.contains(r#"simpleloggers_consul_request_duration_seconds_count{op="session/renew"}"#),
        "Consul requests are timed by operation: {text}"
    );
    assert!(text.contains(r#"route="/api/v1/log",method="POST",status="200""#));
}
