//! The follower's truncation rule: truncation by epoch (Kafka KIP-101, iterated as in KIP-279),
//! never to the high watermark. A pure function from what the follower knows of its own log and
//! the leader's answer to "where does term T end" to the next step; the fetch loop (to come)
//! performs the steps. It never truncates below the follower's high watermark: it refuses and
//! says why instead (research rule 16, Redpanda #16475).
//!
//! # Protocol
//! [`first_step`] asks about the follower's last term. For each answer, [`decide`] either finds
//! the divergence point (a term both logs hold ends, in one of them, there), or, when the leader
//! answered with a term the follower does not hold, asks again about the follower's largest term
//! below it. After a [`Decision::Truncate`] the follower starts over with [`first_step`]; it is
//! done at [`Decision::FetchFrom`]. Every step either lowers the term asked or the log end, so
//! the loop ends.
//!
//! # Why the divergence point is right
//! Two logs that hold a record of the same term at the same offset agree on every record up to
//! it (the term's leader wrote it, and a node appends a term's records only as its leader or
//! after truncating to agree with it). The leader answers with the largest term `t` it holds at
//! or below the term asked, and where `t` ends in its log; the follower holds no record of the
//! terms above `t` that it asked about, so the records of those terms are not the leader's. If the
//! follower holds `t` too, both logs agree up to where `t` ends in the shorter of the two and
//! differ right after: that is the divergence point. If it does not, the follower's records of
//! terms above its largest term below `t` are not the leader's either, and it asks about that
//! term.

use crate::log::{Epoch, EpochCache};

/// What the follower knows about its own log when it checks it against a (new) leader.
#[derive(Debug, Clone, Copy)]
pub struct FollowerLog<'a> {
    /// The follower's epoch cache (term → first offset); entries at or past `log_end` are ignored.
    pub epochs: &'a EpochCache,
    /// First retained offset: nothing below it can be truncated (retention deleted it).
    pub log_start: u64,
    /// One past the follower's last durable record.
    pub log_end: u64,
    /// The highest high watermark the follower has learned, and may have let readers see: every
    /// record below it is committed and must never be removed.
    pub high_watermark: u64,
}

/// The next step of the follower, from [`first_step`] or [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Drop every record at this offset and above (`LogStore::truncate_suffix`), then start over
    /// with [`first_step`].
    Truncate(u64),
    /// Ask the leader where this term ends (`LogStore::end_offset_for` on the leader), then call
    /// [`decide`] with this term and the answer. First the follower's last term, then lower ones.
    AskAgain(u64),
    /// The follower's log is a prefix of the leader's: fetch from this offset (its log end).
    FetchFrom(u64),
    /// Stop replicating and report the reason: going on would remove committed records or
    /// needs what this follower cannot do alone.
    Refuse(Refusal),
}

/// Why the follower stops instead of truncating.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The logs diverge below the follower's high watermark: records readers may have seen would
    /// be removed. Only possible when the leader lacks committed records (an unclean election,
    /// lost disks); an operator must decide.
    #[error(
        "the log diverges from the leader's at offset {divergence}, below the high watermark \
         {high_watermark} that readers may have seen: refusing to remove committed records"
    )]
    BelowHighWatermark {
        /// The first offset where the logs differ.
        divergence: u64,
        /// The follower's high watermark.
        high_watermark: u64,
    },
    /// The logs diverge before the follower's first retained offset: every retained record
    /// differs from the leader's, and the log must be emptied and fetched again.
    #[error(
        "the log diverges from the leader's at offset {divergence}, before its first retained \
         offset {log_start}: empty the log and fetch it again"
    )]
    BeforeLogStart {
        /// The first offset where the logs differ.
        divergence: u64,
        /// The follower's first retained offset.
        log_start: u64,
    },
    /// The leader answered with a term above the one asked: it is not following the protocol.
    #[error("asked where term {asked} ends, the leader answered with term {answered}")]
    AnswerAboveQuestion {
        /// The term asked about.
        asked: u64,
        /// The term in the answer.
        answered: u64,
    },
}

