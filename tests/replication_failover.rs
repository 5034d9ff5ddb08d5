//! Issue 11's headline: three replicated nodes (real processes on loopback, the dev Consul) under
//! load from two idempotent producers, the leader SIGKILLed 30 times in a row and restarted each
//! time; every acknowledged message is then readable from every node, exactly once, in order
//! per producer, at the offset its acknowledgement named.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/replication.rs"]
mod replication;

use std::time::Instant;

use cluster::Cluster;
use replication::{check_exactly_once, Load, WAIT};

/// How many times the leader is killed.
const KILLS: usize = 30;

/// Before each kill the restarted node has rejoined the in-sync set and the new leader has
/// acknowledged messages of both producers (one sending one batch at a time, one pipelining
/// four); each kill leads to a new leader in a higher term. At the end, with the producers
/// drained, every node holds the same log and each producer's messages in it are exactly the
/// ones it sent, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_leader_kills_lose_and_duplicate_nothing() {
    let started = Instant::now();
    let mut c = Cluster::start(3, &[]).await;
    c.wait_leader(WAIT).await;
    c.wait_isr(&[0, 1, 2], WAIT).await;
    let mut load = Load::start(&c, &[("k0", 1), ("k1", 4)], 100.0);
    load.progress(20, WAIT).await;

    let mut terms = Vec::new();
    for round in 0..KILLS {
        c.wait_isr(&[0, 1, 2], WAIT).await;
        let leader =
            c.0.wait_leader(WAIT)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        load.progress(10, WAIT).await;
        terms.push(leader.term);
        c.node_mut(leader.index).kill().await;
        c.restart(leader.index).await;
    }
    c.wait_leader(WAIT).await;
    load.progress(20, WAIT).await;
    let runs = load.finish().await;
    for run in &runs {
        eprintln!("{}: {}", run.id, run.summary);
    }
    assert!(
        terms.windows(2).all(|w| w[0] < w[1]),
        "each kill led to a new leader in a higher term: {terms:?}"
    );

    c.wait_isr(&[0, 1, 2], WAIT).await;
    c.converge(WAIT).await;
    let logs = c.logs().await;
    assert_eq!(logs.len(), 3);
    check_exactly_once(&c, &logs, &runs);
    eprintln!("{KILLS} kills in {:?}", started.elapsed());
}
