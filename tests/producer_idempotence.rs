//! The idempotent producer protocol against real node processes over loopback: pipelined
//! batches (`--max-in-flight 8`) across a leader crash and a graceful stop are each acknowledged
//! exactly once; a gap is a retriable 409; a restarted producer with a fixed `--producer-id`
//! continues where the leader says it stopped; an answer for part of a batch acknowledges only
//! that part; overflowing sequences are a 400; idle producers are forgotten.

#[path = "support/cluster.rs"]
mod cluster;

use std::{process::Stdio, time::Duration};

use cluster::{eventually, Cluster, BIN};
use serde_json::Value;
use simpleloggers::{
    consul::ConsulConfig,
    demo::{read_all, verify},
    local_cluster::ClusterOptions,
    producer::{self, Ack, Hooks, Summary},
    shutdown::CancellationToken,
};
use tokio::sync::{mpsc, watch};

/// Waits until the producer has acknowledged `more` messages beyond what it had so far.
async fn acknowledge_more(progress: &mut watch::Receiver<Summary>, more: u64) {
    let beyond = progress.borrow().acknowledged + more;
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|s| s.acknowledged >= beyond),
    )
    .await
    .map(|r| r.is_ok());
    assert!(
        waited == Ok(true),
        "the producer makes progress: {}",
        *progress.borrow()
    );
}

/// Every sequence number from 0 to `sent` is covered by exactly one acknowledgement.
fn assert_each_acknowledged_once(acks: &[Ack], sent: u64) {
    let mut ranges: Vec<(u64, u64)> = acks.iter().map(|a| (a.seq, a.count)).collect();
    ranges.sort_unstable();
    let mut next = 0;
    for (seq, count) in ranges {
        assert_eq!(seq, next, "acknowledgements overlap or leave a gap at {next}");
        next = seq + count;
    }
    assert_eq!(next, sent, "every message sent is acknowledged");
}

/// Eight pipelined batches at a high rate while the leader is SIGKILLed (and restarted) and the
/// next one is SIGTERMed: nothing fails, every message is acknowledged exactly once, and every
/// node's log holds each acknowledged message once, at its acknowledged offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_survive_a_crash_and_a_stop() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.wait_leader(Duration::from_secs(20)).await;

    let mut config = producer::Config::for_consul(ConsulConfig::new(cluster.consul_url()));
    config.rate = 2000.0;
    config.batch_max = 20;
    config.max_in_flight = 8;
    let (progress_tx, mut progress) = watch::channel(Summary::default());
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let stop = CancellationToken::new();
    let run = tokio::spawn(producer::run_with(
        config,
        stop.clone(),
        Hooks {
            progress: Some(progress_tx),
            acks: Some(ack_tx),
            reader: None,
        },
    ));

    acknowledge_more(&mut progress, 1000).await;
    let first = cluster.wait_leader(Duration::from_secs(30)).await;
    cluster.node_mut(first).kill().await;
    acknowledge_more(&mut progress, 1000).await;
    let second = cluster.wait_leader(Duration::from_secs(30)).await;
    // Bring the crashed node back (two of three must stay in sync for writes to commit), and let
    // it catch up before the graceful stop.
    cluster.node_mut(first).start().await.unwrap();
    cluster.wait_isr(&[0, 1, 2], Duration::from_secs(30)).await;
    cluster.terminate(second).await;
    acknowledge_more(&mut progress, 1000).await;
    cluster.node_mut(second).start().await.unwrap();
    stop.cancel();
    let summary = run.await.unwrap().unwrap();
    eprintln!("{summary}");
    assert!(summary.all_acknowledged(), "{summary}");
    assert_eq!(summary.failed, 0, "{summary}");

    let mut acks = Vec::new();
    while let Ok(ack) = ack_rx.try_recv() {
        acks.push(ack);
    }
    assert_each_acknowledged_once(&acks, summary.sent);
    // Every node holds the whole log once it has caught up; then read each from its directory.
    cluster.converge(Duration::from_secs(30)).await;
    let mut logs = Vec::new();
    for i in 0..cluster.len() {
        let url = cluster.url(i);
        cluster.terminate(i).await;
        let records = read_all(cluster.data_dir(i)).await.unwrap();
        logs.push((cluster.node(i).name().to_string(), url, records));
    }
    let result = verify(&summary.producer_id, &acks, &logs);
    assert!(result.holds(), "{result:?}");
    assert_eq!(result.verified, summary.acknowledged);
    let terms: std::collections::BTreeSet<u64> = acks.iter().map(|a| a.term).collect();
    assert!(
        terms.len() >= 3,
        "three leaderships acknowledged writes: {terms:?}"
    );
}

