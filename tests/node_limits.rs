//! A node stays up under hostile or broken HTTP clients: a slow request head, an idle
//! keep-alive connection and a slow body are cut off at their deadlines, connections beyond the
//! cap wait in the backlog, requests beyond the concurrency limit are shed with a 503, and a
//! client inventing methods or paths cannot create metric label values. Each test runs the real
//! node (`node::run`) in-process on 127.0.0.1:0, with short limits set through its flags; the
//! tests that write get a leader from an in-process dev-consul. Self-contained on purpose: no
//! shared harness, only its election timings (`Timings::FAST`).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use clap::Parser;
use devconsul::{Config, DevConsulHandle};
use serde_json::Value;
use simpleloggers::{
    local_cluster::Timings,
    node::{self, NodeConfig},
    shutdown::CancellationToken,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Bound on every wait for an event; reaching it fails the test.
const WAIT: Duration = Duration::from_secs(15);

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    node: NodeConfig,
}

/// A node running in this process.
struct TestNode {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), node::NodeError>>,
    http: reqwest::Client,
    _consul: Option<DevConsulHandle>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    /// A node whose Consul does not answer: it never leads, but serves reads, probes and metrics.
    async fn alone(flags: &[&str]) -> anyhow::Result<TestNode> {
        // Nothing listens on port 1 of the loopback: every Consul call is refused at once.
        Self::start("127.0.0.1:1".into(), None, flags).await
    }

    /// A node with a dev-consul of its own, waited on until it leads.
    async fn leader(flags: &[&str]) -> anyhow::Result<TestNode> {
        let consul = devconsul::spawn(Config {
            session_ttl_min: Duration::from_secs(1),
            check_interval_min: Timings::FAST.check_interval,
            ..Config::ephemeral()
        })
        .await?;
        let node = Self::start(consul.url(), Some(consul), flags).await?;
        let (http, ready) = (&node.http, &format!("{}/readyz", node.url()));
        eventually("the node leads", || async move {
            Ok(http.get(ready).send().await?.status() == 200)
        })
        .await?;
        Ok(node)
    }

    async fn start(
        consul_addr: String,
        consul: Option<DevConsulHandle>,
        flags: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let data_dir = dir.path().display().to_string();
        let mut args: Vec<String> = [
            "node",
            "--name",
            "n0",
            "--data-dir",
            &data_dir,
            "--consul-addr",
            &consul_addr,
        ]
        .map(String::from)
        .into();
        // The tests' election timings, the ones every local cluster of the tests uses.
        args.extend(Timings::FAST.node_args());
        args.extend(flags.iter().map(|f| f.to_string()));
        let config = Flags::try_parse_from(args)?.node;
        let stop = CancellationToken::new();
        let task = tokio::spawn(node::run(config, listener, stop.clone()));
        let http = reqwest::Client::builder().timeout(WAIT).build()?;
        Ok(TestNode {
            addr,
            stop,
            task,
            http,
            _consul: consul,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self.http.get(format!("{}{path}", self.url())).send().await?)
    }

    /// The value of the metric line that starts with `series` (0 when absent).
    async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = self.get("/metrics").await?.text().await?;
        Ok(text
            .lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `check` every 20 ms until it holds; fails after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let until = Instant::now() + WAIT;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw HTTP response.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Reads one response with a `Content-Length` from `conn`, within [`WAIT`].
async fn read_answer(conn: &mut TcpStream) -> anyhow::Result<Answer> {
    tokio::time::timeout(WAIT, async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed before a response head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec())?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line: {head}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| anyhow::anyhow!("no content-length: {head}"))?;
        let mut body = buf[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed inside a response body");
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(Answer {
            status,
            head,
            body: String::from_utf8(body)?,
        })
    })
    .await?
}

/// Waits until the server closes `conn` (EOF or reset), ignoring any bytes before; returns how
/// long that took.
async fn closed_by_server(conn: &mut TcpStream) -> anyhow::Result<Duration> {
    let started = Instant::now();
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match conn.read(&mut chunk).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the server did not close the connection within {WAIT:?}"))?;
    Ok(started.elapsed())
}

