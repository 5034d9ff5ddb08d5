//! The dashboard in a real browser: headless Chromium driven through chromedriver's WebDriver
//! protocol (Debian packages `chromium` and `chromium-driver`, installed by `make browser-deps`)
//! opens one page on a demo-like cluster, shows the right leader, and — without a reload — shows
//! the new leader after the old one is SIGKILLed, with the change in its timeline, and recovers by
//! itself when the node it is viewed through restarts (a restarted port-forward). The final
//! render is saved as `target/dashboard.png` (`docs/dashboard.png`, the README's, with
//! `SIMPLELOGGERS_UPDATE_SCREENSHOT=1`). A second page, served the dashboard's own assets with a
//! cluster view built from sample `/api/v1/status` answers that carry `replication`, shows the
//! HW, the ISR with each member's lag, the election case and why writes and a truncation are
//! refused, as seen through a follower. Skips (with a message) without Chromium.

#[path = "support/cluster.rs"]
mod cluster;

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use std::sync::{Arc, Mutex};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Json, Router};
use base64::Engine;
use cluster::Cluster;
use serde_json::{json, Value};
use simpleloggers::cli::{replication, ClusterView, LeaderSummary, Member};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process and one browser session, both ended on drop.
struct Browser {
    _driver: tokio::process::Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let ready = cluster::eventually(Duration::from_secs(20), || async {
            let status: Value = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (status["value"]["ready"] == true).then_some(())
        })
        .await;
        assert!(ready.is_some(), "chromedriver did not become ready");
        let profile = tempfile::tempdir().unwrap();
        // These flags keep Chromium off the network it would otherwise call home on (this
        // machine's closed network refuses it) and let it run as root in a container.
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--hide-scrollbars".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("create a session")
            .json()
            .await
            .unwrap();
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Browser {
            _driver: driver,
            http,
            session: format!("{base}/session/{id}"),
            _profile: profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if method == reqwest::Method::POST {
            req = req.json(&body);
        }
        let answer: Value = req.send().await.expect("webdriver").json().await.unwrap();
        assert!(answer["value"]["error"].is_null(), "{path}: {answer}");
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// The text of the element with `id` (`None` when absent).
    async fn text(&self, id: &str) -> Option<String> {
        let script = "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;";
        let v = self
            .command(
                reqwest::Method::POST,
                "/execute/sync",
                json!({ "script": script, "args": [id] }),
            )
            .await;
        v.as_str().map(str::to_string)
    }

    /// Polls until the element `id` shows `wanted`.
    async fn wait_text(&self, id: &str, wanted: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let shown = self.text(id).await;
            if shown.as_deref() == Some(wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "#{id} never showed {wanted:?}; it shows {shown:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort: end the session so Chromium exits; chromedriver is killed on drop.
        let url = self.session.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = reqwest::Client::new()
                        .delete(url)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                });
            }
        })
        .join();
    }
}

async fn write_some(c: &Cluster, node: usize, what: &str) {
    for i in 0..10 {
        let _ = c
            .http()
            .post(format!("{}/api/v1/log", c.url(node)))
            .body(format!("{what} #{i}"))
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// Whether Chromium and chromedriver are installed; without them the tests skip (never on CI).
fn have_browser() -> bool {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the browser test: `make browser-deps` installs chromium and chromium-driver"
        );
        eprintln!(
            "SKIPPED: {CHROMIUM} or {CHROMEDRIVER} not found (`make browser-deps` as root installs them)"
        );
        return false;
    }
    true
}

