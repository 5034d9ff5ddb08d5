//! The dashboard over real node processes: every node (followers too) serves the page and its
//! assets through relative URLs only (no CDN), and `/api/v1/cluster` answers the member list
//! `simpleloggers status` prints, naming the leader.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{eventually, Cluster};
use serde_json::Value;

/// `/` is HTML on leader and follower alike; it loads only relative URLs, and those answer.
#[tokio::test]
async fn page_and_assets_on_every_node() {
    let c = Cluster::start(2, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    for i in [leader, 1 - leader] {
        let resp = c.http().get(format!("{}/", c.url(i))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = resp.text().await.unwrap();
        assert!(html.contains("id=\"leader-name\""), "{html}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "absolute URL in the page"
        );
        let refs: Vec<&str> = html.split('"').filter(|s| s.starts_with("assets/")).collect();
        assert_eq!(refs.len(), 2, "script and style sheet: {refs:?}");
        for r in refs {
            let resp = c.http().get(format!("{}/{r}", c.url(i))).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{r}");
            let body = resp.text().await.unwrap();
            assert!(!body.contains("http://") && !body.contains("https://"), "{r}");
        }
    }
    let missing = c
        .http()
        .get(format!("{}/assets/nope.js", c.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert!(body["error"].is_string());
}

/// `/api/v1/cluster` on a follower names the leader (with term and since) and lists both
/// members with role, readiness, Consul check and log end offset.
#[tokio::test]
async fn cluster_json_shape() {
    let c = Cluster::start(2, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = 1 - leader;
    let url = format!("{}/api/v1/cluster", c.url(follower));
    let view = eventually(Duration::from_secs(20), || async {
        let view: Value = c.http().get(&url).send().await.ok()?.json().await.ok()?;
        let members = view["members"].as_array()?;
        let settled = members.len() == 2
            && members
                .iter()
                .all(|m| m["role"] == "leader" || m["role"] == "follower");
        settled.then_some(view)
    })
    .await
    .expect("both members settled in the cluster view");
    assert_eq!(view["observed_by"], format!("n{follower}"));
    assert_eq!(view["service"], "simpleloggers");
    assert!(view["observed_at_ms"].as_u64().unwrap() > 0);
    assert_eq!(view["leader"]["name"], format!("n{leader}"));
    assert!(view["leader"]["term"].as_u64().unwrap() >= 1);
    assert!(view["leader"]["since"].is_string());
    assert_eq!(
        view["leader"]["address"],
        c.node(leader).addr().unwrap().to_string()
    );
    for m in view["members"].as_array().unwrap() {
        for field in ["name", "address", "service_id", "consul_check", "role", "session"] {
            assert!(m[field].is_string(), "{field} in {m}");
        }
        assert!(m["ready"].is_boolean() && m["reachable"].is_boolean() && m["holds_lock"].is_boolean());
        assert!(m["term"].is_u64() && m["log_end_offset"].is_u64(), "{m}");
        let is_leader = m["name"] == format!("n{leader}");
        assert_eq!(m["role"] == "leader", is_leader, "{m}");
        assert_eq!(m["holds_lock"], is_leader, "{m}");
    }
}

/// Without Consul the cluster view is a JSON 503 that says why, not a hang or an HTML error.
#[tokio::test]
async fn cluster_json_without_consul_is_503() {
    let mut c = Cluster::start(1, &[]).await;
    c.wait_leader(Duration::from_secs(20)).await;
    c.consul_mut().kill().await;
    let url = format!("{}/api/v1/cluster", c.url(0));
    let body = eventually(Duration::from_secs(20), || async {
        let resp = c.http().get(&url).send().await.ok()?;
        if resp.status() != 503 {
            return None;
        }
        resp.json::<Value>().await.ok()
    })
    .await
    .expect("503 once the cached view expires");
    assert!(body["error"].as_str().unwrap().contains("Consul"), "{body}");
    assert_eq!(body["observed_by"], "n0");
}
