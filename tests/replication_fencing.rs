//! Replication fencing (issue 11, `docs/replication.md`) with real node processes on loopback
//! and the dev Consul: a leader that stored records it could never commit and then lost its
//! leadership truncates exactly those when it rejoins; a leader deposed while paused
//! (SIGSTOP past its lease) that wakes up still believing it leads can neither acknowledge a
//! write nor change the in-sync set.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/replication.rs"]
mod replication;

use std::time::Duration;

use cluster::eventually;
use replication::{
    always, assert_same_log, isr_key, messages, metric, start_with_proxies, write, write_acked, WAIT,
};
use simpleloggers::cli::tail::TailEntry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The scenarios run one at a time: each runs three nodes whose failover timings should not
/// depend on another scenario's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes that cannot commit because both followers' fetches are cut are still appended to the
/// leader's log (above its high watermark) and never acknowledged. Once that leader is killed,
/// another is elected and writes in its own term at those offsets; the old leader, restarted,
/// truncates its uncommitted suffix (and only that): every node then holds the same log, the
/// committed prefix unchanged, the uncommitted writes nowhere.
#[tokio::test]
async fn uncommitted_suffix_is_truncated_exactly_on_rejoin() {
    let _serial = SERIAL.lock().await;
    // Followers stay "in sync" long enough for the writes below to be appended.
    let (mut c, proxies, old) = start_with_proxies(3, &["--replica-lag-max", "5s"]).await;
    let followers = [(old + 1) % 3, (old + 2) % 3];
    for seq in 0..10 {
        write_acked(&c, &[old], ("c", seq), &[&format!("committed {seq}")], WAIT).await;
    }
    let committed = c.repl(old).await;
    c.wait_hw(committed.high_watermark, WAIT).await;
    let prefix = c.read_log(old).await.expect("the leader's log");
    assert_eq!(prefix.len(), 10);

    for &f in &followers {
        proxies[f].cut();
    }
    let uncommitted: Vec<_> = (0..5)
        .map(|k| {
            let http = c.http().clone();
            let url = format!("{}/api/v1/log", c.url(old));
            tokio::spawn(async move {
                let sent = http
                    .post(url)
                    .timeout(Duration::from_secs(60))
                    .body(format!("uncommitted {k}"))
                    .send()
                    .await;
                sent.map(|r| r.status().as_u16()).ok()
            })
        })
        .collect();
    let stored = eventually(WAIT, || async {
        let status = c.replication(old).await.ok()?;
        (status.log_end >= committed.log_end + 5).then_some(status)
    })
    .await
    .unwrap_or_else(|| panic!("the writes to the cut-off leader were not appended"));
    assert_eq!(
        stored.high_watermark, committed.high_watermark,
        "nothing above the old high watermark is committed: {stored:#?}"
    );
    for &f in &followers {
        assert_eq!(
            c.repl(f).await.log_end,
            committed.log_end,
            "{} got nothing",
            c.name(f)
        );
    }
    assert_eq!(
        c.read_log(old).await.unwrap().len(),
        10,
        "readers see only what is committed"
    );

    c.node_mut(old).kill().await;
    for write in uncommitted {
        let status = write.await.expect("write task");
        assert_ne!(status, Some(200), "an uncommitted write was acknowledged");
    }
    for &f in &followers {
        proxies[f].restore();
    }
    let new = c.wait_leader(WAIT).await;
    assert!(followers.contains(&new));
    for seq in 10..15 {
        write_acked(&c, &followers, ("c", seq), &[&format!("new term {seq}")], WAIT).await;
    }

    c.restart(old).await;
    c.wait_isr(&[0, 1, 2], WAIT).await;
    c.converge(WAIT).await;
    let logs = c.logs().await;
    let reference = log_of(&logs, new);
    let expected: Vec<String> = (0..10)
        .map(|s| format!("committed {s}"))
        .chain((10..15).map(|s| format!("new term {s}")))
        .collect();
    for (i, log) in &logs {
        assert_eq!(messages(log), expected, "{}", c.name(*i));
        assert_same_log(&c.name(new), reference, &c.name(*i), log);
        let head: Vec<_> = log.iter().take(10).map(|e| (e.offset, e.term)).collect();
        let was: Vec<_> = prefix.iter().map(|e| (e.offset, e.term)).collect();
        assert_eq!(head, was, "{}: the committed prefix is unchanged", c.name(*i));
    }
    let truncations = metric(&c, old, "simpleloggers_replication_truncations_total", "").await;
    assert!(
        truncations.is_some_and(|n| n >= 1.0),
        "the rejoining leader truncated: {truncations:?}"
    );
}

