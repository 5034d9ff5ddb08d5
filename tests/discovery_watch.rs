//! The leader watch against the dev Consul over loopback: it reports a leader as soon as one
//! acquires the election key, and its absence as soon as the lock is released.

use std::time::Duration;

use simpleloggers::{
    consul::{ConsulClient, SessionRequest},
    discovery::{watch_leader, LeaderRecord},
    shutdown::CancellationToken,
};

const KEY: &str = "service/simpleloggers/leader";

/// Acquire → the watch names the leader with the lock's term; release → it reports none.
#[tokio::test]
async fn follows_acquire_and_release() {
    let consul = devconsul::spawn(devconsul::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..devconsul::Config::default()
    })
    .await
    .unwrap();
    let client = ConsulClient::from_addr(consul.url()).unwrap();
    let stop = CancellationToken::new();
    for round in 0..5u64 {
        let mut rx = watch_leader(client.clone(), KEY.into(), stop.child_token());
        // Let the first (non-blocking) answer arrive so that the next query blocks.
        tokio::time::sleep(Duration::from_millis(50 * round)).await;
        let session = client.session_create(&SessionRequest::default()).await.unwrap();
        let record = LeaderRecord {
            name: format!("n{round}"),
            address: "127.0.0.1:1".into(),
            replication_address: None,
            since: "t".into(),
            term: None,
        };
        let value = serde_json::to_vec(&record).unwrap();
        assert!(client.kv_acquire(KEY, &session, value.clone()).await.unwrap());
        let leader = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| l.is_some()))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the watch did not report the leader"))
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(leader.record, record);
        assert_eq!(leader.term, round + 1);
        assert!(client.kv_release(KEY, &session, value).await.unwrap());
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| l.is_none()))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the watch did not report the release"))
            .unwrap();
        client.session_destroy(&session).await.unwrap();
    }
}
