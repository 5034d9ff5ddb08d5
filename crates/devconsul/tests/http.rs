//! Black-box tests of the dev server's general HTTP behaviour: methods and routing (G1–G7),
//! blocking queries and read headers (B1–B8), ACL tokens (T1–T2) and status (H4).

mod support;

use std::time::Duration;

use devconsul::Config;
use reqwest::Method;
use serde_json::{json, Value};
use support::{header, index, start, start_with};
use tokio::time::Instant;

/// G1: a wrong method is 405 with `Allow: OPTIONS,<methods>` and `method <M> not allowed`; OPTIONS is 200.
#[tokio::test]
async fn g1_methods() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.send(Method::POST, "/v1/kv/x", "").await?;
    assert_eq!(resp.status(), 405);
    assert_eq!(header(&resp, "Allow"), "OPTIONS,GET,PUT,DELETE");
    assert_eq!(resp.text().await?, "method POST not allowed");
    let resp = dev.send(Method::OPTIONS, "/v1/kv/x", "").await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Allow"), "OPTIONS,GET,PUT,DELETE");
    let resp = dev.get("/v1/session/create").await?;
    assert_eq!(
        (resp.status().as_u16(), header(&resp, "Allow")),
        (405, "OPTIONS,PUT".to_string())
    );
    assert_eq!(dev.get("/v1/agent/check/pass/x").await?.status(), 405);
    assert_eq!(dev.put("/v1/session/info/x", "").await?.status(), 405);
    assert_eq!(dev.put("/v1/status/leader", "").await?.status(), 405);
    assert_eq!(
        dev.send(Method::DELETE, "/v1/health/service/x", "")
            .await?
            .status(),
        405
    );
    Ok(())
}

/// G2: errors are plain text; JSON successes are application/json.
#[tokio::test]
async fn g2_content_types() -> anyhow::Result<()> {
    let dev = start().await?;
    let err = dev.put("/v1/kv/", "").await?;
    assert!(header(&err, "content-type").starts_with("text/plain"));
    let ok = dev.get("/v1/session/list").await?;
    assert_eq!(header(&ok, "content-type"), "application/json");
    Ok(())
}

/// G4: an unknown /v1 path is 404 `Invalid URL path: not a recognized HTTP API endpoint`.
#[tokio::test]
async fn g4_unknown_path() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.get("/v1/nope").await?;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.text().await?,
        "Invalid URL path: not a recognized HTTP API endpoint"
    );
    Ok(())
}

/// G5: namespaces are rejected on CE; `dc` equal to ours is accepted, another fails.
#[tokio::test]
async fn g5_namespace_and_dc() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.get("/v1/kv/x?ns=team").await?;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await?.starts_with("Invalid query parameter: \"ns\""));
    let resp = dev
        .http
        .get(dev.url("/v1/kv/x"))
        .header("X-Consul-Namespace", "team")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(dev.get("/v1/kv/x?ns=").await?.status(), 404);
    assert_eq!(dev.get("/v1/kv/x?dc=dc1").await?.status(), 404);
    assert_eq!(dev.get("/v1/kv/x?dc=dc9").await?.status(), 500);
    Ok(())
}

/// G7: every response, errors included, carries `X-Consul-Default-ACL-Policy: allow` when ACLs are off.
#[tokio::test]
async fn g7_acl_policy_header() -> anyhow::Result<()> {
    let dev = start().await?;
    for resp in [
        dev.get("/v1/kv/missing").await?,
        dev.put("/v1/kv/x", "v").await?,
        dev.get("/v1/nope").await?,
        dev.send(Method::POST, "/v1/kv/x", "").await?,
        dev.get("/v1/status/leader").await?,
    ] {
        assert_eq!(header(&resp, "X-Consul-Default-ACL-Policy"), "allow");
    }
    Ok(())
}

