//! `make bench-replication`: what replication costs, against what (issue 14's reference run),
//! and how fast a follower catches up. In one run, back to back at each level: one node with
//! `--acks leader` (nothing to wait for but its own disk), three nodes with the defaults
//! (`--acks all`, `--min-insync 2`), both `--durability always` on the same disk, and the
//! do-nothing HTTP ceiling (`support::ceiling`), all with the same load generator (single 100-byte
//! messages at 1, 16 and 64 keep-alive connections, then NDJSON batches of 1000 × 100 B from 4
//! senders): messages/s, p50/p99 and CPU per message (the leader's, and all three nodes'). The
//! disk's `fdatasync` latency and sequential bandwidth are measured before and after, and every
//! node's VmRSS idle and under load. Then a follower is stopped, `BENCH_CATCHUP_BYTES` (default
//! 1 GiB) of batches are written, and the follower is restarted: the time until its log end
//! reaches the leader's gives the catch-up rate. Every phase is bounded by time (`BENCH_SECONDS`,
//! default 3 s; catch-up at most 10 min); `BENCH_SEQ_MIB` (default 256) sizes the bandwidth probe.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use bytes::Bytes;
use simpleloggers::local_cluster::{eventually_every, ClusterOptions, LocalCluster};
use support::{
    disk::{fdatasync_probe, sequential_mib_per_s},
    load::{load, Load},
    mib, proc_status_kib,
    rss::RssSampler,
    BIN,
};

/// Concurrent keep-alive connections of the single-message phases (`BENCH_LEVELS=64` runs
/// fewer, e.g. while iterating on one figure; the targets need 1 and 64).
const LEVELS: [usize; 3] = [1, 16, 64];

fn levels() -> anyhow::Result<Vec<usize>> {
    match std::env::var("BENCH_LEVELS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse().with_context(|| format!("BENCH_LEVELS={list:?}")))
            .collect(),
        Err(_) => Ok(LEVELS.to_vec()),
    }
}
/// Concurrent senders of the batch phase (and of the catch-up writes).
const BATCH_SENDERS: usize = 4;
/// Messages per NDJSON batch.
const BATCH_MESSAGES: usize = 1000;
/// Bytes per message.
const MESSAGE_BYTES: usize = 100;
/// Issue 11's target: replicated throughput at 64 connections against one node.
const TARGET_RATIO_64: f64 = 0.8;
/// Issue 14's targets (against the ceiling and the disk, measured in the same run).
const TARGET_CEILING_RATIO_64: f64 = 0.5;
const TARGET_CPU_RATIO_64: f64 = 2.0;
const TARGET_P50_OVER_SYNC_US: f64 = 150.0;
const TARGET_BATCH_RATE: f64 = 2_000_000.0;
const TARGET_BATCH_SHARE: f64 = 0.6;
const TARGET_IDLE_MIB: f64 = 30.0;
const TARGET_LOADED_MIB: f64 = 100.0;
/// Longest the catch-up may take before the benchmark gives up.
const CATCHUP_LIMIT: Duration = Duration::from_secs(600);

fn main() -> anyhow::Result<()> {
    if support::ceiling::serve_if_asked()? {
        return Ok(());
    }
    let env_f64 = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|s| s.parse::<f64>().with_context(|| format!("{name}={s:?}")))
            .transpose()
    };
    let window = Duration::from_secs_f64(env_f64("BENCH_SECONDS")?.unwrap_or(3.0));
    let catchup_bytes = env_f64("BENCH_CATCHUP_BYTES")?.unwrap_or(1024.0 * 1024.0 * 1024.0) as u64;
    let seq_bytes = (env_f64("BENCH_SEQ_MIB")?.unwrap_or(256.0) * 1048576.0) as usize;
    tokio::runtime::Runtime::new()?.block_on(run(window, catchup_bytes, seq_bytes))
}

/// A cluster under test: where to send, and whose CPU to count.
struct Target {
    cluster: LocalCluster,
    leader: usize,
}

