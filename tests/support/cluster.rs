//! Test harness: runs `simpleloggers dev-consul` and `simpleloggers node` as real processes on
//! loopback ports chosen by the OS, and offers the signals tests inject (SIGKILL, SIGTERM,
//! SIGSTOP/SIGCONT) and polling helpers with deadlines.

#![allow(dead_code)]

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_simpleloggers");

/// Fast election timings for tests (the dev server is started with a 1 s TTL minimum).
pub const FAST: &[&str] = &[
    "--session-ttl",
    "2s",
    "--lock-delay",
    "1s",
    "--renew-interval",
    "200ms",
    "--check-interval",
    "250ms",
];

/// A child process that is killed when dropped.
pub struct Proc {
    child: Child,
    /// The address it serves on.
    pub addr: SocketAddr,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `args`, waits for the `listening on http://ADDR` line on stdout.
    pub async fn start(args: &[String], log: PathBuf, env: &[(&str, String)]) -> Proc {
        let stderr = std::fs::File::create(&log).expect("create log file");
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn simpleloggers");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no listening line from {args:?}; log {}", log.display()))
            .expect("read stdout")
            .unwrap_or_else(|| {
                panic!(
                    "{args:?} exited early: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let addr = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Proc { child, addr, log }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// SIGSTOP, then waits until the kernel reports every thread stopped (state `T`), so
    /// that nothing the test sends afterwards can be processed before SIGCONT.
    pub async fn pause(&self) {
        self.signal(Signal::SIGSTOP);
        let pid = self.child.id().expect("running");
        let stopped = eventually(Duration::from_secs(5), || async {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            let all_stopped = tasks.filter_map(|t| t.ok()).all(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        stat.rsplit(')')
                            .next()
                            .map(|rest| rest.trim_start().starts_with('T'))
                    })
                    .unwrap_or(false)
            });
            all_stopped.then_some(())
        })
        .await;
        assert!(stopped.is_some(), "process {pid} did not stop");
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        self.signal(Signal::SIGCONT);
        let _ = self.child.kill().await;
    }

    /// SIGTERM and wait for a clean exit (panics if it does not exit 0 within the bound).
    pub async fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("process did not stop within 20s of SIGTERM")
            .expect("wait");
        assert!(
            status.success(),
            "exit status {status:?}; log:\n{}",
            self.log_text()
        );
    }

    /// The process's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts a dev Consul process with a 1 s session TTL minimum.
pub async fn dev_consul(dir: &Path) -> Proc {
    let args = ["dev-consul", "--listen", "127.0.0.1:0", "--session-ttl-min", "1s"].map(String::from);
    Proc::start(&args, dir.join("dev-consul.log"), &[]).await
}

/// A node definition, so that a node can be restarted with the same name, port and data.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Consul URL.
    pub consul: String,
    /// Extra flags.
    pub extra: Vec<String>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl NodeSpec {
    /// A node `name` under `dir`, with the fast timings.
    pub fn new(dir: &Path, name: &str, consul: &str) -> Self {
        NodeSpec {
            name: name.into(),
            data_dir: dir.join(name),
            consul: consul.into(),
            extra: FAST.iter().map(|s| s.to_string()).collect(),
            log: dir.join(format!("{name}.log")),
        }
    }

    /// Starts it on `listen` (`127.0.0.1:0` the first time, its old address on a restart).
    pub async fn start(&self, listen: &str) -> Proc {
        let mut args: Vec<String> = [
            "node",
            "--name",
            &self.name,
            "--listen",
            listen,
            "--consul-addr",
            &self.consul,
        ]
        .map(String::from)
        .to_vec();
        args.push("--data-dir".into());
        args.push(self.data_dir.display().to_string());
        args.extend(self.extra.iter().cloned());
        // Append to the same log across restarts.
        let log = self.log.with_extension(format!("{}.log", unique()));
        Proc::start(&args, log, &[]).await
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A dev Consul and `n` nodes.
pub struct Cluster {
    /// Scratch directory (data dirs, logs).
    pub dir: tempfile::TempDir,
    /// The dev Consul.
    pub consul: Proc,
    /// Node definitions.
    pub specs: Vec<NodeSpec>,
    /// Running nodes (`None` while stopped).
    pub nodes: Vec<Option<Proc>>,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl Cluster {
    /// Starts dev Consul and `n` nodes with `extra` flags added to the fast timings.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let consul = dev_consul(dir.path()).await;
        let mut specs = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut spec = NodeSpec::new(dir.path(), &format!("n{i}"), &consul.url());
            spec.extra.extend(extra.iter().map(|s| s.to_string()));
            nodes.push(Some(spec.start("127.0.0.1:0").await));
            specs.push(spec);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        Cluster {
            dir,
            consul,
            specs,
            nodes,
            http,
        }
    }

    /// The node's URL (it must be running).
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].as_ref().expect("node running").url()
    }

    /// `/readyz` of node `i`: `Some(body)` when 200, `None` otherwise (or unreachable).
    pub async fn ready(&self, i: usize) -> Option<serde_json::Value> {
        let node = self.nodes[i].as_ref()?;
        let resp = self
            .http
            .get(format!("{}/readyz", node.url()))
            .send()
            .await
            .ok()?;
        if resp.status() == 200 {
            resp.json().await.ok()
        } else {
            None
        }
    }

    /// GETs `url` and decodes its JSON body (panics on any failure: for test assertions).
    pub async fn get_json(&self, url: impl AsRef<str>) -> serde_json::Value {
        let url = url.as_ref();
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
    }

    /// Indices of the nodes answering `/readyz` 200.
    pub async fn ready_nodes(&self) -> Vec<usize> {
        let mut ready = Vec::new();
        for i in 0..self.nodes.len() {
            if self.ready(i).await.is_some() {
                ready.push(i);
            }
        }
        ready
    }

    /// Waits until exactly one node is ready and returns it.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let found = eventually(within, || async {
            let ready = self.ready_nodes().await;
            (ready.len() == 1).then(|| ready[0])
        })
        .await;
        found.unwrap_or_else(|| panic!("no single ready leader within {within:?}"))
    }

    /// Restarts node `i` on its previous address with its data.
    pub async fn restart(&mut self, i: usize, addr: SocketAddr) {
        self.nodes[i] = Some(self.specs[i].start(&addr.to_string()).await);
    }

    /// The election key as Consul holds it: `(session, lock_index, leader name)`.
    pub async fn lock_holder(&self) -> Option<(String, u64, String)> {
        let url = format!("{}/v1/kv/service/simpleloggers/leader", self.consul.url());
        let resp = self.http.get(url).send().await.ok()?;
        if resp.status() != 200 {
            return None;
        }
        let entries: serde_json::Value = resp.json().await.ok()?;
        let entry = &entries[0];
        let session = entry["Session"].as_str()?.to_string();
        let value = base64_decode(entry["Value"].as_str()?)?;
        let record: serde_json::Value = serde_json::from_slice(&value).ok()?;
        Some((
            session,
            entry["LockIndex"].as_u64()?,
            record["name"].as_str()?.to_string(),
        ))
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Polls `probe` every 20 ms until it returns `Some` or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
