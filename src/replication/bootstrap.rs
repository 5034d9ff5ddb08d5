//! Who may contend for the lock, as a pure function of what Consul holds: the normal case (the
//! ISR key names this node), cluster start and Consul state loss (no ISR key: decided from the
//! nodes' reports), `--unclean-leader-election`, and a node outside the ISR, which never
//! contends. The elector feeds it one consistent read and sends the transaction it plans
//! (`docs/replication.md`, "Only in-sync replicas become leader").

use serde::{Deserialize, Serialize};

use super::isr::{IsrRecord, IsrState, Member, ReplicationKeys, Report};
use crate::consul::TxnOp;

/// The situation the election is in, as this node sees it (published in
/// [`LeaderState::case`](crate::election::LeaderState::case), `/api/v1/status` and the dashboard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElectionCase {
    /// The ISR key exists and names this node: it may contend with the normal transaction.
    Normal,
    /// No ISR key and only empty logs reported: the cluster is new.
    ClusterStart,
    /// No ISR key, some log holds records, and every replica reported: the most complete one
    /// leads. (Not in the spec's list, which has only the waiting half of this case.)
    StateLoss,
    /// No ISR key and some log holds records (Consul lost its state): nobody leads until every
    /// replica reported.
    StateLossWaiting {
        /// How many replicas reported.
        reported: u32,
        /// The replicas that did not, when their names can be inferred (`<stem><ordinal>`, as
        /// StatefulSet pods and local clusters are named); otherwise empty.
        missing: Vec<String>,
    },
    /// `--unclean-leader-election`: the most complete reporter present leads at once; acknowledged
    /// messages may be lost.
    Unclean,
    /// The ISR key does not name this node (by name and incarnation): it follows, never contends.
    NotInIsr,
}

impl ElectionCase {
    /// The case's name as serialized (`state_loss_waiting` without its fields).
    pub fn as_str(&self) -> &'static str {
        match self {
            ElectionCase::Normal => "normal",
            ElectionCase::ClusterStart => "cluster_start",
            ElectionCase::StateLoss => "state_loss",
            ElectionCase::StateLossWaiting { .. } => "state_loss_waiting",
            ElectionCase::Unclean => "unclean",
            ElectionCase::NotInIsr => "not_in_isr",
        }
    }
}

/// The ISR key as read.
#[derive(Clone, Copy, Debug)]
pub enum IsrView<'a> {
    /// No key: cluster start or Consul state loss.
    Absent,
    /// The key and its `ModifyIndex`.
    Present(&'a IsrRecord),
    /// A key whose value is not an ISR: nobody may contend until an operator fixes it.
    Unreadable,
}

/// The term key as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermView {
    /// No key (a new cluster, or Consul lost its state).
    Absent,
    /// The last term handed out and the key's `ModifyIndex`.
    Present {
        /// The term in it.
        term: u64,
        /// Its `ModifyIndex` (for `cas`).
        index: u64,
    },
    /// A key whose value is not a term record: a term could be handed out twice, so nobody
    /// contends until an operator fixes it.
    Unreadable,
}

/// Everything the decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// This node: its name and its log's incarnation.
    pub own: &'a Member,
    /// The term of this node's last record now (`None`: empty log).
    pub own_last_term: Option<u64>,
    /// The ISR key.
    pub isr: IsrView<'a>,
    /// The term key.
    pub term_key: TermView,
    /// The live reports (keys held by a session), this node's own among them once written.
    pub reports: &'a [Report],
    /// `--replicas`.
    pub replicas: u32,
    /// `--min-insync`.
    pub min_insync: u32,
    /// `--unclean-leader-election`.
    pub unclean: bool,
}

/// What this node should do while the lock is free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Contend now with [`Plan::ops`].
    Contend(Plan),
    /// Another node is the one to contend (cluster start, state loss, unclean); follow it.
    Defer {
        /// Its name.
        contender: String,
        /// The case.
        case: ElectionCase,
    },
    /// Nobody may contend yet (or this node may never, while outside the ISR).
    Wait {
        /// The case.
        case: ElectionCase,
        /// Why, for logs and status.
        reason: String,
    },
}

