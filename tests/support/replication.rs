//! What the replication tests share on top of [`Cluster`]: producers under load (the library's
//! idempotent producer, each with its own id and messages `ID SEQ`, every acknowledgement kept),
//! the exactly-once and in-order check of every node's log against those acknowledgements,
//! single writes, metrics, the ISR key, a cluster whose followers fetch through cuttable
//! proxies, and checks that something stays true over a window.

#![allow(dead_code)] // each test uses a different part

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    time::{Duration, Instant},
};

use serde_json::Value;
use simpleloggers::{
    cli::tail::TailEntry,
    consul::{ConsulConfig, QueryOptions},
    discovery::DEFAULT_ELECTION_KEY,
    local_cluster::{ClusterOptions, ReplicationStatus},
    producer::{self, Ack, Hooks, Summary},
    replication::isr::IsrState,
    shutdown::CancellationToken,
};
use tokio::{
    io::{AsyncWriteExt, BufReader},
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    cluster::{eventually, Cluster},
    proxy::Proxy,
};

/// The longest any single step of a scenario may take (an election, a catch-up).
pub const WAIT: Duration = Duration::from_secs(30);

/// One producer under load.
struct Running {
    id: String,
    run: JoinHandle<Result<Summary, producer::ProducerError>>,
    progress: watch::Receiver<Summary>,
    acks: mpsc::UnboundedReceiver<Ack>,
    lines: JoinHandle<()>,
}

/// What one producer did: its summary and every acknowledgement it received.
#[derive(Debug)]
pub struct ProducerRun {
    /// Its producer id (and the first word of each of its messages).
    pub id: String,
    /// Its counters at the end.
    pub summary: Summary,
    /// Every acknowledgement.
    pub acks: Vec<Ack>,
}

/// Producers sending `ID SEQ` messages to whichever node Consul names, until [`Load::finish`].
pub struct Load {
    producers: Vec<Running>,
    stop: CancellationToken,
}

/// An endless source of `ID N` lines (N = 0, 1, ...) at `rate` per second, as the producer's
/// reader; ends when the reader is dropped.
pub fn paced_lines(id: String, rate: f64) -> (BufReader<tokio::io::DuplexStream>, JoinHandle<()>) {
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut n: u64 = 0;
        // Ends when the producer drops its reader (the write fails).
        while tx.write_all(format!("{id} {n}\n").as_bytes()).await.is_ok() {
            n += 1;
            tokio::time::sleep_until(started + Duration::from_secs_f64(n as f64 / rate)).await;
        }
    });
    (BufReader::new(rx), task)
}

impl Load {
    /// Starts one producer per `(id, max_in_flight)`, each at `rate` messages per second in
    /// batches of at most 20, discovering the leader through the cluster's Consul.
    pub fn start(c: &Cluster, producers: &[(&str, usize)], rate: f64) -> Load {
        let stop = CancellationToken::new();
        let producers = producers
            .iter()
            .map(|&(id, in_flight)| {
                let mut config = producer::Config::for_consul(ConsulConfig::new(c.consul_url()));
                config.producer_id = Some(id.to_string());
                config.first_seq = Some(0);
                config.batch_max = 20;
                config.max_in_flight = in_flight;
                config.request_timeout = Duration::from_secs(5);
                let (lines_reader, lines) = paced_lines(id.to_string(), rate);
                let (mut hooks, progress, acks) = Hooks::observed();
                hooks.reader = Some(Box::new(lines_reader));
                let run = tokio::spawn(producer::run_with(config, stop.clone(), hooks));
                Running {
                    id: id.to_string(),
                    run,
                    progress,
                    acks,
                    lines,
                }
            })
            .collect();
        Load { producers, stop }
    }

    /// Messages acknowledged so far, all producers together.
    pub fn acknowledged(&self) -> u64 {
        self.producers
            .iter()
            .map(|p| p.progress.borrow().acknowledged)
            .sum()
    }

    /// Waits until every producer has `more` messages acknowledged beyond what it had.
    pub async fn progress(&mut self, more: u64, within: Duration) {
        for p in &mut self.producers {
            let beyond = p.progress.borrow().acknowledged + more;
            let got = tokio::time::timeout(within, p.progress.wait_for(|s| s.acknowledged >= beyond))
                .await
                .map(|r| r.is_ok());
            assert!(
                got == Ok(true),
                "producer {} made no progress within {within:?}: {}",
                p.id,
                *p.progress.borrow()
            );
        }
    }

