//! The live tail `GET /api/v1/log/stream` over a real node process: events in offset order with
//! their ids, messages written after connecting arrive, `Last-Event-ID` resumes after the last
//! event seen, the default start is the current end, and a bad `from` is a JSON 400.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::Cluster;
use serde_json::Value;

/// One parsed Server-Sent Event.
#[derive(Debug)]
struct SseEvent {
    id: Option<String>,
    data: Value,
}

/// Reads SSE events from a streaming response, chunk by chunk.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(url: &str, last_event_id: Option<&str>) -> SseReader {
        // No overall timeout: the stream is meant to stay open.
        let http = reqwest::Client::new();
        let mut req = http.get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.expect("connect");
        assert_eq!(resp.status(), 200, "stream status");
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event with data, failing after `within`.
    async fn next(&mut self, within: Duration) -> SseEvent {
        tokio::time::timeout(within, async {
            loop {
                while let Some(pos) = self.buf.find("\n\n") {
                    let raw: String = self.buf.drain(..pos + 2).collect();
                    let mut id = None;
                    let mut data = String::new();
                    for line in raw.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = Some(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        }
                    }
                    if !data.is_empty() {
                        return SseEvent {
                            id,
                            data: serde_json::from_str(&data).expect("data is JSON"),
                        };
                    }
                }
                let chunk = self
                    .resp
                    .chunk()
                    .await
                    .expect("read stream")
                    .expect("stream open");
                self.buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
            }
        })
        .await
        .expect("an event within the deadline")
    }
}

async fn write(c: &Cluster, url: &str, message: &str) -> u64 {
    let resp = c
        .http()
        .post(format!("{url}/api/v1/log"))
        .body(message.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ack: Value = resp.json().await.unwrap();
    ack["offset"].as_u64().unwrap()
}

/// `from=0` replays everything in order with `id: <offset>`, then delivers new messages live;
/// a reconnect with `Last-Event-ID` resumes right after that event.
#[tokio::test]
async fn stream_replays_follows_and_resumes() {
    let c = Cluster::start(1, &[]).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let url = c.url(0);
    for i in 0..3 {
        assert_eq!(write(&c, &url, &format!("m{i}")).await, i);
    }
    let mut stream = SseReader::open(&format!("{url}/api/v1/log/stream?from=0"), None).await;
    for i in 0..3u64 {
        let ev = stream.next(Duration::from_secs(10)).await;
        assert_eq!(ev.id.as_deref(), Some(i.to_string().as_str()));
        assert_eq!(ev.data["offset"], i);
        assert_eq!(ev.data["message"], format!("m{i}"));
        assert!(ev.data["term"].as_u64().unwrap() >= 1);
        assert!(ev.data["timestamp_ms"].as_u64().unwrap() > 0);
    }
    // Written after connecting: arrives on the open stream.
    write(&c, &url, "live").await;
    let ev = stream.next(Duration::from_secs(10)).await;
    assert_eq!(ev.id.as_deref(), Some("3"));
    assert_eq!(ev.data["message"], "live");

    // A reconnect that saw up to id 1 gets 2 next, whatever `from` says.
    let mut resumed = SseReader::open(&format!("{url}/api/v1/log/stream?from=0"), Some("1")).await;
    let ev = resumed.next(Duration::from_secs(10)).await;
    assert_eq!(ev.id.as_deref(), Some("2"));
    assert_eq!(ev.data["message"], "m2");
}

/// Without `from` only new messages arrive; binary messages come as base64; bad input is a
/// JSON 400 like every other endpoint.
#[tokio::test]
async fn stream_defaults_to_the_end_and_rejects_bad_input() {
    let c = Cluster::start(1, &[]).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let url = c.url(0);
    write(&c, &url, "old").await;
    let mut stream = SseReader::open(&format!("{url}/api/v1/log/stream"), None).await;
    let resp = c
        .http()
        .post(format!("{url}/api/v1/log"))
        .body(vec![0xffu8, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ev = stream.next(Duration::from_secs(10)).await;
    assert_eq!(ev.data["offset"], 1, "the old message is not replayed");
    assert_eq!(ev.data["message_base64"], "/wA=");
    assert!(ev.data.get("message").is_none());

    for query in ["from=-1", "from=abc", "limit=5"] {
        let resp = c
            .http()
            .get(format!("{url}/api/v1/log/stream?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("parameter"), "{body}");
    }
}

/// An open stream ends when its node stops gracefully, and does not hold up the drain (which
/// would otherwise wait up to its 10 s bound for the connection).
#[tokio::test]
async fn stream_ends_on_graceful_stop() {
    let mut c = Cluster::start(1, &[]).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let url = c.url(0);
    write(&c, &url, "one").await;
    let mut stream = SseReader::open(&format!("{url}/api/v1/log/stream?from=0"), None).await;
    assert_eq!(stream.next(Duration::from_secs(10)).await.data["message"], "one");
    let started = std::time::Instant::now();
    c.terminate(0).await;
    let stopped_in = started.elapsed();
    assert!(stopped_in < Duration::from_secs(5), "stop took {stopped_in:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.resp.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
}