impl Decision {
    /// The case the decision was made in.
    pub fn case(&self) -> &ElectionCase {
        match self {
            Decision::Contend(plan) => &plan.case,
            Decision::Defer { case, .. } | Decision::Wait { case, .. } => case,
        }
    }
}

/// One contend transaction, fully determined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The case it is made in.
    pub case: ElectionCase,
    /// The term the leadership gets.
    pub term: u64,
    /// Normal case: the ISR key's index to `check-index`; `None`: `check-not-exists(isr)`.
    pub isr_index: Option<u64>,
    /// The term key's index to `cas`; `None`: `check-not-exists(term)` and `set`.
    pub term_index: Option<u64>,
    /// Cluster start, state loss, unclean: the ISR to create (this node alone, in `term`).
    pub new_isr: Option<IsrState>,
}

impl Plan {
    /// The transaction: `[check-index(isr, i) | check-not-exists(isr), lock(E, session, leader
    /// record), cas(term, j, t) | check-not-exists(term) + set(term, t), [set(isr, {self})]]`.
    /// `leader_value` is the leader record, `term_value` the [`TermRecord`](super::isr::TermRecord).
    ///
    /// # Errors
    /// The new ISR cannot be encoded (never for a well-formed state).
    pub fn ops(
        &self,
        keys: &ReplicationKeys,
        session: &str,
        leader_value: Vec<u8>,
        term_value: Vec<u8>,
    ) -> Result<Vec<TxnOp>, serde_json::Error> {
        let mut ops = vec![
            match self.isr_index {
                Some(index) => TxnOp::CheckIndex {
                    key: keys.isr.clone(),
                    index,
                },
                None => TxnOp::CheckNotExists {
                    key: keys.isr.clone(),
                },
            },
            TxnOp::Lock {
                key: keys.election.clone(),
                value: leader_value,
                flags: 0,
                session: session.to_string(),
            },
        ];
        match self.term_index {
            Some(index) => ops.push(TxnOp::Cas {
                key: keys.term.clone(),
                value: term_value,
                flags: 0,
                index,
            }),
            None => {
                ops.push(TxnOp::CheckNotExists {
                    key: keys.term.clone(),
                });
                ops.push(TxnOp::Set {
                    key: keys.term.clone(),
                    value: term_value,
                    flags: 0,
                });
            }
        }
        if let Some(isr) = &self.new_isr {
            ops.push(TxnOp::Set {
                key: keys.isr.clone(),
                value: serde_json::to_vec(isr)?,
                flags: 0,
            });
        }
        Ok(ops)
    }
}

/// Decides whether this node contends, in which case and term (see the module doc).
///
/// - ISR key present: a member (name *and* incarnation) contends in
///   `max(own last term, term key, ISR term) + 1`; anyone else waits (`not_in_isr`).
/// - No ISR key, no report with records: once `replicas − min_insync + 1` replicas reported, the
///   smallest name contends (`cluster_start`).
/// - No ISR key, some report with records: once all `replicas` reported, the largest
///   `(last term, log end)` (ties: smallest name) contends (`state_loss`), above every reported term.
/// - `unclean`, when the above would wait: the most complete reporter present contends at once.
/// - An unreadable ISR or term key: nobody contends.
///
/// A node only contends on a report of its own with its current incarnation, so a stale report
/// (a previous process, an older disk) never elects it.
pub fn decide(input: &Inputs<'_>) -> Decision {
    let (term_key, term_index) = match input.term_key {
        TermView::Absent => (0, None),
        TermView::Present { term, index } => (term, Some(index)),
        TermView::Unreadable => {
            return Decision::Wait {
                case: match input.isr {
                    IsrView::Present(r) if r.state.contains(input.own) => ElectionCase::Normal,
                    IsrView::Present(_) | IsrView::Unreadable => ElectionCase::NotInIsr,
                    IsrView::Absent => ElectionCase::ClusterStart,
                },
                reason: "the term key holds no term record: nobody contends until it is fixed".into(),
            }
        }
    };
    let own_last = input.own_last_term.unwrap_or(0);
    let record = match input.isr {
        IsrView::Unreadable => {
            return Decision::Wait {
                case: ElectionCase::NotInIsr,
                reason: "the ISR key holds no in-sync set: nobody contends until it is fixed".into(),
            }
        }
        IsrView::Present(record) => record,
        IsrView::Absent => return decide_without_isr(input, own_last.max(term_key), term_index),
    };
    if !record.state.contains(input.own) {
        let names: Vec<String> = record.state.members.iter().map(|m| m.name.clone()).collect();
        return Decision::Wait {
            case: ElectionCase::NotInIsr,
            reason: format!(
                "{} (incarnation {}) is not in the in-sync set {names:?}: it follows and cannot be \
                 elected until it rejoins",
                input.own.name, input.own.incarnation
            ),
        };
    }
    Decision::Contend(Plan {
        case: ElectionCase::Normal,
        term: own_last.max(term_key).max(record.state.term) + 1,
        isr_index: Some(record.index),
        term_index,
        new_isr: None,
    })
}

