//! Property test of the follower's truncation rule (`simpleloggers::replication::truncation`)
//! against a model cluster: random histories of appends, partial replication, commits, ISR
//! changes and elections (with skipped terms) leave followers with divergent suffixes; applying
//! the rule against the leader's real epoch cache must make each follower's log a prefix of the
//! leader's, removing exactly the records the leader does not hold and nothing committed.

use proptest::prelude::*;
use simpleloggers::{
    log::EpochCache,
    replication::{decide, first_step, Decision, FollowerLog, Refusal},
};

/// A model record: the term it was written in and a unique id (equal ids = the same record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    term: u64,
    id: u64,
}

/// One node of the model: its log, its epoch cache (the real type, kept as the store keeps it)
/// and the high watermark it has learned.
#[derive(Debug, Clone, Default)]
struct Node {
    log: Vec<Rec>,
    epochs: EpochCache,
    hw: u64,
}

impl Node {
    fn len(&self) -> u64 {
        self.log.len() as u64
    }

    fn append(&mut self, rec: Rec) {
        self.epochs.record(rec.term, self.len());
        self.log.push(rec);
    }

    fn truncate(&mut self, to: u64) {
        self.log.truncate(to as usize);
        self.epochs.truncate_from(to);
    }

    fn view(&self) -> FollowerLog<'_> {
        FollowerLog {
            epochs: &self.epochs,
            log_start: 0,
            log_end: self.len(),
            high_watermark: self.hw,
        }
    }
}

/// Length of the longest common prefix of two logs.
fn lcp(a: &[Rec], b: &[Rec]) -> u64 {
    a.iter().zip(b).take_while(|(x, y)| x == y).count() as u64
}

/// How a follower's run of the rule against the leader ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// It reached `FetchFrom`: its log is now a prefix of the leader's.
    Fetching,
    /// It refused to go below its high watermark.
    Refused,
}

/// One step of a history.
#[derive(Debug, Clone)]
enum Op {
    /// The leader appends this many records in its term.
    Append(u8),
    /// A follower runs the rule, then copies a fraction of what it lacks.
    Replicate { node: usize, permille: u16 },
    /// The high watermark moves up by a fraction of what the ISR allows.
    Commit { permille: u16 },
    /// A follower leaves the ISR.
    Shrink(usize),
    /// A caught-up follower rejoins the ISR.
    Expand(usize),
    /// A node becomes leader with a higher term (skipping `skip` terms); only ISR members
    /// unless the history is unclean.
    Elect { node: usize, skip: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..5).prop_map(Op::Append),
        3 => (0usize..8, 0u16..=1000).prop_map(|(node, permille)| Op::Replicate { node, permille }),
        2 => (0u16..=1000).prop_map(|permille| Op::Commit { permille }),
        1 => (0usize..8).prop_map(Op::Shrink),
        1 => (0usize..8).prop_map(Op::Expand),
        4 => (0usize..8, 0u64..3).prop_map(|(node, skip)| Op::Elect { node, skip }),
    ]
}

/// The model cluster.
#[derive(Debug)]
struct Cluster {
    nodes: Vec<Node>,
    isr: Vec<bool>,
    leader: usize,
    term: u64,
    /// The committed prefix: every record below `committed.len()` that readers may have seen.
    committed: Vec<Rec>,
    next_id: u64,
    /// Elections may pick a node outside the ISR (which can lack committed records).
    unclean: bool,
}

impl Cluster {
    fn new(n: usize, unclean: bool) -> Cluster {
        Cluster {
            nodes: vec![Node::default(); n],
            isr: vec![true; n],
            leader: 0,
            term: 1,
            committed: Vec::new(),
            next_id: 0,
            unclean,
        }
    }