/// B1: a blocking KV GET returns promptly after a write made while it waits, with the new index.
#[tokio::test]
async fn b1_blocking_returns_on_change() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/b", "1").await?;
    let idx = index(&dev.get("/v1/kv/b").await?);
    let started = Instant::now();
    let url = format!("/v1/kv/b?index={idx}&wait=60s");
    let (resp, ()) = tokio::join!(dev.get(&url), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = dev.put("/v1/kv/b", "2").await;
    });
    let resp = resp?;
    let elapsed = started.elapsed();
    assert!(index(&resp) > idx);
    assert!(
        elapsed >= Duration::from_millis(250),
        "returned before the write: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(20), "returned late: {elapsed:?}");
    assert_eq!(resp.json::<Value>().await?[0]["Value"], "Mg==");
    Ok(())
}

/// B1/B3: a blocking GET of a missing key wakes when the key is created.
#[tokio::test]
async fn b1_blocking_on_missing_key() -> anyhow::Result<()> {
    let dev = start().await?;
    let idx = index(&dev.get("/v1/kv/later").await?);
    let url = format!("/v1/kv/later?index={idx}&wait=60s");
    let (resp, ()) = tokio::join!(dev.get(&url), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = dev.put("/v1/kv/later", "now").await;
    });
    let resp = resp?;
    assert_eq!(resp.status(), 200);
    assert!(index(&resp) > idx);
    Ok(())
}

/// B1/B2/B3: without a change the query waits at least `wait`, then answers 200 with the same index.
#[tokio::test]
async fn b2_waits_for_wait_time() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/w", "1").await?;
    let idx = index(&dev.get("/v1/kv/w").await?);
    let started = Instant::now();
    let resp = dev.get(&format!("/v1/kv/w?index={idx}&wait=300ms")).await?;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(index(&resp), idx);
    assert!(
        elapsed >= Duration::from_millis(300),
        "returned after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(10), "returned after {elapsed:?}");
    // Writes to other keys may wake the query early (allowed), but it still answers the same index.
    Ok(())
}

/// B1/B2: no index (or index=0) answers immediately; `wait` without `index` is ignored.
#[tokio::test]
async fn b2_no_index_is_immediate() -> anyhow::Result<()> {
    let dev = start().await?;
    let started = Instant::now();
    dev.get("/v1/kv/x?wait=10s").await?;
    dev.get("/v1/kv/x?index=0&wait=10s").await?;
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

/// B2: a bad `wait` is 400 `Invalid wait time`, a bad `index` 400 `Invalid index`.
#[tokio::test]
async fn b2_bad_wait_and_index() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.get("/v1/kv/x?index=1&wait=10").await?;
    assert_eq!(
        (resp.status().as_u16(), resp.text().await?),
        (400, "Invalid wait time".to_string())
    );
    let resp = dev.get("/v1/kv/x?index=abc").await?;
    assert_eq!(
        (resp.status().as_u16(), resp.text().await?),
        (400, "Invalid index".to_string())
    );
    Ok(())
}

/// B4: an index above the current one blocks for the wait, then returns the current, lower index.
#[tokio::test]
async fn b4_index_from_the_future() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/f", "1").await?;
    let idx = index(&dev.get("/v1/kv/f").await?);
    let started = Instant::now();
    let resp = dev
        .get(&format!("/v1/kv/f?index={}&wait=300ms", idx + 1000))
        .await?;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(index(&resp), idx);
    Ok(())
}

/// B6: one global index is shared by KV, sessions and the catalog; it strictly increases.
#[tokio::test]
async fn b6_global_index() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/a", "1").await?;
    let kv = dev
        .kv("a")
        .await?
        .and_then(|e| e["ModifyIndex"].as_u64())
        .unwrap_or(0);
    let sid = dev.session("{}").await?;
    let s = dev.get_json(&format!("/v1/session/info/{sid}")).await?[0]["CreateIndex"]
        .as_u64()
        .unwrap_or(0);
    assert!(s > kv);
    dev.put("/v1/agent/service/register", r#"{"Name":"svc"}"#).await?;
    let svc = dev.get_json("/v1/catalog/service/svc").await?[0]["ModifyIndex"]
        .as_u64()
        .unwrap_or(0);
    assert!(svc > s);
    dev.put_json("/v1/kv/b", "1").await?;
    let kv2 = dev
        .kv("b")
        .await?
        .and_then(|e| e["ModifyIndex"].as_u64())
        .unwrap_or(0);
    assert!(kv2 > svc);
    Ok(())
}

