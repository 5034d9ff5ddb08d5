//! Replication (issue 11, `docs/replication.md`) with real node processes on loopback and the
//! dev Consul: the in-sync set. A follower whose fetches are cut leaves it, cannot lead while
//! out, and rejoins once caught up; `--min-insync` refuses writes (before storing them) and
//! recovers, and the set never shrinks below it; a node back with an empty disk catches up before it can be elected; Consul losing
//! its state loses no acknowledged message, and nobody leads until every replica reported.
//! Fencing is in `replication_fencing.rs`, the 30 leader crashes in `replication_failover.rs`.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/replication.rs"]
mod replication;

use std::{collections::BTreeSet, time::Duration};

use cluster::{eventually, Cluster};
use replication::{
    always, assert_same_log, check_exactly_once, holds_lock, isr_key, lock_holder_index, messages, metric,
    never_leads, start_behind_proxies, start_with_proxies, wait_case, write, write_acked, Load, WAIT,
};
use simpleloggers::replication::isr::Member;

/// The scenarios run one at a time: each runs three nodes whose failover timings should not
/// depend on another scenario's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longer than a session TTL plus the lock-delay of the fast timings: had a node been able to
/// take the lock, it would have by then.
const NOBODY_LEADS_WINDOW: Duration = Duration::from_secs(6);

/// A follower whose fetches are cut is removed from the in-sync set (in Consul, so every node
/// reports it) while writes go on with the other two; out of the set it is never elected, not
/// even with both in-sync nodes down; restored, it catches up, rejoins, and holds every message.
#[tokio::test]
async fn cut_follower_leaves_isr_is_not_elected_and_rejoins() {
    let _serial = SERIAL.lock().await;
    let (mut c, proxies, leader) = start_with_proxies(3, &[]).await;
    let (f, o) = ((leader + 1) % 3, (leader + 2) % 3);
    write_acked(&c, &[leader], ("w", 0), &["before"], WAIT).await;
    c.wait_hw(1, WAIT).await;
    assert!(
        proxies[f].forwarded() > 0,
        "the follower fetches through its proxy"
    );

    proxies[f].cut();
    for seq in 1..=10 {
        write_acked(&c, &[leader], ("w", seq), &[&format!("during {seq}")], WAIT).await;
    }
    c.wait_isr(&[leader, o], WAIT).await;
    let at_leader = c.repl(leader).await;
    let member = at_leader.members.iter().find(|m| m.name == c.name(f));
    assert_eq!(
        member.map(|m| m.in_isr),
        Some(false),
        "the leader lists the cut follower as out of the set: {at_leader:#?}"
    );
    let behind = c.repl(f).await;
    assert!(
        behind.log_end < at_leader.log_end,
        "the cut follower is behind: {behind:#?} vs {at_leader:#?}"
    );

    c.node_mut(leader).kill().await;
    c.node_mut(o).kill().await;
    wait_case(&c, f, "not_in_isr").await;
    never_leads(&c, f, NOBODY_LEADS_WINDOW, "it is not in the in-sync set").await;

    c.restart(leader).await;
    c.restart(o).await;
    let next = c.wait_leader(WAIT).await;
    assert_ne!(next, f, "only an in-sync node leads");
    proxies[f].restore();
    c.wait_isr(&[0, 1, 2], WAIT).await;
    c.converge(WAIT).await;
    let logs = c.logs().await;
    let expected: Vec<String> = std::iter::once("before".to_string())
        .chain((1..=10).map(|s| format!("during {s}")))
        .collect();
    for (i, log) in &logs {
        assert_eq!(messages(log), expected, "{}", c.name(*i));
        assert_same_log(&c.name(logs[0].0), &logs[0].1, &c.name(*i), log);
    }
}

