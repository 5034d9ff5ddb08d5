//! `make bench-ingest`: the write path end to end over HTTP. Starts dev Consul and one node
//! (`--durability always`, data on the local disk) as processes, then in one run measures
//! single-message POSTs (100-byte bodies, keep-alive) at 1, 16 and 64 connections against the
//! node and against a do-nothing axum server (the HTTP ceiling, a separate process running this
//! same benchmark binary), NDJSON batches of 1000 messages, and the node's resident memory idle
//! and under that load. Every phase is bounded by time (`BENCH_SECONDS`, default 3 s).

mod support;

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context};
use bytes::Bytes;
use simpleloggers::local_cluster::{eventually, ClusterOptions, LocalCluster, LocalProcess};
use support::{
    load::{fdatasync_rate, load, WARMUP},
    mib, proc_status_kib,
    rss::RssSampler,
    BIN,
};

/// Concurrent keep-alive connections of the single-message phases.
const LEVELS: [usize; 3] = [1, 16, 64];
/// Concurrent senders of the batch phases.
const BATCH_SENDERS: [usize; 2] = [4, 16];
/// Messages per NDJSON batch.
const BATCH_MESSAGES: usize = 1000;
/// Bytes per message.
const MESSAGE_BYTES: usize = 100;
/// Targets of issue 4.
const TARGET_RATIO_64: f64 = 0.5;
const TARGET_BATCH_RATE: f64 = 1_000_000.0;
const TARGET_IDLE_MIB: f64 = 30.0;
const TARGET_LOADED_MIB: f64 = 100.0;

fn main() -> anyhow::Result<()> {
    if support::ceiling::serve_if_asked()? {
        return Ok(());
    }
    let seconds = std::env::var("BENCH_SECONDS")
        .ok()
        .map(|s| s.parse::<f64>().context("BENCH_SECONDS"))
        .transpose()?
        .unwrap_or(3.0);
    // The client gets its own multi-threaded runtime (one worker per core, like the servers).
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(Duration::from_secs_f64(seconds)))
}

fn addr(server: &LocalProcess) -> anyhow::Result<SocketAddr> {
    server.addr().context("the server never started")
}

