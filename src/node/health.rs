//! Whether this node can take a write right now, decided in one place: [`admit`] is the predicate
//! both the write path and `/readyz` use, and [`LogHealth`] tracks whether the local log can
//! append (failed writes and syncs, the store's poisoned state, a periodic probe of the data
//! directory, a stopped writer). The
//! Consul check (`/consul-check`) fails while the log cannot append, so Consul invalidates a sick
//! leader's session and a healthy node takes over; the node comes back by itself once a probe
//! passes. See `docs/election.md`.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use crate::{
    election::{LeaderState, NotLeader},
    log::{FaultInjector, LogError, LogStore, WriteHealth},
    replication::WriteRefusal,
    shutdown::CancellationToken,
};

/// Name of the scratch file the probe writes, syncs and deletes in the data directory (the log
/// ignores names that are not segment or side files).
const PROBE_FILE: &str = ".write-probe";
/// Bytes the probe writes: enough to need fresh blocks on a full filesystem.
const PROBE_BYTES: usize = 64 * 1024;
/// How often a healthy node probes (a sick one probes every `--check-interval`).
const HEALTHY_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A probe that takes longer than this counts as failed (a hung disk).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What write admission needs to know about the local log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFacts {
    /// Why the log cannot append right now; `None` when it can.
    pub problem: Option<String>,
    /// Term of the log's last record: the log refuses appends with a lower term.
    pub last_term: Option<u64>,
    /// The highest term whose records, already servable to followers, a failed sync dropped
    /// ([`WriteHealth::lost_term`]): the log refuses appends in it, and a node leading it must
    /// step down so that a new term begins.
    pub lost_term: Option<u64>,
}

/// Why a leader of `state`'s term must give the term up, if it must: a failed sync dropped
/// records of that term that followers may hold, so it cannot go on writing in it. The Consul
/// check fails for this (Consul then ends the session and another election starts a new term)
/// and write admission refuses. Only while leading: once the session has ended the check passes
/// again, so the node can take part in the next election (a lone replica too).
pub fn must_step_down(state: &LeaderState, log: &LogFacts) -> Option<String> {
    let lost = log.lost_term?;
    (state.role == crate::election::Role::Leader && state.term <= lost).then(|| {
        format!(
            "a failed sync dropped records of term {lost} that followers may hold: leading needs a new term"
        )
    })
}

/// Why a write is refused before it reaches the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not the leader, shutting down, or the lease lapsed: the write belongs elsewhere.
    NotLeader(NotLeader),
    /// This node leads, but its log cannot take the write now (the reason says why).
    Log(String),
    /// This node leads, but replication refuses the write (too few in-sync replicas, the term
    /// not begun, handing over).
    Replication(WriteRefusal),
}

impl Refusal {
    /// The human-readable reason, for `/readyz` and error bodies.
    pub fn reason(&self) -> String {
        match self {
            Refusal::NotLeader(not_leader) => not_leader.reason.clone(),
            Refusal::Log(reason) => reason.clone(),
            Refusal::Replication(refusal) => refusal.to_string(),
        }
    }
}

/// [`admit`], then replication's own check for the term admitted (`replication`: the leader has
/// begun its term, has at least `--min-insync` in-sync replicas and is not handing over). This is
/// what the write path checks before the append and `/readyz` answers with.
///
/// # Errors
/// As [`admit`], and [`Refusal::Replication`].
pub fn admit_replicated(
    state: &LeaderState,
    now: Instant,
    log: &LogFacts,
    replication: impl FnOnce(u64) -> Result<(), WriteRefusal>,
) -> Result<u64, Refusal> {
    let term = admit(state, now, log)?;
    replication(term).map_err(Refusal::Replication)?;
    Ok(term)
}

/// The one predicate for write admission and readiness: the term to write with, if a write may be
/// accepted at `now` — by the leader whose lease holds, whose log can append, and whose term is not
/// below the log's last term (the log would refuse it). `/readyz` is 200 exactly when this is `Ok`.
///
/// # Errors
/// [`Refusal::NotLeader`] on any other role or a lapsed lease; [`Refusal::Log`] when the log cannot
/// append or the term is stale.
pub fn admit(state: &LeaderState, now: Instant, log: &LogFacts) -> Result<u64, Refusal> {
    let term = state.write_term(now).map_err(Refusal::NotLeader)?;
    if let Some(reason) = must_step_down(state, log) {
        return Err(Refusal::Log(reason));
    }
    if let Some(problem) = &log.problem {
        return Err(Refusal::Log(format!(
            "leader, but the log cannot append: {problem}"
        )));
    }
    match log.last_term {
        Some(last) if term < last => Err(Refusal::Log(format!(
            "leader in term {term}, but the log already holds term {last} (was Consul's state reset?)"
        ))),
        _ => Ok(term),
    }
}

