//! `simpleloggers demo`: the whole system on one machine with nothing installed. Starts the dev
//! Consul server in-process, three node processes (this same binary) on free loopback ports with
//! temporary data directories, and a producer; prints a status line per second; optionally kills
//! the leader now and then; at the end verifies that every acknowledged message is stored exactly
//! once, and leaves no process behind.

mod verify;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::{mpsc, watch},
};

pub use verify::{read_all, verify, Verification};

use crate::{
    consul::{ConsulClient, ConsulConfig},
    discovery::watch_leader,
    producer::{self, Ack, Hooks, Summary},
    shutdown::CancellationToken,
};

/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a killed leader stays down before the demo restarts it.
const RESTART_AFTER: Duration = Duration::from_secs(2);

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
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The dev Consul server did not start.
    #[error("cannot start the dev Consul server: {0}")]
    Consul(#[from] devconsul::DevConsulError),
    /// A node did not start.
    #[error("node {name} did not start: {message} (see {log})")]
    NodeStart {
        /// Node name.
        name: String,
        /// What happened.
        message: String,
        /// Its log file.
        log: String,
    },
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

/// One node process of the demo.
struct DemoNode {
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    addr: Option<SocketAddr>,
    child: Option<Child>,
}

impl DemoNode {
    fn url(&self) -> String {
        self.addr.map(|a| format!("http://{a}")).unwrap_or_default()
    }

    /// Starts (or restarts, on the same address) the node process.
    async fn start(&mut self, consul_url: &str, durability: &str) -> Result<(), DemoError> {
        let exe = std::env::current_exe().map_err(io("cannot find the simpleloggers executable"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("cannot open {}", self.log.display())))?;
        let listen = self
            .addr
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let mut cmd = Command::new(exe);
        cmd.args([
            "node",
            "--name",
            &self.name,
            "--listen",
            &listen,
            "--consul-addr",
            consul_url,
        ])
        .arg("--data-dir")
        .arg(&self.data_dir)
        .args(["--durability", durability])
        .env_remove("CONSUL_HTTP_TOKEN")
        // Node logs go to files, so they can be detailed whatever the demo's own level.
        .env(
            "RUST_LOG",
            std::env::var("SIMPLELOGGERS_DEMO_NODE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: the terminal's Ctrl-C reaches the demo, which stops the
        // nodes in order, instead of every node at once.
        .process_group(0)
        .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it makes the
        // kernel kill the node if the demo itself dies, so no process is ever left behind.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(io(format!("cannot start node {}", self.name)))?;
        let fail = |message: String| DemoError::NodeStart {
            name: self.name.clone(),
            message,
            log: self.log.display().to_string(),
        };
        let stdout = child.stdout.take().ok_or_else(|| fail("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .map_err(|_| fail("no answer within 20s".into()))?
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("exited at start".into()))?;
        let addr = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| fail(format!("unexpected first line {line:?}")))?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.addr = Some(addr);
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        self.child = None;
    }

    /// SIGTERM, then SIGKILL if it does not exit in time.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
            eprintln!(
                "node {} did not stop within {STOP_TIMEOUT:?}; killing it",
                self.name
            );
            let _ = child.kill().await;
        }
    }
}

/// Runs the demo until `duration` passes or `shutdown` is cancelled; answers whether every
/// acknowledged message was verified stored exactly once (and none failed).
///
/// # Errors
/// Something could not be started or read.
pub async fn run(config: DemoConfig, shutdown: CancellationToken) -> Result<bool, DemoError> {
    let (_temp, base) = match &config.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
            (None, dir.clone())
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("simpleloggers-demo-")
                .tempdir()
                .map_err(io("cannot create a temporary directory"))?;
            let path = temp.path().to_path_buf();
            (Some(temp), path)
        }
    };
    let consul = devconsul::spawn(devconsul::Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..devconsul::Config::default()
    })
    .await?;
    let consul_url = consul.url();
    println!(
        "dev Consul on {consul_url}; data and node logs in {}",
        base.display()
    );

    let mut nodes: Vec<DemoNode> = (0..config.nodes)
        .map(|i| DemoNode {
            name: format!("node-{i}"),
            data_dir: base.join(format!("node-{i}")),
            log: base.join(format!("node-{i}.log")),
            addr: None,
            child: None,
        })
        .collect();
    for node in &mut nodes {
        node.start(&consul_url, &config.durability).await?;
        println!("started {} on {}", node.name, node.url());
    }

    let consul_config = ConsulConfig::new(consul_url.clone());
    let stop_watch = CancellationToken::new();
    let client = ConsulClient::new(&consul_config).map_err(|e| DemoError::NodeStart {
        name: "consul client".into(),
        message: e.to_string(),
        log: String::new(),
    })?;
    let mut leader_rx = watch_leader(
        client,
        crate::discovery::DEFAULT_ELECTION_KEY.into(),
        stop_watch.clone(),
    );

    let mut producer_config = producer::Config::for_consul(consul_config);
    producer_config.rate = config.rate;
    let (progress_tx, progress_rx) = watch::channel(Summary::default());
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let stop_producer = CancellationToken::new();
    let producer = tokio::spawn(producer::run_with(
        producer_config,
        stop_producer.clone(),
        Hooks {
            progress: Some(progress_tx),
            acks: Some(ack_tx),
            reader: None,
        },
    ));

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
                    if let Some(i) = nodes.iter().position(|n| n.name == l.record.name) {
                        nodes[i].kill();
                        println!("chaos: killed {} (leader, term {}) with SIGKILL", l.record.name, l.term);
                        restart = Some((i, tokio::time::Instant::now() + RESTART_AFTER));
                    }
                }
            }
            _ = restart_due => {
                if let Some((i, _)) = restart.take() {
                    nodes[i].start(&consul_url, &config.durability).await?;
                    println!("restarted {} on {}", nodes[i].name, nodes[i].url());
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
    for node in &mut nodes {
        node.stop().await;
    }
    stop_watch.cancel();
    drop(consul);

    let mut logs = Vec::new();
    for node in &nodes {
        let records = read_all(&node.data_dir).await.map_err(|source| DemoError::Log {
            name: node.name.clone(),
            source,
        })?;
        logs.push((node.name.clone(), node.url(), records));
    }
    let result = verify(&summary.producer_id, &acks, &logs);
    report(
        &summary,
        &result,
        &nodes_summary(&logs),
        &base,
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
            "note: {} extra copies are attempts that a crashed leader stored but never acknowledged; \
             the producer resent them to the next leader",
            result.unacknowledged_attempts
        );
    }
    for line in result.missing.iter().chain(&result.duplicated).take(10) {
        println!("  problem: {line}");
    }
    if result.holds() && summary.all_acknowledged() {
        println!(
            "VERIFIED: all {} acknowledged messages are stored exactly once ({} sent, {} failed)",
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
