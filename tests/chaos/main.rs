//! `make chaos` (issue 13): three replicated nodes on the dev Consul (real processes on loopback,
//! each node reaching Consul through a TCP proxy and fetching through an HTTP proxy the suite can
//! cut), two idempotent producers at a steady rate with several batches in flight, one fault per
//! round, and after every round the invariants checked from every node's log, the producers'
//! acknowledgements and the `/readyz` samples (`invariants.rs`; RELIABILITY.md says what each
//! means). Prints the table of `report.rs`.
//!
//! `chaos_short` (in `make test`) runs one round of every fault with short outages;
//! `chaos_full` (ignored; `make chaos`) runs `CHAOS_ROUNDS` (20) of each, see [`Settings`].

#[path = "../support/cluster.rs"]
mod cluster;
mod faults;
mod invariants;
mod load;
#[path = "../support/proxy.rs"]
mod proxy;
#[path = "../support/replication.rs"]
mod replication;
mod report;
#[path = "../support/segments.rs"]
mod segments;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use cluster::{Cluster, BIN};
use faults::{Durations, Fault, Reference};
use invariants::{check_leadership, check_logs, MessageId};
use load::{Load, ReadySampler};
use proxy::Proxy;
use report::{Report, RoundResult};
use simpleloggers::local_cluster::{eventually, ClusterOptions, Timings};

/// Nodes in the cluster.
const NODES: usize = 3;
/// The longest wait for the cluster to be whole again (one leader, every node in sync), and
/// for every node's high watermark to cover every acknowledgement.
const WHOLE: Duration = Duration::from_secs(60);

/// How long a fault is left to take effect before what it killed is restarted.
const SETTLE: Duration = Duration::from_secs(3);

/// The longest time in `[from, until]` without an acknowledgement (`acks` in arrival order).
fn longest_gap(acks: &[invariants::TimedAck], from: Instant, until: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for at in acks.iter().map(|a| a.at).filter(|&at| at > from && at < until) {
        longest = longest.max(at - last);
        last = at;
    }
    longest.max(until.saturating_duration_since(last))
}

/// What a run does; every field has an environment knob for `chaos_full`.
#[derive(Clone, Debug)]
struct Settings {
    /// Rounds of each fault (`CHAOS_ROUNDS`, default 20).
    rounds: usize,
    /// The faults, in order (`CHAOS_FAULTS`, comma-separated names, default all).
    faults: Vec<Fault>,
    /// How long the lasting faults last.
    durations: Durations,
    /// Messages per second of each producer (`CHAOS_RATE`, default 20).
    rate: f64,
    /// The longest one round may take, fault and checks included (`CHAOS_ROUND_LIMIT`, 240 s).
    round_limit: Duration,
    /// The longest the whole run may take (`CHAOS_TIME_LIMIT`, default 3 h).
    time_limit: Duration,
}

/// `name` from the environment as a humantime duration, else `default`.
fn env_duration(name: &str, default: Duration) -> Duration {
    std::env::var(name).ok().map_or(default, |v| {
        humantime::parse_duration(&v).unwrap_or_else(|e| panic!("{name}={v:?}: {e} (e.g. 30s)"))
    })
}

