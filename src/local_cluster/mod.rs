//! A local cluster of real processes: `simpleloggers dev-consul` and N `simpleloggers node`s on
//! loopback ports the OS picks, each node with its own data directory and log file. Nodes (and
//! the dev Consul) can be stopped, killed, paused, resumed and restarted on the same address;
//! the cluster waits for a single leader, reads a node's log over HTTP and waits for replication
//! states (`replication.rs`). On request each node reaches the dev Consul through a TCP proxy of
//! its own (`tcp_proxy.rs`) that fault injection can black-hole, refuse or slow down. Every child
//! is killed when the cluster is dropped, even on panic, and by the kernel if this process dies.
//!
//! One harness for the demo, the integration tests ([`ClusterOptions::fast`]) and the
//! benchmarks ([`ClusterOptions::new`], the nodes' default timings).

mod options;
mod process;
mod replication;
mod tcp_proxy;

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use options::{ClusterOptions, Timings};
pub use process::{LocalProcess, ProcessSpec};
pub use replication::{MemberStatus, ReplicationStatus};
pub use tcp_proxy::{ProxyMode, TcpProxy};

use crate::{
    cli::tail::TailEntry,
    consul::{ConsulClient, ConsulConfig, ConsulError, QueryOptions},
    discovery::{leader_from_kv, CurrentLeader, DEFAULT_ELECTION_KEY},
};

/// How often [`eventually`] probes.
const POLL: Duration = Duration::from_millis(20);
/// Entries per page when reading a node's log.
const READ_PAGE: usize = 10_000;

/// Why a local cluster, or one of its processes, could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A process did not start.
    #[error("{name} did not start: {message} (see {})", log.display())]
    Start {
        /// Process name.
        name: String,
        /// What happened.
        message: String,
        /// Its log file.
        log: PathBuf,
    },
    /// The process is not running.
    #[error("{name} is not running")]
    NotRunning {
        /// Process name.
        name: String,
    },
    /// Something did not happen in time.
    #[error("{name}: no {what} within {after:?}")]
    Timeout {
        /// Process name (or `cluster`).
        name: String,
        /// What was awaited.
        what: &'static str,
        /// How long it was awaited.
        after: Duration,
    },
    /// The nodes did not reach a replication state in time.
    #[error("cluster: no {what} within {after:?}; last seen: {last}")]
    Unsettled {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        after: Duration,
        /// The last statuses seen.
        last: String,
    },
    /// A graceful stop took too long, so the process was killed.
    #[error("{name} did not stop within {after:?}; killed it")]
    StopTimeout {
        /// Process name.
        name: String,
        /// The stop timeout.
        after: Duration,
    },
    /// The dev Consul could not be asked.
    #[error("Consul: {0}")]
    Consul(#[from] ConsulError),
    /// A node's HTTP API answered badly or not at all.
    #[error("{url}: {message}")]
    Http {
        /// What was requested.
        url: String,
        /// What went wrong.
        message: String,
    },
}

impl LocalClusterError {
    /// Maps an I/O error to [`LocalClusterError::Io`] saying what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| LocalClusterError::Io { what, source }
    }
}

/// The single ready node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leader {
    /// Its index in the cluster.
    pub index: usize,
    /// The term its `/readyz` reports.
    pub term: u64,
}

/// Polls `probe` every 20 ms until it answers `Some` or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(POLL, within, probe).await
}

/// Polls `probe` every `period` until it answers `Some` or `within` passes.
pub async fn eventually_every<T, F, Fut>(period: Duration, within: Duration, mut probe: F) -> Option<T>
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
        tokio::time::sleep(period).await;
    }
}

