//! [`Replication`]: the node's shared replication state, one cheap-`Clone` handle used by the
//! fetch handlers, the leader loop, the follower loop, the write path and the status page: the
//! settings, the current term's follower progress and ISR view (leader), and what the follower
//! loop reports (leader followed, a refused truncation).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

use super::{
    isr::{IsrHandle, IsrRecord, Member},
    leader::{admission, IsrChange, Progress, View, WriteRefusal},
    protocol::FetchRefusal,
};
use crate::{
    flags::{Acks, ReplicationArgs},
    log::LogStore,
    metrics::{MemberLabels, Metrics},
};

/// The replication settings a node runs with (from [`ReplicationArgs`] and its name).
#[derive(Debug, Clone)]
pub struct ReplicationSettings {
    /// This node's name.
    pub name: String,
    /// `--replicas`.
    pub replicas: u32,
    /// `--min-insync` (resolved).
    pub min_insync: u32,
    /// `--acks`.
    pub acks: Acks,
    /// `--replica-lag-max`.
    pub replica_lag_max: Duration,
    /// `--cluster-secret`.
    pub cluster_secret: Option<String>,
    /// `--replication-proxy` (tests).
    pub proxy: Option<String>,
}

impl ReplicationSettings {
    /// From the flags.
    pub fn new(name: &str, args: &ReplicationArgs) -> Self {
        Self {
            name: name.to_string(),
            replicas: args.replicas,
            min_insync: args.min_insync(),
            acks: args.acks,
            replica_lag_max: args.replica_lag_max,
            cluster_secret: args.cluster_secret.clone(),
            proxy: args.replication_proxy.clone(),
        }
    }

    /// How long an `--acks all` write waits for the HW: `max(2 × --replica-lag-max, 5 s)`, so a
    /// lagging member is removed from the ISR (and the HW moves on) before the write gives up.
    pub fn commit_timeout(&self) -> Duration {
        (self.replica_lag_max * 2).max(Duration::from_secs(5))
    }
}

/// A truncation the follower refused (status `truncation_refused`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TruncationRefused {
    /// Where the logs diverge.
    pub divergence: u64,
    /// The follower's high watermark.
    pub high_watermark: u64,
    /// Why, in words.
    pub reason: String,
}

/// What the follower loop reports.
#[derive(Debug, Clone, Default)]
pub struct FollowerStatus {
    /// The leader being followed.
    pub leader: Option<String>,
    /// Replication stopped: a truncation below the HW was refused.
    pub truncation_refused: Option<TruncationRefused>,
    /// The last error talking to the leader (cleared by a successful fetch).
    pub last_error: Option<String>,
}

/// The leader's state for one term.
#[derive(Debug)]
struct LeaderTerm {
    term: u64,
    session: String,
    began_at: Instant,
    /// Whether the term has begun: its term-start record is durable (writes and fetches wait
    /// for it), at this offset (`None`: a lone replica writes none).
    begun: Option<Option<u64>>,
    progress: HashMap<String, Progress>,
    /// The ISR as last read or written (`None`: not known yet).
    isr: Option<IsrRecord>,
    /// Members being added by the change in flight (they count toward the HW at once).
    pending_adds: Vec<Member>,
    /// ISR members Consul holds no live report of (their session ended: crashed or stopped),
    /// as last checked: removed without waiting for their lag timer.
    gone: Vec<Member>,
}

/// One member as the status shows it (leader only).
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// Log incarnation.
    pub incarnation: String,
    /// Its durable log end, per its last checked fetch (`null`: no fetch in this term).
    pub log_end: Option<u64>,
    /// Records behind the leader's log end.
    pub lag_records: Option<u64>,
    /// Whether Consul's ISR lists it (with this incarnation).
    pub in_isr: bool,
    /// Milliseconds since it was last caught up to the leader's log end (`null`: not in this term).
    pub caught_up_ms_ago: Option<u64>,
}

