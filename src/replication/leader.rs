//! The leader's side of replication: per-follower progress (only from fetches that passed the
//! divergence check), and the decisions made from it: the high watermark (the smallest durable
//! log end over the ISR, moving only while the ISR has `--min-insync` members and only past this
//! term's term-start record), ISR shrink (a member not caught up for `--replica-lag-max`, never
//! below `--min-insync`) and expand (a follower caught up to the log end in this term), and write
//! admission. The decisions are pure functions over a [`View`], unit-tested below; [`run`] is the
//! loop that applies them while this node leads.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    isr::{IsrHandle, IsrRecord, IsrState, Member},
    Replication,
};
use crate::{
    consul::Backoff,
    election::{Elector, LeaderState, Role},
    shutdown::CancellationToken,
};

/// How often the leader re-evaluates lag when nothing else happens.
const TICK: Duration = Duration::from_millis(100);

/// What the leader knows of one follower in the current term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The follower's log incarnation, as its last checked fetch said.
    pub incarnation: String,
    /// `from` of its last checked fetch: it holds every record below it durably.
    pub durable_end: u64,
    /// When that fetch arrived.
    pub last_fetch: Instant,
    /// The last time it was caught up to the leader's log end in this term (`None`: not yet).
    pub caught_up: Option<Instant>,
    /// Arrival of the fetch before and the leader's log end then (Kafka's rule: a fetch from at
    /// least that end shows it was caught up at that time).
    previous: (Instant, u64),
}

impl Progress {
    /// Progress after a checked fetch from `from` arriving at `now`, when the leader's durable
    /// log end is `leader_end`. A new incarnation starts afresh.
    pub fn after_fetch(
        before: Option<&Progress>,
        incarnation: &str,
        from: u64,
        now: Instant,
        leader_end: u64,
    ) -> Progress {
        let before = before.filter(|p| p.incarnation == incarnation);
        let mut caught_up = before.and_then(|p| p.caught_up);
        if from >= leader_end {
            caught_up = Some(now);
        } else if let Some(p) = before {
            let (at, end_then) = p.previous;
            if from >= end_then {
                caught_up = Some(caught_up.map_or(at, |c| c.max(at)));
            }
        }
        Progress {
            incarnation: incarnation.to_string(),
            durable_end: from,
            last_fetch: now,
            caught_up,
            previous: (now, leader_end),
        }
    }

    /// The member this progress speaks for.
    pub fn member(&self, name: &str) -> Member {
        Member {
            name: name.to_string(),
            incarnation: self.incarnation.clone(),
        }
    }
}

/// An ISR change the leader wants made (through [`IsrHandle::change`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    /// The new set, the leader included.
    pub members: Vec<Member>,
    /// Members removed (lagging, or replaced by a new incarnation).
    pub removed: Vec<Member>,
    /// Members added (caught up in this term).
    pub added: Vec<Member>,
}

/// Why a write is refused by replication (before or after its append).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefusal {
    /// Fewer in-sync replicas than `--min-insync`.
    #[error("not_enough_replicas: {isr} in sync, --min-insync {min_insync}")]
    NotEnoughReplicas {
        /// ISR members (the leader included).
        isr: u32,
        /// `--min-insync`.
        min_insync: u32,
    },
    /// The leader has not written its term-start record yet.
    #[error("beginning term {term}: the term-start record is not yet durable")]
    TermStarting {
        /// The term.
        term: u64,
    },
    /// A follower reported a term above ours: we are deposed and stop taking writes.
    #[error("a follower has seen term {seen}, above this leader's term {term}")]
    Deposed {
        /// Our term.
        term: u64,
        /// The follower's.
        seen: u64,
    },
    /// The node is handing leadership over (shutting down).
    #[error("handing leadership over: shutting down")]
    HandingOver,
    /// The ISR key is unknown (not read yet).
    #[error("the in-sync replica set is not known yet")]
    IsrUnknown,
}

