//! The dashboard in a real browser: headless Chromium driven through chromedriver's WebDriver
//! protocol (Debian packages `chromium` and `chromium-driver`, installed by `make browser-deps`)
//! opens one page on a demo-like cluster, shows the right leader, and — without a reload — shows
//! the new leader after the old one is SIGKILLed, with the change in its timeline, and recovers by
//! itself when the node it is viewed through restarts (a restarted port-forward). The final
//! render is saved as `target/dashboard.png` (`docs/dashboard.png`, the README's, with
//! `SIMPLELOGGERS_UPDATE_SCREENSHOT=1`). Skips (with a message) without Chromium.

#[path = "support/cluster.rs"]
mod cluster;

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine;
use cluster::Cluster;
use serde_json::{json, Value};

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

/// One open page follows the leader across a SIGKILL; the screenshot is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_the_leader() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the browser test: `make browser-deps` installs chromium and chromium-driver"
        );
        eprintln!(
            "SKIPPED: {CHROMIUM} or {CHROMEDRIVER} not found (`make browser-deps` as root installs them)"
        );
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