/// The `replication` object of `/api/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    /// `--replicas`.
    pub replicas: u32,
    /// `--min-insync`.
    pub min_insync: u32,
    /// `--acks`.
    pub acks: Acks,
    /// The high watermark this node exposes.
    pub high_watermark: u64,
    /// The durable log end.
    pub log_end: u64,
    /// The first retained offset.
    pub log_start: u64,
    /// The election case as the election publishes it.
    pub case: serde_json::Value,
    /// The ISR as Consul holds it (names).
    pub isr: Vec<String>,
    /// The followers (leader only; `[]` elsewhere).
    pub members: Vec<MemberStatus>,
    /// The leader's name, when known.
    pub leader: Option<String>,
    /// Why writes are refused now (leader only), e.g. `not_enough_replicas: 1 in sync, ...`.
    pub writes_refused: Option<String>,
    /// A truncation this follower refused (replication stopped).
    pub truncation_refused: Option<TruncationRefused>,
    /// The follower's last failure to fetch from its leader (cleared by the next successful
    /// fetch), e.g. the leader refusing this node's cluster secret.
    pub follower_error: Option<String>,
}

/// What the leader loop should do now.
#[derive(Debug, Default)]
pub struct Decision {
    /// Move the HW to this.
    pub hw: Option<u64>,
    /// Make this ISR change, based on the key at this index.
    pub change: Option<(u64, IsrChange)>,
}

struct Inner {
    settings: ReplicationSettings,
    store: LogStore,
    metrics: Metrics,
    isr: Option<IsrHandle>,
    leader: Mutex<Option<LeaderTerm>>,
    follower: Mutex<FollowerStatus>,
    /// Wakes the leader loop after a checked fetch.
    progress: Arc<Notify>,
    /// Set when the node hands leadership over: no more writes.
    handing_over: AtomicBool,
    /// Cancelled when the HTTP server starts draining: fetches stop holding their long poll, so
    /// the drain (and the lock's release) is not delayed by them.
    draining: crate::shutdown::CancellationToken,
    /// The highest term a follower told us about, above ours (we are deposed).
    deposed_by: AtomicU64,
}