/// The no-ISR-key half of [`decide`]; `floor` is the highest term known besides the reports.
fn decide_without_isr(input: &Inputs<'_>, floor: u64, term_index: Option<u64>) -> Decision {
    // One report per name (keys are per name, so duplicates only come from a caller's mistake).
    let mut reports: Vec<&Report> = Vec::new();
    for r in input.reports {
        if !reports.iter().any(|x| x.name == r.name) {
            reports.push(r);
        }
    }
    let reported = u32::try_from(reports.len()).unwrap_or(u32::MAX);
    let most_complete = || {
        reports.iter().copied().max_by(|a, b| {
            (a.last_term, a.log_end)
                .cmp(&(b.last_term, b.log_end))
                .then_with(|| b.name.cmp(&a.name))
        })
    };
    let (contender, case) = if reports.iter().all(|r| !r.has_records()) {
        let needed = input.replicas.saturating_sub(input.min_insync) + 1;
        if reported >= needed {
            let smallest = reports.iter().copied().min_by(|a, b| a.name.cmp(&b.name));
            (smallest, ElectionCase::ClusterStart)
        } else if input.unclean && reported > 0 {
            (most_complete(), ElectionCase::Unclean)
        } else {
            return Decision::Wait {
                case: ElectionCase::ClusterStart,
                reason: format!(
                    "cluster start: {reported} of the {needed} empty reports needed \
                     (--replicas {} − --min-insync {} + 1)",
                    input.replicas, input.min_insync
                ),
            };
        }
    } else if reported >= input.replicas {
        (most_complete(), ElectionCase::StateLoss)
    } else if input.unclean {
        (most_complete(), ElectionCase::Unclean)
    } else {
        let missing = infer_missing(&reports, input.replicas);
        let reason = if missing.is_empty() {
            format!(
                "Consul lost its state: waiting until all {} replicas reported ({reported} did)",
                input.replicas
            )
        } else {
            format!(
                "Consul lost its state: waiting until all {} replicas reported; missing {}",
                input.replicas,
                missing.join(", ")
            )
        };
        return Decision::Wait {
            case: ElectionCase::StateLossWaiting { reported, missing },
            reason,
        };
    };
    let Some(contender) = contender else {
        return Decision::Wait {
            case,
            reason: "no report to choose from".into(),
        };
    };
    if contender.name != input.own.name {
        return Decision::Defer {
            contender: contender.name.clone(),
            case,
        };
    }
    if contender.incarnation != input.own.incarnation {
        return Decision::Wait {
            case,
            reason: format!(
                "this node's report names incarnation {}, not its log's {}: waiting for it to be rewritten",
                contender.incarnation, input.own.incarnation
            ),
        };
    }
    let term = reports.iter().filter_map(|r| r.last_term).fold(floor, u64::max) + 1;
    Decision::Contend(Plan {
        case,
        term,
        isr_index: None,
        term_index,
        new_isr: Some(IsrState {
            term,
            leader: input.own.name.clone(),
            members: vec![input.own.clone()],
        }),
    })
}

