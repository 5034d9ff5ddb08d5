//! Who may lead, against the dev Consul over real HTTP with in-process electors and fake logs:
//! cluster start elects exactly one node and writes the ISR of it; after a Consul state loss
//! nobody leads until every replica reported, then the most complete does;
//! `--unclean-leader-election` picks at once; a node outside the ISR never wins, even with the
//! lock free; a deposed leader cannot change the ISR.

mod election_support;

use std::time::Duration;

use election_support::{assert_no_leader_for, Consul, FakeReplica, Node, Settings, KEY};
use simpleloggers::{
    consul::{PutOptions, SessionRequest},
    election::{read_reports, ElectionCase, LeaderState, Role},
    replication::isr::{IsrError, IsrState, Member, ReplicationKeys},
};

/// Long enough for a node that wrongly may contend to win (it would within one round trip).
const NEVER: Duration = Duration::from_secs(2);

/// Three empty replicas (majority 2): one alone waits; once two reported, the smaller name leads
/// and the ISR is exactly it; a third joining later is not in the ISR and follows.
#[tokio::test]
async fn cluster_start_elects_exactly_one() {
    let consul = Consul::start().await;
    let s = Settings::replicas(3);
    let n2 = Node::start(&consul, "n2", FakeReplica::new("n2", None, 0), s).await;
    n2.wait_for("waiting for cluster start", |st| {
        st.role == Role::Follower && st.case == ElectionCase::ClusterStart && st.reason.contains("1 of the 2")
    })
    .await;
    assert_no_leader_for(&[&n2], NEVER).await;
    assert!(consul.holder().await.is_none(), "nobody took the lock");

    let n1 = Node::start(&consul, "n1", FakeReplica::new("n1", None, 0), s).await;
    let leader = n1.wait_leader().await;
    assert_eq!((leader.term, &leader.case), (1, &ElectionCase::ClusterStart));
    let isr = consul.isr().await.expect("the ISR was written");
    assert_eq!(
        isr,
        IsrState {
            term: 1,
            leader: "n1".into(),
            members: vec![n1.member()]
        }
    );
    let n0 = Node::start(&consul, "n0", FakeReplica::new("n0", None, 0), s).await;
    for n in [&n0, &n2] {
        n.wait_for("following n1, not in the ISR", |st| {
            st.role == Role::Follower && st.term == 1 && st.case == ElectionCase::NotInIsr
        })
        .await;
    }
    assert_eq!(consul.holder().await, leader.session, "n1 still holds the lock");
    for n in [n0, n1, n2] {
        n.stop().await;
    }
}

