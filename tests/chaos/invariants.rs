//! The invariants the chaos suite checks after every round, as pure functions over what it
//! observed: every node's log (up to the high watermark it knows), every acknowledgement the
//! producers received (with the instant it arrived), and every `/readyz` 200 the sampler saw (with
//! the instants its request left and its answer came back). RELIABILITY.md states each one.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Instant,
};

use simpleloggers::{cli::tail::TailEntry, producer::Ack};

/// One acknowledgement as the chaos load saw it.
#[derive(Clone, Debug)]
pub struct TimedAck {
    /// The producer's id (the first word of its messages).
    pub producer: String,
    /// When the acknowledgement arrived.
    pub at: Instant,
    /// What it said.
    pub ack: Ack,
}

/// One `/readyz` 200 seen by the sampler.
#[derive(Clone, Debug)]
pub struct ReadySample {
    /// The node's base URL.
    pub node: String,
    /// The term its body named.
    pub term: u64,
    /// When the request left: the node was Ready at some instant in `[sent, received]`.
    pub sent: Instant,
    /// When the answer arrived.
    pub received: Instant,
}

/// A `(producer, seq)` message: `"ID SEQ"` in the log.
pub type MessageId = (String, u64);

/// What the logs of one check showed.
#[derive(Debug, Default)]
pub struct LogVerdict {
    /// Acknowledged messages missing from (or different at their offset in) some node's log.
    pub lost: BTreeSet<MessageId>,
    /// Messages stored more than once in some node's log (each extra copy once).
    pub duplicated: BTreeSet<MessageId>,
    /// Other broken rules: order per producer, terms along the log, logs that differ.
    pub problems: Vec<String>,
}

/// `"ID SEQ"` → `(ID, SEQ)`.
pub fn parse_message(message: &str) -> Option<MessageId> {
    let (id, seq) = message.split_once(' ')?;
    Some((id.to_string(), seq.parse().ok()?))
}

/// Checks every node's log (`(name, entries up to its high watermark)`) against every
/// acknowledgement received so far; the caller waited until every high watermark covers every
/// acknowledged offset.
///
/// - **No loss**: each acknowledged message `ID SEQ+k` is at offset `first_offset + k` of every
///   node's log.
/// - **No duplicate**: no node's log holds a message twice.
/// - **Order per producer**: along each node's log a producer's sequence numbers only increase.
/// - **Terms** never decrease along a log, and **the logs agree**: every node's log is a prefix of
///   the longest one (same offset, term and message).
pub fn check_logs(logs: &[(String, Vec<TailEntry>)], acks: &[TimedAck]) -> LogVerdict {
    let mut verdict = LogVerdict::default();
    for (name, log) in logs {
        let by_offset: HashMap<u64, &TailEntry> = log.iter().map(|e| (e.offset, e)).collect();
        for timed in acks {
            let ack = &timed.ack;
            for k in 0..ack.count {
                let want = format!("{} {}", timed.producer, ack.seq + k);
                let found = by_offset
                    .get(&(ack.first_offset + k))
                    .and_then(|e| e.message.as_deref());
                if found != Some(want.as_str()) {
                    verdict.lost.insert((timed.producer.clone(), ack.seq + k));
                }
            }
        }
        let mut seen: BTreeSet<MessageId> = BTreeSet::new();
        let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_term = 0;
        for entry in log {
            if entry.term < last_term {
                verdict.problems.push(format!(
                    "{name}: term {} at offset {} after term {last_term}",
                    entry.term, entry.offset
                ));
            }
            last_term = last_term.max(entry.term);
            let Some(id) = entry.message.as_deref().and_then(parse_message) else {
                continue;
            };
            if let Some(&before) = last_seq.get(&id.0) {
                if id.1 <= before && !seen.contains(&id) {
                    verdict.problems.push(format!(
                        "{name}: producer {} seq {} at offset {} after seq {before}",
                        id.0, id.1, entry.offset
                    ));
                }
            }
            last_seq.insert(id.0.clone(), id.1.max(last_seq.get(&id.0).copied().unwrap_or(0)));
            if !seen.insert(id.clone()) {
                verdict.duplicated.insert(id);
            }
        }
    }
    if let Some((longest_name, longest)) = logs.iter().max_by_key(|(_, log)| log.len()) {
        let key = |e: &TailEntry| (e.offset, e.term, e.message.clone(), e.message_base64.clone());
        for (name, log) in logs {
            if let Some(at) = log.iter().zip(longest).position(|(a, b)| key(a) != key(b)) {
                verdict.problems.push(format!(
                    "{name} and {longest_name} differ at entry #{at}: {:?} vs {:?}",
                    log[at], longest[at]
                ));
            }
        }
    }
    verdict
}

