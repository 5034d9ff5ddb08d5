//! Black-box tests of the dev server's KV endpoint over real HTTP: rules K1–K17 and G3 of
//! `consul-api.md`.

mod support;

use serde_json::{json, Value};
use support::{header, index, start};

/// K1: an empty key on GET (without recurse/keys), PUT and DELETE (without recurse) is 400 `Missing key name`.
#[tokio::test]
async fn k1_empty_key_is_400() -> anyhow::Result<()> {
    let dev = start().await?;
    for resp in [
        dev.get("/v1/kv/").await?,
        dev.put("/v1/kv/", "x").await?,
        dev.delete("/v1/kv/").await?,
    ] {
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.text().await?, "Missing key name");
    }
    assert_eq!(dev.get("/v1/kv/?recurse").await?.status(), 404);
    assert_eq!(dev.delete("/v1/kv/?recurse").await?.status(), 200);
    Ok(())
}

/// K1: the key is the percent-decoded path.
#[tokio::test]
async fn k1_key_is_percent_decoded() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/a%20b/c", "v").await?;
    let v = dev.get_json("/v1/kv/a b/c").await?;
    assert_eq!(v[0]["Key"], "a b/c");
    Ok(())
}

/// K2: path traversal and leading/trailing spaces are rejected with 400.
#[tokio::test]
async fn k2_key_validation() -> anyhow::Result<()> {
    let dev = start().await?;
    assert_eq!(dev.put("/v1/kv/a/..%2Fb", "x").await?.status(), 400);
    assert_eq!(dev.put("/v1/kv/a/..%5Cb", "x").await?.status(), 400);
    assert_eq!(dev.put("/v1/kv/%20a", "x").await?.status(), 400);
    assert_eq!(dev.get("/v1/kv/a%20").await?.status(), 400);
    assert_eq!(dev.put("/v1/kv/simpleloggers/leader", "x").await?.status(), 200);
    Ok(())
}

/// K3: a single-key GET is a one-element array with Consul's field order, base64 Value, no Session when unheld.
#[tokio::test]
async fn k3_single_get_shape() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/k?flags=42", "hello").await?;
    let resp = dev.get("/v1/kv/k").await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "application/json");
    let text = resp.text().await?;
    let order = [
        "\"LockIndex\"",
        "\"Key\"",
        "\"Flags\"",
        "\"Value\"",
        "\"CreateIndex\"",
        "\"ModifyIndex\"",
    ];
    let positions: Vec<usize> = order.iter().map(|f| text.find(f).unwrap_or(usize::MAX)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "field order in {text}");
    assert!(!text.contains("Session"), "unheld key has no Session: {text}");
    let v: Value = serde_json::from_str(&text)?;
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["Value"], "aGVsbG8=");
    assert_eq!(v[0]["Flags"], 42);
    dev.put_json("/v1/kv/empty", "").await?;
    assert_eq!(dev.get_json("/v1/kv/empty").await?[0]["Value"], Value::Null);
    Ok(())
}

/// K4/B5: a missing key is 404 with an empty body and the read headers; an existing key's index is its ModifyIndex.
#[tokio::test]
async fn k4_missing_key_404_with_headers() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.get("/v1/kv/missing").await?;
    assert_eq!(resp.status(), 404);
    assert!(index(&resp) >= 1);
    assert_eq!(header(&resp, "X-Consul-KnownLeader"), "true");
    assert_eq!(header(&resp, "X-Consul-LastContact"), "0");
    assert_eq!(header(&resp, "X-Consul-Query-Backend"), "blocking-query");
    assert_eq!(resp.text().await?, "");
    dev.put_json("/v1/kv/a", "1").await?;
    dev.put_json("/v1/kv/b", "2").await?;
    let a = dev.get("/v1/kv/a").await?;
    let a_index = index(&a);
    let modify = a.json::<Value>().await?[0]["ModifyIndex"].as_u64();
    assert_eq!(Some(a_index), modify);
    let missing = dev.get("/v1/kv/missing").await?;
    assert!(
        index(&missing) > a_index,
        "missing key reports the KV table index"
    );
    Ok(())
}

/// K5: `?raw` returns the bare value as text/plain with nosniff and sandbox CSP; ignored with recurse.
#[tokio::test]
async fn k5_raw() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/r", "raw-bytes").await?;
    let resp = dev.get("/v1/kv/r?raw").await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/plain");
    assert_eq!(header(&resp, "X-Content-Type-Options"), "nosniff");
    assert_eq!(header(&resp, "Content-Security-Policy"), "sandbox");
    assert!(index(&resp) >= 1);
    assert_eq!(resp.text().await?, "raw-bytes");
    let v = dev.get_json("/v1/kv/r?raw&recurse").await?;
    assert_eq!(v[0]["Key"], "r");
    Ok(())
}