impl Settings {
    /// What `make chaos` runs, from the environment.
    fn from_env() -> Settings {
        let rounds = std::env::var("CHAOS_ROUNDS").map_or(20, |v| {
            v.parse()
                .unwrap_or_else(|e| panic!("CHAOS_ROUNDS={v:?}: {e} (a number of rounds)"))
        });
        let faults = Fault::parse_list(&std::env::var("CHAOS_FAULTS").unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        let rate = std::env::var("CHAOS_RATE").map_or(20.0, |v| {
            v.parse()
                .unwrap_or_else(|e| panic!("CHAOS_RATE={v:?}: {e} (messages per second)"))
        });
        Settings {
            rounds,
            faults,
            durations: Durations {
                outage: env_duration("CHAOS_OUTAGE", Duration::from_secs(30)),
                cut: env_duration("CHAOS_CUT", Duration::from_secs(10)),
                disk_full: env_duration("CHAOS_DISK_FULL", Duration::from_secs(5)),
                slow: env_duration("CHAOS_SLOW_SYNC", Duration::from_secs(10)),
                slow_delay: env_duration("CHAOS_SLOW_SYNC_DELAY", Duration::from_millis(200)),
                session_ttl: Timings::FAST.session_ttl,
                lock_delay: Timings::FAST.lock_delay,
            },
            rate,
            round_limit: env_duration("CHAOS_ROUND_LIMIT", Duration::from_secs(240)),
            time_limit: env_duration("CHAOS_TIME_LIMIT", Duration::from_secs(3 * 3600)),
        }
    }

    /// What CI runs: one round of every fault, outages and cuts of a few seconds.
    fn short() -> Settings {
        Settings {
            rounds: 1,
            faults: Fault::ALL.to_vec(),
            durations: Durations {
                outage: Duration::from_secs(5),
                cut: Duration::from_secs(4),
                disk_full: Duration::from_secs(3),
                slow: Duration::from_secs(4),
                slow_delay: Duration::from_millis(200),
                session_ttl: Timings::FAST.session_ttl,
                lock_delay: Timings::FAST.lock_delay,
            },
            rate: 20.0,
            round_limit: Duration::from_secs(180),
            time_limit: Duration::from_secs(8 * 60),
        }
    }
}

/// The cluster under test and everything watching it.
pub struct Chaos {
    /// Dev Consul and the nodes (fast timings, fault files, Consul proxies).
    pub cluster: Cluster,
    /// Each node's replication proxy, by index.
    pub proxies: Vec<Proxy>,
    /// How long the lasting faults last.
    pub durations: Durations,
    /// The producers.
    load: Load,
    /// The `/readyz` sampler.
    sampler: ReadySampler,
    /// Losses, duplicates and leadership violations reported so far (each is reported once, in
    /// the round that found it).
    reported_lost: BTreeSet<MessageId>,
    reported_duplicated: BTreeSet<MessageId>,
    reported: BTreeSet<String>,
}

impl Chaos {
    /// Starts the cluster and the load, and waits until the cluster is whole and serving.
    async fn start(settings: &Settings) -> Chaos {
        // A copy of the binary keeps a long run independent of rebuilds meanwhile.
        let binary = std::env::var("CHAOS_BIN").unwrap_or_else(|_| BIN.to_string());
        let mut options = ClusterOptions::fast(binary)
            .nodes(NODES)
            .fault_files()
            .consul_proxies();
        // Pages of 10 000 entries from a debug build on a loaded machine: be patient (nothing
        // asks a paused node: the sampler has its own client).
        options.http_timeout = Duration::from_secs(20);
        if let Ok(dir) = std::env::var("CHAOS_DIR") {
            options = options.dir(dir);
        }
        let mut proxies = Vec::new();
        for i in 0..NODES {
            let proxy = Proxy::start().await;
            options = options.replication_proxy(i, proxy.url());
            proxies.push(proxy);
        }
        let cluster = Cluster::start_with(options).await;
        eprintln!("chaos: data and logs in {}", cluster.dir().display());
        cluster.wait_leader(WHOLE).await;
        cluster.wait_isr(&[0, 1, 2], WHOLE).await;
        let load = Load::start(&cluster.consul_url(), &[("p0", 4), ("p1", 8)], settings.rate);
        let sampler = ReadySampler::start((0..NODES).map(|i| cluster.url(i)).collect());
        let chaos = Chaos {
            cluster,
            proxies,
            durations: settings.durations,
            load,
            sampler,
            reported_lost: BTreeSet::new(),
            reported_duplicated: BTreeSet::new(),
            reported: BTreeSet::new(),
        };
        let started = Instant::now();
        eventually(WHOLE, || async { chaos.load.all_acked_after(started) })
            .await
            .expect("every producer acknowledged before the first fault");
        chaos
    }