impl FollowerLog<'_> {
    /// The cache entries describing the log (`start < log_end`).
    fn known(&self) -> &[Epoch] {
        let all = self.epochs.epochs();
        &all[..all.partition_point(|e| e.start < self.log_end)]
    }

    /// The step for a log that diverges from the leader's at `divergence`.
    fn truncate_to(&self, divergence: u64) -> Decision {
        if divergence >= self.log_end {
            Decision::FetchFrom(self.log_end)
        } else if divergence < self.high_watermark {
            Decision::Refuse(Refusal::BelowHighWatermark {
                divergence,
                high_watermark: self.high_watermark,
            })
        } else if divergence < self.log_start {
            Decision::Refuse(Refusal::BeforeLogStart {
                divergence,
                log_start: self.log_start,
            })
        } else {
            Decision::Truncate(divergence)
        }
    }
}

/// The first step against a (new) leader: ask where the follower's last term ends, or, for a log
/// that never held a record, fetch from its end.
pub fn first_step(follower: &FollowerLog<'_>) -> Decision {
    match follower.known().last() {
        Some(last) => Decision::AskAgain(last.term),
        None => Decision::FetchFrom(follower.log_end),
    }
}

/// The next step after the leader answered `answer` (its `end_offset_for(asked)`: the largest
/// term it holds at or below `asked` and that term's end, or `None` when it never held a record)
/// to a question about `asked`, a term from [`first_step`] or [`Decision::AskAgain`] asked of the
/// same leader with the follower's log unchanged since.
pub fn decide(follower: &FollowerLog<'_>, asked: u64, answer: Option<(u64, u64)>) -> Decision {
    let known = follower.known();
    let Some(first) = known.first() else {
        return Decision::FetchFrom(follower.log_end);
    };
    let Some((term, leader_end)) = answer else {
        // The leader never held a record: none of the follower's is the leader's.
        return follower.truncate_to(first.start);
    };
    if term > asked {
        return Decision::Refuse(Refusal::AnswerAboveQuestion {
            asked,
            answered: term,
        });
    }
    // The follower's largest term at or below the leader's.
    let below = known.partition_point(|e| e.term <= term);
    let Some(i) = below.checked_sub(1) else {
        // Every record the follower holds is of a term above the leader's answer.
        return follower.truncate_to(first.start);
    };
    if known[i].term == term {
        let follower_end = known.get(i + 1).map_or(follower.log_end, |next| next.start);
        follower.truncate_to(leader_end.min(follower_end))
    } else {
        Decision::AskAgain(known[i].term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache from `(term, start)` pairs.
    fn cache(pairs: &[(u64, u64)]) -> EpochCache {
        EpochCache::from_epochs(pairs.iter().map(|&(term, start)| Epoch { term, start }).collect())
            .expect("ordered")
    }

    fn follower(epochs: &EpochCache, log_end: u64, high_watermark: u64) -> FollowerLog<'_> {
        FollowerLog {
            epochs,
            log_start: 0,
            log_end,
            high_watermark,
        }
    }

    /// The same last term: a follower behind the leader fetches on; one ahead of where the
    /// leader's copy of the term ends truncates to there.
    #[test]
    fn same_last_term() {
        let f = cache(&[(1, 0), (4, 10)]);
        let fl = follower(&f, 15, 12);
        assert_eq!(first_step(&fl), Decision::AskAgain(4));
        assert_eq!(decide(&fl, 4, Some((4, 20))), Decision::FetchFrom(15));
        assert_eq!(decide(&fl, 4, Some((4, 13))), Decision::Truncate(13));
    }

    /// KIP-101: a follower with uncommitted records of a term the new leader never saw truncates
    /// to where the leader's previous term ends, not to its high watermark.
    #[test]
    fn kip_101_divergent_suffix() {
        let f = cache(&[(1, 0), (2, 10)]); // term 2 (offsets 10..14) was never committed
        let leader = cache(&[(1, 0), (3, 12)]);
        let fl = follower(&f, 14, 10);
        let answer = leader.end_offset_for(2, 20);
        assert_eq!(answer, Some((1, 12)));
        assert_eq!(decide(&fl, 2, answer), Decision::Truncate(10));
    }

    /// KIP-279: the leader answers with a term the follower does not hold; the follower asks
    /// again about its largest term below it, then truncates to the exact divergence point.
    #[test]
    fn kip_279_asks_again() {
        let f = cache(&[(1, 0), (3, 5), (5, 8)]);
        let leader = cache(&[(1, 0), (4, 6)]);
        let fl = follower(&f, 11, 4);
        assert_eq!(decide(&fl, 5, leader.end_offset_for(5, 9)), Decision::AskAgain(3));
        assert_eq!(leader.end_offset_for(3, 9), Some((1, 6)));
        assert_eq!(decide(&fl, 3, leader.end_offset_for(3, 9)), Decision::Truncate(5));
    }

    /// Never below the high watermark: the rule stops and says where the logs diverge.
    #[test]
    fn refuses_below_the_high_watermark() {
        let f = cache(&[(1, 0), (2, 10)]);
        let fl = follower(&f, 14, 12);
        let refused = decide(&fl, 2, Some((1, 10)));
        assert_eq!(
            refused,
            Decision::Refuse(Refusal::BelowHighWatermark {
                divergence: 10,
                high_watermark: 12
            })
        );
        // A high watermark exactly at the divergence point removes nothing committed.
        assert_eq!(
            decide(&follower(&f, 14, 10), 2, Some((1, 10))),
            Decision::Truncate(10)
        );
    }

    /// A leader that never held a record: every follower record goes, unless committed.
    #[test]
    fn empty_leader() {
        let f = cache(&[(2, 0)]);
        assert_eq!(decide(&follower(&f, 5, 0), 2, None), Decision::Truncate(0));
        assert!(matches!(
            decide(&follower(&f, 5, 3), 2, None),
            Decision::Refuse(Refusal::BelowHighWatermark { divergence: 0, .. })
        ));
    }

    /// Every follower term above the leader's answer: truncate to the log's start, or refuse
    /// when the divergent term began before it (retention).
    #[test]
    fn all_terms_above_the_answer() {
        let f = cache(&[(5, 0), (6, 3)]);
        assert_eq!(
            decide(&follower(&f, 6, 0), 6, Some((2, 9))),
            Decision::Truncate(0)
        );
        let after_retention = cache(&[(6, 3)]);
        let trimmed = FollowerLog {
            epochs: &after_retention,
            log_start: 4,
            log_end: 6,
            high_watermark: 0,
        };
        assert_eq!(
            decide(&trimmed, 6, Some((2, 9))),
            Decision::Refuse(Refusal::BeforeLogStart {
                divergence: 3,
                log_start: 4
            })
        );
    }

    /// An empty follower fetches at once; a leader answering above the question is refused.
    #[test]
    fn empty_follower_and_protocol_errors() {
        let empty = EpochCache::new();
        assert_eq!(first_step(&follower(&empty, 0, 0)), Decision::FetchFrom(0));
        let f = cache(&[(1, 0)]);
        assert_eq!(
            decide(&follower(&f, 3, 0), 1, Some((2, 3))),
            Decision::Refuse(Refusal::AnswerAboveQuestion {
                asked: 1,
                answered: 2
            })
        );
        // A cache entry past the log end (a first record never written) is not a term it holds.
        let phantom = cache(&[(1, 0), (7, 3)]);
        assert_eq!(first_step(&follower(&phantom, 3, 0)), Decision::AskAgain(1));
    }
}
