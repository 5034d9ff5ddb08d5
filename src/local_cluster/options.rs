//! What a local cluster is made of: the executable, how many nodes, where their data goes, the
//! election timings (the nodes' defaults for the demo and benchmarks, [`Timings::FAST`] for
//! tests), `--replicas` (the node count unless set), any extra flags or environment for every
//! node or for one of them, each node's replication proxy, whether each node reaches the dev Consul
//! through a TCP proxy of its own, and whether each node gets a fault file (the node's hidden
//! disk-fault test hook).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

/// Election timings passed to every node (and the dev Consul's matching session TTL and check
/// interval minimums).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// `--session-ttl`.
    pub session_ttl: Duration,
    /// `--lock-delay`.
    pub lock_delay: Duration,
    /// `--renew-interval`.
    pub renew_interval: Duration,
    /// `--check-interval`.
    pub check_interval: Duration,
}

impl Timings {
    /// Fast failover for tests: a crashed leader is replaced in about 1.5 s.
    pub const FAST: Timings = Timings {
        session_ttl: Duration::from_secs(2),
        lock_delay: Duration::from_secs(1),
        renew_interval: Duration::from_millis(200),
        check_interval: Duration::from_millis(250),
    };

    /// The node flags that set these timings.
    pub fn node_args(&self) -> Vec<String> {
        [
            ("--session-ttl", self.session_ttl),
            ("--lock-delay", self.lock_delay),
            ("--renew-interval", self.renew_interval),
            ("--check-interval", self.check_interval),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), humantime::format_duration(value).to_string()])
        .collect()
    }
}

/// How to build a [`LocalCluster`](super::LocalCluster).
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The `simpleloggers` executable (`env!("CARGO_BIN_EXE_simpleloggers")` in tests and
    /// benchmarks, `std::env::current_exe()` in the demo).
    pub binary: PathBuf,
    /// How many nodes to start.
    pub nodes: usize,
    /// Node names are this prefix and the node's index (`n0`, `node-0`).
    pub name_prefix: String,
    /// Where the data directories and logs go; `None`: a temporary directory removed on drop.
    pub dir: Option<PathBuf>,
    /// The name prefix of that temporary directory.
    pub temp_prefix: String,
    /// Election timings for every node; `None`: the nodes' defaults.
    pub timings: Option<Timings>,
    /// The dev Consul's `--session-ttl-min`; `None`: its default (10 s, like Consul).
    pub session_ttl_min: Option<Duration>,
    /// The dev Consul's `--check-interval-min`; `None`: its default (1 s, like Consul), which the
    /// benchmarks and the demo run with.
    pub check_interval_min: Option<Duration>,
    /// Extra flags for every node (after the timings, so they override them).
    pub node_args: Vec<String>,
    /// Extra flags for one node, by index (after `node_args`).
    pub node_args_for: BTreeMap<usize, Vec<String>>,
    /// Extra environment variables for every node (settings tests reach through the node's
    /// `SIMPLELOGGERS_*` variables rather than its flags).
    pub node_env: Vec<(String, String)>,
    /// Extra environment variables for one node, by index (after `node_env`, so they win).
    pub node_env_for: BTreeMap<usize, Vec<(String, String)>>,
    /// `--replicas` for every node; `None`: the number of nodes the cluster starts with
    /// (`nodes`), so a cluster of N nodes replicates to all N and a single node runs as before.
    pub replicas: Option<u32>,
    /// `--replication-proxy URL` for one node, by index: that node's follower sends every fetch
    /// through this HTTP forward proxy (a test's cuttable proxy), kept across restarts.
    pub replication_proxy: BTreeMap<usize, String>,
    /// Give every node `--fault-file DIR/NAME.fault` (see
    /// [`LocalCluster::fault_file`](super::LocalCluster::fault_file)): while that file names an
    /// errno, every log write of that node fails with it.
    pub fault_files: bool,
    /// Give every node a [`TcpProxy`](super::TcpProxy) of its own between it and the dev Consul
    /// (its `--consul-addr`), so a test can cut one node, or all, off from Consul.
    pub consul_proxies: bool,
    /// Extra flags for the dev Consul.
    pub consul_args: Vec<String>,
    /// `RUST_LOG` of the children (their logs go to files, so this can be detailed).
    pub rust_log: String,
    /// Longest wait for a child's listening line.
    pub start_timeout: Duration,
    /// Longest wait for a child's exit after SIGTERM before it is killed.
    pub stop_timeout: Duration,
    /// Timeout of the cluster's HTTP client (probes, reads).
    pub http_timeout: Duration,
}