/// K6: recurse returns every entry under the byte prefix, sorted; none → 404; index = highest ModifyIndex under it.
#[tokio::test]
async fn k6_recurse() -> anyhow::Result<()> {
    let dev = start().await?;
    for k in ["p/b", "p/a", "p", "q/x", "pz"] {
        dev.put_json(&format!("/v1/kv/{k}"), "v").await?;
    }
    let resp = dev.get("/v1/kv/p?recurse").await?;
    let idx = index(&resp);
    let v: Value = resp.json().await?;
    let keys: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["Key"].as_str())
        .collect();
    assert_eq!(keys, ["p", "p/a", "p/b", "pz"]);
    let max = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["ModifyIndex"].as_u64())
        .max();
    assert_eq!(Some(idx), max);
    let all = dev.get_json("/v1/kv/?recurse").await?;
    assert_eq!(all.as_array().map(Vec::len), Some(5));
    assert_eq!(dev.get("/v1/kv/none/?recurse").await?.status(), 404);
    Ok(())
}

/// G3/C1: boolean flags are presence-based: `?recurse=false` still recurses.
#[tokio::test]
async fn g3_presence_flags() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/f/1", "v").await?;
    dev.put_json("/v1/kv/f/2", "v").await?;
    let v = dev.get_json("/v1/kv/f/?recurse=false").await?;
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    let keys = dev.get_json("/v1/kv/f/?keys=True").await?;
    assert_eq!(keys, json!(["f/1", "f/2"]));
    Ok(())
}

/// K7: `?keys` lists key names; `separator` (and `seperator`) cuts after the first separator past the prefix.
#[tokio::test]
async fn k7_keys_and_separator() -> anyhow::Result<()> {
    let dev = start().await?;
    for k in ["s/a/1", "s/a/2", "s/b", "s/c/x/y", "t"] {
        dev.put_json(&format!("/v1/kv/{k}"), "v").await?;
    }
    assert_eq!(
        dev.get_json("/v1/kv/s/?keys").await?,
        json!(["s/a/1", "s/a/2", "s/b", "s/c/x/y"])
    );
    assert_eq!(
        dev.get_json("/v1/kv/s/?keys&separator=/").await?,
        json!(["s/a/", "s/b", "s/c/"])
    );
    assert_eq!(
        dev.get_json("/v1/kv/s/?keys&seperator=/").await?,
        json!(["s/a/", "s/b", "s/c/"])
    );
    assert_eq!(
        dev.get_json("/v1/kv/?keys&separator=/").await?,
        json!(["s/", "t"])
    );
    assert_eq!(dev.get("/v1/kv/zzz?keys").await?.status(), 404);
    dev.delete("/v1/kv/?recurse").await?;
    assert_eq!(dev.get_json("/v1/kv/?keys").await?, json!([]));
    Ok(())
}

/// K8: PUT bodies are raw values, answered with JSON `true`; over 512 KiB is 413.
#[tokio::test]
async fn k8_put_and_size_limit() -> anyhow::Result<()> {
    let dev = start().await?;
    assert_eq!(
        dev.put_json("/v1/kv/big", vec![b'x'; 524_288]).await?,
        json!(true)
    );
    let resp = dev.put("/v1/kv/big", vec![b'x'; 524_289]).await?;
    assert_eq!(resp.status(), 413);
    assert!(resp
        .text()
        .await?
        .starts_with("Request body(524289 bytes) too large, max size: 524288 bytes."));
    assert_eq!(
        dev.kv("big").await?.map(|e| e["Value"].as_str().map(str::len)),
        Some(Some(699_052))
    );
    Ok(())
}

/// K9: `flags` sets Flags, any write without it resets them to 0; a bad `flags`/`cas` is a 500.
#[tokio::test]
async fn k9_flags() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/f?flags=7", "v").await?;
    assert_eq!(dev.kv("f").await?.map(|e| e["Flags"].clone()), Some(json!(7)));
    dev.put_json("/v1/kv/f", "v").await?;
    assert_eq!(dev.kv("f").await?.map(|e| e["Flags"].clone()), Some(json!(0)));
    let resp = dev.put("/v1/kv/f?flags=abc", "v").await?;
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await?.contains("strconv.ParseUint"));
    assert_eq!(dev.put("/v1/kv/f?cas=x", "v").await?.status(), 500);
    Ok(())
}

/// K10: more than one of cas/acquire/release, or recurse+cas on DELETE, is 400 `Conflicting flags`.
#[tokio::test]
async fn k10_conflicting_flags() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.put("/v1/kv/c?cas=0&acquire=x", "v").await?;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await?.starts_with("Conflicting flags: "));
    assert_eq!(dev.put("/v1/kv/c?release=x&acquire=x", "v").await?.status(), 400);
    assert_eq!(dev.delete("/v1/kv/c?recurse&cas=1").await?.status(), 400);
    Ok(())
}