impl Target {
    async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let cluster = LocalCluster::start(options).await?;
        let leader = cluster
            .wait_leader(Duration::from_secs(60))
            .await
            .context("no leader")?
            .index;
        let target = Target { cluster, leader };
        // The leader takes writes once the in-sync set is complete enough; wait for that.
        eventually_every(Duration::from_millis(50), Duration::from_secs(60), || async {
            target.write_ok().await.then_some(())
        })
        .await
        .context("the leader does not take writes")?;
        Ok(target)
    }

    async fn write_ok(&self) -> bool {
        let r = self
            .cluster
            .http()
            .post(format!("{}/api/v1/log", self.cluster.url(self.leader)))
            .body("warm-up")
            .send()
            .await;
        matches!(r, Ok(r) if r.status() == 200)
    }

    fn addr(&self) -> anyhow::Result<SocketAddr> {
        self.cluster
            .node(self.leader)
            .addr()
            .context("the leader is not running")
    }

    fn leader_pid(&self) -> anyhow::Result<[u32; 1]> {
        Ok([self
            .cluster
            .node(self.leader)
            .pid()
            .context("the leader is not running")?])
    }

    fn all_pids(&self) -> Vec<u32> {
        self.cluster.nodes().iter().filter_map(|n| n.pid()).collect()
    }

    /// `load` against the leader, counting every node's CPU; also answers the leader's CPU per
    /// request (µs) over the same window.
    async fn load(
        &self,
        conns: usize,
        window: Duration,
        content_type: &'static str,
        body: Bytes,
    ) -> anyhow::Result<(Load, f64)> {
        let pids = self.all_pids();
        let leader = self.leader_pid()?[0];
        let at = pids
            .iter()
            .position(|p| *p == leader)
            .context("the leader has no pid")?;
        let all = load(self.addr()?, &pids, conns, window, content_type, body).await?;
        let leader_us = all.server_cpu_each[at].as_secs_f64() * 1e6 / all.requests.max(1) as f64;
        Ok((all, leader_us))
    }

    async fn status(&self, index: usize) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/api/v1/status", self.cluster.url(index));
        Ok(self
            .cluster
            .http()
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn log_end(&self, index: usize) -> anyhow::Result<u64> {
        let status = self.status(index).await?;
        status["replication"]["log_end"]
            .as_u64()
            .context("status has no replication.log_end")
    }
}