/// B8: `?stale` and `?consistent` are presence flags; both together are 400.
#[tokio::test]
async fn b8_stale_and_consistent() -> anyhow::Result<()> {
    let dev = start().await?;
    assert_eq!(dev.get("/v1/kv/x?stale").await?.status(), 404);
    assert_eq!(dev.get("/v1/kv/x?consistent=1").await?.status(), 404);
    let resp = dev.get("/v1/kv/x?stale&consistent").await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.text().await?,
        "Cannot specify ?stale with ?consistent, conflicting semantics."
    );
    Ok(())
}

/// T1/T2: with an ACL token, requests without it are 403 `Permission denied` (lists come back
/// empty instead), a wrong one 403 `ACL not found`; the token
/// is accepted from `?token=`, `X-Consul-Token` and `Authorization: Bearer`; status/leader needs none (H4).
#[tokio::test]
async fn t1_t2_acl_token() -> anyhow::Result<()> {
    let dev = start_with(Config {
        acl_token: Some("s3cret".into()),
        ..Config::ephemeral()
    })
    .await?;
    let resp = dev.put("/v1/kv/x", "v").await?;
    assert_eq!(resp.status(), 403);
    assert_eq!(header(&resp, "X-Consul-Default-ACL-Policy"), "deny");
    assert!(resp.text().await?.starts_with("Permission denied"));
    // Lists filter instead of refusing (rule T3): the anonymous token sees no session.
    let list = dev.get("/v1/session/list").await?;
    assert_eq!(list.status(), 200);
    assert_eq!(list.json::<Value>().await?, json!([]));
    assert_eq!(dev.get("/v1/kv/x?token=wrong").await?.status(), 403);
    assert_eq!(dev.put("/v1/kv/x?token=s3cret", "v").await?.status(), 200);
    let h = dev
        .http
        .get(dev.url("/v1/kv/x"))
        .header("X-Consul-Token", "s3cret")
        .send()
        .await?;
    assert_eq!(h.status(), 200);
    let b = dev
        .http
        .get(dev.url("/v1/kv/x"))
        .header("Authorization", "bearer s3cret")
        .send()
        .await?;
    assert_eq!(b.status(), 200);
    let leader = dev.get("/v1/status/leader").await?;
    assert_eq!(leader.status(), 200);
    Ok(())
}

/// H4: status/leader is the JSON string `"127.0.0.1:8300"`; status/peers lists it.
#[tokio::test]
async fn h4_status() -> anyhow::Result<()> {
    let dev = start().await?;
    assert_eq!(dev.get_json("/v1/status/leader").await?, json!("127.0.0.1:8300"));
    assert_eq!(dev.get_json("/v1/status/peers").await?, json!(["127.0.0.1:8300"]));
    Ok(())
}

/// The handle stops the server when stopped.
#[tokio::test]
async fn handle_stops_server() -> anyhow::Result<()> {
    let dev = start().await?;
    let url = dev.url("/v1/status/leader");
    let http = dev.http.clone();
    dev.handle.stop().await?;
    assert!(http.get(url).send().await.is_err());
    Ok(())
}

/// G2: `?pretty` indents JSON responses (clients must not care either way).
#[tokio::test]
async fn g2_pretty() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/p", "v").await?;
    let resp = dev.get("/v1/kv/p?pretty").await?;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await?;
    assert!(text.contains('\n'), "{text}");
    let v: Value = serde_json::from_str(&text)?;
    assert_eq!(v[0]["Key"], "p");
    Ok(())
}

/// `spawn(Config::default())` picks a free port instead of Consul's 8500, so parallel tests never collide.
#[tokio::test]
async fn spawn_default_uses_free_port() -> anyhow::Result<()> {
    let a = devconsul::spawn(Config::default()).await?;
    let b = devconsul::spawn(Config::default()).await?;
    assert_ne!(a.addr().port(), 8500);
    assert_ne!(a.addr(), b.addr());
    assert!(a.url().starts_with("http://127.0.0.1:"));
    let leader: Value = reqwest::get(format!("{}/v1/status/leader", b.url()))
        .await?
        .json()
        .await?;
    assert_eq!(leader, json!("127.0.0.1:8300"));
    Ok(())
}
