//! Consul ACLs end to end on the dev Consul with `--acl-config`: nodes whose token carries the
//! minimal node policy of docs/consul-acl.md elect, replicate and take a producer's writes
//! (the producer and `status` with their own minimal policies); with each write rule of that
//! policy removed, the node refuses writes with `writes.reason = consul_permission_denied` and a
//! message naming the permission and the rule to grant.

#[path = "support/cluster.rs"]
mod cluster;

use std::{path::Path, time::Duration};

use cluster::{eventually, Cluster, BIN};
use serde_json::{json, Value};
use simpleloggers::{
    cli::status::{self, Output, StatusConfig},
    consul::ConsulConfig,
    flags::{ClusterArgs, ServiceArgs},
    local_cluster::ClusterOptions,
    producer,
};
use tokio_util::sync::CancellationToken;

/// The node policy of docs/consul-acl.md, in Consul's JSON rule syntax.
fn node_rules() -> Value {
    json!({
        "service": {"simpleloggers": {"policy": "write"}},
        "session_prefix": {"": {"policy": "write"}},
        "key_prefix": {"service/simpleloggers/leader": {"policy": "write"}},
        "node_prefix": {"": {"policy": "read"}}
    })
}

/// Writes the ACL file (node token `node-secret` with `node`, producer and reader tokens with
/// their documented policies) into `dir`.
fn acl_file(dir: &Path, node: Value) -> String {
    let acl = json!({"Tokens": [
        {"AccessorID": "acc-node", "SecretID": "node-secret", "Rules": node},
        {"AccessorID": "acc-producer", "SecretID": "producer-secret", "Rules": {
            "key": {"service/simpleloggers/leader": {"policy": "read"}}
        }},
        {"AccessorID": "acc-reader", "SecretID": "reader-secret", "Rules": {
            "key": {"service/simpleloggers/leader": {"policy": "read"}},
            "service": {"simpleloggers": {"policy": "read"}},
            "node_prefix": {"": {"policy": "read"}}
        }}
    ]});
    let path = dir.join("acl.json");
    std::fs::write(&path, acl.to_string()).expect("write the ACL file");
    path.display().to_string()
}

async fn start(nodes: usize, rules: Value) -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = acl_file(dir.path(), rules);
    let options = ClusterOptions::fast(BIN)
        .nodes(nodes)
        .node_args(["--consul-token", "node-secret"]);
    let options = ClusterOptions {
        consul_args: vec!["--acl-config".into(), path],
        ..options
    };
    (Cluster::start_with(options).await, dir)
}

fn consul(c: &Cluster, token: &str) -> ConsulConfig {
    let mut config = ConsulConfig::new(c.consul_url());
    config.token = Some(token.into());
    config
}

/// With only the documented policies: a leader is elected, the producer's writes are
/// acknowledged and replicated to both nodes, and `status` lists both members.
#[tokio::test]
async fn minimal_policies_are_enough() {
    let (c, _dir) = start(2, node_rules()).await;
    c.wait_leader(Duration::from_secs(40)).await;
    let mut config = producer::Config::for_consul(consul(&c, "producer-secret"));
    config.rate = 0.0;
    config.count = Some(5);
    config.retry_max_elapsed = Duration::from_secs(30);
    let summary = producer::run(config, CancellationToken::new())
        .await
        .expect("the producer starts");
    assert_eq!(summary.acknowledged, 5, "{summary:?}");
    let end = c.converge(Duration::from_secs(30)).await;
    assert!(end >= 5, "both logs hold the messages (end {end})");
    let table = status::run(&StatusConfig {
        member_timeout: Duration::from_secs(5),
        output: Output::Table,
        read_token: None,
        cluster: ClusterArgs::new(consul(&c, "reader-secret")),
        service: ServiceArgs::default(),
    })
    .await
    .expect("status with the reader policy");
    for i in 0..2 {
        assert!(table.contains(&c.name(i)), "{table}");
    }
}

/// Each write rule of the node policy removed: the node says which permission Consul denied and
/// which rule grants it, as its writes reason.
#[tokio::test]
async fn each_missing_rule_is_named() {
    for (block, permission, rule) in [
        (
            "service",
            "service:write on \"simpleloggers\"",
            "service \"simpleloggers\"",
        ),
        (
            "session_prefix",
            "session:write on \"dev-consul\"",
            "session \"dev-consul\"",
        ),
        (
            "key_prefix",
            "key:write on \"service/simpleloggers/leader",
            "key_prefix \"service/simpleloggers/leader",
        ),
    ] {
        let mut rules = node_rules();
        rules.as_object_mut().unwrap().remove(block);
        let (c, _dir) = start(1, rules).await;
        let url = format!("{}/api/v1/status", c.url(0));
        let writes = eventually(Duration::from_secs(30), || async {
            let status: Value = c.http().get(&url).send().await.ok()?.json().await.ok()?;
            (status["writes"]["reason"] == "consul_permission_denied").then(|| status["writes"].clone())
        })
        .await
        .unwrap_or_else(|| panic!("without {block}: no consul_permission_denied"));
        let detail = writes["detail"].as_str().unwrap();
        assert!(detail.contains(permission), "without {block}: {detail}");
        assert!(detail.contains(rule), "without {block}: {detail}");
        assert!(detail.contains("CONSUL_HTTP_TOKEN"), "without {block}: {detail}");
        assert!(
            c.ready(0).await.is_none(),
            "without {block} the node is not ready"
        );
    }
}