    /// Run the rule for follower `f` against the leader, asserting every step.
    fn sync(&mut self, f: usize) -> Outcome {
        let leader = self.nodes[self.leader].clone();
        let node = &mut self.nodes[f];
        let initial = node.log.clone();
        let divergence = lcp(&initial, &leader.log);
        let committed = self.committed.len() as u64;
        let mut decision = first_step(&node.view());
        let mut truncations = 0;
        for _ in 0..200 {
            match decision {
                Decision::AskAgain(term) => {
                    let answer = leader.epochs.end_offset_for(term, leader.len());
                    decision = decide(&node.view(), term, answer);
                }
                Decision::Truncate(to) => {
                    assert!(to < node.len(), "truncate to {to} of a log of {}", node.len());
                    assert!(
                        to >= node.hw,
                        "truncate to {to} below the high watermark {}",
                        node.hw
                    );
                    assert!(
                        to >= divergence,
                        "truncate to {to} removes records the leader holds (they agree up to {divergence})"
                    );
                    node.truncate(to);
                    truncations += 1;
                    assert_eq!(truncations, 1, "one truncation, straight to the divergence point");
                    decision = first_step(&node.view());
                }
                Decision::FetchFrom(from) => {
                    assert_eq!(from, node.len());
                    assert_eq!(
                        node.len(),
                        divergence,
                        "truncated exactly to the divergence point"
                    );
                    assert_eq!(
                        node.log[..],
                        leader.log[..node.log.len()],
                        "a prefix of the leader's log"
                    );
                    // Every committed record the follower held is still there.
                    for (o, rec) in initial.iter().enumerate().take(committed as usize) {
                        if self.committed[o] == *rec {
                            assert_eq!(node.log.get(o), Some(rec), "committed offset {o} removed");
                        }
                    }
                    return Outcome::Fetching;
                }
                Decision::Refuse(Refusal::BelowHighWatermark {
                    divergence: at,
                    high_watermark,
                }) => {
                    assert!(self.unclean, "refused in a clean history: {decision:?}");
                    assert_eq!(at, divergence, "the refusal names the divergence point");
                    assert_eq!(high_watermark, node.hw);
                    assert!(at < node.hw);
                    assert_eq!(node.log, initial, "nothing removed before refusing");
                    return Outcome::Refused;
                }
                Decision::Refuse(other) => panic!("unexpected refusal: {other}"),
            }
        }
        panic!("the rule did not settle in 200 steps");
    }

    fn apply(&mut self, op: Op) {
        let n = self.nodes.len();
        match op {
            Op::Append(k) => {
                for _ in 0..k {
                    let rec = Rec {
                        term: self.term,
                        id: self.next_id,
                    };
                    self.next_id += 1;
                    self.nodes[self.leader].append(rec);
                }
            }
            Op::Replicate { node, permille } => {
                let f = node % n;
                if f == self.leader || self.sync(f) == Outcome::Refused {
                    return;
                }
                let leader = &self.nodes[self.leader].log;
                let have = self.nodes[f].log.len();
                let take = (leader.len() - have) * permille as usize / 1000;
                let recs: Vec<Rec> = leader[have..have + take].to_vec();
                let follower = &mut self.nodes[f];
                for rec in recs {
                    follower.append(rec);
                }
                // The leader's answer carries its high watermark; the follower keeps the highest.
                let hw = (self.committed.len() as u64).min(follower.len());
                follower.hw = follower.hw.max(hw);
            }
            Op::Commit { permille } => {
                let leader = &self.nodes[self.leader].log;
                let allowed = (0..n)
                    .filter(|&i| self.isr[i])
                    .map(|i| lcp(&self.nodes[i].log, leader))
                    .min()
                    .unwrap_or(0) as usize;
                let committed = self.committed.len();
                if !self.unclean {
                    assert!(allowed >= committed, "an ISR member lacks committed records");
                }
                if allowed > committed {
                    let to = committed + (allowed - committed) * permille as usize / 1000;
                    self.committed = leader[..to].to_vec();
                    let hw = self.committed.len() as u64;
                    let l = &mut self.nodes[self.leader];
                    l.hw = l.hw.max(hw);
                }
            }
            Op::Shrink(node) => {
                let f = node % n;
                if f != self.leader {
                    self.isr[f] = false;
                }
            }
            Op::Expand(node) => {
                let f = node % n;
                let leader = &self.nodes[self.leader].log;
                let log = &self.nodes[f].log;
                if lcp(log, leader) == log.len() as u64 && log.len() >= self.committed.len() {
                    self.isr[f] = true;
                }
            }
            Op::Elect { node, skip } => {
                let f = node % n;
                if !self.isr[f] && !self.unclean {
                    return;
                }
                self.leader = f;
                self.isr[f] = true;
                self.term += 1 + skip;
                if self.unclean {
                    // What the new leader lacks of the committed prefix is lost.
                    let kept = lcp(&self.nodes[f].log, &self.committed) as usize;
                    self.committed.truncate(kept);
                } else {
                    let kept = lcp(&self.nodes[f].log, &self.committed) as usize;
                    assert_eq!(
                        kept,
                        self.committed.len(),
                        "an ISR member lacks committed records"
                    );
                }
            }
        }
    }
}