/// How long a request that reaches a new leader before its term has begun (term-start record not
/// yet durable) waits for it instead of being refused: a fetch, an end-offset question
/// ([`Replication::serving_soon`]) or a write (`node::write`). A 503 then cost the follower or
/// producer its back-off, most of a handover (issue 14).
pub const TERM_START_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The node's replication state. Cheap to clone.
#[derive(Clone)]
pub struct Replication {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Replication {
    /// The state of a node with `settings` over `store`. Without an `isr` handle (no election of
    /// replicated terms), the ISR is this node alone.
    pub fn new(
        settings: ReplicationSettings,
        store: LogStore,
        metrics: Metrics,
        isr: Option<IsrHandle>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                store,
                metrics,
                isr,
                leader: Mutex::new(None),
                follower: Mutex::new(FollowerStatus::default()),
                progress: Arc::new(Notify::new()),
                handing_over: AtomicBool::new(false),
                draining: crate::shutdown::CancellationToken::new(),
                deposed_by: AtomicU64::new(0),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ReplicationSettings {
        &self.inner.settings
    }

    /// The local log.
    pub fn store(&self) -> &LogStore {
        &self.inner.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The ISR key handle, if the election provides one.
    pub fn isr_handle(&self) -> Option<&IsrHandle> {
        self.inner.isr.as_ref()
    }

    /// Woken after every checked fetch.
    /// The ISR members (other than this node) that have not fetched within `quiet` in `term`:
    /// the ones worth asking Consul about.
    pub(super) fn quiet_members(
        &self,
        term: u64,
        me: &Member,
        now: Instant,
        quiet: std::time::Duration,
    ) -> Vec<Member> {
        let leader = self.inner.leader.lock();
        let Some(t) = leader.as_ref().filter(|t| t.term == term) else {
            return Vec::new();
        };
        let Some(isr) = &t.isr else { return Vec::new() };
        isr.state
            .members
            .iter()
            .filter(|m| *m != me)
            .filter(|m| {
                t.progress
                    .get(&m.name)
                    .filter(|p| p.incarnation == m.incarnation)
                    .is_none_or(|p| now.saturating_duration_since(p.last_fetch) > quiet)
            })
            .cloned()
            .collect()
    }

    /// Records which ISR members Consul holds no live report of in `term`.
    pub(super) fn set_gone(&self, term: u64, gone: Vec<Member>) {
        if let Some(t) = self.inner.leader.lock().as_mut().filter(|t| t.term == term) {
            if t.gone != gone {
                if !gone.is_empty() {
                    tracing::info!(
                        term,
                        gone = ?gone.iter().map(|m| &m.name).collect::<Vec<_>>(),
                        "in-sync members without a Consul session: removing them without waiting for --replica-lag-max"
                    );
                }
                t.gone = gone;
                self.inner.progress.notify_one();
            }
        }
    }

    pub(super) fn progress_notify(&self) -> Arc<Notify> {
        self.inner.progress.clone()
    }

    /// This node as an ISR member.
    pub(super) fn me_member(&self) -> Member {
        self.me()
    }

    fn me(&self) -> Member {
        Member {
            name: self.inner.settings.name.clone(),
            incarnation: self.inner.store.incarnation(),
        }
    }

    /// A new term of leadership starts (before its term-start record).
    pub(super) fn start_term(&self, term: u64, session: &str) {
        let isr = match &self.inner.isr {
            Some(handle) => handle.current(),
            None => Some(IsrRecord {
                state: super::isr::IsrState {
                    term,
                    leader: self.inner.settings.name.clone(),
                    members: vec![self.me()],
                },
                index: 0,
            }),
        };
        *self.inner.leader.lock() = Some(LeaderTerm {
            term,
            session: session.to_string(),
            began_at: Instant::now(),
            begun: None,
            progress: HashMap::new(),
            isr,
            pending_adds: Vec::new(),
            gone: Vec::new(),
        });
    }

    /// The term-start record of `term` is durable at `offset`: fetches and writes are served.
    pub(super) fn term_begun(&self, term: u64, offset: Option<u64>) {
        if let Some(t) = self.inner.leader.lock().as_mut().filter(|t| t.term == term) {
            t.begun = Some(offset);
            // Lag timers start once followers can fetch.
            t.began_at = Instant::now();
        }
    }

    /// Leadership of `term` ended.
    pub(super) fn end_term(&self, term: u64) {
        let mut leader = self.inner.leader.lock();
        if leader.as_ref().is_some_and(|t| t.term == term) {
            if let Some(t) = leader.take() {
                for name in t.progress.keys() {
                    self.inner
                        .metrics
                        .replication_follower_lag_records
                        .remove(&MemberLabels { member: name.clone() });
                }
            }
        }
    }

    /// Takes in the ISR key as read (the newer of it and what we wrote wins).
    pub(super) fn observe_isr(&self, term: u64, seen: Option<IsrRecord>) {
        if self.inner.isr.is_none() {
            return;
        }
        let mut leader = self.inner.leader.lock();
        let Some(t) = leader.as_mut().filter(|t| t.term == term) else {
            return;
        };
        // The ISR handle's watch is authoritative: it publishes this leader's own committed
        // changes at once, drops stale answers of its blocking query, and follows Consul when its
        // index went backwards (state loss), where comparing indexes here would keep a stale set.
        if let Some(seen) = seen {
            t.isr = Some(seen);
        }
        if let Some(isr) = &t.isr {
            self.inner
                .metrics
                .replication_isr_members
                .set(isr.state.members.len() as i64);
        }
    }

    pub(super) fn set_pending(&self, term: u64, change: &IsrChange) {
        if let Some(t) = self.inner.leader.lock().as_mut().filter(|t| t.term == term) {
            t.pending_adds = change.added.clone();
        }
    }

    pub(super) fn clear_pending(&self, term: u64) {
        if let Some(t) = self.inner.leader.lock().as_mut().filter(|t| t.term == term) {
            t.pending_adds.clear();
        }
    }

    /// The HW move and ISR change to make now (see [`View`]).
    pub(super) fn decide(&self, term: u64, me: &Member, now: Instant, may_change: bool) -> Decision {
        let leader_end = self.inner.store.durable_end();
        let hw = self.inner.store.high_watermark();
        let leader = self.inner.leader.lock();
        let Some(t) = leader.as_ref().filter(|t| t.term == term) else {
            return Decision::default();
        };
        let (Some(term_start), Some(isr)) = (t.begun, &t.isr) else {
            return Decision::default();
        };
        for (name, p) in &t.progress {
            self.inner
                .metrics
                .replication_follower_lag_records
                .get_or_create(&MemberLabels { member: name.clone() })
                .set(leader_end.saturating_sub(p.durable_end) as i64);
        }
        let view = View {
            leader: me,
            leader_end,
            hw,
            term_start,
            began_at: t.began_at,
            isr: &isr.state.members,
            progress: &t.progress,
            min_insync: self.inner.settings.min_insync as usize,
            lag_max: self.inner.settings.replica_lag_max,
            gone: &t.gone,
        };
        Decision {
            hw: view.high_watermark(&t.pending_adds),
            change: if may_change && self.inner.isr.is_some() {
                view.isr_change(now).map(|c| (isr.index, c))
            } else {
                None
            },
        }
    }

    /// The term and session fetches are served in now.
    ///
    /// # Errors
    /// [`FetchRefusal::NotLeader`] when not leading, or before the term-start record is durable.
    pub fn serving(&self) -> Result<(u64, String), FetchRefusal> {
        match self.inner.leader.lock().as_ref() {
            Some(t) if t.begun.is_some() => Ok((t.term, t.session.clone())),
            Some(t) => Err(FetchRefusal::NotLeader {
                reason: format!("beginning term {}", t.term),
            }),
            None => Err(FetchRefusal::NotLeader {
                reason: "this node does not lead".into(),
            }),
        }
    }

    /// [`serving`](Self::serving), waiting up to `wait` ([`TERM_START_WAIT`]) while this node leads a term whose
    /// term-start record is not durable yet (a few milliseconds after winning the election). A
    /// follower that finds the new leader that early would otherwise get a 503 and come back only
    /// after its back-off (100 ms: most of a handover, issue 14).
    ///
    /// # Errors
    /// As [`serving`](Self::serving).
    pub async fn serving_soon(&self, wait: std::time::Duration) -> Result<(u64, String), FetchRefusal> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let beginning = matches!(self.inner.leader.lock().as_ref(), Some(t) if t.begun.is_none());
            match self.serving() {
                Err(_) if beginning && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                other => return other,
            }
        }
    }