async fn single_node() -> (Cluster, String) {
    let cluster = Cluster::start(1, &[]).await;
    cluster.wait_leader(Duration::from_secs(20)).await;
    let url = cluster.url(0);
    (cluster, url)
}

/// POSTs an NDJSON batch of `lines` as producer `id` from `seq`, with `X-Producer-Pending-From`
/// when given; returns the status and JSON body.
async fn post(
    c: &Cluster,
    url: &str,
    id: &str,
    seq: u64,
    pending: Option<u64>,
    lines: &[&str],
) -> (u16, Value) {
    let body: String = lines.iter().map(|l| format!("{}\n", Value::from(*l))).collect();
    let mut request = c
        .http()
        .post(format!("{url}/api/v1/log"))
        .header("content-type", "application/x-ndjson")
        .header("x-producer-id", id)
        .header("x-producer-seq", seq.to_string())
        .body(body);
    if let Some(p) = pending {
        request = request.header("x-producer-pending-from", p.to_string());
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

async fn last_seq(c: &Cluster, url: &str, id: &str) -> (u16, Value) {
    let response = c
        .http()
        .get(format!("{url}/api/v1/producers/{id}"))
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

/// A batch after a gap is refused with a retriable 409 naming the expected sequence, and stores
/// nothing; it is accepted once the gap is filled, or when the producer says the missing
/// sequences are settled; a retry inside the window answers its original offsets; the leader
/// tells the producer's last sequence.
#[tokio::test]
async fn gaps_are_refused_until_filled() {
    let (c, url) = single_node().await;
    let (status, _) = post(&c, &url, "g", 0, Some(0), &["a", "b"]).await;
    assert_eq!(status, 200);
    let (status, body) = post(&c, &url, "g", 5, Some(0), &["f"]).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "out_of_order_sequence");
    assert_eq!(body["expected"], 2);
    let (status, body) = post(&c, &url, "g", 2, Some(0), &["c", "d", "e"]).await;
    assert_eq!((status, &body["first_offset"]), (200, &Value::from(2)));
    let (status, body) = post(&c, &url, "g", 5, Some(0), &["f"]).await;
    assert_eq!((status, &body["first_offset"]), (200, &Value::from(5)), "{body}");
    // 6..9 went elsewhere and are settled: the producer may continue at 10 here.
    let (status, body) = post(&c, &url, "g", 10, Some(10), &["k"]).await;
    assert_eq!((status, &body["first_offset"]), (200, &Value::from(6)), "{body}");
    let (status, body) = post(&c, &url, "g", 2, Some(2), &["c", "d", "e"]).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&body["first_offset"], &body["duplicate"]),
        (&Value::from(2), &Value::from(true))
    );
    let (status, body) = last_seq(&c, &url, "g").await;
    assert_eq!((status, &body["last_seq"]), (200, &Value::from(10)));
    let (status, body) = last_seq(&c, &url, "nobody").await;
    assert_eq!((status, &body["code"]), (404, &Value::from("unknown_producer")));
    let (status, body) = post(&c, &url, "g", 11, Some(12), &["l"]).await;
    assert_eq!(status, 400, "pending beyond the batch: {body}");
}

