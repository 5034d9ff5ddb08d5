//! A kubelet simulation: a probe loop calls `/readyz` on every node at a short period while the
//! cluster goes through crashes, graceful stops, session invalidations and a Consul outage, and
//! checks the property Kubernetes relies on for leader-only routing: never two nodes ready at
//! the same instant, and a ready node is the lock holder in Consul.

#[path = "support/cluster.rs"]
mod cluster;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cluster::{eventually, Cluster};

/// One `/readyz` answer of 200.
#[derive(Clone, Debug)]
struct Ready {
    node: usize,
    term: u64,
    sent: Instant,
    received: Instant,
}

/// What a probe round saw.
#[derive(Default)]
struct Observations {
    ready: Vec<Ready>,
    rounds: usize,
    holder_violations: Vec<String>,
}

async fn probe_round(cluster: &Cluster, http: &reqwest::Client, obs: &Mutex<Observations>) {
    let holder_before = tokio::time::timeout(Duration::from_millis(300), cluster.lock_holder())
        .await
        .ok()
        .flatten();
    let probes = (0..cluster.len()).map(|i| async move {
        let node = Some(cluster.node(i)).filter(|n| n.is_running())?;
        let sent = Instant::now();
        let resp = http.get(format!("{}/readyz", node.url())).send().await.ok()?;
        let ok = resp.status() == 200;
        let body: serde_json::Value = resp.json().await.ok()?;
        let received = Instant::now();
        ok.then(|| Ready {
            node: i,
            term: body["term"].as_u64().unwrap_or(0),
            sent,
            received,
        })
    });
    let ready: Vec<Ready> = futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    let holder_after = tokio::time::timeout(Duration::from_millis(300), cluster.lock_holder())
        .await
        .ok()
        .flatten();
    let mut obs = obs.lock().unwrap();
    obs.rounds += 1;
    if let (Some(before), Some(after)) = (&holder_before, &holder_after) {
        if before == after {
            for r in &ready {
                if before.record.name != format!("n{}", r.node) || before.term != r.term {
                    obs.holder_violations.push(format!(
                        "n{} ready in term {} while Consul says {} holds term {}",
                        r.node, r.term, before.record.name, before.term
                    ));
                }
            }
        }
    }
    obs.ready.extend(ready);
}

/// Checks the split-brain invariants over every ready answer seen.
fn violations(ready: &[Ready]) -> Vec<String> {
    let mut found = Vec::new();
    for x in ready {
        for y in ready {
            if x.node == y.node {
                continue;
            }
            if x.term == y.term {
                found.push(format!("term {} ready on n{} and n{}", x.term, x.node, y.node));
            }
            // y was ready strictly before x was probed, yet x served an older term: x was still
            // ready after a newer leader had become ready.
            if y.received < x.sent && x.term < y.term {
                found.push(format!(
                    "n{} ready in term {} after n{} was ready in newer term {}",
                    x.node, x.term, y.node, y.term
                ));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

async fn wait_new_leader(cluster: &Cluster, not: Option<usize>) -> usize {
    eventually(Duration::from_secs(30), || async {
        let ready = cluster.ready_nodes().await;
        (ready.len() == 1 && Some(ready[0]) != not).then(|| ready[0])
    })
    .await
    .expect("a single ready leader")
}

/// Through crashes, graceful stops, a destroyed session and a Consul outage, no two nodes are
/// ever ready at once, every ready node holds the lock, and the cluster always recovers.
#[tokio::test]
async fn never_two_ready_nodes() {
    let cluster = Arc::new(tokio::sync::RwLock::new(Cluster::start(3, &[]).await));
    let obs = Arc::new(Mutex::new(Observations::default()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let prober = tokio::spawn({
        let (cluster, obs, stop) = (cluster.clone(), obs.clone(), stop.clone());
        async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap();
            loop {
                {
                    let cluster = cluster.read().await;
                    probe_round(&cluster, &http, &obs).await;
                }
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    });

    let mut leader = wait_new_leader(&*cluster.read().await, None).await;
    // Only in-sync nodes may be elected: wait until the leader added every follower (restarts
    // keep the data directory, so the incarnations stay).
    {
        let c = cluster.read().await;
        c.wait_isr(&(0..3).collect::<Vec<_>>(), Duration::from_secs(20))
            .await;
    }
    for round in 0..2 {
        // Crash: SIGKILL the leader, wait for a successor, bring the node back.
        {
            cluster.write().await.node_mut(leader).kill().await;
            let next = wait_new_leader(&*cluster.read().await, Some(leader)).await;
            cluster.write().await.node_mut(leader).start().await.unwrap();
            leader = next;
        }
        // Graceful stop.
        {
            cluster.write().await.terminate(leader).await;
            wait_new_leader(&*cluster.read().await, Some(leader)).await;
            cluster.write().await.node_mut(leader).start().await.unwrap();
        }
        // Session invalidation: an operator destroys the leader's session in Consul.
        {
            let c = cluster.read().await;
            let session = c.lock_holder().await.expect("held").session;
            let url = format!("{}/v1/session/destroy/{session}", c.consul_url());
            assert!(c.http().put(url).send().await.unwrap().status().is_success());
            eventually(Duration::from_secs(30), || async {
                c.lock_holder().await.filter(|h| h.session != session)
            })
            .await
            .expect("a new session takes the lock");
            wait_new_leader(&c, None).await;
        }
        // Consul outage: the dev server freezes for longer than the lock-delay.
        {
            let c = cluster.read().await;
            c.consul().pause().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.consul().resume();
            leader = wait_new_leader(&c, None).await;
            let metrics = c
                .http()
                .get(format!("{}/metrics", c.url(leader)))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                metrics.contains("simpleloggers_consul_errors_total{kind="),
                "the outage is counted: {metrics}"
            );
        }
        eprintln!("round {round} done; leader n{leader}");
        assert!(
            cluster.read().await.nodes().iter().all(|n| n.is_running()),
            "every node is back"
        );
    }
    stop.notify_one();
    prober.await.unwrap();

    let obs = obs.lock().unwrap();
    assert!(obs.rounds > 50, "the probe loop ran ({} rounds)", obs.rounds);
    let terms: std::collections::BTreeSet<u64> = obs.ready.iter().map(|r| r.term).collect();
    assert!(terms.len() >= 5, "several leaderships were observed: {terms:?}");
    assert_eq!(violations(&obs.ready), Vec::<String>::new());
    assert_eq!(obs.holder_violations, Vec::<String>::new());
}

/// The checker itself flags an older term served after a newer one, and a shared term.
#[test]
fn checker_detects_split_brain() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let ok = [
        Ready {
            node: 0,
            term: 1,
            sent: at(0),
            received: at(1),
        },
        Ready {
            node: 1,
            term: 2,
            sent: at(10),
            received: at(11),
        },
    ];
    assert!(violations(&ok).is_empty());
    let stale = [
        ok[0].clone(),
        ok[1].clone(),
        Ready {
            node: 0,
            term: 1,
            sent: at(20),
            received: at(21),
        },
    ];
    assert_eq!(violations(&stale).len(), 1);
    let shared = [
        ok[0].clone(),
        Ready {
            node: 2,
            term: 1,
            sent: at(30),
            received: at(31),
        },
    ];
    assert!(!violations(&shared).is_empty());
}