    /// Stops the sources, lets every producer drain, and answers what each did.
    pub async fn finish(self) -> Vec<ProducerRun> {
        self.stop.cancel();
        let mut runs = Vec::new();
        for mut p in self.producers {
            let summary = tokio::time::timeout(Duration::from_secs(90), p.run)
                .await
                .unwrap_or_else(|_| panic!("producer {} did not drain", p.id))
                .expect("producer task")
                .unwrap_or_else(|e| panic!("producer {}: {e}", p.id));
            p.lines.abort();
            let mut acks = Vec::new();
            while let Ok(ack) = p.acks.try_recv() {
                acks.push(ack);
            }
            runs.push(ProducerRun {
                id: p.id,
                summary,
                acks,
            });
        }
        runs
    }
}

/// Asserts that every producer had every message acknowledged and none failed, that every
/// node holds the same log, and that in it each producer's messages are stored exactly once, in
/// sequence order, each acknowledged message at the offset its acknowledgement named.
pub fn check_exactly_once(c: &Cluster, logs: &[(usize, Vec<TailEntry>)], runs: &[ProducerRun]) {
    for run in runs {
        assert!(run.summary.all_acknowledged(), "{}: {}", run.id, run.summary);
        assert!(run.summary.sent > 0, "{} sent nothing", run.id);
    }
    let (first, reference) = &logs[0];
    for (i, log) in &logs[1..] {
        assert_same_log(&c.name(*first), reference, &c.name(*i), log);
    }
    for (i, log) in logs {
        let name = c.name(*i);
        let by_offset: HashMap<u64, &str> = log
            .iter()
            .filter_map(|e| Some((e.offset, e.message.as_deref()?)))
            .collect();
        let mut stored: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for entry in log {
            let Some((id, seq)) = entry.message.as_deref().and_then(|m| m.split_once(' ')) else {
                continue;
            };
            if let Ok(seq) = seq.parse::<u64>() {
                stored.entry(id).or_default().push(seq);
            }
        }
        for run in runs {
            let seqs = stored.get(run.id.as_str()).map(Vec::as_slice).unwrap_or_default();
            let expected: Vec<u64> = (0..run.summary.sent).collect();
            if seqs != expected.as_slice() {
                let at = seqs
                    .iter()
                    .zip(&expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(seqs.len().min(expected.len()));
                panic!(
                    "{name}: producer {} stored {} messages, {} sent; first difference at #{at}: \
                     stored {:?}, expected {:?}",
                    run.id,
                    seqs.len(),
                    expected.len(),
                    &seqs[at.saturating_sub(2)..(at + 3).min(seqs.len())],
                    &expected[at.saturating_sub(2)..(at + 3).min(expected.len())],
                );
            }
            for ack in &run.acks {
                for k in 0..ack.count {
                    let offset = ack.first_offset + k;
                    let want = format!("{} {}", run.id, ack.seq + k);
                    assert_eq!(
                        by_offset.get(&offset).copied(),
                        Some(want.as_str()),
                        "{name}: offset {offset} of acknowledgement {ack:?}"
                    );
                }
            }
        }
    }
}

/// Asserts two nodes' logs are equal: offsets, terms and messages.
pub fn assert_same_log(a_name: &str, a: &[TailEntry], b_name: &str, b: &[TailEntry]) {
    let key = |e: &TailEntry| (e.offset, e.term, e.message.clone(), e.message_base64.clone());
    let at = a.iter().zip(b).position(|(x, y)| key(x) != key(y));
    assert!(
        a.len() == b.len() && at.is_none(),
        "{a_name} ({} entries) and {b_name} ({} entries) differ at #{}: {:?} vs {:?}",
        a.len(),
        b.len(),
        at.unwrap_or(a.len().min(b.len())),
        at.map(|i| &a[i]),
        at.map(|i| &b[i]),
    );
}

/// The messages of a log, in order.
pub fn messages(log: &[TailEntry]) -> Vec<String> {
    log.iter().filter_map(|e| e.message.clone()).collect()
}

/// POSTs `lines` (NDJSON) to node `i`, as producer `(id, seq)` when given, with a client
/// timing out after `timeout`: the status and JSON body, or `None` when no answer came.
pub async fn write(
    c: &Cluster,
    i: usize,
    producer: Option<(&str, u64)>,
    lines: &[&str],
    timeout: Duration,
) -> Option<(u16, Value)> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("HTTP client");
    let body: String = lines.iter().map(|l| format!("{}\n", Value::from(*l))).collect();
    let mut request = http
        .post(format!("{}/api/v1/log", c.url(i)))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some((id, seq)) = producer {
        request = request
            .header("x-producer-id", id)
            .header("x-producer-seq", seq.to_string());
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

/// Writes `lines` as producer `(id, seq)` to whichever of `nodes` leads, retrying the same batch
/// (so it is stored at most once) until one acknowledges it; answers the acknowledgement.
pub async fn write_acked(
    c: &Cluster,
    nodes: &[usize],
    (id, seq): (&str, u64),
    lines: &[&str],
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        for &i in nodes {
            if let Some((status, body)) = write(c, i, Some((id, seq)), lines, Duration::from_secs(10)).await {
                if status == 200 {
                    return body;
                }
                last = Some((c.name(i), status, body));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no node acknowledged {id}/{seq} within {within:?}; last answer {last:?}");
}

/// The sum of the samples of metric `name` on node `i` whose labels contain `labels`
/// (`None`: no such sample).
pub async fn metric(c: &Cluster, i: usize, name: &str, labels: &str) -> Option<f64> {
    let text = c
        .http()
        .get(format!("{}/metrics", c.url(i)))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labelled = series.strip_prefix(name)?;
            let matches = (labelled.is_empty() || labelled.starts_with('{')) && labelled.contains(labels);
            matches.then(|| value.parse().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Checks `holds` every 100 ms for `window`, panicking with its message the first time it
/// answers one: for what must stay true (nobody elected, the key unchanged) while time passes.
pub async fn always<F, Fut>(window: Duration, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if let Err(why) = holds().await {
            panic!("{why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts dev Consul and `n` nodes (`n0`..) with `extra` flags, each node's replication fetches
/// going through a proxy of its own (index `i` for node `i`), and waits until one leads and
/// every node is in sync. Answers the cluster, the proxies and the leader's index.
pub async fn start_with_proxies(n: usize, extra: &[&str]) -> (Cluster, Vec<Proxy>, usize) {
    let (c, proxies) = start_behind_proxies(n, extra, false).await;
    let leader = c.wait_leader(WAIT).await;
    c.wait_isr(&(0..n).collect::<Vec<_>>(), WAIT).await;
    (c, proxies, leader)
}

/// Starts dev Consul and `n` nodes (`n0`..) with `extra` flags, each node's replication fetches
/// going through a proxy of its own (index `i` for node `i`), cut from the start when `cut`;
/// waits for nothing.
pub async fn start_behind_proxies(n: usize, extra: &[&str], cut: bool) -> (Cluster, Vec<Proxy>) {
    let mut options = ClusterOptions::fast(crate::cluster::BIN)
        .nodes(n)
        .node_args(extra.iter().copied());
    // A paused node answers nothing: probes of it give up after a second.
    options.http_timeout = Duration::from_secs(1);
    // To read the nodes' logs after a failure: keep data and logs there instead of a temporary
    // directory (empty it between runs).
    if let Ok(dir) = std::env::var("REPLICATION_TEST_DIR") {
        options = options.dir(dir);
    }
    let mut proxies = Vec::new();
    for i in 0..n {
        let proxy = Proxy::start().await;
        if cut {
            proxy.cut();
        }
        options = options.replication_proxy(i, proxy.url());
        proxies.push(proxy);
    }
    (Cluster::start_with(options).await, proxies)
}

/// Waits until some node holds the election lock and answers its index (whether or not it is
/// Ready: a leader refusing writes is not).
pub async fn lock_holder_index(c: &Cluster) -> usize {
    eventually(WAIT, || async {
        let holder = c.lock_holder().await?;
        (0..c.len()).find(|&i| c.name(i) == holder.record.name)
    })
    .await
    .expect("a node takes the lock")
}

/// The ISR key as the dev Consul holds it (`None`: absent or unreadable).
pub async fn isr_key(c: &Cluster) -> Option<IsrState> {
    let key = format!("{DEFAULT_ELECTION_KEY}/isr");
    let (pair, _) = c
        .consul_client()
        .kv_get(&key, &QueryOptions::default())
        .await
        .ok()?;
    serde_json::from_slice(&pair?.value).ok()
}

/// Whether node `i` holds the election lock now (by the name in the leader record).
pub async fn holds_lock(c: &Cluster, i: usize) -> bool {
    c.lock_holder().await.is_some_and(|l| l.record.name == c.name(i))
}

/// Asserts over `window` that node `i` is never Ready nor holds the lock.
pub async fn never_leads(c: &Cluster, i: usize, window: Duration, why: &str) {
    always(window, || async {
        if c.ready(i).await.is_some() || holds_lock(c, i).await {
            Err(format!("{} became leader although {why}", c.name(i)))
        } else {
            Ok(())
        }
    })
    .await;
}

/// Waits until node `i`'s election case is `case`.
pub async fn wait_case(c: &Cluster, i: usize, case: &str) -> ReplicationStatus {
    let last = std::sync::Mutex::new(None);
    let found = eventually(WAIT, || async {
        let status = c.replication(i).await.ok()?;
        let hit = status.case_name() == Some(case);
        *last.lock().expect("lock") = Some(status.clone());
        hit.then_some(status)
    })
    .await;
    found.unwrap_or_else(|| {
        let last = last.lock().expect("lock").take();
        panic!("{} never reported case {case}; last {last:#?}", c.name(i))
    })
}