/// Runs `simpleloggers producer` against `url` with `args`; returns exit success and stdout.
async fn producer_cli(url: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BIN)
            .args(["producer", "--target", url, "--rate", "0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("producer exits")
    .expect("producer runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A producer restarted with the same `--producer-id` asks the leader where it stopped and
/// continues right after, with nothing reported duplicate or failed — even when its earlier run
/// used sequence numbers above anything a clock would give (`--first-seq`).
#[tokio::test]
async fn restarted_producer_continues_where_it_stopped() {
    let (c, url) = single_node().await;
    let far = 4_000_000_000_000_000u64;
    let (ok, out) = producer_cli(
        &url,
        &[
            "--producer-id",
            "fixed",
            "--count",
            "30",
            "--first-seq",
            &far.to_string(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    for run in 1..=2u64 {
        let (ok, out) = producer_cli(&url, &["--producer-id", "fixed", "--count", "30"]).await;
        assert!(ok, "run {run}: {out}");
        assert!(out.contains("acknowledged=30 "), "run {run}: {out}");
        assert!(out.contains(" duplicates=0 failed=0 "), "run {run}: {out}");
        let (status, body) = last_seq(&c, &url, "fixed").await;
        assert_eq!(
            (status, body["last_seq"].as_u64()),
            (200, Some(far + 29 + 30 * run))
        );
    }
    let status: Value = c.get_json(format!("{url}/api/v1/status")).await;
    assert_eq!(status["log_end_offset"], 90, "each run's messages stored once");
}

/// When the node had stored only the first part of a batch (here: sent earlier as a batch of
/// its own), its answer acknowledges that part only; the producer sends the rest, which is
/// stored and acknowledged separately: nothing is counted as acknowledged that is not stored.
#[tokio::test]
async fn partial_answers_acknowledge_only_what_is_stored() {
    let (c, url) = single_node().await;
    let (status, _) = post(&c, &url, "part", 0, None, &["a", "b", "c"]).await;
    assert_eq!(status, 200);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let config = producer::Config {
        producer_id: Some("part".into()),
        first_seq: Some(0),
        batch_max: 10,
        linger: Duration::from_secs(5),
        ..producer::Config::for_target(&url)
    };
    let hooks = Hooks {
        acks: Some(ack_tx),
        reader: Some(Box::new(&b"a\nb\nc\nd\ne\n"[..])),
        ..Hooks::default()
    };
    let summary = producer::run_with(config, CancellationToken::new(), hooks)
        .await
        .unwrap();
    assert_eq!(
        (
            summary.sent,
            summary.acknowledged,
            summary.duplicates,
            summary.failed
        ),
        (5, 5, 3, 0),
        "{summary}"
    );
    let mut acks = Vec::new();
    while let Ok(ack) = ack_rx.try_recv() {
        acks.push((
            ack.seq,
            ack.count,
            ack.first_offset,
            ack.last_offset,
            ack.duplicate,
        ));
    }
    assert_eq!(acks, [(0, 3, 0, 2, true), (3, 2, 3, 4, false)]);
    let read: Value = c.get_json(format!("{url}/api/v1/log?from=0&limit=10")).await;
    let messages: Vec<&str> = read["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["a", "b", "c", "d", "e"]);
}

/// A batch whose sequence numbers would pass `u64::MAX` is a 400 with a JSON error and stores
/// nothing; the last representable sequence is still accepted, and the node keeps serving.
#[tokio::test]
async fn overflowing_sequences_are_a_400() {
    let (c, url) = single_node().await;
    let (status, body) = post(&c, &url, "top", u64::MAX, None, &["a", "b"]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "sequence_overflow");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    let (status, body) = post(&c, &url, "top", u64::MAX - 1, None, &["a", "b"]).await;
    assert_eq!((status, &body["count"]), (200, &Value::from(2)), "{body}");
    let (status, body) = post(&c, &url, "top", u64::MAX, None, &["b"]).await;
    assert_eq!((status, &body["duplicate"]), (200, &Value::from(true)), "{body}");
    let (status, _) = post(&c, &url, "other", 0, None, &["x"]).await;
    assert_eq!(status, 200, "the writer is still alive");
    let status: Value = c.get_json(format!("{url}/api/v1/status")).await;
    assert_eq!(status["log_end_offset"], 3);
}

/// With `SIMPLELOGGERS_PRODUCER_ID_EXPIRY` set, a producer idle longer than that is forgotten:
/// the leader no longer knows it, and a batch that would have been a gap is accepted as a start.
#[tokio::test]
async fn idle_producers_are_forgotten() {
    let options = ClusterOptions::fast(BIN)
        .nodes(1)
        .node_env("SIMPLELOGGERS_PRODUCER_ID_EXPIRY", "300ms");
    let c = Cluster::start_with(options).await;
    let http = c.http();
    let url = c.url(0);
    let ready = eventually(Duration::from_secs(20), || async {
        let r = http.get(format!("{url}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the node leads");
    let write = |seq: u64| {
        http.post(format!("{url}/api/v1/log"))
            .header("content-type", "application/x-ndjson")
            .header("x-producer-id", "idle")
            .header("x-producer-seq", seq.to_string())
            .body("\"m\"\n")
            .send()
    };
    assert_eq!(write(0).await.unwrap().status(), 200);
    let forgotten = eventually(Duration::from_secs(20), || async {
        let r = http
            .get(format!("{url}/api/v1/producers/idle"))
            .send()
            .await
            .ok()?;
        let body: Value = r.json().await.ok()?;
        (body["code"] == "unknown_producer").then_some(())
    })
    .await;
    assert!(forgotten.is_some(), "the idle producer is forgotten");
    assert_eq!(write(1000).await.unwrap().status(), 200, "no longer a gap");
}