    /// Waits until every node runs, exactly one is Ready and every node reports all three in
    /// sync; answers the leader's index.
    ///
    /// # Errors
    /// Not within [`WHOLE`]; says what was last seen.
    async fn whole(&self) -> Result<usize, String> {
        let running = self.cluster.running();
        if running.len() != NODES {
            return Err(format!("only nodes {running:?} run"));
        }
        let names: Vec<String> = (0..NODES).map(|i| self.cluster.name(i)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.cluster
            .0
            .wait_isr(&names, WHOLE)
            .await
            .map_err(|e| e.to_string())?;
        Ok(self
            .cluster
            .0
            .wait_leader(WHOLE)
            .await
            .map_err(|e| e.to_string())?
            .index)
    }

    /// Checks every invariant over everything observed so far; answers what is new.
    async fn check(&mut self, result: &mut RoundResult) {
        let acks = self.load.acks();
        let end = acks.iter().map(|a| a.ack.last_offset + 1).max().unwrap_or(0);
        if let Err(e) = self.cluster.0.wait_high_watermark(end, WHOLE).await {
            result
                .violations
                .push(format!("high watermarks never covered the acknowledgements: {e}"));
        }
        let logs = match self.cluster.0.read_logs().await {
            Ok(logs) => logs,
            Err(e) => {
                result.violations.push(format!("cannot read the logs: {e}"));
                return;
            }
        };
        if logs.len() != NODES {
            result
                .violations
                .push(format!("only {} nodes' logs to check", logs.len()));
        }
        let named: Vec<(String, _)> = logs
            .into_iter()
            .map(|(i, log)| (self.cluster.name(i), log))
            .collect();
        let verdict = check_logs(&named, &acks);
        let lost: Vec<MessageId> = verdict.lost.difference(&self.reported_lost).cloned().collect();
        let duplicated: Vec<MessageId> = verdict
            .duplicated
            .difference(&self.reported_duplicated)
            .cloned()
            .collect();
        if !lost.is_empty() {
            eprintln!("chaos: LOST {:?}", &lost[..lost.len().min(10)]);
        }
        if !duplicated.is_empty() {
            eprintln!("chaos: DUPLICATED {:?}", &duplicated[..duplicated.len().min(10)]);
        }
        result.lost += lost.len() as u64;
        result.duplicated += duplicated.len() as u64;
        self.reported_lost.extend(lost);
        self.reported_duplicated.extend(duplicated);
        let problems = verdict
            .problems
            .into_iter()
            .chain(check_leadership(&self.sampler.samples(), &acks));
        for problem in problems {
            if self.reported.insert(problem.clone()) {
                result.violations.push(problem);
            }
        }
    }

    /// One round of `fault`.
    ///
    /// # Errors
    /// The cluster was not whole before the round or did not become whole after it, or the
    /// fault could not be applied: the run cannot go on.
    async fn round(&mut self, fault: Fault, round: usize) -> Result<RoundResult, (RoundResult, String)> {
        let mut result = RoundResult::default();
        let leader = match self.whole().await {
            Ok(leader) => leader,
            Err(e) => return Err((result, format!("not whole before the round: {e}"))),
        };
        let acks_before = self.load.ack_count();
        let struck = match faults::strike(fault, self, round, leader).await {
            Ok(struck) => struck,
            Err(e) => return Err((result, format!("cannot apply the fault: {e}"))),
        };
        // Let the fault take effect (a lapsed lease, a shrunk in-sync set) before restarting
        // what was killed and asking whether the cluster is whole.
        tokio::time::sleep(SETTLE).await;
        for &i in &struck.restart {
            self.cluster.restart(i).await;
        }
        let bound = fault.bound(&self.durations);
        let served = eventually(bound + WHOLE, || async { self.load.all_acked_after(struck.heal) }).await;
        match served {
            Some(at) => {
                let took = at.saturating_duration_since(struck.heal);
                result.after_heal = Some(took);
                if took > bound {
                    result
                        .violations
                        .push(format!("served again {took:?} after the heal, bound {bound:?}"));
                }
            }
            None => result
                .violations
                .push(format!("not served again within {:?} of the heal", bound + WHOLE)),
        }
        if let Err(e) = self.whole().await {
            return Err((result, format!("not whole again after the fault: {e}")));
        }
        let whole_at = Instant::now();
        result.whole = Some(whole_at.saturating_duration_since(struck.heal));
        let acks = self.load.acks();
        let gap = longest_gap(&acks[acks_before..], struck.start, whole_at);
        result.recovered = Some(gap);
        let gap_bound = match fault.reference() {
            Reference::Start => bound,
            Reference::Heal => bound + struck.heal.saturating_duration_since(struck.start),
        };
        if gap > gap_bound {
            result
                .violations
                .push(format!("{gap:?} without an acknowledgement, bound {gap_bound:?}"));
        }
        if let Some((from, until)) = struck.no_acks {
            let late: Vec<_> = acks.iter().filter(|a| a.at > from && a.at < until).collect();
            if !late.is_empty() {
                result.violations.push(format!(
                    "{} acknowledgements while no node could hold a lease, first {:?}",
                    late.len(),
                    late[0].ack
                ));
            }
        }
        result.acknowledged = acks[acks_before..].iter().map(|a| a.ack.count).sum();
        self.check(&mut result).await;
        eprintln!(
            "chaos: {} round {round}: {}; longest gap {:?}, served {:?} and whole {:?} after the heal, {} acknowledged, {} lost, {} duplicated, {} violations",
            fault.name(),
            struck.note,
            result.recovered,
            result.after_heal,
            result.whole,
            result.acknowledged,
            result.lost,
            result.duplicated,
            result.violations.len()
        );
        for violation in &result.violations {
            eprintln!("chaos:   violation: {violation}");
        }
        Ok(result)
    }

    /// Stops the producers, waits until every node holds the same committed log, and checks it
    /// one last time: every message a producer reports acknowledged is stored once everywhere.
    async fn finish(mut self, report: &mut Report) {
        let mut result = RoundResult::default();
        let acks_before = self.load.ack_count();
        match self.load.stop().await {
            Ok(summaries) => {
                for (id, summary) in summaries {
                    eprintln!("chaos: producer {id}: {summary}");
                    if !summary.all_acknowledged() {
                        result.violations.push(format!(
                            "producer {id}: not every message acknowledged: {summary}"
                        ));
                    }
                }
            }
            Err(e) => result.violations.push(e),
        }
        if let Err(e) = self.cluster.0.wait_converged(WHOLE).await {
            result.violations.push(format!("the nodes did not converge: {e}"));
        }
        result.acknowledged = self.load.acks()[acks_before..].iter().map(|a| a.ack.count).sum();
        self.check(&mut result).await;
        let samples = self.sampler.samples();
        let terms: BTreeSet<u64> = samples.iter().map(|s| s.term).collect();
        eprintln!(
            "chaos: {} Ready answers sampled, in {} terms; {} acknowledgements",
            samples.len(),
            terms.len(),
            self.load.ack_count()
        );
        report.add_final(result);
        if !report.violations().is_empty() {
            dump_logs(self.cluster.0.dir());
        }
    }
}

/// Prints the end of every process log of the cluster in `dir` (the directory goes with the
/// cluster, and a CI machine with it): what a violation needs to be explained.
fn dump_logs(dir: &std::path::Path) {
    const LINES: usize = 400;
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| format!("(unreadable: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "chaos: ==== {} (last {} of {} lines) ====",
            log.display(),
            lines.len().min(LINES),
            lines.len()
        );
        for line in &lines[lines.len().saturating_sub(LINES)..] {
            eprintln!("{line}");
        }
    }
}

/// Runs `settings` to its end (or to its first unrecoverable round or time limit); answers the
/// report and why the run stopped early, if it did.
async fn run(settings: Settings) -> (Report, Option<String>) {
    let started = Instant::now();
    let mut chaos = Chaos::start(&settings).await;
    let mut report = Report::default();
    let mut stopped = None;
    'faults: for &fault in &settings.faults {
        for round in 1..=settings.rounds {
            if started.elapsed() > settings.time_limit {
                stopped = Some(format!("time limit {:?} reached", settings.time_limit));
                break 'faults;
            }
            let outcome = tokio::time::timeout(settings.round_limit, chaos.round(fault, round)).await;
            match outcome {
                Ok(Ok(result)) => report.add(fault.name(), result),
                Ok(Err((mut result, why))) => {
                    result.violations.push(why.clone());
                    report.add(fault.name(), result);
                    stopped = Some(format!("{} round {round}: {why}", fault.name()));
                    break 'faults;
                }
                Err(_) => {
                    let why = format!("round took longer than {:?}", settings.round_limit);
                    report.add(
                        fault.name(),
                        RoundResult {
                            violations: vec![why.clone()],
                            ..RoundResult::default()
                        },
                    );
                    stopped = Some(format!("{} round {round}: {why}", fault.name()));
                    break 'faults;
                }
            }
        }
    }
    chaos.finish(&mut report).await;
    eprintln!("chaos: {:?} in all", started.elapsed());
    (report, stopped)
}

