//! Test-side conveniences over the library's [`LocalCluster`]: the binary under test, the fast
//! timings, and helpers that panic (with the node's log where it helps) instead of returning
//! errors, so a test reads as its scenario.

#![allow(dead_code, unused_imports)] // each test uses a different part

use std::{
    ops::{Deref, DerefMut},
    path::Path,
    time::Duration,
};

pub use simpleloggers::local_cluster::eventually;
use simpleloggers::{
    cli::tail::TailEntry,
    discovery::CurrentLeader,
    local_cluster::{ClusterOptions, LocalCluster, ReplicationStatus},
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_simpleloggers");

/// A local cluster with the fast test timings.
pub struct Cluster(pub LocalCluster);

impl Deref for Cluster {
    type Target = LocalCluster;

    fn deref(&self) -> &LocalCluster {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.0
    }
}

impl Cluster {
    /// Starts dev Consul and `n` nodes (`n0`..) with `extra` flags after the fast timings.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(
            ClusterOptions::fast(BIN)
                .nodes(n)
                .node_args(extra.iter().copied()),
        )
        .await
    }

    /// Starts a cluster from `options`.
    pub async fn start_with(options: ClusterOptions) -> Cluster {
        Cluster(
            LocalCluster::start(options)
                .await
                .expect("start the local cluster"),
        )
    }

    /// Waits until exactly one node is ready and returns its index.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        self.0
            .wait_leader(within)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .index
    }

    /// The election key's holder, `None` when not held or Consul does not answer.
    pub async fn lock_holder(&self) -> Option<CurrentLeader> {
        self.0.lock_holder().await.ok().flatten()
    }

    /// SIGTERM node `i` and assert that it exits 0 within the stop timeout.
    pub async fn terminate(&mut self, i: usize) {
        let node = self.0.node_mut(i);
        let status = node.stop().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            status.success(),
            "{} exit status {status:?}; log:\n{}",
            node.name(),
            node.log_text()
        );
    }

    /// Node `i`'s name.
    pub fn name(&self, i: usize) -> String {
        self.0.node(i).name().to_string()
    }

    /// Node `i`'s `replication` status (panics if it does not answer one).
    pub async fn repl(&self, i: usize) -> ReplicationStatus {
        self.0
            .replication(i)
            .await
            .unwrap_or_else(|e| panic!("replication status of {}: {e}", self.name(i)))
    }

    /// Waits until every running node reports the in-sync set of nodes `members`.
    pub async fn wait_isr(&self, members: &[usize], within: Duration) {
        let names: Vec<String> = members.iter().map(|&i| self.name(i)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.0
            .wait_isr(&names, within)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until each of `nodes` reports the in-sync set of nodes `members`.
    pub async fn wait_isr_on(&self, nodes: &[usize], members: &[usize], within: Duration) {
        let names: Vec<String> = members.iter().map(|&i| self.name(i)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.0
            .wait_isr_on(nodes, &names, within)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until every running node's high watermark is at least `at_least`.
    pub async fn wait_hw(&self, at_least: u64, within: Duration) {
        self.0
            .wait_high_watermark(at_least, within)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until every running node has committed one and the same log end; answers it.
    pub async fn converge(&self, within: Duration) -> u64 {
        self.0
            .wait_converged(within)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every running node's whole log over HTTP, by index.
    pub async fn logs(&self) -> Vec<(usize, Vec<TailEntry>)> {
        self.0.read_logs().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGKILLs node `i`, removes its data directory, and starts it again (an empty disk: a new
    /// incarnation).
    pub async fn restart_empty(&mut self, i: usize) {
        self.0.node_mut(i).kill().await;
        let dir = self.0.data_dir(i).to_path_buf();
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
        self.0
            .node_mut(i)
            .start()
            .await
            .unwrap_or_else(|e| panic!("restart {}: {e}", self.name(i)));
    }

    /// Starts node `i` again (after a kill or stop), panicking if it does not start.
    pub async fn restart(&mut self, i: usize) {
        let name = self.name(i);
        self.0
            .node_mut(i)
            .start()
            .await
            .unwrap_or_else(|e| panic!("restart {name}: {e}"));
    }

    /// GETs `url` and decodes its JSON body (panics on any failure: for test assertions).
    pub async fn get_json(&self, url: impl AsRef<str>) -> serde_json::Value {
        let url = url.as_ref();
        let resp = self
            .http()
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
    }
}

/// Command lines of the processes whose command line mentions `needle` (to prove none is left).
pub fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}
