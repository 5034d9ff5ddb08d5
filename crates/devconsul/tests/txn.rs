//! Black-box tests of `PUT /v1/txn`: KV verbs, all-or-nothing application at one index, 409
//! error shape, and bad-input statuses.

mod support;

use serde_json::{json, Value};
use support::start;

/// PUTs a transaction and returns (status, body).
async fn txn(dev: &support::Dev, ops: &Value) -> anyhow::Result<(u16, Value)> {
    let resp = dev.put("/v1/txn", ops.to_string()).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

/// Successful writes apply at one index; results hold entries (values only for gets).
#[tokio::test]
async fn txn_success_one_index() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/t/existing", "old").await?;
    let (status, body) = txn(
        &dev,
        &json!([
            {"KV": {"Verb": "set", "Key": "t/a", "Value": "YQ==", "Flags": 3}},
            {"KV": {"Verb": "set", "Key": "t/b", "Value": "Yg=="}},
            {"KV": {"Verb": "get", "Key": "t/existing"}},
            {"KV": {"Verb": "check-not-exists", "Key": "t/none"}}
        ]),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(body["Errors"], Value::Null);
    let results = body["Results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["KV"]["Key"], "t/a");
    assert_eq!(results[0]["KV"]["Flags"], 3);
    assert_eq!(results[0]["KV"]["Value"], Value::Null);
    assert_eq!(results[2]["KV"]["Value"], "b2xk");
    let a = dev.kv("t/a").await?.unwrap_or_default();
    let b = dev.kv("t/b").await?.unwrap_or_default();
    assert_eq!(a["ModifyIndex"], b["ModifyIndex"]);
    assert_eq!(a["Value"], "YQ==");
    Ok(())
}

/// A failing op rolls everything back and answers 409 with `Errors` and null `Results`.
#[tokio::test]
async fn txn_failure_rolls_back() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/c", "v").await?;
    let (status, body) = txn(
        &dev,
        &json!([
            {"KV": {"Verb": "set", "Key": "n", "Value": "eA=="}},
            {"KV": {"Verb": "cas", "Key": "c", "Value": "eA==", "Index": 999_999}}
        ]),
    )
    .await?;
    assert_eq!(status, 409);
    assert_eq!(body["Results"], Value::Null);
    assert_eq!(body["Errors"][0]["OpIndex"], 1);
    assert!(body["Errors"][0]["What"]
        .as_str()
        .unwrap_or("")
        .contains("index is stale"));
    assert_eq!(dev.kv("n").await?, None);
    Ok(())
}

/// lock behaves as acquire (LockIndex+1, session), unlock as release; check-session and check-index verify.
#[tokio::test]
async fn txn_lock_unlock_checks() -> anyhow::Result<()> {
    let dev = start().await?;
    let sid = dev.session(r#"{"LockDelay":"10s"}"#).await?;
    let other = dev.session("{}").await?;
    let (status, body) = txn(
        &dev,
        &json!([{"KV": {"Verb": "lock", "Key": "l", "Value": "bA==", "Session": sid}}]),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let e = dev.kv("l").await?.unwrap_or_default();
    assert_eq!(
        (e["LockIndex"].clone(), e["Session"].clone()),
        (json!(1), json!(sid))
    );
    let m = e["ModifyIndex"].clone();
    let (status, _) = txn(
        &dev,
        &json!([
            {"KV": {"Verb": "check-session", "Key": "l", "Session": sid}},
            {"KV": {"Verb": "check-index", "Key": "l", "Index": m}}
        ]),
    )
    .await?;
    assert_eq!(status, 200);
    let (status, body) = txn(
        &dev,
        &json!([{"KV": {"Verb": "check-session", "Key": "l", "Session": other}}]),
    )
    .await?;
    assert_eq!(status, 409, "{body}");
    let (status, _) = txn(
        &dev,
        &json!([{"KV": {"Verb": "lock", "Key": "l", "Session": other}}]),
    )
    .await?;
    assert_eq!(status, 409);
    let (status, body) = txn(
        &dev,
        &json!([{"KV": {"Verb": "unlock", "Key": "l", "Session": other}}]),
    )
    .await?;
    assert_eq!(status, 409, "{body}");
    let (status, _) = txn(
        &dev,
        &json!([{"KV": {"Verb": "unlock", "Key": "l", "Session": sid}}]),
    )
    .await?;
    assert_eq!(status, 200);
    assert!(dev.kv("l").await?.unwrap_or_default().get("Session").is_none());
    // Lock-delay applies to txn locks too.
    txn(
        &dev,
        &json!([{"KV": {"Verb": "lock", "Key": "l", "Session": sid}}]),
    )
    .await?;
    dev.put_json(&format!("/v1/session/destroy/{sid}"), "").await?;
    let (status, body) = txn(
        &dev,
        &json!([{"KV": {"Verb": "lock", "Key": "l", "Session": other}}]),
    )
    .await?;
    assert_eq!(status, 409);
    assert!(body["Errors"][0]["What"]
        .as_str()
        .unwrap_or("")
        .contains("lock delay"));
    let (status, body) = txn(
        &dev,
        &json!([{"KV": {"Verb": "lock", "Key": "x", "Session": "00000000-0000-0000-0000-000000000000"}}]),
    )
    .await?;
    assert_eq!(status, 409);
    assert!(body["Errors"][0]["What"]
        .as_str()
        .unwrap_or("")
        .starts_with("invalid session"));
    Ok(())
}

/// delete, delete-cas, delete-tree and get-tree work; get of a missing key fails.
#[tokio::test]
async fn txn_delete_verbs() -> anyhow::Result<()> {
    let dev = start().await?;
    for k in ["d/1", "d/2", "e", "f"] {
        dev.put_json(&format!("/v1/kv/{k}"), "v").await?;
    }
    let (status, body) = txn(&dev, &json!([{"KV": {"Verb": "get-tree", "Key": "d/"}}])).await?;
    assert_eq!(status, 200);
    assert_eq!(body["Results"].as_array().map(Vec::len), Some(2));
    let m = dev.kv("f").await?.unwrap_or_default()["ModifyIndex"].clone();
    let (status, body) = txn(
        &dev,
        &json!([
            {"KV": {"Verb": "delete-tree", "Key": "d/"}},
            {"KV": {"Verb": "delete", "Key": "e"}},
            {"KV": {"Verb": "delete-cas", "Key": "f", "Index": m}}
        ]),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(dev.get("/v1/kv/?recurse").await?.status(), 404);
    let (status, body) = txn(&dev, &json!([{"KV": {"Verb": "get", "Key": "e"}}])).await?;
    assert_eq!(status, 409);
    assert_eq!(body["Errors"][0]["OpIndex"], 0);
    Ok(())
}

/// An empty body or bad JSON is 400; more than 128 ops is 413; an unknown verb fails the txn.
#[tokio::test]
async fn txn_bad_input() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.put("/v1/txn", "").await?;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await?.starts_with("Failed to parse body"));
    assert_eq!(dev.put("/v1/txn", "[{").await?.status(), 400);
    assert_eq!(
        dev.put("/v1/txn", r#"[{"KV":{"Verb":"set","Key":"k","Value":"!!"}}]"#)
            .await?
            .status(),
        400
    );
    let many: Vec<Value> = (0..129)
        .map(|i| json!({"KV": {"Verb": "set", "Key": format!("k{i}")}}))
        .collect();
    assert_eq!(
        dev.put("/v1/txn", Value::Array(many).to_string()).await?.status(),
        413
    );
    let (status, _) = txn(&dev, &json!([{"KV": {"Verb": "explode", "Key": "k"}}])).await?;
    assert_eq!(status, 409);
    assert_eq!(dev.get("/v1/txn").await?.status(), 405);
    Ok(())
}
