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
    discovery::CurrentLeader,
    local_cluster::{ClusterOptions, LocalCluster},
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