async fn connect(node: &TestNode) -> anyhow::Result<TcpStream> {
    let conn = TcpStream::connect(node.addr).await?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n";

/// A client that stops in the middle of its request head, and one that sends nothing, are
/// disconnected after `--http-header-timeout`, while a normal client is served meanwhile.
#[tokio::test]
async fn header_timeout_cuts_off_a_slow_head() -> anyhow::Result<()> {
    let timeout = Duration::from_millis(400);
    let node = TestNode::alone(&["--http-header-timeout", "400ms", "--http-idle-timeout", "1h"]).await?;
    let mut partial = connect(&node).await?;
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: no").await?;
    let mut silent = connect(&node).await?;

    assert_eq!(
        node.get("/healthz").await?.status(),
        200,
        "a normal client is served"
    );

    let took = closed_by_server(&mut partial).await?;
    assert!(
        took + Duration::from_millis(50) >= timeout,
        "closed after {took:?}, before the deadline"
    );
    closed_by_server(&mut silent).await?;
    let closed = node
        .metric(r#"simpleloggers_http_connections_closed_total{reason="header_timeout"}"#)
        .await?;
    assert!(closed >= 2.0, "header timeouts counted: {closed}");
    Ok(())
}

/// A kept-alive connection with no request is closed after `--http-idle-timeout`; a
/// connection that is streaming a response (the live tail) is busy, not idle, and stays open.
#[tokio::test]
async fn idle_keep_alive_connection_is_closed() -> anyhow::Result<()> {
    let timeout = Duration::from_millis(400);
    let node = TestNode::alone(&["--http-idle-timeout", "400ms", "--http-header-timeout", "1h"]).await?;
    let mut stream = connect(&node).await?;
    stream
        .write_all(b"GET /api/v1/log/stream?from=0 HTTP/1.1\r\nHost: node\r\n\r\n")
        .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        anyhow::ensure!(stream.read(&mut byte).await? == 1, "the stream closed early");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    let mut idle = connect(&node).await?;
    idle.write_all(GET_HEALTHZ).await?;
    assert_eq!(read_answer(&mut idle).await?.status, 200);
    let took = closed_by_server(&mut idle).await?;
    assert!(
        took + Duration::from_millis(50) >= timeout,
        "closed after {took:?}, before the deadline"
    );

    // The stream began before the idle connection, so it has outlived the idle timeout: it is
    // still open (a read finds nothing to read, not the end).
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok(n) if n > 0 => {}
        other => panic!("the streaming connection was closed: {other:?}"),
    }
    let closed = node
        .metric(r#"simpleloggers_http_connections_closed_total{reason="idle_timeout"}"#)
        .await?;
    assert!(closed >= 1.0, "idle timeouts counted: {closed}");
    Ok(())
}

/// A body that stalls, and a body dripped a byte at a time (which a per-chunk timeout would
/// let through), are answered 408 with a JSON error once `--http-body-timeout` has passed since
/// the head; a normal write is served meanwhile and nothing of the slow bodies is stored.
#[tokio::test]
async fn slow_body_gets_408_json() -> anyhow::Result<()> {
    let timeout = Duration::from_millis(600);
    let node = TestNode::leader(&["--http-body-timeout", "600ms"]).await?;
    let mut stalled = connect(&node).await?;
    let started = Instant::now();
    stalled
        .write_all(b"POST /api/v1/log HTTP/1.1\r\nHost: node\r\nContent-Length: 10\r\n\r\nabc")
        .await?;
    let mut dripped = connect(&node).await?;
    dripped
        .write_all(b"POST /api/v1/log HTTP/1.1\r\nHost: node\r\nContent-Length: 100\r\n\r\n")
        .await?;
    let (mut drip_read, mut drip_write) = dripped.into_split();
    // Pacing only: one byte every 50 ms, 5 s in all if nothing stopped it.
    let drip = tokio::spawn(async move {
        for _ in 0..100 {
            if drip_write.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let normal = node
        .http
        .post(format!("{}/api/v1/log", node.url()))
        .body("hello")
        .send()
        .await?;
    assert_eq!(normal.status(), 200, "a normal write is served meanwhile");

    let answer = read_answer(&mut stalled).await?;
    let took = started.elapsed();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        took + Duration::from_millis(50) >= timeout,
        "answered after {took:?}"
    );
    let error = answer.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("--http-body-timeout"), "{error}");

    let mut buf = Vec::new();
    let answered = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = drip_read.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    assert!(answered.is_ok(), "the dripping client was not answered");
    assert!(
        buf.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    drip.abort();

    let read: Value = node.get("/api/v1/log?from=0").await?.json().await?;
    let messages: Vec<&str> = read["entries"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["message"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(messages, ["hello"], "nothing of the slow bodies is stored");
    Ok(())
}

/// Length of the accept queue of the IPv4 listener on `port`: connections the kernel has
/// completed but the server has not accepted (`rx_queue` of a LISTEN socket in /proc/net/tcp).
fn accept_queue(port: u16) -> anyhow::Result<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let local = format!("0100007F:{port:04X}");
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 4 && fields[1] == local && fields[3] == "0A" {
            let rx = fields[4].split(':').nth(1).unwrap_or("0");
            return Ok(u64::from_str_radix(rx, 16)?);
        }
    }
    anyhow::bail!("no listener on port {port} in /proc/net/tcp")
}

/// With `--http-max-connections 1`, a second connection is not accepted while the first is
/// open (it waits in the kernel's backlog, unanswered) while the first is still served; once
/// the first closes, the waiting client is served.
#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() -> anyhow::Result<()> {
    let node = TestNode::alone(&[
        "--http-max-connections",
        "1",
        "--http-idle-timeout",
        "1h",
        "--http-header-timeout",
        "1h",
    ])
    .await?;
    let mut first = connect(&node).await?;
    first.write_all(GET_HEALTHZ).await?;
    assert_eq!(read_answer(&mut first).await?.status, 200);

    let mut second = connect(&node).await?;
    second.write_all(GET_HEALTHZ).await?;
    let port = node.addr.port();
    eventually("the second connection waits in the backlog", || async {
        Ok(accept_queue(port)? == 1)
    })
    .await?;

    first.write_all(GET_HEALTHZ).await?;
    assert_eq!(
        read_answer(&mut first).await?.status,
        200,
        "the open connection is served"
    );
    assert_eq!(
        accept_queue(port)?,
        1,
        "the second connection is still not accepted"
    );
    let mut byte = [0u8; 1];
    assert!(
        matches!(second.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the second connection got no answer"
    );

    drop(first);
    assert_eq!(
        read_answer(&mut second).await?.status,
        200,
        "served once a slot is free"
    );
    Ok(())
}

/// With `--http-max-concurrent-requests 1`, a request arriving while one is being handled is
/// answered 503 with a JSON error and `Retry-After` at once; the probes and /metrics are not
/// limited; once the slot is free, requests are served again.
#[tokio::test]
async fn requests_beyond_the_limit_are_shed_with_503_json() -> anyhow::Result<()> {
    let node = TestNode::leader(&["--http-max-concurrent-requests", "1"]).await?;
    // Holds the only slot: its handler waits for the rest of the body.
    let mut holder = connect(&node).await?;
    holder
        .write_all(b"POST /api/v1/log HTTP/1.1\r\nHost: node\r\nContent-Length: 5\r\n\r\nhe")
        .await?;

    let (retry_after, body) = shed_request(&node).await?;
    assert_eq!(retry_after.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("--http-max-concurrent-requests"), "{body}");

    assert_eq!(
        node.get("/healthz").await?.status(),
        200,
        "liveness is not limited"
    );
    assert_eq!(
        node.get("/readyz").await?.status(),
        200,
        "readiness is not limited"
    );
    assert_eq!(
        node.get("/metrics").await?.status(),
        200,
        "metrics are not limited"
    );

    holder.write_all(b"llo").await?;
    let answer = read_answer(&mut holder).await?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["offset"], 0);
    assert_eq!(
        node.get("/api/v1/status").await?.status(),
        200,
        "the slot is free again"
    );
    Ok(())
}

/// Polls `/api/v1/status` until it is shed; returns the 503's `Retry-After` and JSON body.
async fn shed_request(node: &TestNode) -> anyhow::Result<(Option<reqwest::header::HeaderValue>, Value)> {
    let until = Instant::now() + WAIT;
    loop {
        let resp = node.get("/api/v1/status").await?;
        if resp.status() == 503 {
            let retry_after = resp.headers().get("retry-after").cloned();
            return Ok((retry_after, resp.json().await?));
        }
        anyhow::ensure!(Instant::now() < until, "no request was shed within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Invented methods are counted as `other` and unknown paths as `unmatched`: whatever a client
/// sends, it creates no new label value.
#[tokio::test]
async fn weird_methods_and_paths_create_no_label_values() -> anyhow::Result<()> {
    let node = TestNode::alone(&[]).await?;
    for (method, path) in [
        ("FOOBAR", "/api/v1/log"),
        ("BREW", "/healthz"),
        ("GET", "/no-such-path-3f9a"),
        ("X-PURGE", "/no-such-path-77c1"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        node.http
            .request(method, format!("{}{path}", node.url()))
            .send()
            .await?;
    }
    let text = node.get("/metrics").await?.text().await?;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("simpleloggers_http_requests_total{"))
        .collect();
    let known = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "other",
    ];
    for line in &series {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        assert!(known.contains(&method), "unbounded method label in {line}");
        assert!(!line.contains("no-such-path"), "raw path as a label in {line}");
    }
    assert!(
        series
            .iter()
            .any(|l| l.contains(r#"route="/api/v1/log",method="other",status="405""#)),
        "{series:#?}"
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains(r#"route="unmatched",method="GET",status="404""#)),
        "{series:#?}"
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains(r#"route="unmatched",method="other",status="404""#)),
        "{series:#?}"
    );
    Ok(())
}

/// Shutdown still drains: at once an idle connection is closed and new connections are
/// refused, a request in flight still gets its whole answer, and the node then stops.
#[tokio::test]
async fn shutdown_drains_requests_in_flight() -> anyhow::Result<()> {
    // One request slot, so that a shed request shows the write is being handled.
    let mut node = TestNode::leader(&["--http-max-concurrent-requests", "1"]).await?;
    let mut in_flight = connect(&node).await?;
    in_flight
        .write_all(b"POST /api/v1/log HTTP/1.1\r\nHost: node\r\nContent-Length: 5\r\n\r\nhe")
        .await?;
    let mut idle = connect(&node).await?;
    idle.write_all(GET_HEALTHZ).await?;
    assert_eq!(read_answer(&mut idle).await?.status, 200);
    shed_request(&node).await?;

    node.stop.cancel();
    closed_by_server(&mut idle).await?;
    let addr = node.addr;
    eventually("new connections are refused", || async {
        Ok(TcpStream::connect(addr).await.is_err())
    })
    .await?;

    in_flight.write_all(b"llo").await?;
    let answer = read_answer(&mut in_flight).await?;
    // The write was durable; whether it is acknowledged depends on the lease at that instant.
    assert!(matches!(answer.status, 200 | 503), "{answer:?}");
    assert!(answer.json().is_object(), "{answer:?}");
    assert!(
        answer.head.to_ascii_lowercase().contains("connection: close")
            || closed_by_server(&mut in_flight).await.is_ok()
    );
    let stopped = tokio::time::timeout(WAIT, &mut node.task).await??;
    assert!(stopped.is_ok(), "{stopped:?}");
    Ok(())
}