/// The names of the replicas that did not report, when every reporter is named `<stem><ordinal>`
/// with one stem and ordinals below `replicas` (StatefulSet pods, `n0`.. in local clusters).
fn infer_missing(reports: &[&Report], replicas: u32) -> Vec<String> {
    let split = |name: &str| -> Option<(String, u32)> {
        let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (stem, ordinal) = name.split_at(name.len() - digits);
        let n: u32 = ordinal.parse().ok()?;
        (n.to_string() == ordinal).then(|| (stem.to_string(), n))
    };
    let mut stem: Option<String> = None;
    let mut seen = Vec::new();
    for r in reports {
        let Some((s, n)) = split(&r.name) else {
            return Vec::new();
        };
        if n >= replicas || stem.as_ref().is_some_and(|x| *x != s) {
            return Vec::new();
        }
        stem = Some(s);
        seen.push(n);
    }
    let Some(stem) = stem else {
        return Vec::new();
    };
    (0..replicas)
        .filter(|n| !seen.contains(n))
        .map(|n| format!("{stem}{n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            incarnation: format!("inc-{name}"),
        }
    }

    fn report(name: &str, last_term: Option<u64>, log_end: u64) -> Report {
        Report {
            name: name.into(),
            incarnation: format!("inc-{name}"),
            last_term,
            log_end,
            address: format!("{name}:1"),
        }
    }

    fn inputs<'a>(own: &'a Member, reports: &'a [Report], replicas: u32, min_insync: u32) -> Inputs<'a> {
        Inputs {
            own,
            own_last_term: None,
            isr: IsrView::Absent,
            term_key: TermView::Absent,
            reports,
            replicas,
            min_insync,
            unclean: false,
        }
    }

    /// A member of the ISR contends in the normal case, above the term key, its log and the ISR's
    /// term; a node with the right name but another incarnation does not.
    #[test]
    fn normal_and_not_in_isr() {
        let isr = IsrRecord {
            state: IsrState {
                term: 4,
                leader: "n0".into(),
                members: vec![member("n0"), member("n1")],
            },
            index: 17,
        };
        let own = member("n1");
        let mut input = inputs(&own, &[], 3, 2);
        input.isr = IsrView::Present(&isr);
        input.term_key = TermView::Present { term: 6, index: 9 };
        input.own_last_term = Some(5);
        assert_eq!(
            decide(&input),
            Decision::Contend(Plan {
                case: ElectionCase::Normal,
                term: 7,
                isr_index: Some(17),
                term_index: Some(9),
                new_isr: None,
            })
        );
        input.own_last_term = Some(8);
        assert!(matches!(decide(&input), Decision::Contend(Plan { term: 9, .. })));
        let reborn = Member {
            incarnation: "new-disk".into(),
            ..member("n1")
        };
        input.own = &reborn;
        let d = decide(&input);
        assert_eq!(d.case(), &ElectionCase::NotInIsr);
        assert!(matches!(d, Decision::Wait { ref reason, .. } if reason.contains("new-disk")));
        // The unclean flag does not override the ISR.
        input.unclean = true;
        assert_eq!(decide(&input).case(), &ElectionCase::NotInIsr);
    }

    /// Cluster start waits for `n − m + 1` empty reports, then the smallest name contends and
    /// creates the ISR of itself; the others defer to it.
    #[test]
    fn cluster_start() {
        let reports = [report("n2", None, 0), report("n1", None, 0)];
        let own = member("n1");
        let input = inputs(&own, &reports[..1], 3, 2);
        assert!(matches!(
            decide(&input),
            Decision::Wait { case: ElectionCase::ClusterStart, ref reason } if reason.contains("1 of the 2")
        ));
        let input = inputs(&own, &reports, 3, 2);
        let Decision::Contend(plan) = decide(&input) else {
            panic!("{:?}", decide(&input))
        };
        assert_eq!(
            (plan.case.clone(), plan.term, plan.isr_index),
            (ElectionCase::ClusterStart, 1, None)
        );
        assert_eq!(
            plan.new_isr,
            Some(IsrState {
                term: 1,
                leader: "n1".into(),
                members: vec![member("n1")]
            })
        );
        let n2 = member("n2");
        assert_eq!(
            decide(&inputs(&n2, &reports, 3, 2)),
            Decision::Defer {
                contender: "n1".into(),
                case: ElectionCase::ClusterStart
            }
        );
        // A single node starts alone.
        let n0 = member("n0");
        let alone = [report("n0", None, 0)];
        assert!(matches!(decide(&inputs(&n0, &alone, 1, 1)), Decision::Contend(_)));
    }

    /// State loss: nobody contends until every replica reported (the missing ones named), then
    /// the most complete does, above every reported term; unclean picks at once.
    #[test]
    fn state_loss_and_unclean() {
        let reports = [report("n0", Some(3), 10), report("n1", Some(4), 2)];
        let n1 = member("n1");
        let d = decide(&inputs(&n1, &reports, 3, 2));
        assert_eq!(
            d.case(),
            &ElectionCase::StateLossWaiting {
                reported: 2,
                missing: vec!["n2".into()]
            }
        );
        let mut input = inputs(&n1, &reports, 3, 2);
        input.unclean = true;
        let Decision::Contend(plan) = decide(&input) else {
            panic!("{:?}", decide(&input))
        };
        assert_eq!((plan.case, plan.term), (ElectionCase::Unclean, 5));
        let all = [
            report("n0", Some(3), 10),
            report("n1", Some(4), 2),
            report("n2", Some(4), 2),
        ];
        let Decision::Contend(plan) = decide(&inputs(&n1, &all, 3, 2)) else {
            panic!()
        };
        assert_eq!(
            (plan.case, plan.term),
            (ElectionCase::StateLoss, 5),
            "ties: smallest name"
        );
        let n0 = member("n0");
        assert_eq!(
            decide(&inputs(&n0, &all, 3, 2)),
            Decision::Defer {
                contender: "n1".into(),
                case: ElectionCase::StateLoss
            }
        );
        // An empty node among records is no cluster start.
        let mixed = [
            report("a", None, 0),
            report("b", None, 0),
            report("c", Some(1), 1),
        ];
        let a = member("a");
        assert!(matches!(
            decide(&inputs(&a, &mixed[..], 4, 2)),
            Decision::Wait { case: ElectionCase::StateLossWaiting { reported: 3, ref missing }, .. } if missing.is_empty()
        ));
    }

    /// A stale own report (another incarnation) never elects; unreadable keys stop everyone.
    #[test]
    fn stale_report_and_unreadable_keys() {
        let reports = [report("n0", None, 0)];
        let reborn = Member {
            incarnation: "other".into(),
            ..member("n0")
        };
        assert!(matches!(
            decide(&inputs(&reborn, &reports, 1, 1)),
            Decision::Wait {
                case: ElectionCase::ClusterStart,
                ..
            }
        ));
        let n0 = member("n0");
        let mut input = inputs(&n0, &reports, 1, 1);
        input.term_key = TermView::Unreadable;
        assert!(matches!(decide(&input), Decision::Wait { .. }));
        let mut input = inputs(&n0, &reports, 1, 1);
        input.isr = IsrView::Unreadable;
        assert!(matches!(
            decide(&input),
            Decision::Wait {
                case: ElectionCase::NotInIsr,
                ..
            }
        ));
    }

    /// The transaction has the spec's shape in both cases.
    #[test]
    fn ops_shape() {
        let keys = ReplicationKeys::new("E");
        let normal = Plan {
            case: ElectionCase::Normal,
            term: 3,
            isr_index: Some(5),
            term_index: Some(6),
            new_isr: None,
        };
        let ops = normal.ops(&keys, "s", b"L".to_vec(), b"T".to_vec()).unwrap();
        assert_eq!(
            ops,
            vec![
                TxnOp::CheckIndex {
                    key: "E/isr".into(),
                    index: 5
                },
                TxnOp::Lock {
                    key: "E".into(),
                    value: b"L".to_vec(),
                    flags: 0,
                    session: "s".into()
                },
                TxnOp::Cas {
                    key: "E/term".into(),
                    value: b"T".to_vec(),
                    flags: 0,
                    index: 6
                },
            ]
        );
        let start = Plan {
            case: ElectionCase::ClusterStart,
            term: 1,
            isr_index: None,
            term_index: None,
            new_isr: Some(IsrState {
                term: 1,
                leader: "a".into(),
                members: vec![member("a")],
            }),
        };
        let ops = start.ops(&keys, "s", b"L".to_vec(), b"T".to_vec()).unwrap();
        assert_eq!(ops.len(), 5);
        assert_eq!(ops[0], TxnOp::CheckNotExists { key: "E/isr".into() });
        assert_eq!(ops[2], TxnOp::CheckNotExists { key: "E/term".into() });
        assert!(matches!(&ops[3], TxnOp::Set { key, .. } if key == "E/term"));
        assert!(matches!(&ops[4], TxnOp::Set { key, value, .. } if key == "E/isr"
            && serde_json::from_slice::<IsrState>(value).unwrap().members == vec![member("a")]));
    }

    /// The case serializes as the spec spells it.
    #[test]
    fn case_json() {
        assert_eq!(
            serde_json::to_value(ElectionCase::NotInIsr).unwrap(),
            "not_in_isr"
        );
        assert_eq!(
            serde_json::to_value(ElectionCase::StateLossWaiting {
                reported: 1,
                missing: vec!["n1".into()]
            })
            .unwrap(),
            serde_json::json!({"state_loss_waiting": {"reported": 1, "missing": ["n1"]}})
        );
    }

    /// Missing names are inferred only from one `<stem><ordinal>` pattern.
    #[test]
    fn missing_names() {
        let r = |n: &str| report(n, Some(1), 1);
        let (a, b) = (r("pod-0"), r("pod-2"));
        assert_eq!(infer_missing(&[&a, &b], 4), vec!["pod-1", "pod-3"]);
        let c = r("other-1");
        assert!(infer_missing(&[&a, &c], 4).is_empty());
        let d = r("pod-07");
        assert!(infer_missing(&[&a, &d], 9).is_empty());
        let e = r("pod-5");
        assert!(
            infer_missing(&[&a, &e], 3).is_empty(),
            "ordinal beyond --replicas"
        );
    }

    /// A node's log as the property test draws it: `None` (not reporting), or (last term, end).
    type Drawn = Option<(Option<u64>, u64)>;

    fn drawn_log() -> impl Strategy<Value = Drawn> {
        prop_oneof![
            Just(None),
            Just(Some((None, 0))),
            (1u64..4, 1u64..4).prop_map(|(t, e)| Some((Some(t), e))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Without an ISR key, over every combination of reports, settings and term key: at most
        /// one node contends, every other defers to it or waits; the contender reported with its
        /// own incarnation; its term is above every reported term and the term key; cluster start
        /// happens only on enough empty reports, state loss only once all replicas reported and
        /// for the most complete one, unclean only when asked; the planned ISR is the contender.
        #[test]
        fn at_most_one_contender(
            logs in proptest::collection::vec(drawn_log(), 1..5),
            min_insync_pick in 0u32..4,
            unclean in any::<bool>(),
            term_key in proptest::option::of((0u64..6, 1u64..50)),
        ) {
            let replicas = logs.len() as u32;
            let min_insync = min_insync_pick % replicas + 1;
            let names: Vec<String> = (0..logs.len()).map(|i| format!("n{i}")).collect();
            let reports: Vec<Report> = logs
                .iter()
                .zip(&names)
                .filter_map(|(l, n)| l.map(|(t, e)| report(n, t, e)))
                .collect();
            let term_view = term_key.map_or(TermView::Absent, |(term, index)| TermView::Present { term, index });
            let decisions: Vec<Decision> = names
                .iter()
                .zip(&logs)
                .map(|(n, l)| {
                    let own = member(n);
                    decide(&Inputs {
                        own: &own,
                        own_last_term: l.and_then(|l| l.0),
                        isr: IsrView::Absent,
                        term_key: term_view,
                        reports: &reports,
                        replicas,
                        min_insync,
                        unclean,
                    })
                })
                .collect();
            let contenders: Vec<usize> = decisions
                .iter()
                .enumerate()
                .filter(|(_, d)| matches!(d, Decision::Contend(_)))
                .map(|(i, _)| i)
                .collect();
            prop_assert!(contenders.len() <= 1, "{decisions:?}");
            let any_records = reports.iter().any(Report::has_records);
            let empty_needed = replicas - min_insync + 1;
            let reported = reports.len() as u32;
            if let Some(&c) = contenders.first() {
                let Decision::Contend(plan) = &decisions[c] else { unreachable!() };
                prop_assert!(reports.iter().any(|r| r.name == names[c]), "only a reporter contends");
                let max_reported = reports.iter().filter_map(|r| r.last_term).max().unwrap_or(0);
                prop_assert!(plan.term > max_reported);
                prop_assert!(plan.term > term_key.map_or(0, |t| t.0));
                prop_assert_eq!(plan.term_index, term_key.map(|t| t.1));
                prop_assert_eq!(plan.isr_index, None);
                let isr = plan.new_isr.as_ref().unwrap();
                prop_assert_eq!(&isr.members, &vec![member(&names[c])]);
                prop_assert_eq!(isr.term, plan.term);
                match plan.case {
                    ElectionCase::ClusterStart => {
                        prop_assert!(!any_records && reported >= empty_needed);
                        prop_assert_eq!(&names[c], &reports.iter().map(|r| r.name.clone()).min().unwrap());
                    }
                    ElectionCase::StateLoss => prop_assert!(any_records && reported >= replicas),
                    ElectionCase::Unclean => prop_assert!(unclean),
                    ref other => prop_assert!(false, "unexpected case {other:?}"),
                }
                if matches!(plan.case, ElectionCase::StateLoss | ElectionCase::Unclean) {
                    let mine = reports.iter().find(|r| r.name == names[c]).unwrap();
                    prop_assert!(reports.iter().all(|r| (r.last_term, r.log_end) <= (mine.last_term, mine.log_end)));
                }
                for (i, d) in decisions.iter().enumerate().filter(|(i, _)| *i != c) {
                    prop_assert!(
                        matches!(d, Decision::Defer { contender, .. } if *contender == names[c]),
                        "n{i}: {d:?}"
                    );
                }
            } else {
                // Nobody contends: then the rules must really say wait.
                let clean_start = !any_records && reported >= empty_needed;
                let clean_loss = any_records && reported >= replicas;
                prop_assert!(!clean_start && !clean_loss && !(unclean && reported > 0), "{decisions:?}");
                if any_records {
                    for d in &decisions {
                        let waiting = matches!(
                            d.case(),
                            ElectionCase::StateLossWaiting { reported: r, .. } if *r == reported
                        );
                        prop_assert!(waiting, "{:?}", d);
                    }
                }
            }
        }

        /// With an ISR key, exactly its members (name and incarnation) contend, all in the normal
        /// case with a check of the key's index, whatever the reports and the unclean flag say.
        #[test]
        fn isr_decides_when_present(
            members in proptest::collection::btree_set(0usize..4, 1..4),
            own in 0usize..4,
            wiped in any::<bool>(),
            unclean in any::<bool>(),
            isr_term in 0u64..5,
            own_last in proptest::option::of(0u64..7),
        ) {
            let isr = IsrRecord {
                state: IsrState {
                    term: isr_term,
                    leader: format!("n{}", members.iter().next().unwrap()),
                    members: members.iter().map(|i| member(&format!("n{i}"))).collect(),
                },
                index: 42,
            };
            let mut me = member(&format!("n{own}"));
            if wiped {
                me.incarnation = "fresh".into();
            }
            let reports = [report(&me.name, None, 0)];
            let d = decide(&Inputs {
                own: &me,
                own_last_term: own_last,
                isr: IsrView::Present(&isr),
                term_key: TermView::Present { term: 2, index: 7 },
                reports: &reports,
                replicas: 4,
                min_insync: 1,
                unclean,
            });
            if members.contains(&own) && !wiped {
                let Decision::Contend(plan) = d else { panic!("{d:?}") };
                prop_assert_eq!(plan.case, ElectionCase::Normal);
                prop_assert_eq!(plan.isr_index, Some(42));
                prop_assert!(plan.term > 2 && plan.term > isr_term && plan.term > own_last.unwrap_or(0));
                prop_assert!(plan.new_isr.is_none());
            } else {
                prop_assert!(matches!(d, Decision::Wait { case: ElectionCase::NotInIsr, .. }), "{d:?}");
            }
        }
    }
}
