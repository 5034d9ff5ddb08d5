//! The producer finding the leader through Consul's election key (a fake Consul KV with
//! blocking queries over loopback) and following it across a failover without losing or
//! duplicating a message.

mod producer_support;

use std::time::Duration;

use producer_support::{check_acks, drain, wait_until, within, FakeConsul, FakeNode, Role};
use simpleloggers::{
    consul::ConsulConfig,
    producer::{self, Config, Hooks},
    shutdown::CancellationToken,
};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(30);

/// The producer waits until Consul names a leader, sends to it, and when the leader steps down
/// (answers 503 without a hint) and Consul names another, resends the same batch there: every
/// message is acknowledged and stored exactly once, in order, by the two leaders together.
#[tokio::test]
async fn follows_the_leader_across_a_failover() {
    let consul = FakeConsul::start().await;
    let a = FakeNode::start().await;
    let b = FakeNode::start_sharing(a.store()).await;
    b.set_term(2);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let config = Config {
        rate: 500.0,
        count: Some(1000),
        batch_max: 50,
        ..Config::for_consul(ConsulConfig::new(consul.addr.to_string()))
    };
    let hooks = Hooks {
        acks: Some(ack_tx),
        ..Hooks::default()
    };
    let run = tokio::spawn(producer::run_with(config, CancellationToken::new(), hooks));

    consul.set_leader(Some(("a", &a.address())), 1);
    wait_until(LIMIT, "leader a stores some messages", || a.stored() >= 100).await;
    // Leader a loses its lease: it refuses writes; Consul soon names b.
    let before = a.requests().len();
    a.set_role(Role::Follower(None));
    wait_until(LIMIT, "a refuses a write", || a.requests().len() > before).await;
    consul.set_leader(None, 1);
    consul.set_leader(Some(("b", &b.address())), 2);

    let summary = within(LIMIT, "producer run", run)
        .await
        .expect("joins")
        .expect("the producer runs");
    assert_eq!(
        (summary.sent, summary.acknowledged, summary.failed),
        (1000, 1000, 0)
    );
    assert!(summary.retried >= 1, "{summary}");
    let expected: Vec<String> = (0..1000).map(|i| format!("Message: {i}")).collect();
    assert_eq!(
        a.messages(),
        expected,
        "stored once, in order, across both leaders"
    );
    let acks = drain(&mut ack_rx);
    assert!(acks.iter().any(|x| x.leader == a.url() && x.term == 1));
    assert!(acks.iter().any(|x| x.leader == b.url() && x.term == 2));
    check_acks(&acks, &a.entries(), &summary);
}

/// While the node Consul names as leader refuses writes (503 without a hint: it is still taking
/// over, or its lease lapsed), the producer keeps retrying it at a short pace — at most
/// `NAMED_LEADER_RETRY_MAX` apart plus scheduling — instead of a back-off grown to seconds, so
/// the first write after the node starts serving goes out at once; then the batch is stored.
#[tokio::test]
async fn retries_the_named_leader_at_a_short_pace() {
    let consul = FakeConsul::start().await;
    let a = FakeNode::start().await;
    a.set_role(Role::Follower(None));
    consul.set_leader(Some(("a", &a.address())), 1);
    let config = Config {
        rate: 0.0,
        count: Some(1),
        ..Config::for_consul(ConsulConfig::new(consul.addr.to_string()))
    };
    let run = tokio::spawn(producer::run_with(
        config,
        CancellationToken::new(),
        Hooks::default(),
    ));

    // Note when each attempt arrives while `a` refuses for 3 s (a grown back-off would leave
    // gaps of 0.8 s and 1.6 s in that time).
    let mut arrivals = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let n = a.requests().len();
        if n > arrivals.len() {
            arrivals.resize(n, tokio::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.set_role(Role::Leader);
    let summary = within(LIMIT, "producer run", run)
        .await
        .expect("joins")
        .expect("the producer runs");
    assert_eq!((summary.acknowledged, summary.failed), (1, 0), "{summary}");
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        arrivals.len() >= 5,
        "only {} attempts in 3 s: {gaps:?}",
        arrivals.len()
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_secs(1)),
        "a retry of the named leader waited a grown back-off: {gaps:?}"
    );
}
