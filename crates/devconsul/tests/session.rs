//! Black-box tests of sessions, invalidation and lock-delay over real HTTP: rules S1–S12 and
//! L1–L4 of `consul-api.md`, including the TTL and lock-delay timing rules.

mod support;

use std::time::Duration;

use devconsul::Config;
use serde_json::{json, Value};
use support::{eventually, index, start, start_with};
use tokio::time::Instant;

/// Info for one session (asserting it exists).
async fn info(dev: &support::Dev, id: &str) -> anyhow::Result<Value> {
    let v = dev.get_json(&format!("/v1/session/info/{id}")).await?;
    Ok(v[0].clone())
}

/// S1/S7/S12: an empty body creates a session with Consul's defaults and shape.
#[tokio::test]
async fn s1_create_defaults() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.put("/v1/session/create", "").await?;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await?;
    let id = v["ID"].as_str().unwrap_or_default().to_string();
    let parts: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12]);
    assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    let s = info(&dev, &id).await?;
    assert_eq!(s["ID"], json!(id));
    assert_eq!(s["Name"], "");
    assert_eq!(s["Node"], "dev-consul");
    assert_eq!(s["LockDelay"], json!(15_000_000_000_u64));
    assert_eq!(s["Behavior"], "release");
    assert_eq!(s["TTL"], "");
    assert_eq!(s["NodeChecks"], json!(["serfHealth"]));
    assert_eq!(s["ServiceChecks"], Value::Null);
    assert!(s.get("Checks").is_none());
    assert_eq!(s["CreateIndex"], s["ModifyIndex"]);
    Ok(())
}

