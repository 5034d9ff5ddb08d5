//! The producer against fake leaders over loopback (`--target` mode): exact summaries, ordering,
//! idempotency headers, retries that never duplicate, failures that are counted, and draining.

mod producer_support;

use std::time::Duration;

use producer_support::{check_acks, drain, wait_until, within, FakeNode, Fault, Role};
use simpleloggers::{
    producer::{self, Config, Hooks, Summary},
    shutdown::CancellationToken,
};
use tokio::sync::{mpsc, watch};

const LIMIT: Duration = Duration::from_secs(30);

fn expected(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("Message: {i}")).collect()
}

/// A fast synthetic producer sending to `node`, stopping after `count` messages.
fn fast(node: &FakeNode, count: u64) -> Config {
    Config {
        rate: 0.0,
        count: Some(count),
        ..Config::for_target(node.url())
    }
}

/// `--count` stops the source after exactly N messages; the summary is exact; the node stored
/// each message once and in order; every request carried the producer id, consecutive sequence
/// numbers and the NDJSON content type; the ack channel and progress watch agree with the store.
#[tokio::test]
async fn count_stops_and_everything_is_stored_once_in_order() {
    let node = FakeNode::start().await;
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let (progress_tx, progress_rx) = watch::channel(Summary::default());
    let hooks = Hooks {
        progress: Some(progress_tx),
        acks: Some(ack_tx),
        reader: None,
    };
    let config = Config {
        batch_max: 1000,
        ..fast(&node, 2500)
    };
    let summary = within(
        LIMIT,
        "producer run",
        producer::run_with(config, CancellationToken::new(), hooks),
    )
    .await
    .expect("the producer runs");

    assert_eq!(
        (
            summary.sent,
            summary.acknowledged,
            summary.retried,
            summary.duplicates,
            summary.failed
        ),
        (2500, 2500, 0, 0, 0)
    );
    assert!(summary.all_acknowledged());
    assert_eq!(node.messages(), expected(2500));
    let requests = node.requests();
    assert_eq!(summary.batches as usize, requests.len());
    let mut next_seq = 0;
    for r in &requests {
        assert_eq!(r.producer_id.as_deref(), Some(summary.producer_id.as_str()));
        assert_eq!(r.seq, Some(next_seq), "consecutive sequence numbers");
        assert_eq!(r.content_type.as_deref(), Some("application/x-ndjson"));
        assert!(r.lines >= 1 && r.lines <= 1000);
        next_seq += r.lines as u64;
    }
    let acks = drain(&mut ack_rx);
    assert_eq!(acks.len(), requests.len());
    assert!(acks
        .iter()
        .all(|a| a.leader == node.url() && a.term == 1 && !a.duplicate));
    check_acks(&acks, &node.entries(), &summary);
    let last = progress_rx.borrow().clone();
    assert_eq!(
        (last.sent, last.acknowledged),
        (2500, 2500),
        "the final progress is the summary"
    );
}

/// 503s, dropped connections and a lost acknowledgement are all retried with the same id and
/// seq: everything is acknowledged, the lost ack comes back as a duplicate, nothing is stored twice.
#[tokio::test]
async fn retries_never_duplicate() {
    let node = FakeNode::start().await;
    node.drop_next_connections(2);
    node.fail_next([
        Fault::Status {
            status: 503,
            leader: None,
        },
        Fault::Status {
            status: 502,
            leader: None,
        },
        Fault::StoreThenUnavailable,
    ]);
    let config = Config {
        batch_max: 10,
        ..fast(&node, 50)
    };
    let summary = within(
        LIMIT,
        "producer run",
        producer::run(config, CancellationToken::new()),
    )
    .await
    .expect("the producer runs");
    assert_eq!((summary.sent, summary.acknowledged, summary.failed), (50, 50, 0));
    assert!(summary.retried >= 3, "{summary}");
    assert!(
        summary.duplicates >= 1,
        "the lost ack was reported as a duplicate: {summary}"
    );
    assert_eq!(node.messages(), expected(50), "stored exactly once, in order");
}

/// A request that outlives `--request-timeout` is retried. Here the node stored the batch
/// before stalling, so the retry is answered as a duplicate and nothing is stored twice.
#[tokio::test]
async fn timeouts_are_retried_without_duplicates() {
    let node = FakeNode::start().await;
    node.fail_next([Fault::StoreThenStall(Duration::from_secs(5))]);
    let config = Config {
        request_timeout: Duration::from_millis(200),
        ..fast(&node, 20)
    };
    let summary = within(
        LIMIT,
        "producer run",
        producer::run(config, CancellationToken::new()),
    )
    .await
    .expect("the producer runs");
    assert_eq!((summary.sent, summary.acknowledged, summary.failed), (20, 20, 0));
    assert!(summary.retried >= 1, "{summary}");
    assert!(
        summary.duplicates >= 1,
        "the timed-out batch was stored once: {summary}"
    );
    assert_eq!(node.messages(), expected(20));
}

/// A 400 is final: counted as failed, sent once (not retried), the rest still delivered, and
/// the summary says not everything was acknowledged.
#[tokio::test]
async fn bad_request_is_failed_not_retried() {
    let node = FakeNode::start().await;
    node.poison("poison");
    let hooks = Hooks {
        reader: Some(Box::new(&b"a\nb\npoison pill\nc\n"[..])),
        ..Hooks::default()
    };
    let config = Config {
        batch_max: 1,
        ..Config::for_target(node.url())
    };
    let summary = within(
        LIMIT,
        "producer run",
        producer::run_with(config, CancellationToken::new(), hooks),
    )
    .await
    .expect("the producer runs");
    assert_eq!(
        (
            summary.sent,
            summary.acknowledged,
            summary.failed,
            summary.retried
        ),
        (4, 3, 1, 0)
    );
    assert!(!summary.all_acknowledged());
    assert_eq!(node.messages(), ["a", "b", "c"]);
    assert_eq!(node.requests().len(), 4, "the rejected batch was sent once");
}