impl ClusterOptions {
    /// Three nodes named `n0`.. with the nodes' and dev Consul's default timings, in a temporary
    /// directory: what the demo and the benchmarks run.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        ClusterOptions {
            binary: binary.into(),
            nodes: 3,
            name_prefix: "n".into(),
            dir: None,
            temp_prefix: "simpleloggers-cluster-".into(),
            timings: None,
            session_ttl_min: None,
            check_interval_min: None,
            node_args: Vec::new(),
            node_args_for: BTreeMap::new(),
            node_env: Vec::new(),
            node_env_for: BTreeMap::new(),
            replicas: None,
            replication_proxy: BTreeMap::new(),
            fault_files: false,
            consul_proxies: false,
            consul_args: Vec::new(),
            rust_log: "info".into(),
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(15),
            http_timeout: Duration::from_secs(5),
        }
    }

    /// As [`ClusterOptions::new`] with [`Timings::FAST`], a 1 s session TTL minimum and a check
    /// interval minimum of the fast check interval in the dev Consul, and 20 s for a graceful
    /// stop: what the integration tests run.
    pub fn fast(binary: impl Into<PathBuf>) -> Self {
        ClusterOptions {
            timings: Some(Timings::FAST),
            session_ttl_min: Some(Duration::from_secs(1)),
            check_interval_min: Some(Timings::FAST.check_interval),
            stop_timeout: Duration::from_secs(20),
            ..ClusterOptions::new(binary)
        }
    }

    /// Sets the number of nodes.
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// Sets the node name prefix.
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = prefix.into();
        self
    }

    /// Keeps data and logs in `dir` instead of a temporary directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Adds flags for every node.
    pub fn node_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.node_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds flags for node `index` only.
    pub fn node_args_for<I, S>(mut self, index: usize, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.node_args_for
            .entry(index)
            .or_default()
            .extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for every node.
    pub fn node_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_env.push((key.into(), value.into()));
        self
    }

    /// Sets an environment variable for node `index` only.
    pub fn node_env_for(mut self, index: usize, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_env_for
            .entry(index)
            .or_default()
            .push((key.into(), value.into()));
        self
    }

    /// Sets `--replicas` for every node (default: the node count).
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// Sends node `index`'s replication fetches through the HTTP forward proxy at `url`.
    pub fn replication_proxy(mut self, index: usize, url: impl Into<String>) -> Self {
        self.replication_proxy.insert(index, url.into());
        self
    }

    /// The `--replicas` every node gets: [`ClusterOptions::replicas`], else the node count.
    pub fn replica_count(&self) -> u32 {
        self.replicas
            .unwrap_or_else(|| u32::try_from(self.nodes.max(1)).unwrap_or(u32::MAX))
    }

    /// The flags and environment node `index` gets beyond the common ones: `--replicas`, its
    /// replication proxy, then its own extra flags; its own environment.
    pub fn node_extras(&self, index: usize) -> (Vec<String>, Vec<(String, String)>) {
        let mut args = vec!["--replicas".to_string(), self.replica_count().to_string()];
        if let Some(proxy) = self.replication_proxy.get(&index) {
            args.extend(["--replication-proxy".to_string(), proxy.clone()]);
        }
        let env = self.node_env_for.get(&index).cloned().unwrap_or_default();
        (args, env)
    }

    /// Gives every node a fault file of its own (none exists until a test writes it).
    pub fn fault_files(mut self) -> Self {
        self.fault_files = true;
        self
    }

    /// Puts a TCP proxy between every node and the dev Consul (see
    /// [`LocalCluster::consul_proxy`](super::LocalCluster::consul_proxy)).
    pub fn consul_proxies(mut self) -> Self {
        self.consul_proxies = true;
        self
    }

    /// Sets the children's `RUST_LOG`.
    pub fn rust_log(mut self, filter: impl Into<String>) -> Self {
        self.rust_log = filter.into();
        self
    }

    /// The name of node `index`.
    pub fn node_name(&self, index: usize) -> String {
        format!("{}{index}", self.name_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--replicas` defaults to the node count, can be set, and a proxy or environment given
    /// for one node reaches only that node.
    #[test]
    fn per_node_replication_settings() {
        let options = ClusterOptions::fast("sl")
            .nodes(3)
            .replication_proxy(1, "http://127.0.0.1:9")
            .node_env_for(2, "SIMPLELOGGERS_ACKS", "leader");
        assert_eq!(
            options.node_extras(0),
            (vec!["--replicas".into(), "3".into()], vec![])
        );
        assert_eq!(
            options.node_extras(1).0,
            ["--replicas", "3", "--replication-proxy", "http://127.0.0.1:9"]
        );
        assert_eq!(
            options.node_extras(2).1,
            [("SIMPLELOGGERS_ACKS".to_string(), "leader".to_string())]
        );
        assert_eq!(options.clone().replicas(5).node_extras(0).0, ["--replicas", "5"]);
        assert_eq!(options.nodes(1).node_extras(0).0, ["--replicas", "1"]);
    }

    /// The fast timings become the node flags tests always used, in humantime form.
    #[test]
    fn fast_timings_as_flags() {
        assert_eq!(
            Timings::FAST.node_args(),
            [
                "--session-ttl",
                "2s",
                "--lock-delay",
                "1s",
                "--renew-interval",
                "200ms",
                "--check-interval",
                "250ms"
            ]
        );
    }
}