    /// Records a checked fetch from `from` by follower `name`/`incarnation` in `term`.
    pub fn record_fetch(&self, term: u64, name: &str, incarnation: &str, from: u64) {
        let leader_end = self.inner.store.durable_end();
        let mut leader = self.inner.leader.lock();
        if let Some(t) = leader.as_mut().filter(|t| t.term == term) {
            let next = Progress::after_fetch(
                t.progress.get(name),
                incarnation,
                from,
                Instant::now(),
                leader_end,
            );
            t.progress.insert(name.to_string(), next);
        }
        drop(leader);
        self.inner.progress.notify_one();
    }

    /// A follower has seen term `seen`, above ours: stop taking writes in this term.
    pub fn deposed(&self, term: u64, seen: u64) {
        let before = self.inner.deposed_by.fetch_max(seen, Ordering::AcqRel);
        if before < seen {
            tracing::warn!(
                term,
                seen,
                "a follower has seen a higher term: refusing writes in this term"
            );
        }
    }

    /// Stop taking writes: the node hands leadership over.
    pub fn begin_handover(&self) {
        self.inner.handing_over.store(true, Ordering::Release);
    }

    /// The HTTP server drains: answer held fetches now and hold no new ones.
    pub fn end_long_polls(&self) {
        self.inner.draining.cancel();
    }

    /// Resolves once [`end_long_polls`](Self::end_long_polls) was called.
    pub async fn draining(&self) {
        self.inner.draining.cancelled().await;
    }

    /// Whether [`draining`](Self::draining) has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Whether replication lets the leader of `term` take a write now.
    ///
    /// # Errors
    /// The [`WriteRefusal`].
    pub fn admit(&self, term: u64) -> Result<(), WriteRefusal> {
        if self.inner.handing_over.load(Ordering::Acquire) {
            return Err(WriteRefusal::HandingOver);
        }
        let seen = self.inner.deposed_by.load(Ordering::Acquire);
        if seen > term {
            return Err(WriteRefusal::Deposed { term, seen });
        }
        let leader = self.inner.leader.lock();
        let Some(t) = leader.as_ref().filter(|t| t.term == term) else {
            return Err(WriteRefusal::TermStarting { term });
        };
        admission(
            term,
            t.begun.is_some(),
            t.isr.as_ref().map(|r| r.state.members.len()),
            self.inner.settings.min_insync,
        )
    }

