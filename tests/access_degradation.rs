//! Graceful degradation over real processes with the dev Consul frozen (SIGSTOP): the follower
//! keeps serving reads up to the high watermark it knows, the leader stops accepting writes
//! once its lease ends, each node's status says why in `writes.reason`, and after SIGCONT a
//! leader serves writes again by itself.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{eventually, Cluster};
use serde_json::Value;

/// `writes` of node `i`'s status, when it answers.
async fn writes(c: &Cluster, i: usize) -> Option<Value> {
    let url = format!("{}/api/v1/status", c.url(i));
    let status: Value = c.http().get(&url).send().await.ok()?.json().await.ok()?;
    Some(status["writes"].clone())
}

/// Consul frozen: writes refused with a Consul reason, reads still served; thawed: writes again.
#[tokio::test]
async fn consul_outage_refuses_writes_keeps_reads_and_recovers() {
    let c = Cluster::start(2, &["--min-insync", "1"]).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = 1 - leader;
    for i in 0..3 {
        let resp = c
            .http()
            .post(format!("{}/api/v1/log", c.url(leader)))
            .body(format!("before-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    c.wait_hw(3, Duration::from_secs(30)).await;
    let w = writes(&c, leader).await.expect("the leader answers");
    assert_eq!(w["accepting"], true, "{w}");
    assert_eq!(w["reason"], "accepting", "{w}");

    c.consul().pause().await.expect("freeze the dev Consul");
    // The leader's lease ends without renewals: it refuses writes, saying Consul is why.
    let refused = eventually(Duration::from_secs(30), || async {
        let w = writes(&c, leader).await?;
        let reason = w["reason"].as_str()?.to_string();
        (w["accepting"] == false).then_some(reason)
    })
    .await
    .expect("the leader stops accepting writes");
    assert!(
        ["lease_expired", "consul_unreachable"].contains(&refused.as_str()),
        "{refused}"
    );
    let resp = c
        .http()
        .post(format!("{}/api/v1/log", c.url(leader)))
        .body("during")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "no write accepted without a lease");
    let follower_reason = eventually(Duration::from_secs(30), || async {
        let w = writes(&c, follower).await?;
        (w["reason"] == "consul_unreachable").then_some(())
    })
    .await;
    assert!(
        follower_reason.is_some(),
        "the follower names Consul as the reason"
    );
    // Reads keep working on the follower, up to the high watermark it knows.
    let read: Value = c
        .http()
        .get(format!("{}/api/v1/log?from=0", c.url(follower)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages: Vec<&str> = read["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("before-"))
        .collect();
    assert_eq!(messages, ["before-0", "before-1", "before-2"], "{read}");

    c.consul().resume();
    let back = c.wait_leader(Duration::from_secs(60)).await;
    let accepted = eventually(Duration::from_secs(30), || async {
        let resp = c
            .http()
            .post(format!("{}/api/v1/log", c.url(back)))
            .body("after")
            .send()
            .await
            .ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    assert!(accepted.is_some(), "writes resume by themselves");
}