/// Prints the table (and writes it to `CHAOS_REPORT` when set) and fails on any violation.
fn conclude(settings: &Settings, report: &Report, stopped: Option<String>) {
    let table = report.table();
    let header = format!(
        "chaos: {} round(s) per fault, outage {:?}, cut {:?}, disk full {:?}, slow sync +{:?} for {:?}, {} msg/s per producer\n",
        settings.rounds,
        settings.durations.outage,
        settings.durations.cut,
        settings.durations.disk_full,
        settings.durations.slow_delay,
        settings.durations.slow,
        settings.rate
    );
    println!("{header}\n{table}");
    if let Ok(path) = std::env::var("CHAOS_REPORT") {
        std::fs::write(&path, format!("{header}\n{table}")).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
    let violations = report.violations();
    assert!(
        stopped.is_none(),
        "the run stopped early: {}",
        stopped.unwrap_or_default()
    );
    assert!(violations.is_empty(), "violations:\n{}", violations.join("\n"));
}

/// One round of every fault, with outages of seconds: no acknowledged message lost or
/// duplicated, order per producer kept, one leader per term and no stale leader Ready, the
/// cluster serving again within each fault's bound and whole again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_short() {
    let settings = Settings::short();
    let (report, stopped) = run(settings.clone()).await;
    conclude(&settings, &report, stopped);
}

