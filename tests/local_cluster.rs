//! The local-cluster harness itself: a node restarts on its address with its data, its log
//! reads back over HTTP, per-node flags reach only that node, and no child outlives the
//! cluster: not when it is dropped (a paused child included), not when its parent is SIGKILLed.

#[path = "support/cluster.rs"]
mod cluster;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use cluster::{eventually, processes_mentioning, Cluster, BIN};
use simpleloggers::local_cluster::ClusterOptions;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Whether `pid` is gone or a zombie (killed, not yet reaped).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A killed node restarts on the same address with its data; `read_log` pages through the
/// whole log over HTTP; every node gets `--replicas` = the node count; a flag or variable given
/// for one node reaches only that node; node environment and fault files reach every node, each
/// its own fault file.
#[tokio::test]
async fn restart_keeps_address_and_log() {
    let options = ClusterOptions::fast(BIN)
        .nodes(2)
        .node_args_for(1, ["--follower-writes", "forward"])
        .node_env("SIMPLELOGGERS_MAX_MESSAGE_BYTES", "4096")
        .node_env_for(0, "SIMPLELOGGERS_MAX_BATCH_BYTES", "65536")
        .fault_files();
    let mut c = Cluster::start_with(options).await;
    let proc_file = |i: usize, file: &str| {
        let pid = c.node(i).pid().unwrap();
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{file}")).unwrap()).replace('\0', " ")
    };
    let cmdline = |i: usize| proc_file(i, "cmdline");
    assert!(cmdline(1).contains("--follower-writes forward"), "{}", cmdline(1));
    assert!(!cmdline(0).contains("--follower-writes"), "{}", cmdline(0));
    for i in 0..2 {
        assert!(cmdline(i).contains("--replicas 2"), "{}", cmdline(i));
    }
    let env_of = |i: usize| proc_file(i, "environ");
    assert!(env_of(0).contains("SIMPLELOGGERS_MAX_BATCH_BYTES=65536"));
    assert!(!env_of(1).contains("SIMPLELOGGERS_MAX_BATCH_BYTES"));
    for i in 0..2 {
        let fault = c.fault_file(i).unwrap();
        assert_eq!(fault, c.dir().join(format!("n{i}.fault")));
        let flag = format!("--fault-file {}", fault.display());
        assert!(cmdline(i).contains(&flag), "{}", cmdline(i));
        let environ = proc_file(i, "environ");
        assert!(
            environ.contains("SIMPLELOGGERS_MAX_MESSAGE_BYTES=4096"),
            "{environ}"
        );
    }

    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let expected: Vec<String> = (0..3).map(|i| format!("message {i}")).collect();
    for message in &expected {
        let resp = c
            .http()
            .post(format!("{}/api/v1/log", c.url(leader)))
            .body(message.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let messages = |entries: Vec<simpleloggers::cli::tail::TailEntry>| {
        entries
            .into_iter()
            .map(|e| e.message.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(messages(c.read_log(leader).await.unwrap()), expected);

    let addr = c.node(leader).addr();
    c.node_mut(leader).kill().await;
    assert!(!c.node(leader).is_running());
    assert!(c.read_log(leader).await.is_err(), "a killed node does not answer");
    c.node_mut(leader).start().await.unwrap();
    assert_eq!(c.node(leader).addr(), addr, "restarted on the same address");
    // Its data is kept; reads stop at the high watermark, which a node killed right after the
    // writes may have checkpointed one write behind (`hw.checkpoint` is written behind the HW,
    // at most every 100 ms) until it learns the HW again from the new leader.
    let read_back = eventually(Duration::from_secs(30), || async {
        let got = messages(c.read_log(leader).await.ok()?);
        (got == expected).then_some(got)
    })
    .await;
    assert_eq!(
        read_back,
        Some(expected),
        "the restarted node serves its log again"
    );
}

/// Dropping the cluster kills the dev Consul and every node, a paused one included.
#[tokio::test]
async fn drop_kills_every_child() {
    let c = Cluster::start(2, &[]).await;
    c.node(1).pause().await.unwrap();
    let pids: Vec<u32> = std::iter::once(c.consul())
        .chain(c.nodes())
        .map(|p| p.pid().unwrap())
        .collect();
    assert!(pids.iter().all(|pid| !dead(*pid)));
    drop(c);
    let gone = eventually(Duration::from_secs(10), || async {
        pids.iter().all(|pid| dead(*pid)).then_some(())
    })
    .await;
    assert!(gone.is_some(), "children still alive: {pids:?}");
}

/// When the parent itself is SIGKILLed (no drop runs), the kernel kills its children: a demo
/// killed right after it started its nodes leaves neither a node nor the dev Consul behind.
#[tokio::test]
async fn children_die_with_a_killed_parent() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = tokio::process::Command::new(BIN)
        .args(["demo", "--nodes", "2", "--duration", "60s", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut consul = None;
    loop {
        assert!(Instant::now() < deadline, "the demo did not start its nodes");
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the demo runs");
        if let Some(rest) = line.strip_prefix("dev Consul on http://") {
            consul = rest.split(';').next().map(str::to_string);
        }
        if line.starts_with("started node-1") {
            break;
        }
    }
    let consul = consul.expect("the demo names its dev Consul");
    // The nodes' data directories are `DIR/node-N`; the demo's own command line has only DIR.
    let nodes = dir.path().join("node-");
    assert_eq!(processes_mentioning(&nodes).len(), 2, "two nodes run");
    demo.start_kill().unwrap();
    demo.wait().await.unwrap();
    let gone = eventually(Duration::from_secs(10), || async {
        let consul_down = std::net::TcpStream::connect(&consul).is_err();
        (consul_down && processes_mentioning(&nodes).is_empty()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "left behind: {:?}", processes_mentioning(&nodes));
}