/// A leader paused past its lease is replaced; a write sent to it while paused is handled once
/// it wakes up believing it still leads, and is not acknowledged, nor ever stored anywhere. From
/// the moment it wakes, the in-sync set in Consul stays the new leader's (its term, its name)
/// although the old leader sees its followers silent; it then rejoins as a follower.
#[tokio::test]
async fn deposed_leader_can_neither_acknowledge_nor_change_the_isr() {
    let _serial = SERIAL.lock().await;
    let (c, _proxies, old) = start_with_proxies(3, &[]).await;
    let others = [(old + 1) % 3, (old + 2) % 3];
    write_acked(&c, &[old], ("d", 0), &["before"], WAIT).await;
    c.wait_hw(1, WAIT).await;

    c.node(old).pause().await.expect("pause the leader");
    let new = eventually(WAIT, || async {
        let ready: Vec<usize> = {
            let mut ready = Vec::new();
            for &i in &others {
                if c.ready(i).await.is_some() {
                    ready.push(i);
                }
            }
            ready
        };
        match ready.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    })
    .await
    .expect("another node leads while the old one is paused");
    write_acked(&c, &others, ("d", 1), &["after"], WAIT).await;
    c.wait_isr_on(&others, &others, WAIT).await;
    let term = c.lock_holder().await.expect("the new leader holds the lock").term;
    let isr = isr_key(&c).await.expect("the ISR key");
    assert_eq!(isr.leader, c.name(new), "{isr:?}");

    // Sent while the old leader is stopped: the kernel completes the connection and buffers the
    // request, which the node handles first thing when it wakes up.
    let addr = c.node(old).addr().expect("the old leader's address");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the paused node");
    let body = "deposed write";
    let request = format!(
        "POST /api/v1/log HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send to the paused node");
    c.node(old).resume();
    let deposed_write = tokio::spawn(async move {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        // `HTTP/1.1 503 ...`; nothing at all (closed, reset, or no answer in 30 s) is no ack either.
        let status = answer.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
        (read.is_ok(), status, answer)
    });

    // The old leader's view of its followers is stale by far more than --replica-lag-max: were
    // it able to, it would shrink the set now.
    always(Duration::from_secs(5), || async {
        match isr_key(&c).await {
            Some(isr) if isr.leader == c.name(new) && isr.term >= term => Ok(()),
            Some(isr) if isr.leader == c.name(new) => Err(format!("the ISR key went back in term: {isr:?}")),
            Some(isr) => Err(format!("the deposed leader changed the ISR: {isr:?}")),
            None => Err("the ISR key vanished".to_string()),
        }
    })
    .await;
    let (_, status, answer) = deposed_write.await.expect("write task");
    eprintln!("the deposed leader answered: {answer}");
    assert_ne!(
        status,
        Some(200),
        "the deposed leader acknowledged a write: {answer}"
    );

    c.wait_isr(&[0, 1, 2], WAIT).await;
    c.converge(WAIT).await;
    let (status, _) = write(&c, old, Some(("d", 2)), &["to the old"], Duration::from_secs(5))
        .await
        .expect("the old leader answers");
    assert_ne!(status, 200, "the old leader is a follower now");
    let logs = c.logs().await;
    let reference = log_of(&logs, new);
    for (i, log) in &logs {
        assert_eq!(messages(log), ["before", "after"], "{}", c.name(*i));
        assert_same_log(&c.name(new), reference, &c.name(*i), log);
    }
}

/// Node `i`'s log among `logs`.
fn log_of(logs: &[(usize, Vec<TailEntry>)], i: usize) -> &[TailEntry] {
    &logs.iter().find(|(n, _)| *n == i).expect("that node's log").1
}
