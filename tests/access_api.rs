//! The node API's access rules over real node processes started with `--api-token` and
//! `--read-token`: every protected endpoint refuses a request without the right token (401,
//! `WWW-Authenticate: Bearer`, JSON `code: unauthorized` naming the flag) and serves one with it;
//! probes, `/metrics` and the dashboard page stay open; the producer, `tail` and the node's own
//! cluster view present their tokens.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{eventually, Cluster};
use serde_json::Value;
use simpleloggers::{
    cli::tail::{self, TailConfig, TailError},
    consul::ConsulConfig,
    flags::ClusterArgs,
    producer,
};
use tokio_util::sync::CancellationToken;

const WRITE: &str = "write-secret-0";
const READ: &str = "read-secret-0";

/// A request's status, with `token` as a bearer token when given.
async fn status_of(c: &Cluster, method: reqwest::Method, url: &str, token: Option<&str>) -> u16 {
    let mut req = c.http().request(method, url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if url.contains("/log") && !url.contains("stream") {
        req = req.body("hello");
    }
    req.send().await.expect("the node answers").status().as_u16()
}

/// Writes need the write token; reads accept the read token, the write token or the
/// `access_token` parameter; a refusal is a 401 with the Bearer challenge and a JSON body naming
/// the flag; probes, /metrics and the page stay open.
#[tokio::test]
async fn each_endpoint_refuses_without_its_token_and_serves_with_it() {
    let c = Cluster::start(2, &["--api-token", WRITE, "--read-token", READ]).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let base = c.url(leader);
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    let log = format!("{base}/api/v1/log");

    // Writes.
    assert_eq!(status_of(&c, post.clone(), &log, None).await, 401);
    assert_eq!(
        status_of(&c, post.clone(), &log, Some(READ)).await,
        401,
        "the read token does not write"
    );
    assert_eq!(status_of(&c, post.clone(), &log, Some("nope")).await, 401);
    assert_eq!(status_of(&c, post.clone(), &log, Some(WRITE)).await, 200);
    let refused = c.http().post(&log).body("x").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    assert!(body["error"].as_str().unwrap().contains("--api-token"), "{body}");
    let with_query = format!("{log}?access_token={WRITE}");
    assert_eq!(
        status_of(&c, post.clone(), &with_query, None).await,
        401,
        "no tokens in URLs for writes"
    );

    // Reads.
    for path in [
        "/api/v1/log?from=0",
        "/api/v1/status",
        "/api/v1/cluster",
        "/api/v1/producers/nobody",
    ] {
        let url = format!("{base}{path}");
        assert_eq!(status_of(&c, get.clone(), &url, None).await, 401, "{path}");
        assert_eq!(
            status_of(&c, get.clone(), &url, Some("nope")).await,
            401,
            "{path}"
        );
        let ok = |s: u16| s == 200 || (path.contains("producers") && s == 404);
        assert!(ok(status_of(&c, get.clone(), &url, Some(READ)).await), "{path}");
        assert!(ok(status_of(&c, get.clone(), &url, Some(WRITE)).await), "{path}");
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}access_token={READ}");
        assert!(
            ok(status_of(&c, get.clone(), &url, None).await),
            "{path} with access_token"
        );
    }
    let refused = c
        .http()
        .get(format!("{base}/api/v1/status"))
        .send()
        .await
        .unwrap();
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("--read-token"), "{body}");
    // The live stream: only its response head is awaited.
    let stream = format!("{base}/api/v1/log/stream?from=0");
    let head = c.http().get(&stream).send().await.unwrap();
    assert_eq!(head.status(), 401);
    let head = c.http().get(&stream).bearer_auth(READ).send().await.unwrap();
    assert_eq!(head.status(), 200);
    drop(head);
    let head = c
        .http()
        .get(format!("{stream}&access_token={READ}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200, "EventSource's way in");
    drop(head);

    // Open doors.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/consul-check",
        "/",
        "/assets/app.js",
    ] {
        let url = format!("{base}{path}");
        assert_eq!(status_of(&c, get.clone(), &url, None).await, 200, "{path}");
    }

    // A follower's cluster view reads every member's status with the node's own credential.
    let follower = 1 - leader;
    let url = format!("{}/api/v1/cluster", c.url(follower));
    let view = eventually(Duration::from_secs(20), || async {
        let view: Value = c
            .http()
            .get(&url)
            .bearer_auth(READ)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let members = view["members"].as_array()?;
        (members.len() == 2 && members.iter().all(|m| m["reachable"] == true)).then_some(view)
    })
    .await;
    assert!(view.is_some(), "every member readable through the follower");
}

/// The producer sends `--api-token`; without it the node's 401 is fatal (nothing stored, every
/// message failed). `tail` sends `--read-token`; without it it stops with an error naming the
/// flag, with it it prints what the producer stored.
#[tokio::test]
async fn producer_and_tail_present_their_tokens() {
    let c = Cluster::start(1, &["--api-token", WRITE, "--read-token", READ]).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let run = |token: Option<&str>| {
        let mut config = producer::Config::for_target(c.url(leader));
        config.rate = 0.0;
        config.count = Some(3);
        config.retry_max_elapsed = Duration::from_secs(5);
        config.api_token = token.map(String::from);
        producer::run(config, CancellationToken::new())
    };
    let refused = run(None).await.expect("the producer starts");
    assert_eq!(refused.acknowledged, 0, "{refused:?}");
    assert_eq!(refused.failed, 3, "{refused:?}");
    let served = run(Some(WRITE)).await.expect("the producer starts");
    assert_eq!(served.acknowledged, 3, "{served:?}");

    let tail_config = |token: Option<&str>| TailConfig {
        from: Some(0),
        follow: false,
        wait: Duration::from_secs(10),
        read_token: token.map(String::from),
        cluster: ClusterArgs::new(ConsulConfig::new(c.consul_url())),
    };
    let mut out = Vec::new();
    let err = tail::run(&tail_config(None), &mut out, CancellationToken::new())
        .await
        .expect_err("refused without the read token");
    assert!(matches!(err, TailError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("--read-token"), "{err}");
    let printed = tail::run(&tail_config(Some(READ)), &mut out, CancellationToken::new())
        .await
        .expect("served with the read token");
    assert_eq!(printed, 3);
}