/// `--min-insync` 2 of 3, phase one: a leader whose in-sync set is smaller (the cluster's
/// start, every follower's fetches cut) says in its status that writes are refused, answers a
/// write 503 `not_enough_replicas` naming the in-sync count and the minimum, stores nothing, and
/// counts the refusal; one follower caught up lifts it, and the same batch is then stored once.
/// Phase two: the set never shrinks below 2, so with both followers down a write is not
/// acknowledged (refused, or timed out: unknown) while the set keeps 2 members; one follower
/// back, that batch retried is acknowledged, and every node holds each batch once.
#[tokio::test]
async fn min_insync_refuses_writes_and_recovers() {
    let _serial = SERIAL.lock().await;
    let (mut c, proxies) = start_behind_proxies(3, &[], true).await;
    let leader = lock_holder_index(&c).await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let refused = eventually(WAIT, || async {
        let status = c.replication(leader).await.ok()?;
        status
            .writes_refused
            .as_deref()
            .is_some_and(|r| r.starts_with("not_enough_replicas"))
            .then_some(status)
    })
    .await
    .expect("the leader says it refuses writes (not_enough_replicas)");
    assert_eq!(refused.min_insync, 2, "a majority of 3 by default");
    assert_eq!(refused.isr, [c.name(leader)], "nobody caught up: {refused:#?}");
    let (status, body) = write(&c, leader, Some(("m", 0)), &["first"], Duration::from_secs(20))
        .await
        .expect("the leader answers");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "not_enough_replicas", "{body}");
    assert_eq!(
        (&body["isr"], &body["min_insync"]),
        (&1.into(), &2.into()),
        "{body}"
    );
    assert_eq!(
        c.repl(leader).await.log_end,
        refused.log_end,
        "a write refused before the append stores nothing"
    );
    let count = metric(
        &c,
        leader,
        "simpleloggers_writes_refused_total",
        "not_enough_replicas",
    )
    .await;
    assert!(count.is_some_and(|n| n >= 1.0), "refusals are counted: {count:?}");

    proxies[a].restore();
    let ack = write_acked(&c, &[leader], ("m", 0), &["first"], WAIT).await;
    assert_eq!(
        ack["duplicate"], false,
        "the refused batch had not been stored: {ack}"
    );
    let serving = eventually(WAIT, || async {
        c.replication(leader)
            .await
            .ok()?
            .writes_refused
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        serving.is_some(),
        "the refusal is lifted: {:#?}",
        c.repl(leader).await
    );
    proxies[b].restore();
    c.wait_isr(&[0, 1, 2], WAIT).await;

    c.node_mut(a).kill().await;
    c.node_mut(b).kill().await;
    let (status, body) = write(&c, leader, Some(("m", 1)), &["second"], Duration::from_secs(30))
        .await
        .expect("the leader answers within 30 s");
    assert_eq!(status, 503, "not acknowledged without a follower: {body}");
    assert!(
        body["code"] == "commit_timeout" || body["code"] == "not_enough_replicas",
        "{body}"
    );
    let isr = isr_key(&c).await.expect("the ISR key");
    assert!(
        isr.members.len() >= 2 && isr.leader == c.name(leader),
        "the set keeps --min-insync members: {isr:?}"
    );
    c.restart(a).await;
    write_acked(&c, &[leader], ("m", 1), &["second"], WAIT).await;
    c.restart(b).await;
    c.wait_isr(&[0, 1, 2], WAIT).await;
    c.converge(WAIT).await;
    for (i, log) in c.logs().await {
        assert_eq!(messages(&log), ["first", "second"], "{}", c.name(i));
    }
}

