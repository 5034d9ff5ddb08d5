//! The producer across repeated failovers of real node processes (crashes and graceful stops):
//! every message is acknowledged, and every acknowledged message is stored exactly once.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::Cluster;
use simpleloggers::{
    consul::ConsulConfig,
    demo::{read_all, verify},
    producer::{self, Hooks, Summary},
    shutdown::CancellationToken,
};
use tokio::sync::watch;

/// Waits until the producer has acknowledged `more` messages beyond what it had so far.
async fn acknowledge_more(progress: &mut watch::Receiver<Summary>, more: u64) {
    let beyond = progress.borrow().acknowledged + more;
    tokio::time::timeout(
        Duration::from_secs(30),
        progress.wait_for(|s| s.acknowledged > beyond),
    )
    .await
    .expect("the producer makes progress")
    .expect("progress channel open");
}

/// Three crashes and three graceful stops of whichever node leads, with the producer sending
/// throughout: nothing lost, nothing failed, nothing stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_no_duplicates_across_failovers() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader(Duration::from_secs(20)).await;

    let mut config = producer::Config::for_consul(ConsulConfig::new(cluster.consul_url()));
    config.rate = 200.0;
    let (hooks, mut progress, mut ack_rx) = Hooks::observed();
    let stop = CancellationToken::new();
    let run = tokio::spawn(producer::run_with(config, stop.clone(), hooks));

    for round in 0..6 {
        acknowledge_more(&mut progress, 50).await;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        if round % 2 == 0 {
            cluster.node_mut(leader).kill().await;
        } else {
            cluster.terminate(leader).await;
        }
        cluster.node_mut(leader).start().await.unwrap();
    }
    acknowledge_more(&mut progress, 50).await;
    stop.cancel();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.all_acknowledged(), "{summary}");
    assert_eq!(summary.failed, 0);

    let mut acks = Vec::new();
    while let Ok(ack) = ack_rx.try_recv() {
        acks.push(ack);
    }
    // The node restarted last may still be catching up (out of the ISR, acks=all needs only the
    // ISR): every node's log must hold every acknowledged message once it has converged.
    cluster.converge(Duration::from_secs(60)).await;
    let mut logs = Vec::new();
    for i in 0..cluster.len() {
        let url = cluster.url(i);
        cluster.terminate(i).await;
        let records = read_all(cluster.data_dir(i)).await.unwrap();
        logs.push((cluster.node(i).name().to_string(), url, records));
    }
    let result = verify(&summary.producer_id, &acks, &logs);
    assert!(result.holds(), "{result:?}");
    assert_eq!(
        result.verified, summary.acknowledged,
        "every acknowledged message was checked"
    );
    let terms: std::collections::BTreeSet<u64> = acks.iter().map(|a| a.term).collect();
    assert!(
        terms.len() >= 4,
        "acknowledgements came from several leaderships: {terms:?}"
    );
}