/// Everything the decisions look at, as of one moment.
#[derive(Debug, Clone)]
pub struct View<'a> {
    /// This node as a member.
    pub leader: &'a Member,
    /// The leader's durable log end.
    pub leader_end: u64,
    /// The high watermark now.
    pub hw: u64,
    /// Offset of this term's term-start record (`None`: a lone replica writes none, see
    /// [`run`]).
    pub term_start: Option<u64>,
    /// When this node began leading this term (lag timers start here).
    pub began_at: Instant,
    /// The ISR as Consul holds it (as last read or written).
    pub isr: &'a [Member],
    /// Followers' progress in this term, by name.
    pub progress: &'a HashMap<String, Progress>,
    /// `--min-insync`.
    pub min_insync: usize,
    /// `--replica-lag-max`.
    pub lag_max: Duration,
    /// ISR members Consul holds no live report of (crashed or stopped): lagging at once.
    pub gone: &'a [Member],
}

impl View<'_> {
    /// The durable log end of `member` as far as this term's checked fetches tell (`None`: no
    /// checked fetch from that incarnation yet).
    pub fn end_of(&self, member: &Member) -> Option<u64> {
        if member == self.leader {
            return Some(self.leader_end);
        }
        self.progress
            .get(&member.name)
            .filter(|p| p.incarnation == member.incarnation)
            .map(|p| p.durable_end)
    }

    /// The HW to expose now, if it moves: the smallest durable end over the ISR and the members
    /// being added (`expanding`, "maximal ISR"), only while the ISR has at least `--min-insync`
    /// members, only past the term-start record, never down.
    pub fn high_watermark(&self, expanding: &[Member]) -> Option<u64> {
        if self.isr.len() < self.min_insync || !self.isr.contains(self.leader) {
            return None;
        }
        let mut min = self.leader_end;
        for member in self.isr.iter().chain(expanding) {
            min = min.min(self.end_of(member)?);
        }
        (self.term_start.is_none_or(|s| min > s) && min > self.hw).then_some(min)
    }

    /// When `member` was last caught up, for its lag: never before this term began.
    fn caught_up_at(&self, member: &Member) -> Instant {
        self.progress
            .get(&member.name)
            .filter(|p| p.incarnation == member.incarnation)
            .and_then(|p| p.caught_up)
            .map_or(self.began_at, |c| c.max(self.began_at))
    }

    /// The ISR change to make now, if any: add followers caught up to the log end in this term
    /// (replacing an older incarnation of the same name), remove members not caught up for
    /// longer than `--replica-lag-max` or without a Consul session (`gone`), the most lagging
    /// first, never below `--min-insync` members and never the leader.
    pub fn isr_change(&self, now: Instant) -> Option<IsrChange> {
        let mut members: Vec<Member> = self.isr.to_vec();
        let mut removed = Vec::new();
        let mut added = Vec::new();
        let mut names: Vec<&String> = self.progress.keys().collect();
        names.sort();
        for name in names {
            let p = &self.progress[name];
            let candidate = p.member(name);
            let fresh = p
                .caught_up
                .is_some_and(|c| c >= self.began_at && now.saturating_duration_since(c) <= self.lag_max);
            if members.contains(&candidate)
                || candidate.name == self.leader.name
                || !fresh
                || self.term_start.is_some_and(|s| p.durable_end <= s)
                || p.durable_end < self.hw
            {
                continue;
            }
            if let Some(i) = members.iter().position(|m| m.name == candidate.name) {
                removed.push(members.remove(i));
            }
            members.push(candidate.clone());
            added.push(candidate);
        }
        let mut lagging: Vec<(Instant, Member)> = members
            .iter()
            .filter(|m| *m != self.leader && !added.contains(m))
            .map(|m| (self.caught_up_at(m), m.clone()))
            .filter(|(at, m)| now.saturating_duration_since(*at) > self.lag_max || self.gone.contains(m))
            .collect();
        lagging.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        for (_, member) in lagging {
            if members.len() <= self.min_insync {
                break;
            }
            members.retain(|m| *m != member);
            removed.push(member);
        }
        (!removed.is_empty() || !added.is_empty()).then_some(IsrChange {
            members,
            removed,
            added,
        })
    }
}