/// K11: cas=0 writes only absent keys; cas=N only when ModifyIndex == N.
#[tokio::test]
async fn k11_cas() -> anyhow::Result<()> {
    let dev = start().await?;
    assert_eq!(dev.put_json("/v1/kv/c?cas=0", "1").await?, json!(true));
    assert_eq!(dev.put_json("/v1/kv/c?cas=0", "2").await?, json!(false));
    let m = dev
        .kv("c")
        .await?
        .and_then(|e| e["ModifyIndex"].as_u64())
        .unwrap_or(0);
    assert_eq!(
        dev.put_json(&format!("/v1/kv/c?cas={}", m + 100), "3").await?,
        json!(false)
    );
    assert_eq!(
        dev.put_json(&format!("/v1/kv/c?cas={m}"), "4").await?,
        json!(true)
    );
    assert_eq!(
        dev.kv("c").await?.map(|e| e["Value"].clone()),
        Some(json!("NA=="))
    );
    assert_eq!(dev.put_json("/v1/kv/absent?cas=5", "x").await?, json!(false));
    Ok(())
}

/// K12/B6: writes take a new global index, CreateIndex is kept; an identical write changes nothing.
#[tokio::test]
async fn k12_indexes() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/i", "1").await?;
    let first = dev.kv("i").await?.unwrap_or_default();
    dev.put_json("/v1/kv/other", "x").await?;
    dev.put_json("/v1/kv/i", "2").await?;
    let second = dev.kv("i").await?.unwrap_or_default();
    assert_eq!(first["CreateIndex"], second["CreateIndex"]);
    assert!(second["ModifyIndex"].as_u64() > first["ModifyIndex"].as_u64());
    dev.put_json("/v1/kv/i", "2").await?;
    let third = dev.kv("i").await?.unwrap_or_default();
    assert_eq!(third["ModifyIndex"], second["ModifyIndex"]);
    Ok(())
}

/// K13/K11: a plain PUT on a held key keeps the Session and stores LockIndex 0.
#[tokio::test]
async fn k13_plain_put_on_held_key() -> anyhow::Result<()> {
    let dev = start().await?;
    let sid = dev.session("{}").await?;
    assert_eq!(
        dev.put_json(&format!("/v1/kv/h?acquire={sid}"), "a").await?,
        json!(true)
    );
    assert_eq!(dev.put_json("/v1/kv/h", "b").await?, json!(true));
    let e = dev.kv("h").await?.unwrap_or_default();
    assert_eq!(e["Session"], json!(sid));
    assert_eq!(e["LockIndex"], 0);
    assert_eq!(e["Value"], "Yg==");
    Ok(())
}

/// K14: acquire errors (empty → `missing session`, unknown → `invalid session`), held by another → false,
/// re-acquire by the holder keeps LockIndex and replaces Value/Flags, a new lock bumps LockIndex.
#[tokio::test]
async fn k14_acquire() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.put("/v1/kv/l?acquire=", "v").await?;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await?, "missing session");
    let resp = dev
        .put("/v1/kv/l?acquire=00000000-0000-0000-0000-000000000000", "v")
        .await?;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.text().await?,
        "invalid session \"00000000-0000-0000-0000-000000000000\""
    );
    assert_eq!(dev.kv("l").await?, None);
    let a = dev.session(r#"{"LockDelay":"0s"}"#).await?;
    let b = dev.session("{}").await?;
    assert_eq!(
        dev.put_json(&format!("/v1/kv/l?acquire={a}&flags=3"), "one")
            .await?,
        json!(true)
    );
    let e = dev.kv("l").await?.unwrap_or_default();
    assert_eq!(
        (e["LockIndex"].clone(), e["Session"].clone(), e["Flags"].clone()),
        (json!(1), json!(a), json!(3))
    );
    assert_eq!(
        dev.put_json(&format!("/v1/kv/l?acquire={b}"), "two").await?,
        json!(false)
    );
    assert_eq!(
        dev.kv("l").await?.map(|e| e["Value"].clone()),
        Some(json!("b25l"))
    );
    assert_eq!(
        dev.put_json(&format!("/v1/kv/l?acquire={a}"), "again").await?,
        json!(true)
    );
    let e = dev.kv("l").await?.unwrap_or_default();
    assert_eq!(
        (e["LockIndex"].clone(), e["Flags"].clone(), e["Value"].clone()),
        (json!(1), json!(0), json!("YWdhaW4="))
    );
    assert_eq!(
        dev.put_json(&format!("/v1/kv/l?release={a}"), "").await?,
        json!(true)
    );
    assert_eq!(
        dev.put_json(&format!("/v1/kv/l?acquire={b}"), "b").await?,
        json!(true)
    );
    assert_eq!(dev.kv("l").await?.map(|e| e["LockIndex"].clone()), Some(json!(2)));
    Ok(())
}