/// A dev Consul and its nodes, all child processes.
pub struct LocalCluster {
    /// The nodes, by index (dropped, hence killed, before the directory is removed).
    nodes: Vec<LocalProcess>,
    /// Each node's data directory, by index.
    data_dirs: Vec<PathBuf>,
    /// Each node's proxy to the dev Consul, by index, when the options ask for them.
    consul_proxies: Vec<Option<TcpProxy>>,
    /// The dev Consul.
    consul: LocalProcess,
    /// A client of the dev Consul.
    consul_client: ConsulClient,
    /// HTTP client for probes and reads.
    http: reqwest::Client,
    /// What the cluster was built from (for nodes added later).
    options: ClusterOptions,
    /// Where data and logs are.
    dir: PathBuf,
    /// The temporary directory, when the options named none (removed on drop, last).
    _temp: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Starts the dev Consul, then `options.nodes` nodes one after the other; does not wait for
    /// a leader (see [`LocalCluster::wait_leader`]).
    ///
    /// # Errors
    /// A directory cannot be created or a process does not start (those already started are
    /// killed).
    pub async fn start(options: ClusterOptions) -> Result<Self, LocalClusterError> {
        let (temp, dir) = match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(LocalClusterError::io(format!("cannot create {}", dir.display())))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix(&options.temp_prefix)
                    .tempdir()
                    .map_err(LocalClusterError::io("cannot create a temporary directory"))?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        let mut consul_spec = ProcessSpec::new("dev-consul", &options.binary, dir.join("dev-consul.log"))
            .args(["dev-consul"])
            .env("RUST_LOG", &options.rust_log);
        if let Some(min) = options.session_ttl_min {
            consul_spec = consul_spec.args([
                "--session-ttl-min".to_string(),
                humantime::format_duration(min).to_string(),
            ]);
        }
        if let Some(min) = options.check_interval_min {
            consul_spec = consul_spec.args([
                "--check-interval-min".to_string(),
                humantime::format_duration(min).to_string(),
            ]);
        }
        consul_spec = consul_spec.args(options.consul_args.iter().cloned());
        consul_spec.listen_flag = Some("--listen".into());
        consul_spec.start_timeout = options.start_timeout;
        consul_spec.stop_timeout = options.stop_timeout;
        let consul = LocalProcess::spawn(consul_spec).await?;
        let consul_client = ConsulClient::new(&ConsulConfig::new(consul.url()))?;
        let http = reqwest::Client::builder()
            .timeout(options.http_timeout)
            .build()
            .map_err(|e| LocalClusterError::Http {
                url: String::new(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            data_dirs: Vec::new(),
            consul_proxies: Vec::new(),
            consul,
            consul_client,
            http,
            options,
            dir,
            _temp: temp,
        };
        for i in 0..cluster.options.nodes {
            let name = cluster.options.node_name(i);
            cluster.add_node(&name, Vec::<String>::new()).await?;
        }
        Ok(cluster)
    }

    /// Starts one more node, `name`, with the cluster's flags (`--replicas`, and what the options
    /// give the node of that index: flags, environment, replication proxy) plus `extra`;
    /// answers its index.
    ///
    /// # Errors
    /// As [`LocalProcess::start`].
    pub async fn add_node<I, S>(&mut self, name: &str, extra: I) -> Result<usize, LocalClusterError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let options = &self.options;
        let index = self.nodes.len();
        let data_dir = self.dir.join(name);
        let (replication_args, own_env) = options.node_extras(index);
        let consul_proxy = match (options.consul_proxies, self.consul.addr()) {
            (true, Some(consul)) => Some(TcpProxy::start(consul).await?),
            _ => None,
        };
        let consul_url = consul_proxy
            .as_ref()
            .map_or_else(|| self.consul.url(), TcpProxy::url);
        let mut spec = ProcessSpec::new(name, &options.binary, self.dir.join(format!("{name}.log")))
            .args(["node", "--name", name, "--consul-addr", &consul_url])
            .args(["--data-dir".to_string(), data_dir.display().to_string()])
            .args(options.timings.iter().flat_map(Timings::node_args))
            .args(replication_args)
            .args(options.node_args.iter().cloned())
            .args(options.node_args_for.get(&index).into_iter().flatten().cloned())
            .args(extra)
            .env("RUST_LOG", &options.rust_log);
        if options.fault_files {
            let fault = self.fault_path(name);
            spec = spec.args(["--fault-file".to_string(), fault.display().to_string()]);
        }
        for (key, value) in options.node_env.iter().chain(&own_env) {
            spec = spec.env(key, value);
        }
        spec.listen_flag = Some("--listen".into());
        // A token for a real Consul in the caller's environment means nothing to the dev one.
        spec.env_remove.push("CONSUL_HTTP_TOKEN".into());
        spec.start_timeout = options.start_timeout;
        spec.stop_timeout = options.stop_timeout;
        let node = LocalProcess::spawn(spec).await?;
        self.nodes.push(node);
        self.data_dirs.push(data_dir);
        self.consul_proxies.push(consul_proxy);
        Ok(self.nodes.len() - 1)
    }

    /// Where the data directories and logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The dev Consul process.
    pub fn consul(&self) -> &LocalProcess {
        &self.consul
    }

    /// The dev Consul process, to stop, pause or restart it (on the same address; it keeps no
    /// state across a restart).
    pub fn consul_mut(&mut self) -> &mut LocalProcess {
        &mut self.consul
    }

    /// The dev Consul's base URL.
    pub fn consul_url(&self) -> String {
        self.consul.url()
    }

    /// Node `index`'s proxy to the dev Consul, when the options ask for them
    /// ([`ClusterOptions::consul_proxies`]): set its mode to cut that node off from Consul.
    ///
    /// # Panics
    /// There is no such node.
    pub fn consul_proxy(&self, index: usize) -> Option<&TcpProxy> {
        self.consul_proxies[index].as_ref()
    }

    /// A Consul client for the dev Consul.
    pub fn consul_client(&self) -> &ConsulClient {
        &self.consul_client
    }

    /// The cluster's HTTP client (timeout from the options).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// How many nodes there are (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> &[LocalProcess] {
        &self.nodes
    }