/// The tracked facts behind [`LogHealth`]; pure, so the rules are unit-tested.
#[derive(Debug, Default)]
struct Tracker {
    /// The last failure a write, the store or a probe saw, until a later probe passes.
    failure: Option<String>,
    /// The store's failure count last looked at ([`WriteHealth::failures`]).
    seen_failures: u64,
    /// Bumped on every failure, so that a probe that started before it cannot clear it.
    generation: u64,
    /// The log's writer has stopped: nothing but a restart helps (liveness fails).
    writer_gone: bool,
}

impl Tracker {
    fn failed(&mut self, reason: String, writer_gone: bool) {
        self.failure = Some(reason);
        self.generation += 1;
        self.writer_gone |= writer_gone;
    }

    /// Takes in the store's write health: a failure the store had since the last look counts
    /// like a failed append (held until a probe passes), even if the store recovered meanwhile
    /// (e.g. a failed background sync under `interval`, which no append reports).
    fn observe(&mut self, store: &WriteHealth) {
        if store.failures > self.seen_failures {
            self.seen_failures = store.failures;
            let reason = store.last_failure.as_deref().unwrap_or("a write or sync failed");
            self.failed(format!("the log's write or sync failed: {reason}"), false);
        }
    }

    /// A probe that started at `generation` passed.
    fn probe_passed(&mut self, generation: u64) {
        if generation == self.generation && !self.writer_gone {
            self.failure = None;
        }
    }

    /// The problem now: a held failure, else the store's own poisoned state (it refuses appends
    /// until its tail is re-verified, which it retries by itself; no append is needed for that).
    fn problem(&mut self, store: &WriteHealth) -> Option<String> {
        self.observe(store);
        if let Some(failure) = &self.failure {
            return Some(failure.clone());
        }
        store
            .poisoned
            .as_ref()
            .map(|reason| format!("the log is re-verifying its tail and refuses appends: {reason}"))
    }
}

/// Whether the local log can append now. Cheap to clone; every clone shares the same facts.
#[derive(Clone)]
pub struct LogHealth {
    /// The log it watches.
    store: LogStore,
    /// The test fault injector the log was opened with, so the probe fails while writes do.
    faults: Option<FaultInjector>,
    /// The facts, shared by the write path, the probe task and the probes.
    tracker: Arc<Mutex<Tracker>>,
}

impl LogHealth {
    /// Watches `store` (opened with `faults`, if any).
    pub fn new(store: LogStore, faults: Option<FaultInjector>) -> Self {
        Self {
            store,
            faults,
            tracker: Arc::default(),
        }
    }

    /// Why the log cannot append right now; `None` when it can.
    pub fn problem(&self) -> Option<String> {
        self.tracker.lock().problem(&self.store.write_health())
    }

    /// What [`admit`] needs.
    pub fn facts(&self) -> LogFacts {
        LogFacts {
            problem: self.problem(),
            last_term: self.store.last_term().map(|(term, _)| term),
            lost_term: self.store.write_health().lost_term,
        }
    }

    /// True once the log's writer has stopped: only a restart helps, so liveness fails.
    pub fn writer_gone(&self) -> bool {
        self.tracker.lock().writer_gone
    }

    /// Records a failed append. Errors that are not about the storage (a stale sequence, a
    /// record too large) change nothing.
    pub fn append_failed(&self, err: &LogError) {
        if err.is_disk_full() || err.is_unavailable() {
            let gone = matches!(err, LogError::Closed);
            self.tracker.lock().failed(err.to_string(), gone);
        }
    }

    /// Probes now: the injected write fault (tests), then a write, `fdatasync` and delete of a
    /// scratch file in the data directory.
    ///
    /// # Errors
    /// The probe's failure, as the log would report it.
    pub async fn probe(&self) -> Result<(), LogError> {
        let generation = {
            let mut tracker = self.tracker.lock();
            tracker.observe(&self.store.write_health());
            tracker.generation
        };
        let result = self.probe_once().await;
        match &result {
            Ok(()) => self.tracker.lock().probe_passed(generation),
            Err(err) => self.tracker.lock().failed(err.to_string(), false),
        }
        result
    }