/// S2: check fix-ups: `Checks: []` and `NodeChecks: []` bind nothing; `Checks: ["serfHealth"]` is the default.
#[tokio::test]
async fn s2_check_fixups() -> anyhow::Result<()> {
    let dev = start().await?;
    let none = dev.session(r#"{"Checks":[]}"#).await?;
    assert_eq!(info(&dev, &none).await?["NodeChecks"], json!([]));
    let none2 = dev.session(r#"{"NodeChecks":[]}"#).await?;
    assert_eq!(info(&dev, &none2).await?["NodeChecks"], json!([]));
    let serf = dev.session(r#"{"Checks":["serfHealth"]}"#).await?;
    let s = info(&dev, &serf).await?;
    assert_eq!(s["NodeChecks"], json!(["serfHealth"]));
    assert!(s.get("Checks").is_none());
    // G6: lowercase field names (py-consul) are accepted, unknown fields tolerated.
    let lower = dev
        .session(r#"{"name":"py","lockdelay":"2s","behavior":"delete","ttl":"","bogus":1}"#)
        .await?;
    let s = info(&dev, &lower).await?;
    assert_eq!(
        (s["Name"].clone(), s["LockDelay"].clone(), s["Behavior"].clone()),
        (json!("py"), json!(2_000_000_000_u64), json!("delete"))
    );
    Ok(())
}

/// S3: LockDelay strings are Go durations, numbers nanoseconds (<1000 → seconds); unit-less strings are 400.
#[tokio::test]
async fn s3_lock_delay_parsing() -> anyhow::Result<()> {
    let dev = start().await?;
    for (body, want) in [
        (r#"{"LockDelay":"15000ms"}"#, 15_000_000_000_u64),
        (r#"{"LockDelay":"1s"}"#, 1_000_000_000),
        (r#"{"LockDelay":15}"#, 15_000_000_000),
        (r#"{"LockDelay":2000000000}"#, 2_000_000_000),
        (r#"{"LockDelay":"0s"}"#, 0),
        (r#"{"LockDelay":0}"#, 0),
    ] {
        let id = dev.session(body).await?;
        assert_eq!(info(&dev, &id).await?["LockDelay"], json!(want), "{body}");
    }
    let resp = dev.put("/v1/session/create", r#"{"LockDelay":"15"}"#).await?;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await?.starts_with("Request decode failed: "));
    Ok(())
}

/// S4: an unknown Behavior is a 500.
#[tokio::test]
async fn s4_bad_behavior() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.put("/v1/session/create", r#"{"Behavior":"explode"}"#).await?;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await?, "Invalid Behavior setting 'explode'");
    Ok(())
}

/// S5: TTL bounds and syntax: out of [min, 24h] and unparseable are 500, a JSON number is 400, zero means none.
#[tokio::test]
async fn s5_ttl_validation() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.put("/v1/session/create", r#"{"TTL":"5s"}"#).await?;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.text().await?,
        "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"
    );
    assert_eq!(
        dev.put("/v1/session/create", r#"{"TTL":"25h"}"#).await?.status(),
        500
    );
    let resp = dev.put("/v1/session/create", r#"{"TTL":"soon"}"#).await?;
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await?.starts_with("Session TTL 'soon' invalid: "));
    assert_eq!(
        dev.put("/v1/session/create", r#"{"TTL":15}"#).await?.status(),
        400
    );
    assert_eq!(dev.put("/v1/session/create", "{not json").await?.status(), 400);
    for ok in ["10s", "24h", "0s", ""] {
        let id = dev.session(&format!(r#"{{"TTL":"{ok}"}}"#)).await?;
        assert_eq!(info(&dev, &id).await?["TTL"], json!(ok));
    }
    Ok(())
}

/// S6: the node must exist; bound checks must exist and not be critical (a fresh TTL check is critical).
#[tokio::test]
async fn s6_node_and_checks_must_be_valid() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.put("/v1/session/create", r#"{"Node":"elsewhere"}"#).await?;
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await?.contains("Missing node registration"));
    let resp = dev
        .put("/v1/session/create", r#"{"NodeChecks":["nope"]}"#)
        .await?;
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await?.contains("Missing check 'nope' registration"));
    dev.put(
        "/v1/agent/service/register",
        r#"{"Name":"svc","Check":{"CheckID":"svc-ttl","TTL":"30s"}}"#,
    )
    .await?;
    let resp = dev
        .put("/v1/session/create", r#"{"ServiceChecks":[{"ID":"svc-ttl"}]}"#)
        .await?;
    assert_eq!(resp.status(), 500);
    assert!(resp
        .text()
        .await?
        .contains("Check 'svc-ttl' is in critical state"));
    dev.put("/v1/agent/check/pass/svc-ttl", "").await?;
    let id = dev.session(r#"{"ServiceChecks":[{"ID":"svc-ttl"}]}"#).await?;
    assert_eq!(
        info(&dev, &id).await?["ServiceChecks"],
        json!([{"ID":"svc-ttl","Namespace":""}])
    );
    Ok(())
}

/// S8: info of an unknown session is 200 `[]`; list/node are arrays; empty id/node are 400; reads carry the index.
#[tokio::test]
async fn s8_info_list_node() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev
        .get("/v1/session/info/00000000-0000-0000-0000-000000000000")
        .await?;
    assert_eq!(resp.status(), 200);
    assert!(index(&resp) >= 1);
    assert_eq!(resp.json::<Value>().await?, json!([]));
    assert_eq!(dev.get_json("/v1/session/list").await?, json!([]));
    assert_eq!(dev.get_json("/v1/session/node/dev-consul").await?, json!([]));
    let id = dev.session("{}").await?;
    assert_eq!(dev.get_json("/v1/session/list").await?[0]["ID"], json!(id));
    assert_eq!(
        dev.get_json("/v1/session/node/dev-consul").await?[0]["ID"],
        json!(id)
    );
    assert_eq!(dev.get_json("/v1/session/node/other").await?, json!([]));
    let resp = dev.get("/v1/session/info/").await?;
    assert_eq!(
        (resp.status().as_u16(), resp.text().await?),
        (400, "Missing session".to_string())
    );
    let resp = dev.get("/v1/session/node/").await?;
    assert_eq!(
        (resp.status().as_u16(), resp.text().await?),
        (400, "Missing node name".to_string())
    );
    Ok(())
}

/// S9: renew returns `[session]` and moves no index; an unknown id is 404 `Session id '…' not found`.
#[tokio::test]
async fn s9_renew() -> anyhow::Result<()> {
    let dev = start().await?;
    let id = dev.session(r#"{"TTL":"10s"}"#).await?;
    let before = index(&dev.get("/v1/session/list").await?);
    let v = dev.put_json(&format!("/v1/session/renew/{id}"), "").await?;
    assert_eq!(v[0]["ID"], json!(id));
    assert_eq!(v[0]["TTL"], "10s");
    assert_eq!(index(&dev.get("/v1/session/list").await?), before);
    let untimed = dev.session("{}").await?;
    assert_eq!(
        dev.put(&format!("/v1/session/renew/{untimed}"), "")
            .await?
            .status(),
        200
    );
    let resp = dev.put("/v1/session/renew/nope", "").await?;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await?, "Session id 'nope' not found");
    Ok(())
}

/// S10: destroy answers `true`, also for unknown ids.
#[tokio::test]
async fn s10_destroy() -> anyhow::Result<()> {
    let dev = start().await?;
    let id = dev.session("{}").await?;
    assert_eq!(
        dev.put_json(&format!("/v1/session/destroy/{id}"), "").await?,
        json!(true)
    );
    assert!(!dev.session_exists(&id).await?);
    assert_eq!(
        dev.put_json(&format!("/v1/session/destroy/{id}"), "").await?,
        json!(true)
    );
    Ok(())
}

/// S11: a TTL session survives its TTL (expiry is armed at 2×TTL) and is gone within a generous bound.
#[tokio::test]
async fn s11_ttl_expiry() -> anyhow::Result<()> {
    let dev = start_with(Config {
        session_ttl_min: Duration::from_secs(1),
        ..Config::ephemeral()
    })
    .await?;
    let created = Instant::now();
    let id = dev.session(r#"{"TTL":"1s"}"#).await?;
    dev.put_json(&format!("/v1/kv/ttl?acquire={id}"), "v").await?;
    assert!(dev.session_exists(&id).await?);
    eventually(Duration::from_secs(5), "session expires", || async {
        Ok(!dev.session_exists(&id).await?)
    })
    .await?;
    let gone_after = created.elapsed();
    assert!(
        gone_after >= Duration::from_secs(1),
        "expired too early: {gone_after:?}"
    );
    let e = dev.kv("ttl").await?.unwrap_or_default();
    assert!(e.get("Session").is_none(), "held key released on expiry");
    Ok(())
}

/// S11/S9: renewing re-arms the timer, so a renewed session outlives 2×TTL from creation.
#[tokio::test]
async fn s11_renew_keeps_session_alive() -> anyhow::Result<()> {
    let dev = start_with(Config {
        session_ttl_min: Duration::from_secs(1),
        ..Config::ephemeral()
    })
    .await?;
    let id = dev.session(r#"{"TTL":"1s"}"#).await?;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(dev.session_exists(&id).await?, "renewed session must not expire");
        dev.put_json(&format!("/v1/session/renew/{id}"), "").await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// L2: invalidation under `release` unlocks held keys at one new index, keeping LockIndex/Value/Flags.
#[tokio::test]
async fn l2_release_behavior() -> anyhow::Result<()> {
    let dev = start().await?;
    let id = dev.session(r#"{"LockDelay":"0s"}"#).await?;
    dev.put_json(&format!("/v1/kv/a?acquire={id}&flags=4"), "va")
        .await?;
    dev.put_json(&format!("/v1/kv/b?acquire={id}"), "vb").await?;
    dev.put_json(&format!("/v1/session/destroy/{id}"), "").await?;
    let a = dev.kv("a").await?.unwrap_or_default();
    let b = dev.kv("b").await?.unwrap_or_default();
    assert!(a.get("Session").is_none() && b.get("Session").is_none());
    assert_eq!(
        (a["LockIndex"].clone(), a["Flags"].clone(), a["Value"].clone()),
        (json!(1), json!(4), json!("dmE="))
    );
    assert_eq!(
        a["ModifyIndex"], b["ModifyIndex"],
        "one index for the whole invalidation"
    );
    assert_eq!(
        index(&dev.get("/v1/session/list").await?),
        a["ModifyIndex"].as_u64().unwrap_or(0)
    );
    Ok(())
}

/// L2: invalidation under `delete` deletes held keys.
#[tokio::test]
async fn l2_delete_behavior() -> anyhow::Result<()> {
    let dev = start().await?;
    let id = dev.session(r#"{"Behavior":"delete","LockDelay":"0s"}"#).await?;
    dev.put_json(&format!("/v1/kv/gone?acquire={id}"), "v").await?;
    dev.put_json("/v1/kv/kept", "v").await?;
    dev.put_json(&format!("/v1/session/destroy/{id}"), "").await?;
    assert_eq!(dev.kv("gone").await?, None);
    assert!(dev.kv("kept").await?.is_some());
    Ok(())
}

/// L3/L4: after invalidation every acquire is refused during the lock-delay (PUT/DELETE unaffected),
/// and accepted once it has passed.
#[tokio::test]
async fn l3_l4_lock_delay() -> anyhow::Result<()> {
    let dev = start().await?;
    let holder = dev.session(r#"{"LockDelay":"1s"}"#).await?;
    let other = dev.session("{}").await?;
    dev.put_json(&format!("/v1/kv/ld?acquire={holder}"), "v").await?;
    let invalidated = Instant::now();
    dev.put_json(&format!("/v1/session/destroy/{holder}"), "").await?;
    let before = dev.kv("ld").await?;
    assert_eq!(
        dev.put_json(&format!("/v1/kv/ld?acquire={other}"), "x").await?,
        json!(false)
    );
    assert_eq!(dev.kv("ld").await?, before, "refused acquire changes nothing");
    // K14 order: lock-delay is checked before the session.
    assert_eq!(
        dev.put_json("/v1/kv/ld?acquire=unknown", "x").await?,
        json!(false)
    );
    assert_eq!(dev.put_json("/v1/kv/ld", "plain").await?, json!(true));
    let mut accepted = false;
    while invalidated.elapsed() < Duration::from_secs(10) {
        if dev.put_json(&format!("/v1/kv/ld?acquire={other}"), "x").await? == json!(true) {
            accepted = true;
            break;
        }
        assert!(invalidated.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "acquire accepted after the lock-delay");
    assert!(
        invalidated.elapsed() >= Duration::from_millis(950),
        "accepted too early: {:?}",
        invalidated.elapsed()
    );
    Ok(())
}

/// L3: a session with LockDelay 0 leaves no lock-delay.
#[tokio::test]
async fn l3_zero_lock_delay() -> anyhow::Result<()> {
    let dev = start().await?;
    let holder = dev.session(r#"{"LockDelay":"0s"}"#).await?;
    let other = dev.session("{}").await?;
    dev.put_json(&format!("/v1/kv/z?acquire={holder}"), "v").await?;
    dev.put_json(&format!("/v1/session/destroy/{holder}"), "").await?;
    assert_eq!(
        dev.put_json(&format!("/v1/kv/z?acquire={other}"), "x").await?,
        json!(true)
    );
    Ok(())
}

/// B1/S8: a blocking session/info returns promptly when the session is destroyed.
#[tokio::test]
async fn b1_session_info_blocks_until_change() -> anyhow::Result<()> {
    let dev = start().await?;
    let id = dev.session("{}").await?;
    let resp = dev.get(&format!("/v1/session/info/{id}")).await?;
    let idx = index(&resp);
    let url = format!("/v1/session/info/{id}?index={idx}&wait=30s");
    let started = Instant::now();
    let (blocked, ()) = tokio::join!(dev.get(&url), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = dev.put(&format!("/v1/session/destroy/{id}"), "").await;
    });
    let blocked = blocked?;
    assert!(index(&blocked) > idx);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(blocked.json::<Value>().await?, json!([]));
    Ok(())
}