fn pids(server: &LocalProcess) -> anyhow::Result<[u32; 1]> {
    Ok([server.pid().context("the server is not running")?])
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

async fn run(window: Duration) -> anyhow::Result<()> {
    let dir = support::bench_dir("ingest")?;
    println!(
        "each phase: {} ms warm-up (not counted) + {:.1} s measured; {MESSAGE_BYTES}-byte messages",
        WARMUP.as_millis(),
        window.as_secs_f64()
    );

    let options = ClusterOptions::new(BIN)
        .nodes(1)
        .dir(dir.path())
        .node_args(["--durability", "always"]);
    let mut cluster = LocalCluster::start(options).await?;
    cluster
        .wait_leader(Duration::from_secs(30))
        .await
        .context("the node did not become leader")?;
    // Let start-up work (registration, first renewals) settle before reading the idle figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node_pid = cluster.node(0).pid().context("the node is not running")?;
    let idle_kib = proc_status_kib(node_pid, "VmRSS").context("VmRSS")?;
    println!(
        "node pid {node_pid} leader on {}; idle VmRSS {:.1} MiB",
        cluster.url(0),
        mib(idle_kib)
    );

    let mut ceiling = support::ceiling::spawn(dir.path()).await?;
    let node = cluster.node(0);

    let single = Bytes::from(format!("{:0>width$}", "bench message", width = MESSAGE_BYTES));
    assert_eq!(single.len(), MESSAGE_BYTES);
    let fsync_before = fdatasync_rate(dir.path(), Duration::from_secs(1), MESSAGE_BYTES)?;
    println!("disk: write(100 B) + fdatasync, one writer: {fsync_before:.0}/s");
    let rss = RssSampler::start(vec![node_pid]);
    let mut rows = Vec::new();
    let mut errors = 0;
    for conns in LEVELS {
        // Node and ceiling back to back at each level, so both see the same background load.
        let n = load(
            addr(node)?,
            &pids(node)?,
            conns,
            window,
            "text/plain",
            single.clone(),
        )
        .await?;
        let c = load(
            addr(&ceiling)?,
            &pids(&ceiling)?,
            conns,
            window,
            "text/plain",
            single.clone(),
        )
        .await?;
        println!(
            "{conns:>3} conns: node {:>8.0}/s p50 {:.2} ms p99 {:.2} ms ({} errors) | ceiling {:>8.0}/s p50 {:.2} ms p99 {:.2} ms | ratio {:.2}",
            n.per_second(),
            n.p(0.5),
            n.p(0.99),
            n.errors,
            c.per_second(),
            c.p(0.5),
            c.p(0.99),
            n.per_second() / c.per_second()
        );
        errors += n.errors + c.errors;
        rows.push((conns, n, c));
    }
    let single_peak = rss.peak_kib();

    let line = format!("\"{}\"\n", "m".repeat(MESSAGE_BYTES));
    let batch = Bytes::from(line.repeat(BATCH_MESSAGES));
    let mut batch_rows = Vec::new();
    for senders in BATCH_SENDERS {
        let b = load(
            addr(node)?,
            &pids(node)?,
            senders,
            window,
            "application/x-ndjson",
            batch.clone(),
        )
        .await?;
        let c = load(
            addr(&ceiling)?,
            &pids(&ceiling)?,
            senders,
            window,
            "application/x-ndjson",
            batch.clone(),
        )
        .await?;
        println!(
            "batches: {senders} senders x {BATCH_MESSAGES} messages ({} KiB bodies): node {:.0} messages/s (p50 {:.2} ms, p99 {:.2} ms, {} errors) | ceiling {:.0} messages/s",
            batch.len() / 1024,
            b.per_second() * BATCH_MESSAGES as f64,
            b.p(0.5),
            b.p(0.99),
            b.errors,
            c.per_second() * BATCH_MESSAGES as f64,
        );
        errors += b.errors + c.errors;
        batch_rows.push((senders, b, c));
    }
    let peak_kib = rss.peak_kib();
    drop(rss);
    let hwm_kib = proc_status_kib(node_pid, "VmHWM").unwrap_or(0);
    let fsync_after = fdatasync_rate(dir.path(), Duration::from_secs(1), MESSAGE_BYTES)?;
    println!("disk: write(100 B) + fdatasync, one writer: {fsync_after:.0}/s");

    // Diagnostic (not a target): the same node with `--durability never`, to split the gap to
    // the ceiling into disk wait and everything else. Own election key, same dev Consul.
    let never = cluster
        .add_node(
            "never",
            [
                "--durability",
                "never",
                "--election-key",
                "service/bench-never/leader",
                "--service-name",
                "bench-never",
            ],
        )
        .await?;
    eventually(Duration::from_secs(30), || cluster.ready(never))
        .await
        .context("the durability=never node did not become leader within 30 s")?;
    let mut never_rows = Vec::new();
    for conns in [1, 64] {
        let n = load(
            addr(cluster.node(never))?,
            &pids(cluster.node(never))?,
            conns,
            window,
            "text/plain",
            single.clone(),
        )
        .await?;
        println!(
            "durability never, {conns:>3} conns: {:>8.0}/s p50 {:.2} ms p99 {:.2} ms, node CPU {:.0} µs/msg",
            n.per_second(),
            n.p(0.5),
            n.p(0.99),
            n.server_us_per_request()
        );
        errors += n.errors;
        never_rows.push((conns, n));
    }
    if let Err(err) = cluster.node_mut(never).stop().await {
        eprintln!("{err}");
    }

    // The summary, as Markdown for BENCHMARKS.md.
    println!();
    println!("| connections | node msg/s | node p50 / p99 (ms) | ceiling msg/s | ceiling p50 / p99 (ms) | ratio | node CPU µs/msg | ceiling CPU µs/msg | client CPU µs/msg (node / ceiling) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (conns, n, c) in &rows {
        println!(
            "| {conns} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2} | {:.0} | {:.0} | {:.0} / {:.0} |",
            n.per_second(),
            n.p(0.5),
            n.p(0.99),
            c.per_second(),
            c.p(0.5),
            c.p(0.99),
            n.per_second() / c.per_second(),
            n.server_us_per_request(),
            c.server_us_per_request(),
            n.client_us_per_request(),
            c.client_us_per_request(),
        );
    }
    for (conns, n) in &never_rows {
        // Against the ceiling measured earlier in this run at the same level (not back to back).
        let ceiling = rows
            .iter()
            .find(|(c, _, _)| c == conns)
            .map_or(f64::NAN, |(_, _, c)| c.per_second());
        println!(
            "| {conns}, `--durability never` (diagnostic) | {:.0} | {:.2} / {:.2} | (above) | | {:.2} | {:.0} | | {:.0} / |",
            n.per_second(),
            n.p(0.5),
            n.p(0.99),
            n.per_second() / ceiling,
            n.server_us_per_request(),
            n.client_us_per_request(),
        );
    }
    println!();
    println!("| NDJSON batches of {BATCH_MESSAGES} | node messages/s | node p50 / p99 (ms) | node CPU µs/msg | ceiling messages/s |");
    println!("|---:|---:|---:|---:|---:|");
    for (senders, b, c) in &batch_rows {
        println!(
            "| {senders} senders | {:.0} | {:.1} / {:.1} | {:.2} | {:.0} |",
            b.per_second() * BATCH_MESSAGES as f64,
            b.p(0.5),
            b.p(0.99),
            b.server_us_per_request() / BATCH_MESSAGES as f64,
            c.per_second() * BATCH_MESSAGES as f64,
        );
    }
    println!();
    println!("disk fdatasync rate (one writer, 100 B): {fsync_before:.0}/s before, {fsync_after:.0}/s after");
    let (_, n64, c64) = rows.last().context("no levels")?;
    let ratio = n64.per_second() / c64.per_second();
    println!(
        "- 64 connections: {ratio:.2} of the ceiling (target >= {TARGET_RATIO_64}): {}",
        met(ratio >= TARGET_RATIO_64)
    );
    let (senders, b, _) = batch_rows.first().context("no batch phase")?;
    let batch_rate = b.per_second() * BATCH_MESSAGES as f64;
    println!(
        "- NDJSON batches of {BATCH_MESSAGES}, {senders} senders: {batch_rate:.0} messages/s (target >= {TARGET_BATCH_RATE:.0}): {}",
        met(batch_rate >= TARGET_BATCH_RATE)
    );
    println!(
        "- node VmRSS idle: {:.1} MiB (target <= {TARGET_IDLE_MIB}): {}",
        mib(idle_kib),
        met(mib(idle_kib) <= TARGET_IDLE_MIB)
    );
    let loaded = mib(peak_kib.max(hwm_kib));
    println!(
        "- node VmRSS under load: peak sampled {:.1} MiB during single messages, {:.1} MiB including batches; VmHWM {:.1} MiB (target <= {TARGET_LOADED_MIB}): {}",
        mib(single_peak),
        mib(peak_kib),
        mib(hwm_kib),
        met(loaded <= TARGET_LOADED_MIB)
    );
    ceiling.kill().await;
    for problem in cluster.stop_all().await {
        eprintln!("{problem}");
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
