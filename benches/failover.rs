//! `make bench-failover`: how long writes stop when the leader dies. Starts dev Consul and three
//! nodes with the default election timings as processes, runs the real producer in-process
//! (`producer::run_with`, 200 messages/s, discovering the leader through Consul) and timestamps
//! every acknowledgement; then, alternately, SIGKILLs or SIGTERMs the leader and measures the
//! time until the first message acknowledged by another node. The stopped node is restarted and
//! rejoins before the next trial. `TRIALS` (default 20 per kind) bounds the run. A blocking query
//! on the election key's prefix timestamps, per trial, when Consul freed the lock (for SIGKILL:
//! the check failed and the session was invalidated), when a survivor took it and when the ISR
//! key changed, which splits each failover into phases. At the end, every node's log is checked
//! against every acknowledgement: none lost, none stored twice.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use simpleloggers::{
    consul::{ConsulClient, ConsulConfig, Watcher},
    discovery::DEFAULT_ELECTION_KEY,
    local_cluster::{eventually_every, ClusterOptions, LocalCluster},
    producer::{self, Hooks},
    shutdown::CancellationToken,
};
use support::{quantile, BIN};

/// Nodes in the cluster.
const NODES: usize = 3;
/// The producer's rate (messages/s).
const RATE: f64 = 200.0;
/// Trials of each kind unless `TRIALS` says otherwise.
const DEFAULT_TRIALS: usize = 20;
/// No new trial starts after this much time (the run stays bounded whatever happens).
const BUDGET: Duration = Duration::from_secs(330);
/// Longest wait for a new leader's first acknowledgement before a trial counts as failed.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the benchmark polls (it bounds the resolution of "survivor ready").
const POLL: Duration = Duration::from_millis(10);
/// Targets of issue 14 for SIGKILL (issue 11's were 2.5 s p50) and issue 11 for SIGTERM.
const TARGET_KILL_P50: Duration = Duration::from_millis(1200);
const TARGET_KILL_MAX: Duration = Duration::from_secs(2);
const TARGET_TERM_P50: Duration = Duration::from_millis(50);
const TARGET_TERM_MAX: Duration = Duration::from_secs(1);

/// How the leader is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Kill,
    Term,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Kill => "SIGKILL",
            Kind::Term => "SIGTERM",
        }
    }
}

/// One acknowledgement as the benchmark saw it arrive.
struct Seen {
    at: Instant,
    term: u64,
    leader: String,
    /// Offsets of the acknowledged messages (`first ..= last`).
    offsets: (u64, u64),
    /// A retry answered as a duplicate: the offsets are the original copy's, written in an
    /// earlier term than the one the answer names.
    duplicate: bool,
}

/// What the election prefix looked like at one answer of the benchmark's blocking query.
struct KeyEvent {
    at: Instant,
    /// The session holding the election key.
    holder: Option<String>,
    /// `ModifyIndex` of the ISR key (0: absent).
    isr_index: u64,
}

/// Follows the election key and the keys under it with blocking queries, recording every answer
/// that changed the holder or the ISR key.
fn trace_election(consul: ConsulClient, stop: CancellationToken) -> Arc<Mutex<Vec<KeyEvent>>> {
    let events: Arc<Mutex<Vec<KeyEvent>>> = Arc::default();
    let log = events.clone();
    let isr_key = format!("{DEFAULT_ELECTION_KEY}/isr");
    tokio::spawn(async move {
        let consul = consul.with_timeout(Duration::from_secs(40));
        let mut watcher = Watcher::new(Duration::from_secs(30));
        loop {
            let answer = tokio::select! {
                _ = stop.cancelled() => return,
                answer = watcher.next(|opts| {
                    let consul = consul.clone();
                    async move { consul.kv_list(DEFAULT_ELECTION_KEY, &opts).await }
                }) => answer,
            };
            let Ok(pairs) = answer else { continue };
            let at = Instant::now();
            let holder = pairs
                .iter()
                .find(|p| p.key == DEFAULT_ELECTION_KEY)
                .and_then(|p| p.session.clone());
            let isr_index = pairs
                .iter()
                .find(|p| p.key == isr_key)
                .map_or(0, |p| p.modify_index);
            let mut log = log.lock().expect("key events");
            if log
                .last()
                .is_none_or(|e| e.holder != holder || e.isr_index != isr_index)
            {
                log.push(KeyEvent {
                    at,
                    holder,
                    isr_index,
                });
            }
        }
    });
    events
}

