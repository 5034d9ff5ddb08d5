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
