//! The replication endpoint's cluster-secret rule over real node processes: both internal
//! endpoints refuse a request without the secret or with a wrong one (401 `unauthorized`) and
//! serve one with it; a follower whose secret differs from its leader's says so in its status
//! (`replication.follower_error`) instead of lagging silently.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{eventually, Cluster, BIN};
use serde_json::Value;
use simpleloggers::{
    local_cluster::ClusterOptions,
    replication::protocol::{FetchQuery, END_OFFSET_PATH, FETCH_PATH},
};

const SECRET: &str = "cluster-secret-0";

/// `end-offset` and `fetch` on the leader: no secret → 401, wrong secret → 401, the secret →
/// 200 (the end offset; the fetched records).
#[tokio::test]
async fn both_endpoints_need_the_secret() {
    let c = Cluster::start(
        2,
        &["--replicas", "2", "--min-insync", "1", "--cluster-secret", SECRET],
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let term = c.ready(leader).await.expect("the leader is ready")["term"]
        .as_u64()
        .expect("readyz names the term");
    let fetch = FetchQuery {
        from: 0,
        last_term: None,
        term,
        name: "probe".into(),
        incarnation: "probe-incarnation".into(),
        wait: Duration::from_millis(50),
        max_bytes: 1 << 16,
        hw: None,
    };
    let base = c.url(leader);
    for url in [
        format!("{base}{END_OFFSET_PATH}?term={term}"),
        format!("{base}{FETCH_PATH}?{}", fetch.to_query()),
    ] {
        let refused = c.http().get(&url).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{url} without the secret");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("--cluster-secret"),
            "{body}"
        );
        let wrong = c.http().get(&url).bearer_auth("not-it").send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{url} with a wrong secret");
        let served = c.http().get(&url).bearer_auth(SECRET).send().await.unwrap();
        assert_eq!(
            served.status(),
            200,
            "{url} with the secret: {:?}",
            served.text().await
        );
    }
}

/// Two nodes with different secrets: whichever follows is refused by its leader and reports
/// `replication.follower_error` naming the cluster secret (and `status` prints it).
#[tokio::test]
async fn a_follower_with_the_wrong_secret_says_so() {
    let options = ClusterOptions::fast(BIN)
        .nodes(2)
        .node_args(["--replicas", "2", "--min-insync", "1"])
        .node_args_for(0, ["--cluster-secret", SECRET])
        .node_args_for(1, ["--cluster-secret", "another-secret"]);
    let c = Cluster::start_with(options).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = 1 - leader;
    let url = format!("{}/api/v1/status", c.url(follower));
    let error = eventually(Duration::from_secs(30), || async {
        let status: Value = c.http().get(&url).send().await.ok()?.json().await.ok()?;
        status["replication"]["follower_error"].as_str().map(String::from)
    })
    .await
    .expect("the follower reports why it cannot replicate");
    assert!(error.contains("cluster secret"), "{error}");
    assert!(error.contains("--cluster-secret"), "{error}");
}