/// Write admission by replication: the term has begun, the ISR is known and has at least
/// `min_insync` members.
///
/// # Errors
/// The [`WriteRefusal`].
pub fn admission(term: u64, begun: bool, isr: Option<usize>, min_insync: u32) -> Result<(), WriteRefusal> {
    if !begun {
        return Err(WriteRefusal::TermStarting { term });
    }
    let isr = isr.ok_or(WriteRefusal::IsrUnknown)?;
    if (isr as u64) < u64::from(min_insync) {
        return Err(WriteRefusal::NotEnoughReplicas {
            isr: isr as u32,
            min_insync,
        });
    }
    Ok(())
}

/// The term and session this node leads in, per `state` (`None`: not leading). A stopping node
/// that still shows as the leader keeps its term, so followers can catch up during a handover.
fn leading(state: &LeaderState, name: &str) -> Option<(u64, String)> {
    let session = state.session.clone()?;
    match state.role {
        Role::Leader => Some((state.term, session)),
        Role::Stopping if state.leader.as_ref().is_some_and(|l| l.name == name) => {
            Some((state.term, session))
        }
        _ => None,
    }
}

/// Runs the leader side until `shutdown`: whenever this node leads a term, writes the term-start
/// record, then keeps the ISR and the high watermark up to date until the term ends.
pub async fn run(repl: Replication, elector: Elector, shutdown: CancellationToken) {
    let mut states = elector.subscribe();
    let isr = repl.isr_handle().cloned();
    // The last term led and its term-start record, once written: a term gets one term-start
    // record. A leader whose lease lapsed (Consul unreachable for a while) and came back in the
    // same term never lost the lock, so nobody else led meanwhile: it resumes that term.
    let mut last_led: Option<(u64, Option<Option<u64>>)> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let lead = leading(&states.borrow_and_update(), &repl.settings().name);
        let resume = |term: u64| match last_led {
            Some((led, begun)) if led == term => Some(begun),
            Some((led, _)) if led > term => None,
            _ => Some(None),
        };
        if let Some((term, session, begun)) =
            lead.and_then(|(term, session)| resume(term).map(|begun| (term, session, begun)))
        {
            if begun.is_some() {
                tracing::info!(term, "leading again in the same term: resuming it");
            }
            let started = lead_term(&repl, &mut states, isr.as_ref(), term, session, begun, &shutdown).await;
            last_led = Some((term, started.or(begun)));
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = states.changed() => if changed.is_err() { return },
        }
    }
}

/// How often the leader looks for ISR members without a Consul session, and how long a member
/// must have been silent (no fetch) before it is looked for.
const GONE_POLL: Duration = Duration::from_millis(250);
const GONE_QUIET: Duration = Duration::from_millis(500);

/// While leading `term`: at once and then every [`GONE_POLL`], if an ISR member has not fetched
/// in this term or for [`GONE_QUIET`], asks Consul for the live reports; members without one (their session ended:
/// a crash Consul detected, or a graceful stop) are marked gone, so the ISR shrinks without
/// waiting for `--replica-lag-max` and the HW moves on at once. Shrinking is always safe (never
/// below `--min-insync`); a member wrongly marked gone only rejoins once caught up.
async fn watch_gone(repl: Replication, isr: IsrHandle, term: u64, me: Member) {
    // The first look is at once: at the start of a term no follower has fetched yet, and the
    // node that just died or stopped is usually still in the ISR.
    loop {
        let quiet = repl.quiet_members(term, &me, Instant::now(), GONE_QUIET);
        if quiet.is_empty() {
            repl.set_gone(term, Vec::new());
        } else {
            match isr.live_reports().await {
                Ok(reports) => {
                    let live: Vec<Member> = reports.iter().map(|r| r.member()).collect();
                    repl.set_gone(term, quiet.into_iter().filter(|m| !live.contains(m)).collect());
                }
                Err(err) => tracing::debug!(%err, "cannot read the replicas' reports"),
            }
        }
        tokio::time::sleep(GONE_POLL).await;
    }
}

