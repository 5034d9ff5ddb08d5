//! `simpleloggers demo`: the whole system on one machine with nothing installed. Starts the dev
//! Consul server and three nodes as processes of this same binary (a [`LocalCluster`]) on free
//! loopback ports with temporary data directories, and a producer in-process; prints a status
//! line per second; optionally kills the leader now and then; at the end verifies that every
//! acknowledged message is stored exactly once, and leaves no process behind.

mod verify;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use verify::{read_all, verify, Verification};

use crate::{
    consul::ConsulConfig,
    discovery::watch_leader,
    local_cluster::{ClusterOptions, LocalCluster, LocalClusterError},
    producer::{self, Hooks, Summary},
    shutdown::CancellationToken,
};

/// How long a killed leader stays down before the demo restarts it.
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// How long, after the producer stopped, each node may take to hold every acknowledged message.
const CATCH_UP_WAIT: Duration = Duration::from_secs(15);

/// Flags of `simpleloggers demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoConfig {
    /// How many node processes to run.
    #[arg(long, env = "SIMPLELOGGERS_DEMO_NODES", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub nodes: u8,
    /// How long to run before verifying (Ctrl-C ends it early).
    #[arg(long, env = "SIMPLELOGGERS_DEMO_DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Kill the leader with SIGKILL this often, then restart it, to watch failover.
    #[arg(long, env = "SIMPLELOGGERS_DEMO_CHAOS_EVERY", value_parser = humantime::parse_duration)]
    pub chaos_every: Option<Duration>,
    /// Messages per second the producer sends.
    #[arg(long, env = "SIMPLELOGGERS_DEMO_RATE", default_value_t = 100.0)]
    pub rate: f64,
    /// Durability of the nodes' logs (always, `interval:<ms>`, never).
    #[arg(long, env = "SIMPLELOGGERS_DEMO_DURABILITY", default_value = "always")]
    pub durability: String,
    /// Keep the data directories and node logs in this directory instead of a temporary one.
    #[arg(long, env = "SIMPLELOGGERS_DEMO_DIR")]
    pub dir: Option<PathBuf>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The dev Consul or a node did not start.
    #[error(transparent)]
    Cluster(#[from] LocalClusterError),
    /// The producer did not start.
    #[error("the producer did not start: {0}")]
    Producer(#[from] producer::ProducerError),
    /// A log could not be read for verification.
    #[error("cannot read the log of {name}: {source}")]
    Log {
        /// Node name.
        name: String,
        /// Why.
        #[source]
        source: crate::log::LogError,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Runs the demo until `duration` passes or `shutdown` is cancelled; answers whether every
/// acknowledged message was verified stored exactly once (and none failed).
///
/// # Errors
/// Something could not be started or read.
pub async fn run(config: DemoConfig, shutdown: CancellationToken) -> Result<bool, DemoError> {
    let exe = std::env::current_exe().map_err(io("cannot find the simpleloggers executable"))?;
    let mut options = ClusterOptions::new(exe)
        .nodes(0)
        // The demo adds its nodes one by one below: each replicates to all of them.
        .replicas(u32::from(config.nodes))
        .node_args(["--durability", &config.durability])
        // Node logs go to files, so they can be detailed whatever the demo's own level.
        .rust_log(std::env::var("SIMPLELOGGERS_DEMO_NODE_LOG").unwrap_or_else(|_| "info".into()));
    options.temp_prefix = "simpleloggers-demo-".into();
    if let Some(dir) = &config.dir {
        options = options.dir(dir);
    }
    let mut cluster = LocalCluster::start(options).await?;
    let consul_url = cluster.consul_url();
    println!(
        "dev Consul on {consul_url}; data and node logs in {}",
        cluster.dir().display()
    );
    for i in 0..config.nodes {
        let index = cluster
            .add_node(&format!("node-{i}"), Vec::<String>::new())
            .await?;
        println!("started {} on {}", cluster.node(index).name(), cluster.url(index));
    }

    let consul_config = ConsulConfig::new(consul_url.clone());
    let stop_watch = CancellationToken::new();
    let mut leader_rx = watch_leader(
        cluster.consul_client().clone(),
        crate::discovery::DEFAULT_ELECTION_KEY.into(),
        stop_watch.clone(),
    );

    let mut producer_config = producer::Config::for_consul(consul_config);
    producer_config.rate = config.rate;
    let (hooks, progress_rx, mut ack_rx) = Hooks::observed();
    let stop_producer = CancellationToken::new();
    let producer = tokio::spawn(producer::run_with(producer_config, stop_producer.clone(), hooks));

    let started = Instant::now();
    let end = tokio::time::Instant::now() + config.duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut chaos = config
        .chaos_every
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    let mut restart: Option<(usize, tokio::time::Instant)> = None;
    let mut acks = Vec::new();
    let mut last_acked = 0;
    loop {
        let chaos_tick = async {
            match chaos.as_mut() {
                Some(interval) => interval.tick().await,
                None => std::future::pending().await,
            }
        };
        let restart_due = async {
            match restart {
                Some((_, at)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => { println!("interrupted: stopping"); break; }
            _ = tokio::time::sleep_until(end) => break,
            Some(ack) = ack_rx.recv() => acks.push(ack),
            _ = leader_rx.changed() => {
                let leader = leader_rx.borrow_and_update().clone();
                match leader {
                    Some(l) => println!("leader: {} (term {}) at {}", l.record.name, l.term, l.record.address),
                    None => println!("leader: none (election in progress)"),
                }
            }
            _ = tick.tick() => {
                let s = progress_rx.borrow().clone();
                let leader = leader_rx.borrow().clone();
                println!(
                    "t={:>3}s leader={} term={} acknowledged={} rate={}/s retried={} failed={}",
                    started.elapsed().as_secs(),
                    leader.as_ref().map_or("-", |l| l.record.name.as_str()),
                    leader.as_ref().map_or(0, |l| l.term),
                    s.acknowledged,
                    s.acknowledged.saturating_sub(last_acked),
                    s.retried,
                    s.failed,
                );
                last_acked = s.acknowledged;
            }
            _ = chaos_tick => {
                let leader = leader_rx.borrow().clone();
                if let (Some(l), None) = (leader, restart) {
                    if let Some(i) = cluster.nodes().iter().position(|n| n.name() == l.record.name) {
                        cluster.node_mut(i).kill().await;
                        println!("chaos: killed {} (leader, term {}) with SIGKILL", l.record.name, l.term);
                        restart = Some((i, tokio::time::Instant::now() + RESTART_AFTER));
                    }
                }
            }
            _ = restart_due => {
                if let Some((i, _)) = restart.take() {
                    cluster.node_mut(i).start().await?;
                    println!("restarted {} on {}", cluster.node(i).name(), cluster.url(i));
                }
            }
        }
    }

    // Stop the producer first (it drains what it holds), then the nodes, then verify.
    stop_producer.cancel();
    let summary = match producer.await {
        Ok(result) => result?,
        Err(err) => {
            return Err(DemoError::Io {
                what: "the producer task failed".into(),
                source: std::io::Error::other(err),
            })
        }
    };
    while let Ok(ack) = ack_rx.try_recv() {
        acks.push(ack);
    }
    println!("producer: {summary}");
    // A node the chaos killed last is still down: bring it back, so that it can catch up.
    if let Some((i, _)) = restart.take() {
        cluster.node_mut(i).start().await?;
        println!(
            "restarted {} on {} to catch up",
            cluster.node(i).name(),
            cluster.url(i)
        );
    }
    // Every node's log should now hold every acknowledged message: wait (bounded) until each
    // node's high watermark passes the last one, so a node restarted late has caught up.
    let last = acks.iter().map(|a| a.last_offset + 1).max().unwrap_or(0);
    for i in 0..cluster.len() {
        let url = format!("{}/api/v1/status", cluster.url(i));
        let http = cluster.http().clone();
        let caught_up = crate::local_cluster::eventually(CATCH_UP_WAIT, || async {
            let status: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            let hw = status["replication"]["high_watermark"].as_u64()?;
            (hw >= last).then_some(())
        })
        .await;
        if caught_up.is_none() {
            eprintln!(
                "{} has not caught up to offset {last} within {CATCH_UP_WAIT:?}",
                cluster.node(i).name()
            );
        }
    }
    for problem in cluster.stop_nodes().await {
        match problem {
            LocalClusterError::StopTimeout { name, after } => {
                eprintln!("node {name} did not stop within {after:?}; killing it");
            }
            other => eprintln!("{other}"),
        }
    }
    stop_watch.cancel();
    let _ = cluster.consul_mut().stop().await;

    let mut logs = Vec::new();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let records = read_all(cluster.data_dir(i))
            .await
            .map_err(|source| DemoError::Log {
                name: node.name().to_string(),
                source,
            })?;
        logs.push((node.name().to_string(), node.url(), records));
    }
    let result = verify(&summary.producer_id, &acks, &logs);
    report(
        &summary,
        &result,
        &nodes_summary(&logs),
        cluster.dir(),
        config.dir.is_some(),
    );
    Ok(result.holds() && summary.all_acknowledged())
}

fn nodes_summary(logs: &[(String, String, Vec<crate::log::Record>)]) -> String {
    logs.iter()
        .map(|(name, _, records)| format!("{name}: {} records", records.len()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(summary: &Summary, result: &Verification, nodes: &str, base: &Path, kept: bool) {
    println!("logs: {nodes}");
    if result.unacknowledged_attempts > 0 {
        println!(
            "note: {} stored copies were never acknowledged (the producer stopped before their answer)",
            result.unacknowledged_attempts
        );
    }
    for line in result.missing.iter().chain(&result.duplicated).take(10) {
        println!("  problem: {line}");
    }
    if result.holds() && summary.all_acknowledged() {
        println!(
            "VERIFIED: all {} acknowledged messages are stored exactly once on every node ({} sent, {} failed)",
            result.verified, summary.sent, summary.failed
        );
    } else {
        println!(
            "FAILED: {} of {} acknowledged messages verified, {} missing, {} duplicated; {} sent, {} failed, {} unacknowledged",
            result.verified,
            result.acknowledged,
            result.missing.len(),
            result.duplicated.len(),
            summary.sent,
            summary.failed,
            summary.unacknowledged()
        );
    }
    if kept {
        println!("data kept in {}", base.display());
    }
}