/// Run a history, then bring every follower to the leader with the rule; return how each ended.
fn run(nodes: usize, unclean: bool, ops: Vec<Op>) -> Vec<Outcome> {
    let mut c = Cluster::new(nodes, unclean);
    for op in ops {
        c.apply(op);
    }
    let leader = c.leader;
    (0..nodes).filter(|&f| f != leader).map(|f| c.sync(f)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Clean histories (only ISR members are elected): every follower ends as a prefix of the
    /// leader's log, truncated exactly to where they diverge, never below its high watermark,
    /// and the rule never refuses.
    #[test]
    fn followers_become_prefixes_of_the_leader(
        nodes in 2usize..5,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let outcomes = run(nodes, false, ops);
        prop_assert!(outcomes.iter().all(|o| *o == Outcome::Fetching));
    }

    /// Unclean histories (any node may be elected, losing committed records): the rule still
    /// never removes a record below a follower's high watermark; it either truncates exactly to
    /// the divergence point or refuses, naming it.
    #[test]
    fn unclean_leaders_are_refused_not_followed_below_the_high_watermark(
        nodes in 2usize..5,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(nodes, true, ops);
    }
}

/// KIP-279's double failover in the model: the follower led a term whose records the next
/// leader never got, then led again above that leader's term; the leader answers with its own
/// term in between, which the follower does not hold, so it must ask again rather than trust
/// where its own term ends.
#[test]
fn double_failover_asks_again() {
    let ops = vec![
        Op::Append(2),
        Op::Replicate {
            node: 1,
            permille: 1000,
        },
        Op::Commit { permille: 1000 },
        Op::Append(3), // term 1, on node 0 only
        Op::Elect { node: 1, skip: 0 },
        Op::Append(2), // term 2 at offsets 2..4, on node 1 only
        Op::Elect { node: 0, skip: 0 },
        Op::Append(1), // term 3 at offset 5, on node 0 only
        Op::Elect { node: 1, skip: 0 },
    ];
    // Node 0 asks about term 3; node 1 answers (2, 4); node 0 lacks term 2, asks about term 1,
    // gets (1, 2) and truncates to 2 at once (`sync` asserts the exact point and a single
    // truncation; trusting its own end of term 1 would first truncate to 4 only).
    assert_eq!(run(2, false, ops), vec![Outcome::Fetching]);
}

/// The unclean model does reach the refusal (so the property above is not vacuous): a follower
/// that learned a high watermark from a leader which then lost to a node without those records.
#[test]
fn an_unclean_leader_is_refused() {
    let ops = vec![
        Op::Append(3),
        Op::Replicate {
            node: 1,
            permille: 1000,
        },
        Op::Shrink(2),
        Op::Commit { permille: 1000 },
        Op::Replicate {
            node: 1,
            permille: 1000,
        },
        Op::Elect { node: 2, skip: 0 },
        Op::Append(2),
    ];
    // Nodes 0 (the old leader) and 1 both learned a high watermark of 3 that node 2 lacks.
    assert_eq!(run(3, true, ops), vec![Outcome::Refused, Outcome::Refused]);
}