/// The phases of one failover as the election prefix showed them, each since the signal.
#[derive(Default)]
struct Phases {
    /// The old holder's session no longer holds the key (released, or invalidated by Consul).
    freed: Option<Duration>,
    /// Another session holds it.
    acquired: Option<Duration>,
    /// The ISR key changed (the new leader removed the stopped node).
    isr_changed: Option<Duration>,
}

impl Phases {
    fn of(events: &[KeyEvent], t0: Instant) -> Self {
        let before = events.iter().rev().find(|e| e.at < t0);
        let (old_holder, old_isr) = before.map_or((None, 0), |e| (e.holder.clone(), e.isr_index));
        let after = || events.iter().filter(|e| e.at >= t0);
        let since = |e: &KeyEvent| e.at - t0;
        Phases {
            freed: after().find(|e| e.holder != old_holder).map(since),
            acquired: after()
                .find(|e| e.holder.is_some() && e.holder != old_holder)
                .map(since),
            isr_changed: after().find(|e| e.isr_index != old_isr).map(since),
        }
    }
}

/// One trial's figures.
struct Trial {
    kind: Kind,
    /// Election-key phases (signal → freed → acquired → ISR changed).
    phases: Phases,
    /// Signal → first acknowledgement from another node.
    first_ack: Duration,
    /// Signal → a surviving node answers `/readyz` 200.
    ready: Option<Duration>,
    /// Signal → the stopped process exited (SIGTERM only).
    exited: Option<Duration>,
    /// Exit code after SIGTERM (`None`: killed by a signal).
    exit_code: Option<i32>,
    /// Messages the producer gave up on during the trial.
    failed: u64,
    /// Requests the producer had to resend during the trial.
    retried: u64,
    old_term: u64,
    new_term: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nodes' default election timings, as the node's flags print them.
fn default_timings() -> String {
    use simpleloggers::election::{
        DEFAULT_CHECK_INTERVAL, DEFAULT_LOCK_DELAY, DEFAULT_RENEW_INTERVAL, DEFAULT_SESSION_TTL,
    };
    let d = |d| humantime::format_duration(d).to_string();
    format!(
        "session TTL {}, lock-delay {}, renew {}, check {}",
        d(DEFAULT_SESSION_TTL),
        d(DEFAULT_LOCK_DELAY),
        d(DEFAULT_RENEW_INTERVAL),
        d(DEFAULT_CHECK_INTERVAL)
    )
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} ms", ms(d)))
}

fn main() -> anyhow::Result<()> {
    let trials = std::env::var("TRIALS")
        .ok()
        .map(|s| s.parse::<usize>().context("TRIALS"))
        .transpose()?
        .unwrap_or(DEFAULT_TRIALS);
    tokio::runtime::Runtime::new()?.block_on(run(trials))
}

/// Reads every node's log once the in-sync replicas agree and checks it against the
/// acknowledgements: each acknowledged offset holds a record of the acknowledging term on every
/// node (a node missing it, or holding another term there, lost it; a duplicate answer names the
/// original copy, of the same or an earlier term), and no message text appears twice in a log. Answers (lost, duplicated) over all nodes.
async fn lost_and_duplicated(cluster: &LocalCluster, seen: &[Seen]) -> anyhow::Result<(u64, u64)> {
    let last = seen.iter().map(|s| s.offsets.1).max().unwrap_or(0);
    // Wait (bounded) until every node's readable log reaches the last acknowledged offset.
    for index in 0..cluster.len() {
        eventually_every(POLL, Duration::from_secs(30), || async {
            let log = cluster.read_log(index).await.ok()?;
            log.last().filter(|e| e.offset >= last).map(|_| ())
        })
        .await
        .with_context(|| format!("node {} never showed offset {last}", cluster.node(index).name()))?;
    }
    let (mut lost, mut duplicated) = (0, 0);
    for index in 0..cluster.len() {
        let log = cluster.read_log(index).await?;
        let by_offset: std::collections::HashMap<u64, &simpleloggers::cli::tail::TailEntry> =
            log.iter().map(|e| (e.offset, e)).collect();
        for s in seen {
            for offset in s.offsets.0..=s.offsets.1 {
                if by_offset.get(&offset).is_none_or(|e| {
                    if s.duplicate {
                        e.term > s.term
                    } else {
                        e.term != s.term
                    }
                }) {
                    lost += 1;
                }
            }
        }
        let mut texts = std::collections::HashSet::new();
        duplicated += log
            .iter()
            .filter_map(|e| e.message.as_deref())
            .filter(|m| m.starts_with("Message: ") && !texts.insert(*m))
            .count() as u64;
    }
    println!(
        "acknowledged {} messages; on {} nodes: {lost} lost, {duplicated} duplicated",
        seen.iter().map(|s| s.offsets.1 + 1 - s.offsets.0).sum::<u64>(),
        cluster.len()
    );
    Ok((lost, duplicated))
}