/// With all three electors started together on empty logs, exactly one leads at any moment and
/// the ISR names exactly that one.
#[tokio::test]
async fn cluster_start_together_one_leader() {
    let consul = Consul::start().await;
    let s = Settings::replicas(3);
    let nodes = [
        Node::start(&consul, "c", FakeReplica::new("c", None, 0), s).await,
        Node::start(&consul, "a", FakeReplica::new("a", None, 0), s).await,
        Node::start(&consul, "b", FakeReplica::new("b", None, 0), s).await,
    ];
    let deadline = std::time::Instant::now() + election_support::WAIT;
    let leader = loop {
        let leaders: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.elector.current().role == Role::Leader)
            .collect();
        assert!(leaders.len() <= 1, "two leaders at once");
        if let [one] = leaders[..] {
            break one;
        }
        assert!(std::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let isr = consul.isr().await.expect("ISR written");
    assert_eq!(isr.members, vec![leader.member()]);
    assert_eq!(isr.leader, leader.name);
    let others: Vec<&Node> = nodes.iter().filter(|n| n.name != leader.name).collect();
    assert_no_leader_for(&others, Duration::from_millis(500)).await;
    for n in nodes {
        n.stop().await;
    }
}

/// Consul lost its state (a fresh dev Consul, logs with records): with two of three replicas
/// reported nobody leads and the missing one is named; once the third reports, the most complete
/// log (largest last term, then log end) leads above every reported term.
#[tokio::test]
async fn state_loss_waits_for_all_and_picks_the_most_complete() {
    let consul = Consul::start().await;
    let s = Settings::replicas(3);
    let n0 = Node::start(&consul, "n0", FakeReplica::new("n0", Some(2), 50), s).await;
    let n1 = Node::start(&consul, "n1", FakeReplica::new("n1", Some(3), 40), s).await;
    let waiting = ElectionCase::StateLossWaiting {
        reported: 2,
        missing: vec!["n2".into()],
    };
    for n in [&n0, &n1] {
        n.wait_for("waiting for n2", |st| st.case == waiting).await;
    }
    assert_no_leader_for(&[&n0, &n1], NEVER).await;
    assert!(consul.holder().await.is_none());

    let n2 = Node::start(&consul, "n2", FakeReplica::new("n2", Some(3), 45), s).await;
    let leader = n2.wait_leader().await;
    assert_eq!((leader.term, &leader.case), (4, &ElectionCase::StateLoss));
    assert_eq!(consul.isr().await.unwrap().members, vec![n2.member()]);
    assert_eq!(consul.term().await.unwrap().term, 4);
    for n in [n0, n1, n2] {
        n.stop().await;
    }
}

/// `--unclean-leader-election`: after the state loss the most complete reporter present leads at
/// once, without waiting for the missing replica. (The lock is held by a stranger until both
/// reported, so which of them reported first does not matter.)
#[tokio::test]
async fn unclean_election_picks_at_once() {
    let consul = Consul::start().await;
    let stranger = consul
        .client
        .session_create(&SessionRequest::default())
        .await
        .unwrap();
    assert!(consul.client.kv_acquire(KEY, &stranger, "busy").await.unwrap());
    let s = Settings::replicas(3).unclean();
    let n0 = Node::start(&consul, "n0", FakeReplica::new("n0", Some(2), 50), s).await;
    let n1 = Node::start(&consul, "n1", FakeReplica::new("n1", Some(3), 40), s).await;
    let deadline = std::time::Instant::now() + election_support::WAIT;
    while read_reports(&consul.client, KEY).await.unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "both report");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n0.wait_for("deciding unclean", |st| st.case == ElectionCase::Unclean)
        .await;
    assert!(consul.client.kv_release(KEY, &stranger, "").await.unwrap());
    let leader = n1.wait_leader().await;
    assert_eq!((leader.term, &leader.case), (4, &ElectionCase::Unclean));
    assert_eq!(consul.isr().await.unwrap().members, vec![n1.member()]);
    assert_no_leader_for(&[&n0], Duration::from_millis(500)).await;
    n0.stop().await;
    n1.stop().await;
}

