//! Stands in for the ISR expansion of branch `repl-core` (a leader adds caught-up followers to
//! the ISR), which this branch does not have: node-level failover tests call it once every node
//! reported, so that a follower may be elected when the leader goes.

use std::time::{Duration, Instant};

use simpleloggers::{
    consul::{ConsulClient, PutOptions, QueryOptions},
    election::read_reports,
    replication::isr::{IsrRecord, ReplicationKeys},
};

/// Waits (bounded) until `nodes` nodes reported and the ISR key exists, then puts every reporter
/// into the ISR with a `cas` on the key's index (retrying on a race). Panics on timeout.
pub async fn widen_isr(consul: &ConsulClient, election_key: &str, nodes: usize) {
    let keys = ReplicationKeys::new(election_key);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "the ISR could not be widened to {nodes} nodes"
        );
        let reports = read_reports(consul, election_key).await.unwrap_or_default();
        let (pair, _) = consul
            .kv_get(&keys.isr, &QueryOptions::default())
            .await
            .unwrap_or_default();
        let isr = IsrRecord::from_kv(pair.as_ref()).ok().flatten();
        if let (true, Some(isr)) = (reports.len() >= nodes, isr) {
            let mut state = isr.state.clone();
            for r in &reports {
                if !state.contains(&r.member()) {
                    state.members.push(r.member());
                }
            }
            let put = PutOptions {
                cas: Some(isr.index),
                ..PutOptions::default()
            };
            let value = serde_json::to_vec(&state).unwrap();
            if consul.kv_put(&keys.isr, value, &put).await.unwrap_or(false) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