fn row(name: &str, conns: &str, (load, leader_us): &(Load, f64), per_request: usize) -> String {
    let n = per_request as f64;
    format!(
        "| {name} | {conns} | {:.0} | {:.2} / {:.2} | {:.1} | {:.1} | {} |",
        load.per_second() * n,
        load.p(0.5),
        load.p(0.99),
        leader_us / n,
        load.server_us_per_request() / n,
        load.errors
    )
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

async fn run(window: Duration, catchup_bytes: u64, seq_bytes: usize) -> anyhow::Result<()> {
    let dir = support::bench_dir("replication")?;
    let single_dir = dir.path().join("single");
    let replicated_dir = dir.path().join("replicated");
    let single = Target::start(
        ClusterOptions::new(BIN)
            .nodes(1)
            .name_prefix("single")
            .dir(&single_dir)
            .node_args(["--durability", "always", "--acks", "leader", "--replicas", "1"]),
    )
    .await?;
    let mut replicated = Target::start(
        ClusterOptions::new(BIN)
            .nodes(3)
            .name_prefix("repl")
            .dir(&replicated_dir)
            .node_args(["--durability", "always", "--replicas", "3"]),
    )
    .await?;
    let mut ceiling = support::ceiling::spawn(dir.path()).await?;
    let ceiling_addr = ceiling.addr().context("the ceiling never started")?;
    let ceiling_pid = [ceiling.pid().context("the ceiling is not running")?];
    // Let start-up work (registration, first renewals, first fetches) settle before the idle figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node_pids: Vec<u32> = replicated
        .all_pids()
        .into_iter()
        .chain(single.all_pids())
        .collect();
    let idle_kib = node_pids
        .iter()
        .filter_map(|&pid| proc_status_kib(pid, "VmRSS"))
        .max()
        .context("VmRSS")?;
    println!("idle VmRSS, largest of the 4 nodes: {:.1} MiB", mib(idle_kib));
    let sync_before = fdatasync_probe(dir.path(), Duration::from_secs(1), MESSAGE_BYTES)?;
    let seq_before = sequential_mib_per_s(dir.path(), seq_bytes)?;
    println!(
        "disk: write(100 B) + fdatasync {:.0}/s, p50 {:.0} µs; sequential {seq_before:.0} MiB/s",
        sync_before.rate, sync_before.p50_us
    );
    let rss = RssSampler::start(node_pids.clone());

    let message = Bytes::from("m".repeat(MESSAGE_BYTES));
    let line = format!("\"{}\"\n", "m".repeat(MESSAGE_BYTES));
    let batch = Bytes::from(line.repeat(BATCH_MESSAGES));
    let mut rows = Vec::new();
    let mut errors = 0;
    let mut ratio_64 = f64::NAN;
    // (3 nodes, ceiling) at 1 and 64 connections, for issue 14's targets.
    let mut one = None;
    let mut sixty_four = None;
    for conns in levels()? {
        let s = single.load(conns, window, "text/plain", message.clone()).await?;
        let r = replicated
            .load(conns, window, "text/plain", message.clone())
            .await?;
        let c = load(
            ceiling_addr,
            &ceiling_pid,
            conns,
            window,
            "text/plain",
            message.clone(),
        )
        .await?;
        let c_us = c.server_us_per_request();
        let c = (c, c_us);
        println!(
            "{conns:>3} conns: 1 node acks=leader {:.0}/s | 3 nodes acks=all {:.0}/s (p50 {:.2} ms) | ceiling {:.0}/s | ratios {:.2} / {:.2}",
            s.0.per_second(),
            r.0.per_second(),
            r.0.p(0.5),
            c.0.per_second(),
            r.0.per_second() / s.0.per_second(),
            r.0.per_second() / c.0.per_second()
        );
        if conns == 64 {
            ratio_64 = r.0.per_second() / s.0.per_second();
        }
        errors += s.0.errors + r.0.errors + c.0.errors;
        rows.push(row("1 node, acks=leader", &conns.to_string(), &s, 1));
        rows.push(row("3 nodes, acks=all", &conns.to_string(), &r, 1));
        rows.push(row("ceiling", &conns.to_string(), &c, 1));
        match conns {
            1 => one = Some((r, c.0)),
            64 => sixty_four = Some((r, c.0)),
            _ => {}
        }
    }
    let s = single
        .load(BATCH_SENDERS, window, "application/x-ndjson", batch.clone())
        .await?;
    let r = replicated
        .load(BATCH_SENDERS, window, "application/x-ndjson", batch.clone())
        .await?;
    let c = load(
        ceiling_addr,
        &ceiling_pid,
        BATCH_SENDERS,
        window,
        "application/x-ndjson",
        batch.clone(),
    )
    .await?;
    let c_us = c.server_us_per_request();
    let c = (c, c_us);
    errors += s.0.errors + r.0.errors + c.0.errors;
    let senders = format!("{BATCH_SENDERS} senders × {BATCH_MESSAGES}");
    rows.push(row("1 node, acks=leader", &senders, &s, BATCH_MESSAGES));
    rows.push(row("3 nodes, acks=all", &senders, &r, BATCH_MESSAGES));
    rows.push(row("ceiling", &senders, &c, BATCH_MESSAGES));
    let batch_ratio = r.0.per_second() / s.0.per_second();
    let batch_rate = r.0.per_second() * BATCH_MESSAGES as f64;
    let peak_kib = rss.peak_kib();
    drop(rss);
    let hwm_kib = node_pids
        .iter()
        .filter_map(|&pid| proc_status_kib(pid, "VmHWM"))
        .max()
        .unwrap_or(0);
    let sync_after = fdatasync_probe(dir.path(), Duration::from_secs(1), MESSAGE_BYTES)?;
    let seq_after = sequential_mib_per_s(dir.path(), seq_bytes)?;
    println!(
        "disk: write(100 B) + fdatasync {:.0}/s, p50 {:.0} µs; sequential {seq_after:.0} MiB/s",
        sync_after.rate, sync_after.p50_us
    );
    ceiling.kill().await;

    // Catch-up: stop a follower, write `catchup_bytes` of batches, restart it.
    let follower = (0..3).find(|i| *i != replicated.leader).context("no follower")?;
    replicated.cluster.node_mut(follower).stop().await?;
    let batches = (catchup_bytes / batch.len() as u64).max(1);
    let written = batches * batch.len() as u64;
    println!(
        "catch-up: follower {} stopped; writing {batches} batches ({:.0} MiB)",
        replicated.cluster.node(follower).name(),
        written as f64 / 1048576.0
    );
    let url = format!("{}/api/v1/log", replicated.cluster.url(replicated.leader));
    let started = Instant::now();
    let mut sent = 0;
    while sent < batches {
        let mut wave = tokio::task::JoinSet::new();
        for _ in 0..BATCH_SENDERS.min((batches - sent) as usize) {
            let (http, url, body) = (replicated.cluster.http().clone(), url.clone(), batch.clone());
            wave.spawn(async move {
                http.post(url)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
            });
            sent += 1;
        }
        while let Some(done) = wave.join_next().await {
            done?.context("a catch-up batch was refused")?;
        }
        if started.elapsed() > CATCHUP_LIMIT {
            bail!("writing the catch-up data took over {CATCHUP_LIMIT:?}");
        }
    }
    let target_end = replicated.log_end(replicated.leader).await?;
    println!(
        "wrote {:.0} MiB in {:.1} s; leader log end {target_end}",
        written as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    let restarted = Instant::now();
    replicated.cluster.node_mut(follower).start().await?;
    let caught_up = eventually_every(Duration::from_millis(20), CATCHUP_LIMIT, || async {
        match replicated.log_end(follower).await {
            Ok(end) if end >= target_end => Some(restarted.elapsed()),
            _ => None,
        }
    })
    .await
    .context("the follower did not catch up")?;
    let rate = written as f64 / 1048576.0 / caught_up.as_secs_f64();

    println!();
    println!("| cluster | connections | messages/s | p50 / p99 (ms) | leader CPU µs/msg | all nodes CPU µs/msg | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for line in &rows {
        println!("{line}");
    }
    println!();
    println!(
        "- 64 connections: 3 nodes acks=all at {ratio_64:.2} × 1 node acks=leader (target >= {TARGET_RATIO_64}): {}",
        if ratio_64 >= TARGET_RATIO_64 { "met" } else { "MISSED" }
    );
    println!("- NDJSON batches: 3 nodes acks=all at {batch_ratio:.2} × 1 node acks=leader");
    println!(
        "- catch-up: {:.0} MiB behind, caught up in {:.1} s after restart: {rate:.1} MiB/s",
        written as f64 / 1048576.0,
        caught_up.as_secs_f64()
    );
    println!(
        "- disk: write(100 B) + fdatasync {:.0}/s before, {:.0}/s after (p50 {:.0} / {:.0} µs); sequential {seq_before:.0} / {seq_after:.0} MiB/s",
        sync_before.rate, sync_after.rate, sync_before.p50_us, sync_after.p50_us
    );
    println!("issue 14 targets (3 nodes acks=all, against the ceiling and the disk of this run):");
    match sixty_four.as_ref() {
        Some((r64, c64)) => {
            let ratio = r64.0.per_second() / c64.per_second();
            println!(
                "- 64 connections: {ratio:.2} × the ceiling (target >= {TARGET_CEILING_RATIO_64}): {}",
                met(ratio >= TARGET_CEILING_RATIO_64)
            );
            let cpu_ratio = r64.1 / c64.server_us_per_request();
            println!(
        "- 64 connections: leader CPU {:.1} µs/msg = {cpu_ratio:.2} × the ceiling's {:.1} (target <= {TARGET_CPU_RATIO_64}; all 3 nodes: {:.1} µs/msg): {}",
        r64.1,
        c64.server_us_per_request(),
        r64.0.server_us_per_request(),
        met(cpu_ratio <= TARGET_CPU_RATIO_64)
    );
        }
        None => println!("- 64 connections: not measured (BENCH_LEVELS)"),
    }
    // The faster of the two probes: the stricter bound.
    let sync_p50 = sync_before.p50_us.min(sync_after.p50_us);
    match one.as_ref() {
        Some((r1, _)) => {
            let p50_us = r1.0.p(0.5) * 1000.0;
            println!(
                "- 1 connection: p50 {p50_us:.0} µs against fdatasync p50 {sync_p50:.0} µs + {TARGET_P50_OVER_SYNC_US:.0}: {}",
                met(p50_us <= sync_p50 + TARGET_P50_OVER_SYNC_US)
            );
        }
        None => println!("- 1 connection: not measured (BENCH_LEVELS)"),
    }
    let payload_mib = batch_rate * MESSAGE_BYTES as f64 / 1048576.0;
    let seq = seq_before.max(seq_after);
    println!(
        "- NDJSON batches: {batch_rate:.0} messages/s (target >= {TARGET_BATCH_RATE:.0}): {}; payload {payload_mib:.0} MiB/s = {:.0} % of sequential {seq:.0} MiB/s (target >= {:.0} %): {}",
        met(batch_rate >= TARGET_BATCH_RATE),
        100.0 * payload_mib / seq,
        100.0 * TARGET_BATCH_SHARE,
        met(payload_mib >= TARGET_BATCH_SHARE * seq)
    );
    println!(
        "- VmRSS, largest node: idle {:.1} MiB (target <= {TARGET_IDLE_MIB}): {}; under load peak {:.1} MiB, VmHWM {:.1} MiB (target <= {TARGET_LOADED_MIB}): {}",
        mib(idle_kib),
        met(mib(idle_kib) <= TARGET_IDLE_MIB),
        mib(peak_kib),
        mib(hwm_kib),
        met(mib(peak_kib.max(hwm_kib)) <= TARGET_LOADED_MIB)
    );
    let mut single = single;
    for problem in single
        .cluster
        .stop_all()
        .await
        .into_iter()
        .chain(replicated.cluster.stop_all().await)
    {
        eprintln!("{problem}");
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