/// Checks leadership from the `/readyz` samples and the acknowledgements:
///
/// - **One node per term**: every Ready answer and every acknowledgement naming term `t` came
///   from the same node.
/// - **No stale leader**: once a Ready answer in term `t` has arrived, no Ready answer to a
///   request sent afterwards names a term below `t`. (Sampling cannot see two nodes Ready at one
///   instant directly; what it can see is an old leader Ready after a newer one was, which is
///   what two overlapping lease windows would produce.)
///
/// Answers one line per broken rule.
pub fn check_leadership(samples: &[ReadySample], acks: &[TimedAck]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut owners: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for s in samples {
        owners
            .entry(s.term)
            .or_default()
            .insert(format!("{} (ready)", s.node));
    }
    for a in acks {
        owners
            .entry(a.ack.term)
            .or_default()
            .insert(format!("{} (ack)", a.ack.leader.trim_end_matches('/')));
    }
    for (term, who) in &owners {
        let nodes: BTreeSet<&str> = who.iter().filter_map(|w| w.split(' ').next()).collect();
        if nodes.len() > 1 {
            problems.push(format!("term {term} had more than one leader: {who:?}"));
        }
    }
    let mut by_received: Vec<&ReadySample> = samples.iter().collect();
    by_received.sort_by_key(|s| s.received);
    let mut by_sent: Vec<&ReadySample> = samples.iter().collect();
    by_sent.sort_by_key(|s| s.sent);
    let mut newest: Option<&ReadySample> = None;
    let mut arrived = by_received.iter().peekable();
    for s in by_sent {
        while let Some(a) = arrived.next_if(|a| a.received < s.sent) {
            if newest.is_none_or(|n| a.term > n.term) {
                newest = Some(a);
            }
        }
        if let Some(n) = newest.filter(|n| n.term > s.term) {
            problems.push(format!(
                "{} was Ready in term {} after {} had been seen Ready in term {} (asked at {}, \
                 the newer answer received at {}; compare the node logs)",
                s.node,
                s.term,
                n.node,
                n.term,
                wall_clock(s.sent),
                wall_clock(n.received)
            ));
        }
    }
    problems
}

