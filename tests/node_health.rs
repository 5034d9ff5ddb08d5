//! A leader that cannot write gives up leadership, and a node is never Ready while it would refuse
//! writes: real node processes over loopback with the dev Consul. A node's disk is made to fail
//! through the hidden `--fault-file` test hook (every log write fails with the errno the file
//! names, or every sync with `sync:<errno>`); Consul's state is lost by restarting the dev Consul
//! on the same address.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{eventually, Cluster, BIN};
use serde_json::Value;
use simpleloggers::local_cluster::ClusterOptions;

/// Generous bound for election steps on a loaded machine (check 250 ms, lock-delay 1 s).
const WAIT: Duration = Duration::from_secs(20);

/// POSTs one message; the status and the JSON body.
async fn write(c: &Cluster, i: usize, message: &str) -> (u16, Value) {
    let resp = c
        .http()
        .post(format!("{}/api/v1/log", c.url(i)))
        .body(message.to_string())
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// GETs `path` on node `i`; the status and the JSON body.
async fn get(c: &Cluster, i: usize, path: &str) -> (u16, Value) {
    let resp = c
        .http()
        .get(format!("{}{path}", c.url(i)))
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A leader whose disk fails (every write ENOSPC) fails its Consul check, loses its session and the
/// lock, and the healthy node takes over — while the sick node stays live for Kubernetes. When the
/// disk works again it comes back by itself as a follower with a new session, catches up, rejoins
/// the in-sync set, and can lead and accept writes again once the other node is gone. (Two nodes
/// with `--min-insync 1`, so that the healthy node may commit while the sick one is out of the ISR.)
#[tokio::test]
async fn leader_that_cannot_write_hands_over_and_recovers() {
    let mut c = Cluster::start_with(
        ClusterOptions::fast(BIN)
            .nodes(2)
            .fault_files()
            .node_args(["--min-insync", "1"]),
    )
    .await;
    let sick = c.wait_leader(WAIT).await;
    let healthy = 1 - sick;
    // Only an in-sync follower may be elected: wait until the leader added it.
    c.wait_isr(&(0..2).collect::<Vec<_>>(), Duration::from_secs(20))
        .await;
    let fault = c.fault_file(sick).expect("fault files were asked for");
    assert_eq!(write(&c, sick, "before").await.0, 200);

    std::fs::write(&fault, "ENOSPC").unwrap();
    // Until the node has read the fault file, writes still succeed: count those (they are
    // acknowledged, so they must survive).
    let acked_early = std::sync::atomic::AtomicUsize::new(0);
    let refused = eventually(Duration::from_secs(5), || async {
        let (status, body) = write(&c, sick, "early").await;
        if status == 200 {
            acked_early.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        (status != 200).then_some((status, body))
    })
    .await
    .expect("the leader refuses writes once its disk fails");
    assert!(
        refused.0 == 507 || refused.0 == 503,
        "disk full (507) or not serving (503): {refused:?}"
    );
    let (status, body) = get(&c, sick, "/consul-check").await;
    assert_eq!(
        status, 503,
        "the Consul check fails while the log cannot append: {body}"
    );
    assert!(body["reason"].as_str().unwrap().contains("disk full"), "{body}");
    assert_eq!(
        get(&c, sick, "/healthz").await.0,
        200,
        "liveness does not fail for a full disk: a restart would not free space"
    );
    assert_eq!(
        get(&c, sick, "/readyz").await.0,
        503,
        "never Ready while refusing writes"
    );

    let took_over = eventually(WAIT, || async {
        (c.ready_nodes().await == vec![healthy]).then_some(())
    })
    .await;
    assert!(
        took_over.is_some(),
        "the healthy node did not take over within {WAIT:?}"
    );
    let holder = c.lock_holder().await.expect("the key is held");
    assert_eq!(holder.record.name, format!("n{healthy}"));
    // Committed once the sick follower, which cannot append, has left the in-sync set.
    let after = eventually(WAIT, || async {
        let (status, ack) = write(&c, healthy, "after").await;
        (status == 200).then_some(ack)
    })
    .await;
    assert!(
        after.is_some(),
        "the healthy leader commits without the sick follower"
    );

    std::fs::remove_file(&fault).unwrap();
    let recovered = eventually(WAIT, || async {
        let (_, s) = get(&c, sick, "/api/v1/status").await;
        (s["role"] == "follower" && s["session"].is_string() && s.get("log_problem").is_none()).then_some(s)
    })
    .await;
    assert!(
        recovered.is_some(),
        "the node did not come back as a follower with a new session; status {}",
        get(&c, sick, "/api/v1/status").await.1
    );
    assert_eq!(get(&c, sick, "/consul-check").await.0, 200);
    assert_eq!(
        c.ready_nodes().await,
        vec![healthy],
        "the recovered node does not preempt"
    );

    // It catches up and rejoins the in-sync set, so it may lead once the healthy node is gone.
    c.wait_isr(&(0..2).collect::<Vec<_>>(), Duration::from_secs(20))
        .await;
    c.node_mut(healthy).kill().await;
    eventually(WAIT, || async {
        let (status, ack) = write(&c, sick, "back").await;
        (status == 200).then_some(ack)
    })
    .await
    .expect("the recovered node leads and accepts writes");
    let messages: Vec<String> = c
        .read_log(sick)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    // Every acknowledged write exactly once, in order; the refused one nowhere.
    let early = acked_early.into_inner();
    let mut expected = vec!["before"];
    expected.extend(std::iter::repeat_n("early", early));
    expected.extend(["after", "back"]);
    assert_eq!(
        messages, expected,
        "its log kept what it had ({early} written before the fault took effect), replicated what it missed, and took the new write"
    );
}

/// A leader whose `fdatasync` fails poisons its log: the write is refused (503), later writes are
/// refused until the log has re-verified its tail, and `/readyz` and `/consul-check` fail for as
/// long, even though the data directory's own probe passes. When syncs work again the log
/// recovers by itself, the node becomes healthy and leads again, and its log continues right after
/// the last acknowledged write.
#[tokio::test]
async fn failed_sync_poisons_the_log_until_it_recovers_by_itself() {
    let c = Cluster::start_with(ClusterOptions::fast(BIN).nodes(1).fault_files()).await;
    let fault = c.fault_file(0).expect("fault files were asked for");
    c.wait_leader(WAIT).await;
    let (status, ack) = write(&c, 0, "before").await;
    assert_eq!(status, 200, "{ack}");
    let before = ack["offset"].as_u64().expect("offset");

    std::fs::write(&fault, "sync:EIO").unwrap();
    // Until the node picks the fault file up, writes still succeed: remember which.
    let mut acked = vec!["before".to_string()];
    let mut refused = None;
    for i in 0..500 {
        let message = format!("try-{i}");
        let (status, body) = write(&c, 0, &message).await;
        if status == 200 {
            acked.push(message);
        } else {
            refused = Some((status, body, message));
            break;
        }
    }
    let (status, body, refused) = refused.expect("the leader refuses writes once its syncs fail");
    assert_eq!(status, 503, "{body}");
    let poisoned = eventually(Duration::from_secs(5), || async {
        let (status, body) = get(&c, 0, "/consul-check").await;
        let reason = body["reason"].as_str().unwrap_or_default().to_string();
        (status == 503 && reason.contains("re-verifying")).then_some(reason)
    })
    .await;
    assert!(
        poisoned.is_some(),
        "the Consul check fails while the log is poisoned, although the disk probe passes: {}",
        get(&c, 0, "/consul-check").await.1
    );
    assert_eq!(get(&c, 0, "/readyz").await.0, 503, "never Ready while poisoned");
    assert_eq!(get(&c, 0, "/healthz").await.0, 200, "liveness holds");

    std::fs::remove_file(&fault).unwrap();
    let ack = eventually(WAIT, || async {
        let (status, ack) = write(&c, 0, "after").await;
        (status == 200).then_some(ack)
    })
    .await
    .expect("the log recovers by itself and the node leads again");
    let (_, log) = get(&c, 0, "/api/v1/log?from=0").await;
    let messages: Vec<&str> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        messages[..acked.len()],
        acked.iter().map(String::as_str).collect::<Vec<_>>(),
        "every acknowledged write is kept, in order"
    );
    assert!(
        messages[acked.len()..].iter().all(|m| *m == "after"),
        "the write whose sync failed ({refused}) was not stored: {messages:?}"
    );
    assert!(
        ack["offset"].as_u64() >= Some(before + acked.len() as u64),
        "{ack}"
    );
    assert_eq!(get(&c, 0, "/consul-check").await.0, 200);
}

/// After Consul's state is lost, the term key and the ISR key are gone (and `LockIndex` restarts at
/// 1, below the terms already in the log). The node never becomes Ready in a term its log would
/// refuse: it sees a state loss (its report shows records), and, being the only replica, leads in
/// the term above every reported one, which the term key then holds.
#[tokio::test]
async fn reset_consul_never_ready_while_refusing_writes() {
    let mut c = Cluster::start(1, &[]).await;
    // Three leaderships: the log's last term becomes 3.
    for round in 1..=3u64 {
        if round > 1 {
            c.terminate(0).await;
            c.node_mut(0).start().await.expect("restart n0 on its address");
        }
        c.wait_leader(WAIT).await;
        let (status, ack) = write(&c, 0, "m").await;
        assert_eq!((status, ack["term"].as_u64()), (200, Some(round)), "{ack}");
    }

    // Only what the node logs from here on counts below.
    let log_before = c.node(0).log_text().len();
    // Restarted on its address, the dev Consul keeps no state: no term key, no ISR key.
    let consul = c.consul_mut();
    consul.kill().await;
    consul
        .start()
        .await
        .expect("restart the dev Consul on its address");

    let ack = eventually(WAIT, || async {
        let (ready, readiness) = get(&c, 0, "/readyz").await;
        let (status, ack) = write(&c, 0, "x").await;
        let error = ack["error"].as_str().unwrap_or_default();
        assert!(!error.contains("stale term"), "the log saw a stale term: {ack}");
        if ready == 200 && status != 200 {
            // Only a role change in between (the old session's renewal answering 404) excuses it.
            let (again, now) = get(&c, 0, "/readyz").await;
            assert!(
                again != 200 || now["term"] != readiness["term"],
                "Ready ({readiness}), still Ready ({now}), but the write was refused: {ack}"
            );
        }
        (status == 200 && ack["term"].as_u64() > Some(3)).then_some(ack)
    })
    .await
    .expect("the node leads again in a term above its log's");
    assert_eq!(
        ack["term"].as_u64(),
        Some(4),
        "one above the log's last term: {ack}"
    );
    let holder = c.lock_holder().await.expect("held");
    assert_eq!(
        (holder.term, holder.record.term),
        (4, Some(4)),
        "followers and producers read the leader's term from its record"
    );
    assert!(
        c.node(0)
            .log_text()
            .get(log_before..)
            .is_some_and(|since| since.contains("state_loss")),
        "the node says it was elected after a state loss"
    );
}
