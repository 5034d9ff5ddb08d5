//! Terms come from the term key (`E/term`), handed out in the same transaction that takes the
//! lock: electors in-process against the dev Consul over real HTTP, with fake logs whose last
//! term the test sets. Terms strictly increase across leaderships whatever happens to the
//! election key, and after Consul lost its state.

mod election_support;

use election_support::{Consul, FakeReplica, Node, Settings, KEY};
use simpleloggers::{
    consul::{DeleteOptions, PutOptions, QueryOptions},
    discovery::leader_from_kv,
    election::{ElectionCase, LeaderState, Role},
};

/// Waits for `node` to lead in a term above `above`; checks that the term key, the leader record
/// and the lock agree on it; returns the state.
async fn leads_above(consul: &Consul, node: &Node, above: u64) -> LeaderState {
    let state = node
        .wait_for(&format!("leader above term {above}"), |s| {
            s.role == Role::Leader && s.term > above
        })
        .await;
    let term = consul.term().await.expect("the term key exists");
    assert_eq!(term.term, state.term, "the term key holds the leader's term");
    assert_eq!(term.session, state.session.clone().unwrap());
    let (pair, _) = consul.client.kv_get(KEY, &QueryOptions::default()).await.unwrap();
    let leader = leader_from_kv(pair.as_ref()).expect("the lock is held with a leader record");
    assert_eq!(
        (leader.term, leader.record.term, leader.record.name.as_str()),
        (state.term, Some(state.term), node.name.as_str()),
        "followers and producers read the same term from the leader record"
    );
    state
}

/// A single node: cluster start gives term 1; after the election key is deleted, after it is PUT
/// plainly (kept), after the lock is released behind its back, and after the dev Consul restarted
/// empty, every new leadership has a higher term than the last — `max(log's last term, term key)
/// + 1` — even though `LockIndex` starts again at 1 each time the key is recreated.
#[tokio::test]
async fn term_strictly_increases_across_leaderships() {
    let mut consul = Consul::start().await;
    let replica = FakeReplica::new("n0", None, 0);
    let node = Node::start(&consul, "n0", replica.clone(), Settings::replicas(1)).await;
    let first = leads_above(&consul, &node, 0).await;
    assert_eq!((first.term, &first.case), (1, &ElectionCase::ClusterStart));
    let isr = consul.isr().await.expect("cluster start created the ISR");
    assert_eq!((isr.term, isr.leader.as_str()), (1, "n0"));
    assert_eq!(isr.members, vec![node.member()]);
    replica.set(Some(1), 3);

    // Deleted: the node steps down and takes a new key (LockIndex 1 again) in term 2.
    assert!(consul
        .client
        .kv_delete(KEY, &DeleteOptions::default())
        .await
        .unwrap());
    let second = leads_above(&consul, &node, first.term).await;
    assert_eq!((second.term, &second.case), (2, &ElectionCase::Normal));
    let (pair, _) = consul.client.kv_get(KEY, &QueryOptions::default()).await.unwrap();
    assert_eq!(pair.unwrap().lock_index, 1, "the term is not the LockIndex");

    // A plain PUT keeps the session: still the same leadership, same term.
    let plain = br#"{"name":"someone","address":"x:1","since":"t"}"#.to_vec();
    assert!(consul
        .client
        .kv_put(KEY, plain, &PutOptions::default())
        .await
        .unwrap());
    let kept = node
        .wait_for("seeing the plain PUT", |s| {
            s.leader.as_ref().is_some_and(|l| l.name == "someone")
        })
        .await;
    assert_eq!((kept.role, kept.term), (Role::Leader, 2), "{kept:?}");

    // Released with our own session by an operator: the next leadership is term 3; the log's
    // last term counts too: with records of term 7, the next one is 8.
    let session = kept.session.clone().unwrap();
    assert!(consul.client.kv_release(KEY, &session, "").await.unwrap());
    let third = leads_above(&consul, &node, 2).await;
    assert_eq!(third.term, 3);
    replica.set(Some(7), 9);
    assert!(consul
        .client
        .kv_delete(KEY, &DeleteOptions::default())
        .await
        .unwrap());
    let fourth = leads_above(&consul, &node, 3).await;
    assert_eq!(fourth.term, 8, "max(log's last term 7, term key 3) + 1");

    // Consul loses everything: no term key, no ISR, no session. The node's report shows records,
    // so this is a state loss; it is the only replica, so it leads at once, above its log's term.
    replica.set(Some(8), 12);
    consul.restart_empty().await;
    let fifth = leads_above(&consul, &node, 8).await;
    assert_eq!((fifth.term, &fifth.case), (9, &ElectionCase::StateLoss));
    assert_ne!(
        fifth.session, fourth.session,
        "a new session after the state loss"
    );
    let isr = consul.isr().await.expect("the ISR was recreated");
    assert_eq!((isr.term, isr.members.clone()), (9, vec![node.member()]));
    node.stop().await;
}

/// Two nodes in one ISR: followers publish the leader's term, and a graceful handover gives the
/// new leader a higher term.
#[tokio::test]
async fn handovers_raise_the_term_and_followers_see_it() {
    let consul = Consul::start().await;
    let a = Node::start(
        &consul,
        "a",
        FakeReplica::new("a", None, 0),
        Settings::replicas(2),
    )
    .await;
    let b = Node::start(
        &consul,
        "b",
        FakeReplica::new("b", None, 0),
        Settings::replicas(2),
    )
    .await;
    // With 2 replicas and a majority of 2, cluster start needs one empty report (2 − 2 + 1): the
    // node whose first check passes first (Consul staggers it within the interval) may start it.
    let is_leader = |s: &LeaderState| s.role == Role::Leader;
    let a_leads = tokio::select! {
        _ = a.wait_for("leader", is_leader) => true,
        _ = b.wait_for("leader", is_leader) => false,
    };
    let (leader, follower) = if a_leads { (&a, &b) } else { (&b, &a) };
    let first = leads_above(&consul, leader, 0).await;
    assert_eq!(first.term, 1);
    // repl-core adds caught-up followers to the ISR; here the leader does it through its handle.
    let isr = leader.elector.isr();
    let current = leader.wait_isr().await;
    let mut state = current.state.clone();
    state.members.push(follower.member());
    isr.change(first.session.as_deref().unwrap(), current.index, state)
        .await
        .expect("the leader widens the ISR");
    let seen = follower
        .wait_for("following the leader in term 1", |s| {
            s.role == Role::Follower && s.term == 1 && s.case == ElectionCase::Normal
        })
        .await;
    assert_eq!(seen.leader.unwrap().name, leader.name);

    leader.elector.resign().await;
    let second = leads_above(&consul, follower, first.term).await;
    assert_eq!((second.term, &second.case), (2, &ElectionCase::Normal));
    if a_leads {
        b.stop().await;
    } else {
        a.stop().await;
    }
}