/// A node the ISR does not name never takes the free lock (nor one named with another
/// incarnation, as after an empty volume); once the ISR names it as it is, it leads in a higher
/// term.
#[tokio::test]
async fn absent_from_the_isr_never_wins() {
    let consul = Consul::start().await;
    let s = Settings::replicas(2);
    let n1 = Node::start(&consul, "a", FakeReplica::new("a", None, 0), s).await;
    let n2 = Node::start(&consul, "b", FakeReplica::new("b", None, 0), s).await;
    // With 2 replicas, cluster start needs one empty report (2 − 2 + 1): the node whose first
    // check passes first (Consul staggers it within the interval) starts the cluster; `a` is
    // that one and `b` the other, whichever names they have.
    let is_leader = |st: &LeaderState| st.role == Role::Leader;
    let first_is_n1 = tokio::select! {
        _ = n1.wait_for("leader", is_leader) => true,
        _ = n2.wait_for("leader", is_leader) => false,
    };
    let (a, b) = if first_is_n1 { (n1, n2) } else { (n2, n1) };
    let first = a.wait_leader().await;
    b.wait_for("not in the ISR", |st| st.case == ElectionCase::NotInIsr)
        .await;
    let a_member = a.member();
    let a_name = a_member.name.clone();
    a.stop().await;
    b.wait_for("seeing the lock free", |st| st.leader.is_none()).await;
    assert_no_leader_for(&[&b], NEVER).await;
    assert!(consul.holder().await.is_none(), "the lock stayed free");

    let keys = ReplicationKeys::new(KEY);
    let put_isr = |members: Vec<Member>| {
        let value = serde_json::to_vec(&IsrState {
            term: first.term,
            leader: a_name.clone(),
            members,
        })
        .unwrap();
        let consul = &consul;
        let key = keys.isr.clone();
        async move {
            assert!(consul
                .client
                .kv_put(&key, value, &PutOptions::default())
                .await
                .unwrap());
        }
    };
    let stale = Member {
        name: b.member().name,
        incarnation: "an-older-disk".into(),
    };
    put_isr(vec![a_member.clone(), stale]).await;
    assert_no_leader_for(&[&b], NEVER).await;
    assert_eq!(b.elector.current().case, ElectionCase::NotInIsr);

    put_isr(vec![a_member, b.member()]).await;
    let led = b.wait_leader().await;
    assert!(led.term > first.term, "{} > {}", led.term, first.term);
    assert_eq!(led.case, ElectionCase::Normal);
    b.stop().await;
}

/// The ISR changes only through the holder's session and the index it read: a deposed leader
/// (its session destroyed) is refused with `NotLeader`, a stale index with `Conflict`, and an empty
/// set or one without the leader is refused before anything is sent.
#[tokio::test]
async fn deposed_leader_cannot_change_the_isr() {
    let consul = Consul::start().await;
    let a = Node::start(
        &consul,
        "a",
        FakeReplica::new("a", None, 0),
        Settings::replicas(1),
    )
    .await;
    let leader = a.wait_leader().await;
    let session = leader.session.clone().unwrap();
    let isr = a.elector.isr();
    let current = a.wait_isr().await;
    let mut wider = current.state.clone();
    wider.members.push(Member {
        name: "b".into(),
        incarnation: "inc-b".into(),
    });

    let empty = IsrState {
        members: vec![],
        ..current.state.clone()
    };
    assert!(matches!(
        isr.change(&session, current.index, empty).await,
        Err(IsrError::Invalid(_))
    ));
    let leaderless = IsrState {
        members: vec![wider.members[1].clone()],
        ..current.state.clone()
    };
    assert!(matches!(
        isr.change(&session, current.index, leaderless).await,
        Err(IsrError::Invalid(_))
    ));
    assert!(matches!(
        isr.change(&session, current.index + 1000, wider.clone()).await,
        Err(IsrError::Conflict { .. })
    ));
    let written = isr
        .change(&session, current.index, wider.clone())
        .await
        .expect("the holder changes the ISR");
    assert!(written.index > current.index);
    assert_eq!(isr.current(), Some(written.clone()), "published at once");
    assert_eq!(consul.isr().await, Some(wider.clone()));

    // Deposed: Consul destroys the session (as after a failed check); the lock is released.
    let other = consul
        .client
        .session_create(&SessionRequest::default())
        .await
        .unwrap();
    assert!(consul.client.session_destroy(&session).await.unwrap());
    a.wait_for("deposed", |st| st.session.as_deref() != Some(session.as_str()))
        .await;
    let narrower = current.state.clone();
    assert!(matches!(
        isr.change(&session, written.index, narrower.clone()).await,
        Err(IsrError::NotLeader)
    ));
    // Nor with another live session that does not hold the key.
    assert!(matches!(
        isr.change(&other, written.index, narrower).await,
        Err(IsrError::NotLeader)
    ));
    assert_eq!(consul.isr().await, Some(wider), "the ISR is unchanged");
    a.stop().await;
}
