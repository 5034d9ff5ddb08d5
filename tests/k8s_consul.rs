//! The leader's view of member health in Consul (used by the rollout and the LogCluster status),
//! against the real HTTP of the embedded dev Consul.

use devconsul::Config;
use serde_json::json;
use simpleloggers::{consul::ConsulClient, k8s::ConsulHealth};

/// Only instances passing every check are reported, named by their `node_name` meta (as the
/// election registers them) or else by the service id without the service prefix.
#[tokio::test]
async fn passing_members_by_node_name() -> anyhow::Result<()> {
    let dev = devconsul::spawn(Config::ephemeral()).await?;
    let http = reqwest::Client::new();
    let register = |body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{}/v1/agent/service/register", dev.url());
        async move {
            let resp = http.put(url).body(body.to_string()).send().await?;
            anyhow::ensure!(resp.status() == 200, "register: {}", resp.status());
            anyhow::Ok(())
        }
    };
    register(
        json!({"ID": "simpleloggers-sl-0", "Name": "simpleloggers", "Port": 3000,
                    "Meta": {"node_name": "sl-0"},
                    "Check": {"CheckID": "c0", "TTL": "60s", "Status": "passing"}}),
    )
    .await?;
    register(
        json!({"ID": "simpleloggers-sl-1", "Name": "simpleloggers", "Port": 3001,
                    "Check": {"CheckID": "c1", "TTL": "60s", "Status": "passing"}}),
    )
    .await?;
    register(
        json!({"ID": "simpleloggers-sl-2", "Name": "simpleloggers", "Port": 3002,
                    "Meta": {"node_name": "sl-2"},
                    "Check": {"CheckID": "c2", "TTL": "60s", "Status": "critical"}}),
    )
    .await?;
    let health = ConsulHealth {
        client: ConsulClient::from_addr(dev.url())?,
        service: "simpleloggers".into(),
    };
    let mut passing: Vec<String> = health.passing().await?.into_iter().collect();
    passing.sort();
    assert_eq!(passing, ["sl-0", "sl-1"]);
    Ok(())
}