/// `make chaos`: `CHAOS_ROUNDS` (20) rounds of every fault in `CHAOS_FAULTS` (all), with the
/// durations of the `CHAOS_*` knobs; the same invariants as `chaos_short`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by `make chaos`"]
async fn chaos_full() {
    let settings = Settings::from_env();
    let (report, stopped) = run(settings.clone()).await;
    conclude(&settings, &report, stopped);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest gap counts from the window's start to the first acknowledgement, between
    /// acknowledgements, and from the last one to the window's end; those outside are ignored.
    #[test]
    fn longest_gap_in_a_window() {
        let t0 = Instant::now();
        let ack = |ms: u64| invariants::TimedAck {
            producer: "p".into(),
            at: t0 + Duration::from_millis(ms),
            ack: simpleloggers::producer::Ack {
                seq: 0,
                count: 1,
                first_offset: 0,
                last_offset: 0,
                term: 1,
                duplicate: false,
                leader: String::new(),
            },
        };
        let ms = Duration::from_millis;
        let acks = [ack(50), ack(200), ack(300), ack(1000), ack(1100), ack(5000)];
        assert_eq!(longest_gap(&acks, t0 + ms(100), t0 + ms(1200)), ms(700));
        assert_eq!(longest_gap(&acks, t0, t0 + ms(2000)), ms(900));
        assert_eq!(longest_gap(&[], t0, t0 + ms(300)), ms(300));
    }
}