/// One open page follows the leader across a SIGKILL; the screenshot is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_the_leader() {
    if !have_browser() {
        return;
    }
    let mut c = Cluster::start(3, &[]).await;
    let first = c.wait_leader(Duration::from_secs(20)).await;
    // Viewed through a follower that survives the kill, as through `kubectl port-forward`.
    let viewer = (first + 1) % 3;
    let browser = Browser::start().await;
    browser.open(&format!("{}/", c.url(viewer))).await;
    browser
        .wait_text("leader-name", &format!("n{first}"), Duration::from_secs(30))
        .await;
    browser
        .wait_text("observed-by", &format!("n{viewer}"), Duration::from_secs(5))
        .await;
    write_some(&c, first, "before the failover").await;

    c.node_mut(first).kill().await;
    let second = c.wait_leader(Duration::from_secs(60)).await;
    assert_ne!(second, first);
    browser
        .wait_text("leader-name", &format!("n{second}"), Duration::from_secs(30))
        .await;
    let timeline = browser.text("timeline").await.unwrap_or_default();
    assert!(
        timeline.contains(&format!("n{first} leads")) && timeline.contains(&format!("n{second} leads")),
        "the timeline shows both leaders: {timeline:?}"
    );
    let members = browser.text("members-body").await.unwrap_or_default();
    assert!(
        members.contains("unreachable"),
        "the killed node shows as unreachable: {members:?}"
    );

    // The node behind the page goes away and comes back on the same address, as when a
    // port-forward is restarted: the page says so, then recovers by itself without a reload.
    c.terminate(viewer).await;
    browser
        .wait_text("conn", "reconnecting…", Duration::from_secs(15))
        .await;
    c.node_mut(viewer).start().await.unwrap();
    browser.wait_text("conn", "live", Duration::from_secs(30)).await;
    browser
        .wait_text("tail-state", "streaming", Duration::from_secs(30))
        .await;
    let leader = c.wait_leader(Duration::from_secs(60)).await;
    browser
        .wait_text("leader-name", &format!("n{leader}"), Duration::from_secs(30))
        .await;
    let second = leader;

    // For the screenshot: the new leader's own page while it takes traffic, so the tail and
    // the ingest chart have something to show.
    browser.open(&format!("{}/", c.url(second))).await;
    browser
        .wait_text("leader-name", &format!("n{second}"), Duration::from_secs(30))
        .await;
    let url = format!("{}/api/v1/log", c.url(second));
    let http = c.http().clone();
    let traffic = tokio::spawn(async move {
        for i in 0.. {
            let _ = http
                .post(&url)
                .body(format!("after the failover #{i}"))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(20 + (i % 7) * 10)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let script = "return [rates.length, document.getElementById('tail').children.length];";
        let v = browser
            .command(
                reqwest::Method::POST,
                "/execute/sync",
                json!({ "script": script, "args": [] }),
            )
            .await;
        if v[0].as_u64().unwrap_or(0) >= 8 && v[1].as_u64().unwrap_or(0) >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "chart samples and tail lines: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    traffic.abort();
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    // Every run saves its screenshot under target/; the README's copy in docs/ is refreshed only
    // on request, so a test run leaves the work tree clean.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = if std::env::var_os("SIMPLELOGGERS_UPDATE_SCREENSHOT").is_some() {
        root.join("docs/dashboard.png")
    } else {
        root.join("target/dashboard.png")
    };
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).expect("create the screenshot's directory");
    }
    std::fs::write(&target, png).unwrap_or_else(|e| panic!("save {}: {e}", target.display()));
}

/// What a node answers on `/api/v1/status`, with `replication` when given.
fn node_status(name: &str, role: &str, end: u64, replication: Option<Value>) -> Value {
    let mut s = json!({
        "name": name, "address": format!("{name}:3000"), "role": role, "ready": role == "leader",
        "leader": null, "term": 4, "lease_remaining_ms": null, "reason": "sample",
        "role_since": "2025-01-01T00:00:00Z", "transitions": 1, "log_end_offset": end,
        "log_start_offset": 0, "consul_reachable": true, "session": format!("session-{name}"),
    });
    if let Some(r) = replication {
        s["replication"] = r;
    }
    s
}

