//! Node-level failover tests elect a successor only from the in-sync set, which the leader widens
//! as followers catch up: they wait for that before failing the leader over.

use std::time::Duration;

use simpleloggers::local_cluster::LocalCluster;

/// Waits (bounded) until every running node reports all `nodes` nodes in the in-sync set.
/// Panics on timeout.
pub async fn widen_isr(cluster: &LocalCluster, nodes: usize) {
    let names: Vec<String> = (0..nodes).map(|i| cluster.node(i).name().to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster
        .wait_isr(&names, Duration::from_secs(20))
        .await
        .unwrap_or_else(|err| panic!("the leader did not add every caught-up follower to the ISR: {err}"));
}