    /// Waits (up to `timeout`) until every ISR member has fetched up to the leader's durable log
    /// end, so that the next leader can move the HW at once. True when they have.
    pub async fn wait_isr_caught_up(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let notify = self.progress_notify();
        loop {
            let end = self.inner.store.durable_end();
            let caught_up = {
                let leader = self.inner.leader.lock();
                let Some(t) = leader.as_ref() else { return true };
                let me = &self.inner.settings.name;
                t.isr.as_ref().is_none_or(|isr| {
                    isr.state.members.iter().filter(|m| &m.name != me).all(|m| {
                        t.progress
                            .get(&m.name)
                            .is_some_and(|p| p.incarnation == m.incarnation && p.durable_end >= end)
                    })
                })
            };
            if caught_up {
                return true;
            }
            // The fetch that reports the end may be waiting on the next record or the HW: wake
            // on progress, or look again shortly.
            let wait = notify.notified();
            if tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = wait => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            })
            .await
            .is_err()
                || tokio::time::Instant::now() >= deadline
            {
                return false;
            }
        }
    }

    /// Follower side: the leader followed now.
    pub fn set_following(&self, leader: Option<String>) {
        self.inner.follower.lock().leader = leader;
    }

    /// Follower side: a truncation was refused; replication stops.
    pub fn set_truncation_refused(&self, refused: Option<TruncationRefused>) {
        self.inner.follower.lock().truncation_refused = refused;
    }

    /// Follower side: the last error (or `None` after a success).
    pub fn set_follower_error(&self, error: Option<String>) {
        self.inner.follower.lock().last_error = error;
    }

    /// What the follower loop reports.
    pub fn follower_status(&self) -> FollowerStatus {
        self.inner.follower.lock().clone()
    }

    /// The `replication` object of the status, for a node whose published leader is `leader`
    /// and election case `case`; `write_term` is our term when we lead.
    pub fn status(
        &self,
        leader: Option<String>,
        case: serde_json::Value,
        write_term: Option<u64>,
    ) -> ReplicationStatus {
        let store = &self.inner.store;
        let settings = &self.inner.settings;
        let log_end = store.durable_end();
        let now = Instant::now();
        let mut members = Vec::new();
        let mut isr_names = None;
        if let Some(t) = self.inner.leader.lock().as_ref() {
            let isr: &[Member] = t.isr.as_ref().map_or(&[], |r| &r.state.members);
            isr_names = t
                .isr
                .as_ref()
                .map(|r| r.state.members.iter().map(|m| m.name.clone()).collect());
            let mut names: Vec<&String> = t.progress.keys().chain(isr.iter().map(|m| &m.name)).collect();
            names.sort();
            names.dedup();
            for name in names.into_iter().filter(|n| **n != settings.name) {
                let p = t.progress.get(name);
                let incarnation = p.map(|p| p.incarnation.clone()).unwrap_or_else(|| {
                    isr.iter()
                        .find(|m| &m.name == name)
                        .map(|m| m.incarnation.clone())
                        .unwrap_or_default()
                });
                let member = Member {
                    name: name.clone(),
                    incarnation: incarnation.clone(),
                };
                members.push(MemberStatus {
                    name: name.clone(),
                    incarnation,
                    log_end: p.map(|p| p.durable_end),
                    lag_records: p.map(|p| log_end.saturating_sub(p.durable_end)),
                    in_isr: isr.contains(&member),
                    caught_up_ms_ago: p
                        .and_then(|p| p.caught_up)
                        .map(|c| now.saturating_duration_since(c).as_millis() as u64),
                });
            }
        }
        let isr = isr_names.unwrap_or_else(|| {
            self.inner
                .isr
                .as_ref()
                .and_then(IsrHandle::current)
                .map(|r| r.state.members.into_iter().map(|m| m.name).collect())
                .unwrap_or_default()
        });
        let follower = self.follower_status();
        ReplicationStatus {
            replicas: settings.replicas,
            min_insync: settings.min_insync,
            acks: settings.acks,
            high_watermark: store.high_watermark(),
            log_end,
            log_start: store.start_offset(),
            case,
            isr,
            members,
            leader,
            writes_refused: write_term.and_then(|term| self.admit(term).err().map(|r| r.to_string())),
            truncation_refused: follower.truncation_refused,
            follower_error: follower.last_error,
        }
    }
}