async fn run(trials: usize) -> anyhow::Result<()> {
    let dir = support::bench_dir("failover")?;
    println!(
        "{NODES} nodes, default timings ({}), dev Consul's default 1 s minimum check interval, durability always; producer at {RATE}/s; {trials} trials per kind",
        default_timings()
    );
    let started = Instant::now();
    let options = ClusterOptions::new(BIN)
        .nodes(NODES)
        .dir(dir.path())
        .node_args(["--durability", "always"]);
    let mut cluster = LocalCluster::start(options).await?;
    let http = cluster.http().clone();
    cluster.wait_leader(Duration::from_secs(30)).await?;
    let stop_trace = CancellationToken::new();
    let key_events = trace_election(cluster.consul_client().clone(), stop_trace.clone());

    // The producer, timestamping every acknowledgement as it arrives.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (hooks, progress_rx, mut ack_rx) = Hooks::observed();
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(ack) = ack_rx.recv().await {
                let at = Instant::now();
                let mut seen = seen.lock().expect("ack log");
                seen.push(Seen {
                    at,
                    term: ack.term,
                    leader: ack.leader,
                    offsets: (ack.first_offset, ack.last_offset),
                    duplicate: ack.duplicate,
                });
            }
        });
    }
    let mut config = producer::Config::for_consul(ConsulConfig::new(cluster.consul_url()));
    config.rate = RATE;
    let stop_producer = CancellationToken::new();
    let producer = tokio::spawn(producer::run_with(config, stop_producer.clone(), hooks));

    // The first acknowledgement at or after `since` from a node other than `not`.
    let first_ack_after = |since: Instant, not: Option<&str>| {
        let seen = seen.lock().expect("ack log");
        seen.iter()
            .rev()
            .take_while(|s| s.at >= since)
            .filter(|s| not.is_none_or(|n| s.leader != n))
            .last()
            .map(|s| (s.at, s.term, s.leader.clone()))
    };

    let mut results = Vec::new();
    let mut timeouts = Vec::new();
    'trials: for round in 0..trials {
        for kind in [Kind::Kill, Kind::Term] {
            if started.elapsed() > BUDGET {
                println!("time budget of {BUDGET:?} used up after {} trials", results.len());
                break 'trials;
            }
            let leader = cluster
                .wait_leader(Duration::from_secs(30))
                .await
                .context("no single leader before the trial")?;
            let (idx, old_term) = (leader.index, leader.term);
            let old_url = cluster.url(idx);
            // The producer is acknowledged by this leader before the signal.
            let now = Instant::now();
            eventually_every(POLL, Duration::from_secs(10), || async {
                first_ack_after(now, None).filter(|(_, _, l)| *l == old_url)
            })
            .await
            .context("the producer is not acknowledged by the leader")?;
            let before = progress_rx.borrow().clone();

            let t0 = Instant::now();
            cluster.node(idx).signal(match kind {
                Kind::Kill => Signal::SIGKILL,
                Kind::Term => Signal::SIGTERM,
            });
            let survivors: Vec<String> = cluster
                .nodes()
                .iter()
                .enumerate()
                .filter(|(i, n)| *i != idx && n.is_running())
                .map(|(_, n)| n.url())
                .collect();
            let ready = async {
                eventually_every(POLL, TRIAL_TIMEOUT, || async {
                    for url in &survivors {
                        let r = http
                            .get(format!("{url}/readyz"))
                            .timeout(Duration::from_millis(500))
                            .send()
                            .await;
                        if matches!(&r, Ok(r) if r.status() == 200) {
                            return Some(t0.elapsed());
                        }
                    }
                    None
                })
                .await
            };
            let acked = eventually_every(POLL, TRIAL_TIMEOUT, || async {
                first_ack_after(t0, Some(&old_url))
            });
            let old = cluster.node_mut(idx);
            let exited = async {
                match kind {
                    Kind::Kill => {
                        old.kill().await;
                        (None, None)
                    }
                    Kind::Term => {
                        let status = old.wait(Duration::from_secs(20)).await;
                        let at = t0.elapsed();
                        match status {
                            Ok(status) => (Some(at), status.code()),
                            Err(err) => {
                                eprintln!("{err:#}; killing it");
                                old.kill().await;
                                (None, None)
                            }
                        }
                    }
                }
            };
            let (ready, acked, (exited, exit_code)) = tokio::join!(ready, acked, exited);
            let phases = Phases::of(&key_events.lock().expect("key events"), t0);

            // Restart the stopped node and wait until it follows the new leader again.
            cluster.node_mut(idx).start().await?;
            let status_url = format!("{}/api/v1/status", cluster.url(idx));
            let Some((at, new_term, new_leader)) = acked else {
                println!(
                    "trial {round} {}: no acknowledgement from another node within {TRIAL_TIMEOUT:?}",
                    kind.name()
                );
                timeouts.push(kind);
                continue;
            };
            let rejoined = eventually_every(POLL, Duration::from_secs(30), || async {
                let r = http.get(&status_url).send().await.ok()?;
                let s: serde_json::Value = r.json().await.ok()?;
                let follows = s["role"] == "follower"
                    && s["session"].is_string()
                    && s["leader"]["address"]
                        .as_str()
                        .is_some_and(|a| new_leader.ends_with(a));
                follows.then_some(())
            })
            .await;
            if rejoined.is_none() {
                bail!(
                    "node {} did not rejoin as a follower within 30 s",
                    cluster.node(idx).name()
                );
            }
            // Let the producer's counters catch up with the trial.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = progress_rx.borrow().clone();
            let trial = Trial {
                kind,
                phases,
                first_ack: at - t0,
                ready,
                exited,
                exit_code,
                failed: after.failed - before.failed,
                retried: after.retried - before.retried,
                old_term,
                new_term,
            };
            println!(
                "trial {round:>2} {}: term {} -> {}: first ack from the new leader after {:>7.1} ms (lock freed after {}, taken after {}, ISR changed after {}; survivor ready after {}; exited after {}; exit code {:?}; failed {}; retried {})",
                kind.name(),
                trial.old_term,
                trial.new_term,
                ms(trial.first_ack),
                opt_ms(trial.phases.freed),
                opt_ms(trial.phases.acquired),
                opt_ms(trial.phases.isr_changed),
                opt_ms(trial.ready),
                trial.exited.map_or("-".into(), |d| format!("{:.1} ms", ms(d))),
                trial.exit_code,
                trial.failed,
                trial.retried,
            );
            results.push(trial);
        }
    }

    stop_producer.cancel();
    stop_trace.cancel();
    let summary = producer.await.context("producer task")?.context("producer")?;
    println!("producer: {summary}");
    let acked = std::mem::take(&mut *seen.lock().expect("ack log"));
    let (lost, duplicated) = lost_and_duplicated(&cluster, &acked).await?;
    for problem in cluster.stop_all().await {
        eprintln!("{problem}");
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());

    println!();
    println!("| kind | trials | first ack from new leader: min / median* / max (ms) | survivor ready: median (ms) | process exit: median (ms) | failed sends | retried requests (total) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for kind in [Kind::Kill, Kind::Term] {
        let of_kind: Vec<&Trial> = results.iter().filter(|t| t.kind == kind).collect();
        let mut acks: Vec<Duration> = of_kind.iter().map(|t| t.first_ack).collect();
        acks.sort_unstable();
        let mut ready: Vec<Duration> = of_kind.iter().filter_map(|t| t.ready).collect();
        ready.sort_unstable();
        let mut exited: Vec<Duration> = of_kind.iter().filter_map(|t| t.exited).collect();
        exited.sort_unstable();
        let q = |v: &[Duration], p: f64| quantile(v, p).map_or("-".into(), |d| format!("{:.0}", ms(d)));
        let failed: u64 = of_kind.iter().map(|t| t.failed).sum();
        let retried: u64 = of_kind.iter().map(|t| t.retried).sum();
        let lost = timeouts.iter().filter(|k| **k == kind).count();
        println!(
            "| {} | {}{} | {} / {} / {} | {} | {} | {} | {} |",
            kind.name(),
            of_kind.len(),
            if lost > 0 {
                format!(" (+{lost} timed out)")
            } else {
                String::new()
            },
            q(&acks, 0.0),
            q(&acks, 0.5),
            q(&acks, 1.0),
            q(&ready, 0.5),
            q(&exited, 0.5),
            failed,
            retried
        );
        let clean_exits = of_kind.iter().filter(|t| t.exit_code == Some(0)).count();
        if kind == Kind::Term {
            println!(
                "  (SIGTERM: {clean_exits}/{} exited with status 0)",
                of_kind.len()
            );
        }
    }
    println!("(*median: the upper one of an even count, e.g. the 11th of 20 sorted trials)");
    println!();
    // Each phase as the median over the trials of its own duration (medians do not add up).
    println!("| kind | signal -> lock freed | freed -> taken | taken -> ISR changed | taken -> survivor ready | taken -> first ack |");
    println!("|---|---:|---:|---:|---:|---:|");
    for kind in [Kind::Kill, Kind::Term] {
        let of_kind: Vec<&Trial> = results.iter().filter(|t| t.kind == kind).collect();
        let phase = |f: &dyn Fn(&Trial) -> Option<Duration>| {
            let mut v: Vec<Duration> = of_kind.iter().filter_map(|t| f(t)).collect();
            v.sort_unstable();
            match (quantile(&v, 0.5), quantile(&v, 1.0)) {
                (Some(p50), Some(max)) => format!("{:.0} (max {:.0})", ms(p50), ms(max)),
                _ => "-".into(),
            }
        };
        let between = |a: Option<Duration>, b: Option<Duration>| b.zip(a).and_then(|(b, a)| b.checked_sub(a));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            kind.name(),
            phase(&|t| t.phases.freed),
            phase(&|t| between(t.phases.freed, t.phases.acquired)),
            phase(&|t| between(t.phases.acquired, t.phases.isr_changed)),
            phase(&|t| between(t.phases.acquired, t.ready)),
            phase(&|t| between(t.phases.acquired, Some(t.first_ack))),
        );
    }
    println!("(median ms over the trials of each phase on its own, so the medians do not add up)");
    println!();
    for kind in [Kind::Kill, Kind::Term] {
        let mut acks: Vec<Duration> = results
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.first_ack)
            .collect();
        acks.sort_unstable();
        let p50 = quantile(&acks, 0.5).unwrap_or(Duration::MAX);
        let max = quantile(&acks, 1.0).unwrap_or(Duration::MAX);
        let failed: u64 = results.iter().filter(|t| t.kind == kind).map(|t| t.failed).sum();
        match kind {
            Kind::Kill => println!(
                "- SIGKILL p50 {:.0} ms (target <= {} ms), max {:.0} ms (target <= {} ms): {}",
                ms(p50),
                TARGET_KILL_P50.as_millis(),
                ms(max),
                TARGET_KILL_MAX.as_millis(),
                if p50 <= TARGET_KILL_P50 && max <= TARGET_KILL_MAX {
                    "met"
                } else {
                    "MISSED"
                }
            ),
            Kind::Term => println!(
                "- SIGTERM p50 {:.0} ms (target <= {} ms), max {:.0} ms (target <= {} ms), failed sends {failed} (target 0): {}",
                ms(p50),
                TARGET_TERM_P50.as_millis(),
                ms(max),
                TARGET_TERM_MAX.as_millis(),
                if p50 <= TARGET_TERM_P50 && max <= TARGET_TERM_MAX && failed == 0 {
                    "met"
                } else {
                    "MISSED"
                }
            ),
        }
    }
    println!(
        "- acknowledged messages lost over all trials: {lost}, duplicated: {duplicated} (target 0): {}",
        if lost == 0 && duplicated == 0 {
            "met"
        } else {
            "MISSED"
        }
    );
    if !summary.all_acknowledged() {
        bail!("the producer did not get every message acknowledged: {summary}");
    }
    if !timeouts.is_empty() {
        bail!("{} trials timed out", timeouts.len());
    }
    Ok(())
}