/// The body of `/api/v1/cluster` built as a node builds it, from these members' status answers
/// (`None`: unreachable), observed through `observed_by`.
fn cluster_answer(observed_by: &str, statuses: Vec<(&str, Option<Value>)>) -> Value {
    let leader = LeaderSummary {
        name: "n0".into(),
        address: "n0:3000".into(),
        since: "2025-01-01T00:00:00Z".into(),
        term: 4,
        session: "session-n0".into(),
    };
    let mut members: Vec<Member> = statuses
        .into_iter()
        .map(|(name, status)| {
            let mut m = Member::registered(name, &format!("{name}:3000"), name, "passing");
            if let Some(s) = status {
                m.absorb_status(&s, Some(&leader)).expect("a valid status");
            }
            m
        })
        .collect();
    replication::annotate(&mut members);
    let view = ClusterView {
        service: "simpleloggers".into(),
        leader: Some(leader),
        members,
        observed_at_ms: 1,
    };
    let mut answer = serde_json::to_value(view).unwrap();
    answer["observed_by"] = json!(observed_by);
    answer
}

fn follower_report(hw: u64, end: u64, case: Value, truncation: Value) -> Value {
    json!({"replicas": 3, "min_insync": 2, "acks": "all", "high_watermark": hw, "log_end": end,
           "log_start": 0, "case": case, "isr": ["n0", "n1"], "members": [], "leader": "n0",
           "writes_refused": null, "truncation_refused": truncation})
}

/// A leader refusing writes with n1 in the ISR (lag 5) and n2 out (lag 300), n2 having refused
/// a truncation; seen through n1.
fn troubled_cluster() -> Value {
    let leader = json!({"replicas": 3, "min_insync": 2, "acks": "all", "high_watermark": 123,
        "log_end": 425, "log_start": 0, "case": "normal", "isr": ["n0", "n1"], "leader": "n0",
        "members": [
            {"name": "n1", "incarnation": "i1", "log_end": 420, "lag_records": 5, "in_isr": true,
             "caught_up_ms_ago": 12},
            {"name": "n2", "incarnation": "i2", "log_end": 125, "lag_records": 300, "in_isr": false,
             "caught_up_ms_ago": 4200}],
        "writes_refused": "not_enough_replicas: 1 in sync, --min-insync 2", "truncation_refused": null});
    let truncation =
        json!({"divergence": 100, "high_watermark": 123, "reason": "committed records would go"});
    cluster_answer(
        "n1",
        vec![
            ("n0", Some(node_status("n0", "leader", 425, Some(leader)))),
            (
                "n1",
                Some(node_status(
                    "n1",
                    "follower",
                    420,
                    Some(follower_report(120, 420, json!("normal"), Value::Null)),
                )),
            ),
            (
                "n2",
                Some(node_status(
                    "n2",
                    "follower",
                    125,
                    Some(follower_report(123, 125, json!("not_in_isr"), truncation)),
                )),
            ),
        ],
    )
}

/// The leader gone; n1 waits after Consul lost its state, its own report is all there is.
fn leaderless_cluster() -> Value {
    let waiting = json!({"state_loss_waiting": {"reported": 2, "missing": ["n0"]}});
    cluster_answer(
        "n1",
        vec![
            ("n0", None),
            (
                "n1",
                Some(node_status(
                    "n1",
                    "follower",
                    420,
                    Some(follower_report(118, 420, waiting, Value::Null)),
                )),
            ),
        ],
    )
}

