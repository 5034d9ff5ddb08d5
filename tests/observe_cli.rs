//! `simpleloggers status` and `simpleloggers tail` as processes against real clusters: the
//! status JSON names exactly one leader, the table has the kubectl-like header, an unreachable
//! Consul is a clear non-zero exit; `tail` prints what exists, and `tail --follow` keeps printing
//! across a graceful leader stop.

#[path = "support/cluster.rs"]
mod cluster;

use std::{process::Stdio, time::Duration};

use cluster::{eventually, Cluster, BIN};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::mpsc,
};

async fn run(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(BIN).args(args).stdin(Stdio::null()).output(),
    )
    .await
    .expect("finishes within 30 s")
    .expect("runs")
}

/// Writes `message` to whichever node is the ready leader, retrying until one accepts it.
async fn write(c: &Cluster, message: &str) {
    let ok = eventually(Duration::from_secs(30), || async {
        let leader = c.ready_nodes().await.first().copied()?;
        let resp = c
            .http()
            .post(format!("{}/api/v1/log", c.url(leader)))
            .body(message.to_string())
            .send()
            .await
            .ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "no leader accepted {message:?}");
}

/// `status -o json` lists the three members, all reachable with passing checks and settled roles, exactly one of
/// them the leader (the node answering /readyz); the table shows the same.
#[tokio::test]
async fn status_lists_members_with_one_leader() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let consul = c.consul_url();
    let members = eventually(Duration::from_secs(20), || async {
        let out = run(&["status", "--consul-addr", &consul, "-o", "json"]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let members: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array");
        let settled = members.len() == 3
            && members.iter().all(|m| {
                // A follower learns the term from its blocking query a moment after the election.
                m["consul_check"] == "passing"
                    && (m["role"] == "leader" || m["role"] == "follower")
                    && m["term"].as_u64().is_some_and(|t| t >= 1)
            });
        settled.then_some(members)
    })
    .await
    .expect("three members with passing checks, each leader or follower, all knowing the term");
    let leaders: Vec<&Value> = members.iter().filter(|m| m["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{members:?}");
    assert_eq!(leaders[0]["name"], format!("n{leader}"));
    assert_eq!(leaders[0]["ready"], true);
    assert_eq!(leaders[0]["holds_lock"], true);
    assert_eq!(leaders[0]["address"], c.node(leader).addr().unwrap().to_string());
    for m in &members {
        assert!(m["term"].as_u64().unwrap() >= 1, "{m}");
        assert!(m["log_end_offset"].is_u64(), "{m}");
        assert!(m["session"].is_string(), "{m}");
    }

    let out = run(&["status", "--consul-addr", &consul]).await;
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "ROLE",
            "READY",
            "TERM",
            "LOG-END",
            "HW",
            "LAG",
            "ISR",
            "CASE",
            "CONSUL-CHECK",
            "SESSION",
            "ADDRESS"
        ]
    );
    // The member rows end at the first blank line; replication notes may follow it.
    let rows = lines.iter().take_while(|l| !l.is_empty()).count();
    assert_eq!(rows, 4, "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("n{leader} ")) && l.contains("leader")),
        "{table}"
    );
}

/// With Consul unreachable, `status` exits non-zero and says what it could not reach.
#[tokio::test]
async fn status_without_consul_fails_clearly() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let out = run(&["status", "--consul-addr", &addr, "--consul-timeout", "2s"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Consul") && err.contains(&addr), "{err}");
}

/// `tail` without `--follow` prints every stored message, one per line with offset and term,
/// then exits 0; `--from` skips the earlier ones.
#[tokio::test]
async fn tail_prints_what_exists() {
    let c = Cluster::start(1, &[]).await;
    c.wait_leader(Duration::from_secs(20)).await;
    for i in 0..5 {
        write(&c, &format!("hello {i}")).await;
    }
    let consul = c.consul_url();
    let out = run(&["tail", "--consul-addr", &consul]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 5, "{text}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line[0], i.to_string());
        assert!(line[1].parse::<u64>().unwrap() >= 1);
        assert_eq!(line[2], format!("hello {i}"));
    }
    let out = run(&["tail", "--consul-addr", &consul, "--from", "3"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.starts_with("3\t"), "{text}");
}

/// Waits for a tail line whose message is `wanted`; fails with tail's stderr after 30 s.
async fn expect(lines: &mut mpsc::UnboundedReceiver<String>, log: &std::path::Path, wanted: &str) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.recv().await {
            if line.ends_with(&format!("\t{wanted}")) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        found == Ok(true),
        "tail did not print {wanted:?}; stderr:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// `tail --follow` prints new messages as they are written and, after the leader stops
/// gracefully, finds the new leader through Consul and prints what is written there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follow_survives_a_failover() {
    let mut c = Cluster::start(3, &[]).await;
    let first = c.wait_leader(Duration::from_secs(20)).await;
    write(&c, "before").await;
    let mut child = Command::new(BIN)
        .args(["tail", "--follow", "--consul-addr", &c.consul_url()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, mut lines) = mpsc::unbounded_channel();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            let _ = tx.send(line);
        }
    });
    let stderr_log = c.dir().join("tail.stderr");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = stderr_log.clone();
    tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            all.push_str(&line);
            all.push('\n');
            let _ = std::fs::write(&log, &all);
        }
    });
    expect(&mut lines, &stderr_log, "before").await;
    write(&c, "while-following").await;
    expect(&mut lines, &stderr_log, "while-following").await;

    c.terminate(first).await;
    let second = c.wait_leader(Duration::from_secs(30)).await;
    assert_ne!(second, first);
    write(&c, "after-failover").await;
    expect(&mut lines, &stderr_log, "after-failover").await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "tail --follow is still running"
    );
}