/// Whether the published state still says we lead `term`.
fn still_leading(states: &tokio::sync::watch::Receiver<LeaderState>, name: &str, term: u64) -> bool {
    leading(&states.borrow(), name).is_some_and(|(t, _)| t == term)
}

/// One term of leadership.
async fn lead_term(
    repl: &Replication,
    states: &mut tokio::sync::watch::Receiver<LeaderState>,
    isr: Option<&IsrHandle>,
    term: u64,
    session: String,
    resumed: Option<Option<u64>>,
    shutdown: &CancellationToken,
) -> Option<Option<u64>> {
    let name = repl.settings().name.clone();
    let store = repl.store().clone();
    repl.start_term(term, &session);
    // A lone replica (--replicas 1) writes no term-start record: nobody else could hold an
    // older term's records, and its offsets stay as they always were (the first write at 0).
    let lone = repl.settings().replicas <= 1;
    if !lone && resumed.is_none() {
        tracing::info!(term, "leading: writing the term-start record");
    }
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let term_start = loop {
        if lone {
            break None;
        }
        if let Some(start) = resumed {
            break start;
        }
        match store.begin_term(term).await {
            Ok(offset) => break Some(offset),
            Err(err) => {
                tracing::warn!(term, %err, "cannot write the term-start record; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => { repl.end_term(term); return None }
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                if !still_leading(states, &name, term) {
                    repl.end_term(term);
                    return None;
                }
            }
        }
    };
    repl.term_begun(term, term_start);
    tracing::info!(term, ?term_start, "term begun");
    let gone_watch =
        isr.map(|handle| tokio::spawn(watch_gone(repl.clone(), handle.clone(), term, repl.me_member())));
    let me = Member {
        name: name.clone(),
        incarnation: store.incarnation(),
    };
    let mut isr_rx = isr.map(IsrHandle::subscribe);
    let mut durable = store.subscribe_durable();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let progress = repl.progress_notify();
    // The ISR change in flight, if any (at most one at a time).
    let mut change: Option<tokio::task::JoinHandle<Result<IsrRecord, super::isr::IsrError>>> = None;
    let mut change_retry = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut not_before = tokio::time::Instant::now();
    loop {
        if let Some(rx) = &mut isr_rx {
            let seen = rx.borrow_and_update().clone();
            repl.observe_isr(term, seen);
        }
        // Decide with one consistent snapshot.
        let decision = repl.decide(term, &me, Instant::now(), change.is_none());
        if let Some(hw) = decision.hw {
            // Exposed (and writes waiting for it acknowledged) at once; `hw.checkpoint` follows in
            // the background: the records below `hw` are already durable on every ISR member.
            let now = store.advance_high_watermark(hw);
            repl.metrics().replication_high_watermark.set(now as i64);
        }
        if let (Some(wanted), Some(handle), true) =
            (decision.change, isr, tokio::time::Instant::now() >= not_before)
        {
            let (index, wanted) = wanted;
            tracing::info!(
                term,
                removed = ?wanted.removed.iter().map(|m| &m.name).collect::<Vec<_>>(),
                added = ?wanted.added.iter().map(|m| &m.name).collect::<Vec<_>>(),
                "changing the in-sync replica set"
            );
            repl.set_pending(term, &wanted);
            let handle = handle.clone();
            let session = session.clone();
            let state = IsrState {
                term,
                leader: name.clone(),
                members: wanted.members.clone(),
            };
            let counts = (wanted.removed.len() as u64, wanted.added.len() as u64);
            let metrics = repl.metrics().clone();
            change = Some(tokio::spawn(async move {
                let written = handle.change(&session, index, state).await;
                if written.is_ok() {
                    metrics.isr_shrink(counts.0);
                    metrics.isr_expand(counts.1);
                }
                written
            }));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = states.changed() => {
                if changed.is_err() || !still_leading(states, &name, term) { break }
            }
            _ = durable.changed() => {}
            _ = progress.notified() => {}
            _ = ticker.tick() => {}
            changed = async { isr_rx.as_mut().expect("guarded").changed().await }, if isr_rx.is_some() => {
                if changed.is_err() { isr_rx = None }
            }
            done = async { change.as_mut().expect("guarded").await }, if change.is_some() => {
                change = None;
                match done {
                    Ok(Ok(record)) => {
                        change_retry.reset();
                        repl.observe_isr(term, Some(record));
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(%err, "the ISR change was not made");
                        not_before = tokio::time::Instant::now() + change_retry.next_delay();
                    }
                    Err(err) => tracing::warn!(%err, "the ISR change task failed"),
                }
                repl.clear_pending(term);
            }
        }
    }
    if let Some(task) = change {
        task.abort();
    }
    if let Some(task) = gone_watch {
        task.abort();
    }
    repl.end_term(term);
    tracing::info!(term, "no longer leading this term");
    Some(term_start)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn m(name: &str) -> Member {
        Member {
            name: name.into(),
            incarnation: format!("{name}-inc"),
        }
    }

    fn progress(inc: &str, end: u64, caught_up: Option<Instant>, at: Instant) -> Progress {
        Progress {
            incarnation: inc.into(),
            durable_end: end,
            last_fetch: at,
            caught_up,
            previous: (at, end),
        }
    }

    struct Fixture {
        leader: Member,
        isr: Vec<Member>,
        progress: HashMap<String, Progress>,
        began: Instant,
        gone: Vec<Member>,
    }

    impl Fixture {
        fn new(isr: &[&str]) -> Self {
            Self {
                leader: m("n0"),
                isr: isr.iter().map(|n| m(n)).collect(),
                progress: HashMap::new(),
                began: Instant::now(),
                gone: Vec::new(),
            }
        }
        fn follower(&mut self, name: &str, end: u64, caught_up: Option<Duration>) {
            let at = self.began + Duration::from_millis(1);
            self.progress.insert(
                name.into(),
                progress(&format!("{name}-inc"), end, caught_up.map(|d| self.began + d), at),
            );
        }
        fn view(&self, leader_end: u64, hw: u64, term_start: u64, min_insync: usize) -> View<'_> {
            View {
                leader: &self.leader,
                leader_end,
                hw,
                term_start: Some(term_start),
                began_at: self.began,
                isr: &self.isr,
                progress: &self.progress,
                min_insync,
                lag_max: Duration::from_secs(2),
                gone: &self.gone,
            }
        }
    }

    /// A member Consul holds no session of is removed at once, without waiting for its lag
    /// timer, but never below --min-insync; the HW then moves without it.
    #[test]
    fn gone_members_leave_at_once() {
        let mut f = Fixture::new(&["n0", "n1", "n2"]);
        f.follower("n1", 10, Some(Duration::from_millis(1)));
        f.gone = vec![m("n2")];
        let soon = f.began + Duration::from_millis(100);
        let change = f.view(10, 5, 4, 2).isr_change(soon).expect("n2 leaves");
        assert_eq!(change.removed, vec![m("n2")]);
        assert_eq!(change.members, vec![m("n0"), m("n1")]);
        // Not below --min-insync: with 3 required, n2 stays (and writes wait).
        assert!(f.view(10, 5, 4, 3).isr_change(soon).is_none());
        // Without the gone mark, n2 is not removed before --replica-lag-max.
        f.gone.clear();
        assert!(f.view(10, 5, 4, 2).isr_change(soon).is_none());
    }

    /// The HW is the smallest durable end over the ISR; a member without a checked fetch in this
    /// term holds it back; it moves only past the term-start record, never down, and only while
    /// the ISR has --min-insync members.
    #[test]
    fn high_watermark_rules() {
        let mut f = Fixture::new(&["n0", "n1", "n2"]);
        assert_eq!(
            f.view(10, 0, 4, 2).high_watermark(&[]),
            None,
            "n1, n2 never fetched"
        );
        f.follower("n1", 8, None);
        assert_eq!(f.view(10, 0, 4, 2).high_watermark(&[]), None, "n2 still unknown");
        f.follower("n2", 6, None);
        assert_eq!(f.view(10, 0, 4, 2).high_watermark(&[]), Some(6));
        assert_eq!(
            f.view(10, 6, 4, 2).high_watermark(&[]),
            None,
            "never down or sideways"
        );
        assert_eq!(
            f.view(10, 0, 6, 2).high_watermark(&[]),
            None,
            "not past the term-start record"
        );
        assert_eq!(f.view(10, 0, 5, 2).high_watermark(&[]), Some(6));
        assert_eq!(
            f.view(10, 0, 4, 4).high_watermark(&[]),
            None,
            "|ISR| < min-insync"
        );
        // A member being added counts at once.
        f.follower("n3", 5, None);
        assert_eq!(f.view(10, 0, 4, 2).high_watermark(&[m("n3")]), Some(5));
        // Progress of another incarnation is not the member's.
        f.progress.get_mut("n2").unwrap().incarnation = "new".into();
        assert_eq!(f.view(10, 0, 4, 2).high_watermark(&[]), None);
        // A lone leader: its own durable end.
        let lone = Fixture::new(&["n0"]);
        assert_eq!(lone.view(3, 0, 0, 1).high_watermark(&[]), Some(3));
        assert_eq!(
            lone.view(1, 0, 0, 1).high_watermark(&[]),
            Some(1),
            "the term-start record at 0 is covered"
        );
    }

    /// Lagging members leave, the most lagging first, never below --min-insync and never the
    /// leader; timers start at the term's beginning; caught-up followers join, replacing an older
    /// incarnation of the same name.
    #[test]
    fn isr_change_rules() {
        let mut f = Fixture::new(&["n0", "n1", "n2"]);
        let early = f.began + Duration::from_secs(1);
        assert_eq!(
            f.view(10, 0, 4, 1).isr_change(early),
            None,
            "lag timers start with the term"
        );
        let late = f.began + Duration::from_secs(5);
        f.follower("n1", 10, Some(Duration::from_millis(500)));
        let change = f.view(10, 0, 4, 1).isr_change(late).expect("both lag");
        assert_eq!(change.removed, vec![m("n2"), m("n1")], "the most lagging first");
        assert_eq!(change.members, vec![m("n0")]);
        let change = f.view(10, 0, 4, 2).isr_change(late).expect("one may go");
        assert_eq!(change.removed, vec![m("n2")], "never below --min-insync");
        assert_eq!(f.view(10, 0, 4, 3).isr_change(late), None);

        // Expansion: caught up in this term, past the term start and the HW.
        let mut f = Fixture::new(&["n0"]);
        f.follower("n1", 10, Some(Duration::from_millis(100)));
        let soon = f.began + Duration::from_millis(200);
        let change = f.view(10, 5, 4, 2).isr_change(soon).expect("n1 caught up");
        assert_eq!((change.added.clone(), change.members.len()), (vec![m("n1")], 2));
        assert_eq!(
            f.view(10, 5, 10, 2).isr_change(soon),
            None,
            "lacks the term-start record"
        );
        f.follower("n1", 10, None);
        assert_eq!(f.view(10, 5, 4, 2).isr_change(soon), None, "never caught up");

        // A new incarnation replaces the old entry in one change.
        let mut f = Fixture::new(&["n0", "n1"]);
        f.progress.insert(
            "n1".into(),
            progress("fresh", 10, Some(f.began + Duration::from_millis(10)), f.began),
        );
        let change = f
            .view(10, 0, 4, 2)
            .isr_change(f.began + Duration::from_millis(20))
            .unwrap();
        assert_eq!(change.removed, vec![m("n1")]);
        assert_eq!(change.added[0].incarnation, "fresh");
        assert_eq!(change.members.len(), 2);
    }

    /// Kafka's caught-up rule: a fetch from the leader's end, or from at least the end the leader
    /// had at the previous fetch, counts; a new incarnation starts afresh.
    #[test]
    fn caught_up_rule() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        let t2 = t0 + Duration::from_millis(20);
        let p = Progress::after_fetch(None, "a", 5, t0, 10);
        assert_eq!(p.caught_up, None);
        let p = Progress::after_fetch(Some(&p), "a", 10, t1, 15);
        assert_eq!(p.caught_up, Some(t0), "reached the end the leader had at t0");
        let p = Progress::after_fetch(Some(&p), "a", 15, t2, 15);
        assert_eq!(p.caught_up, Some(t2));
        let other = Progress::after_fetch(Some(&p), "b", 3, t2, 15);
        assert_eq!(other.caught_up, None);
    }

    /// Writes need a begun term, a known ISR and --min-insync members.
    #[test]
    fn admission_rules() {
        assert_eq!(admission(3, true, Some(2), 2), Ok(()));
        assert_eq!(
            admission(3, true, Some(1), 2),
            Err(WriteRefusal::NotEnoughReplicas {
                isr: 1,
                min_insync: 2
            })
        );
        assert_eq!(
            admission(3, false, Some(3), 2),
            Err(WriteRefusal::TermStarting { term: 3 })
        );
        assert_eq!(admission(3, true, None, 1), Err(WriteRefusal::IsrUnknown));
        let text = admission(3, true, Some(1), 2).unwrap_err().to_string();
        assert_eq!(text, "not_enough_replicas: 1 in sync, --min-insync 2");
    }

    proptest! {
        /// Whatever the progress, the HW chosen is held by every ISR member, is past the term
        /// start, and an ISR change never drops the leader or goes below --min-insync.
        #[test]
        fn decisions_keep_the_invariants(
            ends in proptest::collection::vec(0u64..50, 0..5),
            lags in proptest::collection::vec(0u64..5000, 0..5),
            leader_end in 0u64..50,
            term_start in 0u64..50,
            hw in 0u64..50,
            min_insync in 1usize..5,
            now_ms in 0u64..10_000,
        ) {
            let names: Vec<String> = (1..=ends.len()).map(|i| format!("n{i}")).collect();
            let mut f = Fixture::new(&["n0"]);
            for (i, name) in names.iter().enumerate() {
                f.isr.push(m(name));
                let caught = lags.get(i).map(|ms| Duration::from_millis(*ms));
                f.follower(name, ends[i].min(leader_end), caught);
            }
            let leader_end = leader_end.max(term_start);
            let hw = hw.min(leader_end);
            let view = f.view(leader_end, hw, term_start, min_insync);
            if let Some(new) = view.high_watermark(&[]) {
                prop_assert!(new > hw && new > term_start);
                prop_assert!(f.isr.len() >= min_insync);
                for member in &f.isr {
                    prop_assert!(view.end_of(member).unwrap() >= new);
                }
            }
            if let Some(change) = view.isr_change(f.began + Duration::from_millis(now_ms)) {
                prop_assert!(change.members.contains(&f.leader));
                prop_assert!(change.members.len() >= min_insync.min(f.isr.len()));
                for r in &change.removed {
                    prop_assert!(!change.members.contains(r));
                }
            }
        }
    }
}