/// Serves the dashboard's own files (the ones the binary embeds) with `/api/v1/cluster` and
/// `/api/v1/status` answering what `view` holds; the live tail finds no stream (404).
async fn serve_dashboard(view: Arc<Mutex<Value>>) -> (String, tokio::task::JoinHandle<()>) {
    const INDEX: &str = include_str!("../assets/dashboard/index.html");
    const APP: &str = include_str!("../assets/dashboard/app.js");
    const STYLE: &str = include_str!("../assets/dashboard/style.css");
    let app = Router::new()
        .route("/", get(|| async { axum::response::Html(INDEX) }))
        .route(
            "/assets/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], APP) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }),
        )
        .route(
            "/api/v1/cluster",
            get(|State(v): State<Arc<Mutex<Value>>>| async move { Json(v.lock().unwrap().clone()) }),
        )
        .route(
            "/api/v1/status",
            get(|| async { Json(node_status("n1", "follower", 420, None)).into_response() }),
        )
        .with_state(view);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

/// Through a follower's page: the HW, election case and refused writes of the leader's report,
/// the ISR with each member's lag and time since caught up, the out-of-ISR member, the refused
/// truncation with its divergence point and HW, and the HW/LAG/ISR/CASE columns; then, with the
/// leader gone, the follower's own report and its waiting case, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_replication() {
    if !have_browser() {
        return;
    }
    let view = Arc::new(Mutex::new(troubled_cluster()));
    let (url, server) = serve_dashboard(view.clone()).await;
    let browser = Browser::start().await;
    browser.open(&format!("{url}/")).await;
    let within = Duration::from_secs(20);
    browser.wait_text("repl-hw", "123", within).await;
    browser.wait_text("observed-by", "n1", within).await;
    assert_eq!(
        browser.text("repl-source").await.as_deref(),
        Some("(as n0 reports)")
    );
    assert_eq!(browser.text("repl-case").await.as_deref(), Some("normal"));
    assert_eq!(
        browser.text("repl-writes").await.as_deref(),
        Some("refused: not_enough_replicas: 1 in sync, --min-insync 2")
    );
    for (id, wanted) in [
        ("repl-replicas", "3"),
        ("repl-min-insync", "2"),
        ("repl-acks", "all"),
    ] {
        assert_eq!(browser.text(id).await.as_deref(), Some(wanted), "#{id}");
    }
    let lines = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };
    let list = |id: &'static str| {
        let browser = &browser;
        async move {
            let script =
                "return Array.from(document.getElementById(arguments[0]).children, (e) => e.textContent);";
            browser
                .command(
                    reqwest::Method::POST,
                    "/execute/sync",
                    json!({"script": script, "args": [id]}),
                )
                .await
        }
    };
    assert_eq!(
        lines(list("repl-isr").await),
        [
            "n0 leader",
            "n1 lag 5 (12ms)",
            "n2 out of the ISR, lag 300 (4.2s)"
        ]
    );
    assert_eq!(
        lines(list("repl-alerts").await),
        [
            "n0: writes refused: not_enough_replicas: 1 in sync, --min-insync 2",
            "n2: truncation refused: diverged at 100, below the high watermark 123: committed records would go",
        ]
    );
    let script = "return Array.from(document.querySelectorAll('#members-body tr'), (tr) => Array.from(tr.children, (td) => td.textContent).slice(0, 9));";
    let rows = browser
        .command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await;
    assert_eq!(
        rows,
        json!([
            ["n0", "leader", "true", "4", "425", "123", "-", "yes", "normal"],
            ["n1", "follower", "false", "4", "420", "120", "5 (12ms)", "yes", "normal"],
            [
                "n2",
                "follower",
                "false",
                "4",
                "125",
                "123",
                "300 (4.2s)",
                "no",
                "not_in_isr"
            ],
        ])
    );

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-replication.png");
    std::fs::write(&shot, png).unwrap_or_else(|e| panic!("save {}: {e}", shot.display()));

    // The leader goes away: the page, still viewed through n1, falls back to n1's own report.
    *view.lock().unwrap() = leaderless_cluster();
    browser.wait_text("repl-hw", "118", within).await;
    assert_eq!(
        browser.text("repl-source").await.as_deref(),
        Some("(as n1 reports)")
    );
    assert_eq!(
        browser.text("repl-case").await.as_deref(),
        Some("state_loss_waiting (2 reported, missing n0)")
    );
    assert_eq!(browser.text("repl-writes").await.as_deref(), Some("accepted"));
    assert_eq!(lines(list("repl-isr").await), ["n0 leader, unreachable", "n1"]);
    assert_eq!(
        lines(list("repl-alerts").await),
        ["n1: election case state_loss_waiting (2 reported, missing n0)"]
    );
    server.abort();
}