/// K15: release only by the holder; clears Session, keeps LockIndex, replaces Value and Flags; no lock-delay.
#[tokio::test]
async fn k15_release() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev.put("/v1/kv/r?release=", "").await?;
    assert_eq!(
        (resp.status().as_u16(), resp.text().await?),
        (500, "missing session".to_string())
    );
    let a = dev.session(r#"{"LockDelay":"60s"}"#).await?;
    let b = dev.session("{}").await?;
    assert_eq!(
        dev.put_json(&format!("/v1/kv/r?release={a}"), "").await?,
        json!(false)
    );
    dev.put_json(&format!("/v1/kv/r?acquire={a}&flags=9"), "held")
        .await?;
    assert_eq!(
        dev.put_json(&format!("/v1/kv/r?release={b}"), "").await?,
        json!(false)
    );
    let before = dev.kv("r").await?.unwrap_or_default();
    assert_eq!(
        dev.put_json(&format!("/v1/kv/r?release={a}&flags=5"), "bye")
            .await?,
        json!(true)
    );
    let e = dev.kv("r").await?.unwrap_or_default();
    assert!(e.get("Session").is_none());
    assert_eq!(e["LockIndex"], 1);
    assert_eq!(e["Flags"], 5);
    assert_eq!(e["Value"], "Ynll");
    assert!(e["ModifyIndex"].as_u64() > before["ModifyIndex"].as_u64());
    // L3: destroying the session after an explicit release sets no lock-delay.
    dev.put_json(&format!("/v1/session/destroy/{a}"), "").await?;
    assert_eq!(
        dev.put_json(&format!("/v1/kv/r?acquire={b}"), "").await?,
        json!(true)
    );
    Ok(())
}

/// K16: DELETE answers true even for absent keys; recurse deletes a prefix; cas deletes only on a match.
#[tokio::test]
async fn k16_delete() -> anyhow::Result<()> {
    let dev = start().await?;
    assert_eq!(
        dev.delete("/v1/kv/absent").await?.json::<Value>().await?,
        json!(true)
    );
    for k in ["d/1", "d/2", "e"] {
        dev.put_json(&format!("/v1/kv/{k}"), "v").await?;
    }
    assert_eq!(
        dev.delete("/v1/kv/d?recurse").await?.json::<Value>().await?,
        json!(true)
    );
    assert_eq!(dev.get("/v1/kv/d/?recurse").await?.status(), 404);
    let m = dev
        .kv("e")
        .await?
        .and_then(|e| e["ModifyIndex"].as_u64())
        .unwrap_or(0);
    assert_eq!(
        dev.delete("/v1/kv/e?cas=0").await?.json::<Value>().await?,
        json!(false)
    );
    assert_eq!(
        dev.delete(&format!("/v1/kv/e?cas={}", m + 1))
            .await?
            .json::<Value>()
            .await?,
        json!(false)
    );
    assert_eq!(
        dev.delete(&format!("/v1/kv/e?cas={m}"))
            .await?
            .json::<Value>()
            .await?,
        json!(true)
    );
    assert_eq!(dev.kv("e").await?, None);
    assert_eq!(
        dev.delete("/v1/kv/e?cas=7").await?.json::<Value>().await?,
        json!(true)
    );
    Ok(())
}

/// K16/B6: a delete leaves a tombstone, so the prefix index never goes backwards.
#[tokio::test]
async fn k16_tombstones_keep_prefix_index() -> anyhow::Result<()> {
    let dev = start().await?;
    dev.put_json("/v1/kv/t/a", "1").await?;
    dev.put_json("/v1/kv/t/b", "2").await?;
    let before = index(&dev.get("/v1/kv/t/?recurse").await?);
    dev.delete("/v1/kv/t/b").await?;
    let after = dev.get("/v1/kv/t/?recurse").await?;
    assert!(
        index(&after) > before,
        "index after delete {} > {before}",
        index(&after)
    );
    Ok(())
}

/// K17: write responses carry no X-Consul-Index.
#[tokio::test]
async fn k17_writes_have_no_index_header() -> anyhow::Result<()> {
    let dev = start().await?;
    let put = dev.put("/v1/kv/w", "v").await?;
    assert_eq!(header(&put, "X-Consul-Index"), "");
    let del = dev.delete("/v1/kv/w").await?;
    assert_eq!(header(&del, "X-Consul-Index"), "");
    Ok(())
}