/// Cancelling the token stops the source but pending batches are still delivered (here through
/// a burst of 503s) before `run` returns: everything sent is acknowledged.
#[tokio::test]
async fn cancel_drains_pending_batches() {
    let node = FakeNode::start().await;
    node.fail_next((0..4).map(|_| Fault::Status {
        status: 503,
        leader: None,
    }));
    let shutdown = CancellationToken::new();
    let config = Config {
        rate: 200.0,
        ..Config::for_target(node.url())
    };
    let run = tokio::spawn(producer::run(config, shutdown.clone()));
    wait_until(LIMIT, "the first failed attempts", || node.requests().len() >= 2).await;
    shutdown.cancel();
    let summary = within(LIMIT, "drain", run).await.expect("joins").expect("runs");
    assert!(summary.sent > 0);
    assert_eq!(summary.acknowledged, summary.sent, "drained: {summary}");
    assert!(summary.retried >= 4, "{summary}");
    assert_eq!(node.messages(), expected(summary.sent));
}

/// When no leader answers, the drain timeout bounds the wait and the summary reports the
/// messages as unacknowledged (not failed, not silently dropped).
#[tokio::test]
async fn drain_timeout_reports_unacknowledged() {
    let node = FakeNode::start().await;
    node.set_role(Role::Follower(None));
    let config = Config {
        drain_timeout: Duration::from_millis(300),
        ..fast(&node, 3)
    };
    let summary = within(
        LIMIT,
        "producer run",
        producer::run(config, CancellationToken::new()),
    )
    .await
    .expect("the producer runs");
    assert_eq!((summary.sent, summary.acknowledged, summary.failed), (3, 0, 0));
    assert_eq!(summary.unacknowledged(), 3);
    assert!(!summary.all_acknowledged());
    assert!(node.messages().is_empty());
}

/// `--retry-max-elapsed` bounds the retries of one batch: its messages are then failed.
#[tokio::test]
async fn retry_budget_fails_the_batch() {
    let node = FakeNode::start().await;
    node.set_role(Role::Follower(None));
    let config = Config {
        retry_max_elapsed: Duration::from_millis(300),
        ..fast(&node, 3)
    };
    let summary = within(
        LIMIT,
        "producer run",
        producer::run(config, CancellationToken::new()),
    )
    .await
    .expect("the producer runs");
    assert_eq!((summary.sent, summary.acknowledged, summary.failed), (3, 0, 3));
    assert!(summary.retried >= 1);
}

/// While a batch is in flight, messages accumulate; the next batch takes up to `--batch-max`
/// of them and never more.
#[tokio::test]
async fn batches_fill_while_one_is_in_flight() {
    let node = FakeNode::start().await;
    node.fail_next([Fault::Stall(Duration::from_millis(300))]);
    let config = Config {
        batch_max: 100,
        ..fast(&node, 1000)
    };
    let summary = within(
        LIMIT,
        "producer run",
        producer::run(config, CancellationToken::new()),
    )
    .await
    .expect("the producer runs");
    assert_eq!(summary.acknowledged, 1000);
    let sizes: Vec<usize> = node.requests().iter().map(|r| r.lines).collect();
    assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
    assert!(
        sizes.iter().skip(1).any(|&n| n == 100),
        "full batches after the stall: {sizes:?}"
    );
    assert_eq!(node.messages(), expected(1000));
}

/// A follower's `X-Simpleloggers-Leader` hint is followed: the batch is resent to the named
/// leader with the same id and seq, and acknowledged by it.
#[tokio::test]
async fn leader_hint_is_followed() {
    let leader = FakeNode::start().await;
    let follower = FakeNode::start_sharing(leader.store()).await;
    follower.set_role(Role::Follower(Some(leader.address())));
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let hooks = Hooks {
        acks: Some(ack_tx),
        ..Hooks::default()
    };
    let summary = within(
        LIMIT,
        "producer run",
        producer::run_with(fast(&follower, 30), CancellationToken::new(), hooks),
    )
    .await
    .expect("the producer runs");
    assert_eq!((summary.acknowledged, summary.failed), (30, 0));
    assert_eq!(leader.messages(), expected(30));
    let acks = drain(&mut ack_rx);
    assert!(acks.iter().all(|a| a.leader == leader.url()), "{acks:?}");
    let first = &follower.requests()[0];
    let resent = &leader.requests()[0];
    assert_eq!(
        (first.seq, &first.producer_id),
        (resent.seq, &resent.producer_id),
        "same batch resent"
    );
}

/// With several batches in flight every message is still acknowledged and stored once.
#[tokio::test]
async fn several_in_flight() {
    let node = FakeNode::start().await;
    node.fail_next([
        Fault::Status {
            status: 503,
            leader: None,
        },
        Fault::StoreThenUnavailable,
    ]);
    let config = Config {
        batch_max: 7,
        max_in_flight: 4,
        ..fast(&node, 500)
    };
    let summary = within(
        LIMIT,
        "producer run",
        producer::run(config, CancellationToken::new()),
    )
    .await
    .expect("the producer runs");
    assert_eq!((summary.acknowledged, summary.failed), (500, 0));
    let mut stored = node.messages();
    stored.sort_by_key(|m| m.trim_start_matches("Message: ").parse::<u64>().unwrap());
    assert_eq!(stored, expected(500), "each stored once (order not guaranteed)");
}