/// A follower restarted on an empty data directory is a new incarnation: while it cannot catch
/// up (its fetches cut) it is never elected, even with the in-sync set in Consul still naming it
/// (by its old incarnation) and both other nodes down. Restored, it catches up, the set names
/// its new incarnation, and then it can lead, serving every message.
#[tokio::test]
async fn empty_disk_catches_up_before_it_can_be_elected() {
    let _serial = SERIAL.lock().await;
    // A slow lag limit: the leader is still naming the wiped follower when it goes down.
    let (mut c, proxies, leader) = start_with_proxies(3, &["--replica-lag-max", "8s"]).await;
    let (f, o) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut expected = Vec::new();
    for batch in 0..10u64 {
        let lines: Vec<String> = (0..10).map(|k| format!("m {}", batch * 10 + k)).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        write_acked(&c, &[leader], ("e", batch * 10), &lines, WAIT).await;
        expected.extend(lines.iter().map(|l| l.to_string()));
    }
    c.wait_hw(100, WAIT).await;
    // The node creates it when it opens its log, just after it starts listening.
    let incarnation = |c: &Cluster| {
        let path = c.data_dir(f).join("incarnation");
        eventually(WAIT, move || {
            let path = path.clone();
            async move { std::fs::read_to_string(&path).ok().map(|s| s.trim().to_string()) }
        })
    };
    let old = incarnation(&c).await.expect("the incarnation file");

    proxies[f].cut();
    c.restart_empty(f).await;
    let new = incarnation(&c).await.expect("a new incarnation file");
    assert_ne!(old, new, "an empty data directory is a new incarnation");
    c.node_mut(leader).kill().await;
    c.node_mut(o).kill().await;
    let isr = isr_key(&c).await.expect("the ISR key");
    let old_member = Member {
        name: c.name(f),
        incarnation: old.clone(),
    };
    assert!(
        isr.members.contains(&old_member),
        "the set still names the wiped node by its old incarnation: {isr:?}"
    );
    never_leads(&c, f, NOBODY_LEADS_WINDOW, "its disk is empty").await;
    assert_eq!(c.repl(f).await.log_end, 0, "it caught up on nothing");

    c.restart(leader).await;
    c.restart(o).await;
    let next = c.wait_leader(WAIT).await;
    assert_ne!(next, f);
    proxies[f].restore();
    let new_member = Member {
        name: c.name(f),
        incarnation: new.clone(),
    };
    let rejoined = eventually(WAIT, || async {
        let isr = isr_key(&c).await?;
        (isr.members.contains(&new_member) && !isr.members.contains(&old_member)).then_some(isr)
    })
    .await;
    assert!(
        rejoined.is_some(),
        "the set names the new incarnation: {:?}",
        isr_key(&c).await
    );
    c.wait_isr(&[0, 1, 2], WAIT).await;
    c.converge(WAIT).await;
    for (i, log) in c.logs().await {
        assert_eq!(messages(&log), expected, "{}", c.name(i));
    }

    // Caught up and in the set, it may lead: with the other two down it does.
    c.node_mut(leader).kill().await;
    c.node_mut(o).kill().await;
    let led = eventually(WAIT, || async { holds_lock(&c, f).await.then_some(()) }).await;
    assert!(led.is_some(), "the caught-up node takes the lock");
    assert_eq!(messages(&c.read_log(f).await.unwrap()), expected);
}

/// The dev Consul restarted (its state lost) under load, with one node down: the others report
/// `state_loss_waiting` naming the missing one, and nobody leads until it is back; then one
/// leads in a term above every earlier one, the producers go on, and every acknowledged message
/// is on every node exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_state_loss_loses_nothing_and_serving_resumes() {
    let _serial = SERIAL.lock().await;
    let (mut c, _proxies, leader) = start_with_proxies(3, &[]).await;
    let mut load = Load::start(&c, &[("s0", 1), ("s1", 4)], 50.0);
    load.progress(50, WAIT).await;
    let before = c.0.wait_leader(WAIT).await.expect("a leader").term;
    let down = (leader + 1) % 3;
    c.node_mut(down).kill().await;
    load.progress(20, WAIT).await;

    let consul = c.consul_mut();
    consul.kill().await;
    consul
        .start()
        .await
        .expect("restart the dev Consul on its address");
    let up: Vec<usize> = c.running();
    // Each running node waits naming only the node that is down: the other running one re-reports
    // as soon as it sees the state loss too, so the first look may still name it.
    for &i in &up {
        let want = [c.name(down)];
        let settled = eventually(WAIT, || async {
            let status = c.replication(i).await.ok()?;
            (status.case_name() == Some("state_loss_waiting") && status.missing() == want).then_some(())
        })
        .await;
        if settled.is_none() {
            let waiting = wait_case(&c, i, "state_loss_waiting").await;
            panic!("{} never waited naming only {want:?}: {waiting:#?}", c.name(i));
        }
    }
    always(NOBODY_LEADS_WINDOW, || async {
        let ready = c.ready_nodes().await;
        let holder = c.lock_holder().await;
        if ready.is_empty() && holder.is_none() {
            Ok(())
        } else {
            Err(format!(
                "someone leads before every replica reported: ready {ready:?}, lock {holder:?}"
            ))
        }
    })
    .await;

    c.restart(down).await;
    let after =
        c.0.wait_leader(WAIT)
            .await
            .expect("a leader after the state loss");
    assert!(
        after.term > before,
        "the new term {} is above every earlier one ({before})",
        after.term
    );
    load.progress(50, WAIT).await;
    let runs = load.finish().await;
    c.wait_isr(&[0, 1, 2], WAIT).await;
    c.converge(WAIT).await;
    let logs = c.logs().await;
    check_exactly_once(&c, &logs, &runs);
    let terms: BTreeSet<u64> = runs.iter().flat_map(|r| r.acks.iter().map(|a| a.term)).collect();
    assert!(
        terms.iter().any(|&t| t > before),
        "messages were acknowledged after the state loss: {terms:?}"
    );
}
