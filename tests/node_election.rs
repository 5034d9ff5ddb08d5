//! Election behaviour of real node processes over loopback with a dev Consul underneath:
//! one leader, failover after a crash and after a graceful stop, and a paused leader.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{eventually, Cluster};

/// Only in-sync nodes may be elected: wait until the leader has added every follower.
async fn all_in_isr(cluster: &Cluster) {
    let all: Vec<usize> = (0..cluster.len()).collect();
    cluster.wait_isr(&all, Duration::from_secs(20)).await;
}

/// Exactly one of three nodes becomes leader; only it is ready and accepts writes; followers
/// answer writes 503 with the leader's address in a header and in the JSON body.
#[tokio::test]
async fn one_leader_and_followers_redirect() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let holder = cluster.lock_holder().await.expect("the key is held");
    let (term, name) = (holder.term, holder.record.name);
    assert_eq!(name, format!("n{leader}"), "the ready node is the lock holder");
    let leader_addr = cluster.node(leader).addr().unwrap().to_string();

    // The new leader's first record is its term-start record (reads skip it): the first
    // message goes right after it, at the log end.
    let end = cluster
        .get_json(format!("{}/api/v1/status", cluster.url(leader)))
        .await["log_end_offset"]
        .clone();
    let ack: serde_json::Value = cluster
        .http()
        .post(format!("{}/api/v1/log", cluster.url(leader)))
        .body("hello")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ack["offset"], end);
    assert_eq!(ack["term"], term);

    for follower in (0..3).filter(|i| *i != leader) {
        // A follower learns the leader from its blocking query on the key, within moments.
        let resp = eventually(Duration::from_secs(5), || async {
            let resp = cluster
                .http()
                .post(format!("{}/api/v1/log", cluster.url(follower)))
                .body("nope")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
            resp.headers()
                .contains_key("x-simpleloggers-leader")
                .then_some(resp)
        })
        .await
        .expect("the follower names the leader");
        assert_eq!(resp.headers()["x-simpleloggers-leader"], leader_addr.as_str());
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["leader"]["address"], leader_addr.as_str());
        assert!(body["error"].as_str().unwrap().contains("not the leader"));
        let status: serde_json::Value = cluster
            .get_json(format!("{}/api/v1/status", cluster.url(follower)))
            .await;
        assert_eq!(status["role"], "follower");
    }
    // The followers hold the leader's log (replicated), and the rejected writes nowhere.
    cluster.converge(Duration::from_secs(20)).await;
    for i in 0..3 {
        let messages: Vec<Option<String>> = cluster
            .read_log(i)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            messages,
            [Some("hello".to_string())],
            "node {i}: the rejected writes stored nothing"
        );
    }
}

/// A crashed leader (SIGKILL, no release) is replaced once Consul's check fails and the
/// lock-delay has run; the new leader has a higher term.
#[tokio::test]
async fn crash_fails_over_after_lock_delay() {
    let mut cluster = Cluster::start(3, &[]).await;
    let old = cluster.wait_leader(Duration::from_secs(20)).await;
    all_in_isr(&cluster).await;
    let old_term = cluster.lock_holder().await.unwrap().term;
    cluster.node_mut(old).kill().await;
    // check interval 250 ms + lock-delay 1 s + margin; the bound is generous for loaded machines.
    let new = cluster.wait_leader(Duration::from_secs(20)).await;
    assert_ne!(new, old);
    let holder = cluster.lock_holder().await.unwrap();
    let (new_term, name) = (holder.term, holder.record.name);
    assert_eq!(name, format!("n{new}"));
    assert!(new_term > old_term, "terms increase: {old_term} -> {new_term}");
}

/// A graceful stop releases the lock, so the next leader takes over without waiting out the
/// lock-delay (set to 30 s here, far beyond the bound), and the stopped node exits 0.
#[tokio::test]
async fn graceful_stop_hands_over_without_lock_delay() {
    let mut cluster = Cluster::start(3, &["--lock-delay", "30s", "--session-ttl", "30s"]).await;
    let old = cluster.wait_leader(Duration::from_secs(20)).await;
    all_in_isr(&cluster).await;
    cluster.terminate(old).await;
    let new = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new, old);
    let old_log = cluster.node(old).log_text();
    assert!(old_log.contains("released the leader lock"), "{old_log}");
}

/// A leader stopped (SIGSTOP) past its lease is replaced; when it resumes it accepts no write,
/// not even one that reached it while it was stopped.
#[tokio::test]
async fn paused_leader_accepts_nothing_after_its_lease() {
    let cluster = Cluster::start(3, &[]).await;
    let old = cluster.wait_leader(Duration::from_secs(20)).await;
    all_in_isr(&cluster).await;
    let old_url = cluster.url(old);
    cluster.node(old).pause().await.unwrap();
    // A write sent to the stopped leader waits in its accept queue.
    let pending = tokio::spawn({
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let url = format!("{old_url}/api/v1/log");
        async move {
            http.post(url)
                .body("late")
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    let new = eventually(Duration::from_secs(30), || async {
        let ready: Vec<usize> = cluster
            .ready_nodes()
            .await
            .into_iter()
            .filter(|i| *i != old)
            .collect();
        (ready.len() == 1).then(|| ready[0])
    })
    .await
    .expect("a new leader while the old one is stopped");
    cluster.node(old).resume();
    assert_eq!(
        pending.await.unwrap().unwrap(),
        503,
        "the write that waited through the pause is refused"
    );
    let resp = cluster
        .http()
        .post(format!("{old_url}/api/v1/log"))
        .body("after")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        cluster.ready(old).await.is_none(),
        "the resumed node is not ready"
    );
    assert!(cluster.ready(new).await.is_some());
    // It follows the new leader now; once every log is the same and committed, no node holds
    // either write, and the old leader never had to truncate one it had stored.
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .expect("the old leader follows the new one");
    for i in 0..3 {
        let log = cluster.read_log(i).await.unwrap();
        assert!(
            !log.iter()
                .any(|e| matches!(e.message.as_deref(), Some("late" | "after"))),
            "node {i} holds a write the deposed leader was sent: {log:?}"
        );
    }
    let metrics = cluster
        .http()
        .get(format!("{old_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "simpleloggers_replication_truncations_total 0"),
        "nothing was stored by the deposed leader, so nothing was truncated: {metrics}"
    );
}

/// With `--follower-writes forward`, a follower proxies a write to the leader, which stores it.
#[tokio::test]
async fn follower_forwards_writes_when_asked() {
    let cluster = Cluster::start(3, &["--follower-writes", "forward"]).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let ack: serde_json::Value = eventually(Duration::from_secs(5), || async {
        let resp = cluster
            .http()
            .post(format!("{}/api/v1/log", cluster.url(follower)))
            .body("via follower")
            .send()
            .await
            .ok()?;
        if resp.status() == 200 {
            resp.json().await.ok()
        } else {
            None
        }
    })
    .await
    .expect("the follower forwards once it knows the leader");
    // Right after the leader's term-start record (reads skip it).
    assert_eq!(ack["offset"], 1);
    let read: serde_json::Value = cluster
        .get_json(format!("{}/api/v1/log?from=0", cluster.url(leader)))
        .await;
    assert_eq!(read["entries"][0]["message"], "via follower");
}