/// The UTC time (to the millisecond) of `at`, to find an instant in the nodes' logs.
fn wall_clock(at: Instant) -> String {
    let ago = Instant::now().saturating_duration_since(at);
    humantime::format_rfc3339_millis(std::time::SystemTime::now() - ago).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(offset: u64, term: u64, message: &str) -> TailEntry {
        TailEntry {
            offset,
            term,
            message: Some(message.to_string()),
            message_base64: None,
        }
    }

    fn ack(producer: &str, seq: u64, count: u64, first_offset: u64, term: u64, leader: &str) -> TimedAck {
        TimedAck {
            producer: producer.into(),
            at: Instant::now(),
            ack: Ack {
                seq,
                count,
                first_offset,
                last_offset: first_offset + count - 1,
                term,
                duplicate: false,
                leader: leader.into(),
            },
        }
    }

    /// A log holding every acknowledged message once, in order, on every node, passes; a node
    /// missing one, a second copy, a message out of order, a term going back and two logs that
    /// differ are each reported.
    #[test]
    fn logs_loss_duplicates_order_terms_agreement() {
        let good = || vec![entry(0, 1, "a 0"), entry(1, 1, "a 1"), entry(2, 2, "b 0")];
        let acks = vec![ack("a", 0, 2, 0, 1, "x"), ack("b", 0, 1, 2, 2, "y")];
        let v = check_logs(&[("n0".into(), good()), ("n1".into(), good())], &acks);
        assert!(
            v.lost.is_empty() && v.duplicated.is_empty() && v.problems.is_empty(),
            "{v:?}"
        );

        let mut short = good();
        short.pop();
        let v = check_logs(&[("n0".into(), good()), ("n1".into(), short)], &acks);
        assert_eq!(v.lost, BTreeSet::from([("b".to_string(), 0)]));
        assert!(v.problems.is_empty(), "a shorter log is still a prefix: {v:?}");

        let twice = vec![entry(0, 1, "a 0"), entry(1, 1, "a 1"), entry(2, 2, "a 1")];
        let v = check_logs(&[("n0".into(), twice)], &acks[..1]);
        assert_eq!(v.duplicated, BTreeSet::from([("a".to_string(), 1)]));

        let swapped = vec![entry(0, 1, "a 1"), entry(1, 1, "a 0")];
        let v = check_logs(&[("n0".into(), swapped)], &[]);
        assert_eq!(v.problems.len(), 1, "{v:?}");
        assert!(v.problems[0].contains("seq 0 at offset 1 after seq 1"), "{v:?}");

        let back = vec![entry(0, 2, "a 0"), entry(1, 1, "a 1")];
        let v = check_logs(&[("n0".into(), back)], &[]);
        assert!(v.problems[0].contains("term 1 at offset 1 after term 2"), "{v:?}");

        let other = vec![entry(0, 1, "a 0"), entry(1, 1, "a 1"), entry(2, 3, "c 0")];
        let v = check_logs(&[("n0".into(), good()), ("n1".into(), other)], &[]);
        assert!(
            v.problems.iter().any(|p| p.contains("differ at entry #2")),
            "{v:?}"
        );
    }

    /// One node per term and leaders seen in increasing terms pass; two nodes in one term (by
    /// readiness or acknowledgement) and an old leader Ready after a newer one fail.
    #[test]
    fn leadership_one_node_per_term_and_no_stale_leader() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ready = |node: &str, term: u64, sent: u64, received: u64| ReadySample {
            node: node.into(),
            term,
            sent: at(sent),
            received: at(received),
        };
        let handover = vec![ready("x", 1, 0, 5), ready("x", 1, 10, 15), ready("y", 2, 20, 25)];
        let acks = vec![ack("a", 0, 1, 0, 1, "x/"), ack("a", 1, 1, 1, 2, "y")];
        assert!(check_leadership(&handover, &acks).is_empty());
        // Answers that overlap in time say nothing about order: not a violation.
        let overlapping = vec![ready("y", 2, 0, 30), ready("x", 1, 10, 20)];
        assert!(check_leadership(&overlapping, &[]).is_empty());

        let shared_term = vec![ready("x", 1, 0, 5), ready("y", 1, 10, 15)];
        assert_eq!(check_leadership(&shared_term, &[]).len(), 1);
        let acked_by_two = vec![ack("a", 0, 1, 0, 1, "x"), ack("a", 1, 1, 1, 1, "y")];
        assert_eq!(check_leadership(&[], &acked_by_two).len(), 1);

        let stale = vec![ready("y", 2, 0, 5), ready("x", 1, 10, 15)];
        let problems = check_leadership(&stale, &[]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("x was Ready in term 1 after y"),
            "{problems:?}"
        );
    }
}
