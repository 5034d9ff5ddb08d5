//! Black-box tests of agent services and checks (A1–A8), health/catalog/self (H1–H6), including
//! the timing rules: TTL checks expiring, HTTP checks run by the server, sessions invalidated by
//! critical checks, and DeregisterCriticalServiceAfter.

mod support;

use std::{
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use devconsul::Config;
use serde_json::{json, Value};
use support::{eventually, header, index, start, start_with, Dev};

/// Registers a service from a JSON body, asserting 200.
async fn register(dev: &Dev, body: Value) -> anyhow::Result<()> {
    let resp = dev.put("/v1/agent/service/register", body.to_string()).await?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status == 200, "register: {status} {text}");
    Ok(())
}

/// The status of check `id` as agent/checks reports it.
async fn check_status(dev: &Dev, id: &str) -> anyhow::Result<String> {
    let v = dev.get_json("/v1/agent/checks").await?;
    Ok(v[id]["Status"].as_str().unwrap_or("missing").to_string())
}

/// A tiny HTTP server answering `/health` with a status the test can flip.
async fn flip_server() -> anyhow::Result<(String, Arc<AtomicU16>)> {
    let status = Arc::new(AtomicU16::new(200));
    let app = Router::new()
        .route(
            "/health",
            get(|State(s): State<Arc<AtomicU16>>| async move {
                StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }),
        )
        .with_state(status.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/health", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, status))
}

/// A1: a minimal registration answers 200 with an empty body; ID defaults to Name; Weights default; Tags `[]`.
#[tokio::test]
async fn a1_register_minimal() -> anyhow::Result<()> {
    let dev = start().await?;
    let resp = dev
        .put("/v1/agent/service/register", r#"{"Name":"web","Port":8080}"#)
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await?, "");
    let services = dev.get_json("/v1/agent/services").await?;
    assert_eq!(services["web"]["ID"], "web");
    assert_eq!(services["web"]["Service"], "web");
    assert_eq!(services["web"]["Port"], 8080);
    assert_eq!(services["web"]["Weights"], json!({"Passing":1,"Warning":1}));
    assert_eq!(services["web"]["Tags"], json!([]));
    Ok(())
}

/// A1/G6: validation: missing Name, wildcard Address, bad Meta, unknown fields; snake_case is accepted.
#[tokio::test]
async fn a1_register_validation() -> anyhow::Result<()> {
    let dev = start().await?;
    let cases = [
        (r#"{"Port":1}"#, "Missing service name"),
        (r#"{"Name":"x","Address":"0.0.0.0"}"#, "Invalid service address"),
        (r#"{"Name":"x","Address":"::"}"#, "Invalid service address"),
        (r#"{"Name":"x","Meta":{"consul-x":"1"}}"#, "Invalid Service Meta"),
        (r#"{"Name":"x","Meta":{"bad key":"1"}}"#, "Invalid Service Meta"),
        (
            r#"{"Name":"x","Bogus":1}"#,
            "Request decode failed: json: unknown field \"Bogus\"",
        ),
        (
            r#"{"Name":"x","Check":{"ID":"c","TTL":"1s"}}"#,
            "Request decode failed: json: unknown field \"ID\"",
        ),
        ("{nope", "Request decode failed"),
    ];
    for (body, want) in cases {
        let resp = dev.put("/v1/agent/service/register", body).await?;
        assert_eq!(resp.status(), 400, "{body}");
        let text = resp.text().await?;
        assert!(text.starts_with(want), "{body}: {text}");
    }
    register(
        &dev,
        json!({"name":"snake","enable_tag_override":true,"meta":{"Ok_key-1":"v"}}),
    )
    .await?;
    let services = dev.get_json("/v1/agent/services").await?;
    assert_eq!(services["snake"]["EnableTagOverride"], true);
    assert_eq!(services["snake"]["Meta"]["Ok_key-1"], "v");
    Ok(())
}

/// A1: re-registering keeps the status of checks with the same ID; `replace-existing-checks` drops others.
#[tokio::test]
async fn a1_reregister_keeps_status() -> anyhow::Result<()> {
    let dev = start().await?;
    let body = json!({"Name":"svc","Checks":[{"CheckID":"one","TTL":"30s"},{"CheckID":"two","TTL":"30s"}]});
    register(&dev, body).await?;
    dev.put("/v1/agent/check/pass/one", "").await?;
    register(
        &dev,
        json!({"Name":"svc","Port":2,"Check":{"CheckID":"one","TTL":"30s"}}),
    )
    .await?;
    assert_eq!(check_status(&dev, "one").await?, "passing");
    assert_eq!(
        check_status(&dev, "two").await?,
        "critical",
        "kept without replace-existing-checks"
    );
    let resp = dev
        .put(
            "/v1/agent/service/register?replace-existing-checks",
            json!({"Name":"svc","Check":{"CheckID":"one","TTL":"30s"}}).to_string(),
        )
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(check_status(&dev, "two").await?, "missing");
    assert_eq!(check_status(&dev, "one").await?, "passing");
    Ok(())
}

/// A2: check validation errors are 400 `Invalid check: …` / the Status message.
#[tokio::test]
async fn a2_check_validation() -> anyhow::Result<()> {
    let dev = start().await?;
    let cases = [
        (
            json!({"TTL":"10s","Interval":"10s","HTTP":"http://x"}),
            "Invalid check: Interval and TTL cannot both be specified",
        ),
        (
            json!({"HTTP":"http://127.0.0.1:1/"}),
            "Invalid check: Interval must be > 0",
        ),
        (
            json!({"Notes":"nothing"}),
            "Invalid check: TTL must be > 0 for TTL checks",
        ),
        (
            json!({"TTL":"10s","Status":"fine"}),
            "Status for checks must 'passing', 'warning', 'critical'",
        ),
        (json!({"TTL":"10"}), "Request decode failed"),
    ];
    for (check, want) in cases {
        let resp = dev
            .put(
                "/v1/agent/service/register",
                json!({"Name":"x","Check":check}).to_string(),
            )
            .await?;
        assert_eq!(resp.status(), 400, "{check}");
        let text = resp.text().await?;
        assert!(text.starts_with(want), "{check}: {text}");
    }
    register(&dev, json!({"Name":"ns","Check":{"TTL":30_000_000_000_u64}})).await?;
    Ok(())
}

/// A3/A4: default check IDs and names; checks start critical unless Status is given.
#[tokio::test]
async fn a3_check_ids_and_initial_status() -> anyhow::Result<()> {
    let dev = start().await?;
    register(&dev, json!({"Name":"solo","Check":{"TTL":"30s"}})).await?;
    register(
        &dev,
        json!({"Name":"multi","ID":"m1","Check":{"TTL":"30s"},"Checks":[{"TTL":"30s","Status":"passing"},{"TTL":"30s","Name":"named"}]}),
    )
    .await?;
    let checks = dev.get_json("/v1/agent/checks").await?;
    assert_eq!(checks["service:solo"]["Name"], "Service 'solo' check");
    assert_eq!(checks["service:solo"]["Status"], "critical");
    assert_eq!(checks["service:solo"]["Type"], "ttl");
    assert_eq!(checks["service:m1:1"]["Status"], "critical");
    assert_eq!(checks["service:m1:2"]["Status"], "passing");
    assert_eq!(checks["service:m1:3"]["Name"], "named");
    assert_eq!(checks["service:m1:3"]["ServiceID"], "m1");
    assert!(checks.get("serfHealth").is_none());
    Ok(())
}

/// A4: a TTL check not updated within its TTL turns critical with Output `TTL expired…`.
#[tokio::test]
async fn a4_ttl_check_expires() -> anyhow::Result<()> {
    let dev = start().await?;
    register(&dev, json!({"Name":"t","Check":{"CheckID":"t","TTL":"500ms"}})).await?;
    dev.put("/v1/agent/check/pass/t?note=alive", "").await?;
    assert_eq!(check_status(&dev, "t").await?, "passing");
    eventually(Duration::from_secs(5), "TTL check critical", || async {
        Ok(check_status(&dev, "t").await? == "critical")
    })
    .await?;
    let out = dev.get_json("/v1/agent/checks").await?["t"]["Output"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(out.starts_with("TTL expired"), "{out}");
    Ok(())
}

/// A4: the server probes HTTP checks: 2xx → passing, 429 → warning, 500 → critical.
#[tokio::test]
async fn a4_http_check_runs() -> anyhow::Result<()> {
    let dev = start().await?;
    let (url, status) = flip_server().await?;
    register(
        &dev,
        json!({"Name":"h","Check":{"CheckID":"h","HTTP":url,"Interval":"100ms","Timeout":"2s"}}),
    )
    .await?;
    eventually(Duration::from_secs(10), "HTTP check passing", || async {
        Ok(check_status(&dev, "h").await? == "passing")
    })
    .await?;
    status.store(429, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "HTTP check warning", || async {
        Ok(check_status(&dev, "h").await? == "warning")
    })
    .await?;
    status.store(500, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "HTTP check critical", || async {
        Ok(check_status(&dev, "h").await? == "critical")
    })
    .await?;
    Ok(())
}

/// A4/A8: an HTTP check going critical invalidates a session bound to it and releases its lock.
#[tokio::test]
async fn a8_http_check_critical_invalidates_session() -> anyhow::Result<()> {
    let dev = start().await?;
    let (url, status) = flip_server().await?;
    register(
        &dev,
        json!({"Name":"h","Check":{"CheckID":"hc","HTTP":url,"Interval":"100ms"}}),
    )
    .await?;
    eventually(Duration::from_secs(10), "HTTP check passing", || async {
        Ok(check_status(&dev, "hc").await? == "passing")
    })
    .await?;
    let sid = dev
        .session(r#"{"ServiceChecks":[{"ID":"hc"}],"LockDelay":"0s"}"#)
        .await?;
    dev.put_json(&format!("/v1/kv/leader?acquire={sid}"), "me")
        .await?;
    status.store(500, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "session invalidated", || async {
        Ok(!dev.session_exists(&sid).await?)
    })
    .await?;
    assert!(dev
        .kv("leader")
        .await?
        .unwrap_or_default()
        .get("Session")
        .is_none());
    Ok(())
}

/// A4/A8: a TTL check expiring invalidates a session bound to it (via NodeChecks too).
#[tokio::test]
async fn a8_ttl_check_expiry_invalidates_session() -> anyhow::Result<()> {
    let dev = start().await?;
    register(
        &dev,
        json!({"Name":"t","Check":{"CheckID":"tc","TTL":"1s","Status":"passing"}}),
    )
    .await?;
    let sid = dev.session(r#"{"NodeChecks":["serfHealth","tc"]}"#).await?;
    assert!(dev.session_exists(&sid).await?);
    eventually(Duration::from_secs(6), "session invalidated", || async {
        Ok(!dev.session_exists(&sid).await?)
    })
    .await?;
    Ok(())
}

/// A8/L1: `fail` invalidates bound sessions immediately; `warn` does not.
#[tokio::test]
async fn a8_fail_invalidates_warn_does_not() -> anyhow::Result<()> {
    let dev = start().await?;
    register(
        &dev,
        json!({"Name":"t","Check":{"CheckID":"c","TTL":"60s","Status":"passing"}}),
    )
    .await?;
    let sid = dev.session(r#"{"Checks":["serfHealth","c"]}"#).await?;
    dev.put("/v1/agent/check/warn/c", "").await?;
    assert!(dev.session_exists(&sid).await?);
    dev.put("/v1/agent/check/fail/c", "").await?;
    assert!(!dev.session_exists(&sid).await?);
    Ok(())
}

/// A5: pass/warn/fail set status and Output=note; update takes a body; errors have Consul's statuses.
#[tokio::test]
async fn a5_ttl_updates() -> anyhow::Result<()> {
    let dev = start().await?;
    register(&dev, json!({"Name":"t","Check":{"CheckID":"c","TTL":"60s"}})).await?;
    let resp = dev.put("/v1/agent/check/warn/c?note=slow", "").await?;
    assert_eq!((resp.status().as_u16(), resp.text().await?), (200, String::new()));
    let c = dev.get_json("/v1/agent/checks").await?["c"].clone();
    assert_eq!(
        (c["Status"].clone(), c["Output"].clone()),
        (json!("warning"), json!("slow"))
    );
    dev.put(
        "/v1/agent/check/update/c",
        r#"{"Status":"passing","Output":"fine"}"#,
    )
    .await?;
    let c = dev.get_json("/v1/agent/checks").await?["c"].clone();
    assert_eq!(
        (c["Status"].clone(), c["Output"].clone()),
        (json!("passing"), json!("fine"))
    );
    let resp = dev.put("/v1/agent/check/update/c", r#"{"Status":"meh"}"#).await?;
    assert_eq!(
        (resp.status().as_u16(), resp.text().await?),
        (400, "Invalid check status: 'meh'".to_string())
    );
    let resp = dev.put("/v1/agent/check/pass/nope", "").await?;
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await?.starts_with("Unknown check ID \"nope\""));
    let (url, _status) = flip_server().await?;
    register(
        &dev,
        json!({"Name":"h","Check":{"CheckID":"http","HTTP":url,"Interval":"10s"}}),
    )
    .await?;
    let resp = dev.put("/v1/agent/check/pass/http", "").await?;
    assert_eq!(
        (resp.status().as_u16(), resp.text().await?),
        (500, "CheckID \"http\" does not have associated TTL".to_string())
    );
    Ok(())
}

/// A6: deregistering removes the service and its checks and invalidates bound sessions; unknown IDs are 404.
#[tokio::test]
async fn a6_deregister() -> anyhow::Result<()> {
    let dev = start().await?;
    register(
        &dev,
        json!({"Name":"d","Check":{"CheckID":"dc","TTL":"60s","Status":"passing"}}),
    )
    .await?;
    let sid = dev.session(r#"{"ServiceChecks":[{"ID":"dc"}]}"#).await?;
    assert_eq!(dev.put("/v1/agent/service/deregister/d", "").await?.status(), 200);
    assert_eq!(dev.get_json("/v1/agent/services").await?, json!({}));
    assert_eq!(check_status(&dev, "dc").await?, "missing");
    assert!(!dev.session_exists(&sid).await?);
    let resp = dev.put("/v1/agent/service/deregister/d", "").await?;
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await?.starts_with("Unknown service ID \"d\""));
    Ok(())
}

/// A7: a service whose check stays critical longer than DeregisterCriticalServiceAfter is reaped
/// (minimum and reap interval lowered through the test knobs).
#[tokio::test]
async fn a7_deregister_critical_service_after() -> anyhow::Result<()> {
    let config = Config {
        check_reap_interval: Duration::from_millis(100),
        check_deregister_min: Duration::from_millis(300),
        ..Config::ephemeral()
    };
    let dev = start_with(config).await?;
    register(
        &dev,
        json!({"Name":"r","Check":{"TTL":"60s","DeregisterCriticalServiceAfter":"300ms"}}),
    )
    .await?;
    register(&dev, json!({"Name":"keep","Check":{"TTL":"60s","Status":"passing","DeregisterCriticalServiceAfter":"300ms"}})).await?;
    eventually(Duration::from_secs(10), "service reaped", || async {
        Ok(dev.get_json("/v1/agent/services").await?.get("r").is_none())
    })
    .await?;
    assert!(dev.get_json("/v1/agent/services").await?.get("keep").is_some());
    Ok(())
}

/// H1/H6: health/service shape: Node, Service (Tags never null) and Checks including a passing serfHealth.
#[tokio::test]
async fn h1_health_service_shape() -> anyhow::Result<()> {
    let dev = start().await?;
    assert_eq!(dev.get_json("/v1/health/service/none").await?, json!([]));
    register(
        &dev,
        json!({"Name":"web","ID":"web-1","Port":80,"Check":{"TTL":"60s","Status":"passing"}}),
    )
    .await?;
    let resp = dev.get("/v1/health/service/web").await?;
    assert!(index(&resp) >= 1);
    assert_eq!(header(&resp, "X-Consul-KnownLeader"), "true");
    let v: Value = resp.json().await?;
    let e = &v[0];
    for f in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "Meta",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(e["Node"].get(f).is_some(), "Node.{f}");
    }
    assert_eq!(e["Node"]["Node"], "dev-consul");
    assert_eq!(e["Node"]["Datacenter"], "dc1");
    assert!(e["Node"]["TaggedAddresses"]["lan_ipv4"].is_string());
    for f in [
        "ID",
        "Service",
        "Tags",
        "Address",
        "Meta",
        "Port",
        "Weights",
        "EnableTagOverride",
    ] {
        assert!(e["Service"].get(f).is_some(), "Service.{f}");
    }
    assert_eq!(e["Service"]["Tags"], json!([]));
    assert_eq!(e["Service"]["ID"], "web-1");
    let serf = e["Checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["CheckID"] == "serfHealth")
        .cloned();
    let serf = serf.unwrap_or_default();
    assert_eq!(
        (serf["Name"].clone(), serf["Status"].clone()),
        (json!("Serf Health Status"), json!("passing"))
    );
    assert_eq!(e["Checks"].as_array().map(Vec::len), Some(2));
    Ok(())
}

/// H2: `passing` drops instances with any non-passing check (warning too); bad values are 400.
#[tokio::test]
async fn h2_passing_filter() -> anyhow::Result<()> {
    let dev = start().await?;
    register(
        &dev,
        json!({"Name":"s","ID":"s1","Check":{"CheckID":"c1","TTL":"60s","Status":"passing"}}),
    )
    .await?;
    register(
        &dev,
        json!({"Name":"s","ID":"s2","Check":{"CheckID":"c2","TTL":"60s","Status":"warning"}}),
    )
    .await?;
    assert_eq!(
        dev.get_json("/v1/health/service/s")
            .await?
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    for q in ["passing", "passing=true", "passing=1"] {
        let v = dev.get_json(&format!("/v1/health/service/s?{q}")).await?;
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{q}");
        assert_eq!(v[0]["Service"]["ID"], "s1");
    }
    assert_eq!(
        dev.get_json("/v1/health/service/s?passing=false")
            .await?
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let resp = dev.get("/v1/health/service/s?passing=maybe").await?;
    assert_eq!(
        (resp.status().as_u16(), resp.text().await?),
        (400, "Invalid value for ?passing".to_string())
    );
    Ok(())
}

/// B1/H1: a blocking health query returns when a check changes status.
#[tokio::test]
async fn h1_health_blocks_until_check_changes() -> anyhow::Result<()> {
    let dev = start().await?;
    register(
        &dev,
        json!({"Name":"b","Check":{"CheckID":"bc","TTL":"60s","Status":"passing"}}),
    )
    .await?;
    let idx = index(&dev.get("/v1/health/service/b").await?);
    let url = format!("/v1/health/service/b?index={idx}&wait=60s&passing");
    let (resp, ()) = tokio::join!(dev.get(&url), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = dev.put("/v1/agent/check/fail/bc", "").await;
    });
    let resp = resp?;
    assert!(index(&resp) > idx);
    assert_eq!(resp.json::<Value>().await?, json!([]));
    Ok(())
}

/// H3: catalog/service is a flat, unfiltered array; catalog/services maps names to tags.
#[tokio::test]
async fn h3_catalog() -> anyhow::Result<()> {
    let dev = start().await?;
    assert_eq!(dev.get_json("/v1/catalog/service/none").await?, json!([]));
    register(
        &dev,
        json!({"Name":"c","Tags":["a"],"Port":9,"Address":"10.0.0.1","Check":{"TTL":"60s"}}),
    )
    .await?;
    let v = dev.get_json("/v1/catalog/service/c").await?;
    let e = &v[0];
    for f in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "ServiceKind",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServiceAddress",
        "ServiceWeights",
        "ServiceMeta",
        "ServicePort",
        "ServiceEnableTagOverride",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(e.get(f).is_some(), "{f}");
    }
    assert_eq!(
        (e["ServicePort"].clone(), e["ServiceAddress"].clone()),
        (json!(9), json!("10.0.0.1"))
    );
    assert_eq!(dev.get_json("/v1/catalog/services").await?, json!({"c":["a"]}));
    Ok(())
}

/// H5: agent/self reports Config.NodeName and Config.Datacenter.
#[tokio::test]
async fn h5_agent_self() -> anyhow::Result<()> {
    let dev = start_with(Config {
        node_name: "node-x".into(),
        ..Config::ephemeral()
    })
    .await?;
    let v = dev.get_json("/v1/agent/self").await?;
    assert_eq!(v["Config"]["NodeName"], "node-x");
    assert_eq!(v["Config"]["Datacenter"], "dc1");
    assert_eq!(v["Config"]["Server"], true);
    assert!(v["Member"].is_object());
    let sid = dev.session("{}").await?;
    assert_eq!(
        dev.get_json(&format!("/v1/session/info/{sid}")).await?[0]["Node"],
        "node-x"
    );
    Ok(())
}

/// A1/A4: re-registering an HTTP check as a TTL check stops the old probe (status now driven by TTL updates).
#[tokio::test]
async fn a1_reregister_changes_check_kind() -> anyhow::Result<()> {
    let dev = start().await?;
    let (url, _status) = flip_server().await?;
    register(
        &dev,
        json!({"Name":"k","Check":{"CheckID":"k","HTTP":url,"Interval":"100ms"}}),
    )
    .await?;
    eventually(Duration::from_secs(10), "HTTP check passing", || async {
        Ok(check_status(&dev, "k").await? == "passing")
    })
    .await?;
    register(&dev, json!({"Name":"k","Check":{"CheckID":"k","TTL":"60s"}})).await?;
    dev.put("/v1/agent/check/warn/k?note=ttl-now", "").await?;
    // Give a stale probe several intervals to (wrongly) overwrite the status.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = dev.get_json("/v1/agent/checks").await?["k"].clone();
    assert_eq!(
        (c["Status"].clone(), c["Output"].clone(), c["Type"].clone()),
        (json!("warning"), json!("ttl-now"), json!("ttl"))
    );
    Ok(())
}

/// A2/A4: TCP checks are probed by the server: a listening port passes, a closed one is critical.
#[tokio::test]
async fn a4_tcp_check() -> anyhow::Result<()> {
    let dev = start().await?;
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let open_addr = open.local_addr()?.to_string();
    let closed_addr = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    register(
        &dev,
        json!({"Name":"t1","Check":{"CheckID":"open","TCP":open_addr,"Interval":"100ms"}}),
    )
    .await?;
    register(&dev, json!({"Name":"t2","Check":{"CheckID":"closed","TCP":closed_addr,"Interval":"100ms","Status":"passing"}}))
        .await?;
    eventually(Duration::from_secs(10), "open port passing", || async {
        Ok(check_status(&dev, "open").await? == "passing")
    })
    .await?;
    eventually(Duration::from_secs(10), "closed port critical", || async {
        Ok(check_status(&dev, "closed").await? == "critical")
    })
    .await?;
    drop(open);
    Ok(())
}

/// A server answering 200 that records when each request arrived.
async fn probe_recorder() -> anyhow::Result<(String, Arc<std::sync::Mutex<Vec<std::time::Instant>>>)> {
    let seen: Arc<std::sync::Mutex<Vec<std::time::Instant>>> = Arc::default();
    let app = Router::new()
        .route(
            "/health",
            get(
                |State(s): State<Arc<std::sync::Mutex<Vec<std::time::Instant>>>>| async move {
                    s.lock().expect("probe log").push(std::time::Instant::now());
                    StatusCode::OK
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/health", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, seen))
}

/// Registers an HTTP check with `Interval: 100ms` and answers the gaps between its first `n`
/// probes.
async fn probe_gaps(dev: &Dev, n: usize) -> anyhow::Result<Vec<Duration>> {
    let (url, seen) = probe_recorder().await?;
    register(
        dev,
        json!({"Name":"m","Check":{"CheckID":"m","HTTP":url,"Interval":"100ms"}}),
    )
    .await?;
    eventually(Duration::from_secs(30), "probes arrive", || async {
        Ok(seen.lock().expect("probe log").len() >= n)
    })
    .await?;
    let seen = seen.lock().expect("probe log").clone();
    Ok(seen.windows(2).take(n - 1).map(|w| w[1] - w[0]).collect())
}

/// A4: by default an HTTP check never runs more often than once a second, whatever `Interval`
/// it was registered with (Consul's `checks.MinInterval`); the definition keeps the requested
/// interval.
#[tokio::test]
async fn a4_check_interval_minimum() -> anyhow::Result<()> {
    let dev = start().await?;
    let gaps = probe_gaps(&dev, 3).await?;
    // One second apart on the server's clock; the arrival times can differ by the requests'
    // latencies, hence the slack.
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(700)),
        "probes closer than the 1 s minimum: {gaps:?}"
    );
    let c = dev.get_json("/v1/agent/checks").await?["m"].clone();
    assert_eq!(c["Interval"], "100ms");
    Ok(())
}

/// A4: `--check-interval-min` lowers the minimum for fast tests: the requested 100 ms applies.
#[tokio::test]
async fn a4_check_interval_minimum_lowered() -> anyhow::Result<()> {
    let dev = start_with(Config {
        check_interval_min: Duration::from_millis(10),
        ..Config::ephemeral()
    })
    .await?;
    let gaps = probe_gaps(&dev, 5).await?;
    assert!(
        gaps.iter().any(|g| *g < Duration::from_millis(700)),
        "every probe a second apart although the minimum is 10 ms: {gaps:?}"
    );
    Ok(())
}