    async fn probe_once(&self) -> Result<(), LogError> {
        let path = self.store.dir().join(PROBE_FILE);
        if let Some(err) = self.faults.as_ref().and_then(FaultInjector::write_error) {
            return Err(LogError::io("probe write", path, err));
        }
        let blocking = tokio::task::spawn_blocking({
            let path = path.clone();
            move || write_probe(&path)
        });
        match tokio::time::timeout(PROBE_TIMEOUT, blocking).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(LogError::io(
                "probe write",
                path,
                std::io::Error::other("the probe task failed"),
            )),
            Err(_) => Err(LogError::io(
                "probe write",
                path,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {PROBE_TIMEOUT:?}"),
                ),
            )),
        }
    }

    /// Probes every `sick_interval` while the log cannot append, every few seconds otherwise,
    /// logging each change, until `shutdown`.
    pub async fn run(self, sick_interval: Duration, shutdown: CancellationToken) {
        let mut was = None::<String>;
        loop {
            let result = self.probe().await;
            let now = self.problem();
            match (&was, &now) {
                (None, Some(problem)) => {
                    tracing::error!(%problem, "the log cannot append: failing the Consul check")
                }
                (Some(_), None) => tracing::info!("the log can append again: passing the Consul check"),
                _ => {}
            }
            if let Err(err) = result {
                tracing::debug!(%err, "write probe failed");
            }
            let pause = if now.is_some() {
                sick_interval
            } else {
                HEALTHY_PROBE_INTERVAL
            };
            was = now;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Creates, writes, syncs and deletes the probe file.
fn write_probe(path: &Path) -> Result<(), LogError> {
    let io = |e| LogError::io("probe write", PathBuf::from(path), e);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    let written = file
        .write_all(&[0u8; PROBE_BYTES])
        .and_then(|()| file.sync_data());
    drop(file);
    let removed = fs::remove_file(path);
    written.map_err(io)?;
    removed.map_err(io)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{discovery::LeaderRecord, election::Role};

    fn leader(term: u64, now: Instant) -> LeaderState {
        LeaderState {
            role: Role::Leader,
            case: crate::election::ElectionCase::Normal,
            term,
            leader: Some(LeaderRecord {
                name: "n1".into(),
                address: "a:1".into(),
                replication_address: None,
                since: String::new(),
                term: None,
            }),
            lease_until: Some(now + Duration::from_secs(1)),
            session: Some("s".into()),
            consul_reachable: true,
            consul_denied: None,
            reason: "holds the lock".into(),
            since: SystemTime::now(),
            transitions: 0,
        }
    }

    /// Admission needs a serving leader, a log that can append and a term the log accepts; the
    /// refusal says which one failed.
    #[test]
    fn admit_checks_role_log_and_term() {
        let now = Instant::now();
        let healthy = LogFacts {
            problem: None,
            last_term: Some(5),
            lost_term: None,
        };
        assert_eq!(
            admit(&leader(5, now), now, &healthy),
            Ok(5),
            "same term as the log"
        );
        assert_eq!(admit(&leader(6, now), now, &healthy), Ok(6));
        assert_eq!(
            admit(&leader(1, now), now, &LogFacts::default()),
            Ok(1),
            "empty log"
        );
        let stale = admit(&leader(1, now), now, &healthy).unwrap_err();
        assert!(
            matches!(&stale, Refusal::Log(r) if r.contains("term 5")),
            "a term below the log's is refused before the log refuses it: {stale:?}"
        );
        let sick = LogFacts {
            problem: Some("disk full".into()),
            last_term: None,
            lost_term: None,
        };
        let refused = admit(&leader(6, now), now, &sick).unwrap_err();
        assert!(refused.reason().contains("disk full"), "{refused:?}");
        let mut follower = leader(6, now);
        follower.role = Role::Follower;
        assert!(matches!(
            admit(&follower, now, &healthy),
            Err(Refusal::NotLeader(_))
        ));
        let lapsed = now + Duration::from_secs(2);
        assert!(matches!(
            admit(&leader(6, now), lapsed, &healthy),
            Err(Refusal::NotLeader(_))
        ));
    }

    /// A leader of a term whose servable records a failed sync dropped must step down: its
    /// writes are refused and (through `/consul-check`) its session ends; not while it follows,
    /// so that it can take part in the election of the next term, and not in a later term.
    #[test]
    fn a_lost_term_is_given_up() {
        let now = Instant::now();
        let lost = LogFacts {
            problem: None,
            last_term: Some(5),
            lost_term: Some(5),
        };
        let refused = admit(&leader(5, now), now, &lost).unwrap_err();
        assert!(
            matches!(&refused, Refusal::Log(r) if r.contains("term 5") && r.contains("new term")),
            "{refused:?}"
        );
        assert!(must_step_down(&leader(5, now), &lost).is_some());
        assert!(
            must_step_down(&leader(4, now), &lost).is_some(),
            "an older term too"
        );
        assert_eq!(admit(&leader(6, now), now, &lost), Ok(6), "the next term writes");
        assert_eq!(must_step_down(&leader(6, now), &lost), None);
        let mut follower = leader(5, now);
        follower.role = Role::Follower;
        assert_eq!(
            must_step_down(&follower, &lost),
            None,
            "a follower's check passes"
        );
        assert_eq!(must_step_down(&leader(5, now), &LogFacts::default()), None);
    }

    /// A failure holds until a probe passes, and a probe older than the last failure clears
    /// nothing; a poisoned store is a problem for as long as it is poisoned, whatever the probe
    /// says; a store failure noticed late (already recovered) counts until the next probe.
    #[test]
    fn tracker_rules() {
        let healthy = WriteHealth::default();
        let mut t = Tracker::default();
        assert_eq!(t.problem(&healthy), None);
        let before = t.generation;
        t.failed("disk full".into(), false);
        assert_eq!(t.problem(&healthy).as_deref(), Some("disk full"));
        t.probe_passed(before);
        assert!(
            t.problem(&healthy).is_some(),
            "a probe from before the failure clears nothing"
        );
        t.probe_passed(t.generation);
        assert_eq!(t.problem(&healthy), None);

        let poisoned = WriteHealth {
            poisoned: Some("sync failed".into()),
            failures: 1,
            last_failure: Some("sync failed".into()),
            lost_term: None,
        };
        assert!(t.problem(&poisoned).unwrap().contains("sync failed"));
        t.probe_passed(t.generation);
        assert!(
            t.problem(&poisoned).unwrap().contains("re-verifying"),
            "a passing probe does not excuse a poisoned store"
        );
        let recovered = WriteHealth {
            poisoned: None,
            ..poisoned.clone()
        };
        assert_eq!(t.problem(&recovered), None, "the store recovered by itself");
        let unseen = WriteHealth {
            failures: 2,
            ..recovered
        };
        assert!(
            t.problem(&unseen).is_some(),
            "a failure recovered from before anyone looked still counts"
        );
        t.probe_passed(t.generation);
        assert_eq!(t.problem(&unseen), None, "until a probe passes");

        t.failed("log store closed".into(), true);
        t.probe_passed(t.generation);
        assert!(
            t.writer_gone && t.problem(&healthy).is_some(),
            "a stopped writer never recovers"
        );
    }

    /// Waits (bounded) until `cond` holds; false if it never did.
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// A failed sync poisons the store: the health reports it (so readiness and `/consul-check`
    /// fail) even though the disk probe passes, for as long as the store cannot re-verify its tail;
    /// once the store recovers by itself and a probe passes, the node is healthy again.
    #[tokio::test]
    async fn poisoned_store_fails_health_until_it_recovers_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultInjector::new();
        let mut cfg = crate::log::LogConfig::new(dir.path());
        cfg.fault_injector = Some(faults.clone());
        let store = LogStore::open(cfg).await.unwrap();
        let health = LogHealth::new(store.clone(), Some(faults.clone()));
        store.append(1, None, vec!["a".into()]).await.unwrap();
        assert_eq!(health.problem(), None);

        faults.fail_syncs_until_clear(libc::EIO);
        let err = store.append(1, None, vec!["b".into()]).await.unwrap_err();
        health.append_failed(&err);
        health.probe().await.unwrap();
        let problem = health.problem().expect("poisoned");
        assert!(problem.contains("re-verifying"), "{problem}");
        let now = Instant::now();
        let leader = leader(1, now);
        assert!(
            admit(&leader, now, &health.facts()).is_err(),
            "not ready while poisoned"
        );

        faults.clear();
        assert!(
            eventually(|| store.is_writable()).await,
            "the store recovers by itself"
        );
        health.probe().await.unwrap();
        assert_eq!(health.problem(), None);
        assert_eq!(admit(&leader, now, &health.facts()), Ok(1));
        assert_eq!(store.append(1, None, vec!["c".into()]).await.unwrap().first(), 1);
    }

    /// The probe passes on a writable directory, fails while a write fault is injected, and the
    /// health follows it both ways.
    #[tokio::test]
    async fn probe_follows_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultInjector::new();
        let mut cfg = crate::log::LogConfig::new(dir.path());
        cfg.fault_injector = Some(faults.clone());
        let store = LogStore::open(cfg).await.unwrap();
        let health = LogHealth::new(store, Some(faults.clone()));
        health.probe().await.unwrap();
        assert_eq!(health.problem(), None);
        assert!(!dir.path().join(PROBE_FILE).exists(), "the probe cleans up");
        faults.fail_writes(libc::ENOSPC);
        assert!(health.probe().await.unwrap_err().is_disk_full());
        assert!(health.problem().unwrap().contains("disk full"));
        faults.clear();
        health.probe().await.unwrap();
        assert_eq!(health.problem(), None);
    }
}