    /// Node `index`.
    ///
    /// # Panics
    /// There is no such node.
    pub fn node(&self, index: usize) -> &LocalProcess {
        &self.nodes[index]
    }

    /// Node `index`, to signal, stop or restart it.
    ///
    /// # Panics
    /// There is no such node.
    pub fn node_mut(&mut self, index: usize) -> &mut LocalProcess {
        &mut self.nodes[index]
    }

    /// Node `index`'s base URL (its last one while it is down).
    ///
    /// # Panics
    /// There is no such node.
    pub fn url(&self, index: usize) -> String {
        self.nodes[index].url()
    }

    /// Node `index`'s data directory.
    ///
    /// # Panics
    /// There is no such node.
    pub fn data_dir(&self, index: usize) -> &Path {
        &self.data_dirs[index]
    }

    /// Node `index`'s fault file when the options ask for fault files
    /// ([`ClusterOptions::fault_files`]): write an errno name (`ENOSPC`, `EIO`) into it to make
    /// every log write of that node fail, remove it to heal the disk.
    ///
    /// # Panics
    /// There is no such node.
    pub fn fault_file(&self, index: usize) -> Option<PathBuf> {
        let name = self.nodes[index].name();
        self.options.fault_files.then(|| self.fault_path(name))
    }

    /// Where node `name`'s fault file is.
    fn fault_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.fault"))
    }

    /// Node `index`'s `/readyz` body when it answers 200; `None` when it answers otherwise, is
    /// unreachable or not running.
    pub async fn ready(&self, index: usize) -> Option<serde_json::Value> {
        let node = self.nodes.get(index).filter(|n| n.is_running())?;
        let resp = self
            .http
            .get(format!("{}/readyz", node.url()))
            .send()
            .await
            .ok()?;
        // Any other status (503 on a follower) means not ready.
        (resp.status() == 200).then_some(())?;
        resp.json().await.ok()
    }

    /// The indices of the running nodes answering `/readyz` 200.
    pub async fn ready_nodes(&self) -> Vec<usize> {
        self.ready_terms().await.into_iter().map(|l| l.index).collect()
    }

    /// The one node answering `/readyz` 200, if exactly one does.
    pub async fn single_leader(&self) -> Option<Leader> {
        let ready = self.ready_terms().await;
        match ready.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Waits until exactly one node is ready and answers it.
    ///
    /// # Errors
    /// No single ready node within `within`.
    pub async fn wait_leader(&self, within: Duration) -> Result<Leader, LocalClusterError> {
        eventually(within, || self.single_leader())
            .await
            .ok_or(LocalClusterError::Timeout {
                name: "cluster".into(),
                what: "single ready leader",
                after: within,
            })
    }

    /// The election key as the dev Consul holds it: `None` when nobody holds the lock.
    ///
    /// # Errors
    /// The dev Consul cannot be asked.
    pub async fn lock_holder(&self) -> Result<Option<CurrentLeader>, LocalClusterError> {
        let (pair, _) = self
            .consul_client
            .kv_get(DEFAULT_ELECTION_KEY, &QueryOptions::default())
            .await?;
        Ok(leader_from_kv(pair.as_ref()))
    }

    /// Node `index`'s whole log over its HTTP API (`GET /api/v1/log`, page by page), as it
    /// stands when the read starts.
    ///
    /// # Errors
    /// The node is unreachable or answers with an error.
    pub async fn read_log(&self, index: usize) -> Result<Vec<TailEntry>, LocalClusterError> {
        #[derive(serde::Deserialize)]
        struct Page {
            entries: Vec<TailEntry>,
            next: u64,
            end_offset: u64,
        }
        let base = self.url(index);
        let mut entries = Vec::new();
        let mut from = None;
        let mut until = None;
        loop {
            let mut url = format!("{base}/api/v1/log?limit={READ_PAGE}");
            if let Some(from) = from {
                url.push_str(&format!("&from={from}"));
            }
            let page: Page = self.get_json(&url).await?;
            let until = *until.get_or_insert(page.end_offset);
            let done = page.entries.is_empty() || page.next >= until;
            entries.extend(page.entries.into_iter().filter(|e| e.offset < until));
            if done {
                return Ok(entries);
            }
            from = Some(page.next);
        }
    }

    /// GETs `url` and decodes its JSON answer; a non-2xx answer is an error with its body.
    ///
    /// # Errors
    /// The request fails, the status is not a success, or the body is not the expected JSON.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, LocalClusterError> {
        let fail = |message: String| LocalClusterError::Http {
            url: url.to_string(),
            message,
        };
        let resp = self.http.get(url).send().await.map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(fail(format!("{status}: {body}")));
        }
        resp.json().await.map_err(|e| fail(e.to_string()))
    }

    /// Stops every running node gracefully, one after the other, so each hands over to the
    /// next. Answers the stops that needed a kill.
    pub async fn stop_nodes(&mut self) -> Vec<LocalClusterError> {
        let mut problems = Vec::new();
        for node in self.nodes.iter_mut().filter(|n| n.is_running()) {
            if let Err(err) = node.stop().await {
                problems.push(err);
            }
        }
        problems
    }

    /// [`LocalCluster::stop_nodes`], then the dev Consul. Answers the stops that needed a kill.
    pub async fn stop_all(&mut self) -> Vec<LocalClusterError> {
        let mut problems = self.stop_nodes().await;
        if self.consul.is_running() {
            if let Err(err) = self.consul.stop().await {
                problems.push(err);
            }
        }
        problems
    }

    /// `(index, term)` of every running node answering `/readyz` 200.
    async fn ready_terms(&self) -> Vec<Leader> {
        let mut ready = Vec::new();
        for index in 0..self.nodes.len() {
            if let Some(body) = self.ready(index).await {
                ready.push(Leader {
                    index,
                    term: body["term"].as_u64().unwrap_or(0),
                });
            }
        }
        ready
    }
}
