//! Leader election through Consul: a session bound to the node's own `/consul-check` (which fails
//! while its log cannot append) and its agent's `serfHealth`, a KV lock taken with it in ONE
//! transaction that also checks the ISR key and hands out the next term through the term key
//! (`E/term`), and a *lease* on the monotonic clock that decides whether this node may accept
//! writes. Who may contend is decided by [`bootstrap::decide`](crate::replication::bootstrap::decide)
//! (normal, cluster start, Consul state loss, unclean, not in the ISR) from one read of the keys
//! under the election key, including every node's report, which this module keeps current. The
//! [`Elector`] publishes a [`LeaderState`] on a watch channel; the HTTP layer, the probes and the
//! status page read it. See `docs/election.md` for why the lease is safe.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tokio::sync::{watch, Notify};

pub use crate::replication::bootstrap::ElectionCase;
use crate::{
    consul::{
        Backoff, CheckDefinition, ConsulClient, ConsulError, DeleteOptions, KvPair, QueryOptions,
        ServiceCheckRef, ServiceRegistration, SessionRequest, TxnOp, TxnOutcome, Watcher,
    },
    discovery::{leader_from_kv, CurrentLeader, LeaderRecord},
    replication::{
        bootstrap::{self, Decision, Inputs, IsrView, Plan, TermView},
        isr::{IsrHandle, IsrRecord, LocalReplica, Member, ReplicationKeys, Report, TermRecord},
    },
    shutdown::CancellationToken,
};

/// How long one blocking query on the election key (and the keys under it) may wait.
const WATCH_WAIT: Duration = Duration::from_secs(30);
/// A node rewrites its report at most this often (when its log changed).
const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// ... and at least this often, so a report deleted by hand comes back (an unchanged rewrite by
/// the same session changes nothing in Consul and wakes no watcher).
const REPORT_REFRESH: Duration = Duration::from_secs(5);
/// Consul's minimum for `DeregisterCriticalServiceAfter`: a crashed node leaves the catalog after it.
const DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(60);
/// Bound on each step of a graceful resignation, so SIGTERM never hangs on a dead Consul.
const RESIGN_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// `--session-ttl` unless given: how long Consul keeps a silent node's session.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// `--lock-delay` unless given: how long Consul keeps the lock from everyone after a crashed
/// leader's session is invalidated, hence most of a crash failover; with the lease margin it also
/// bounds the lease (437.5 ms by default, see `docs/election.md`).
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_millis(500);
/// `--renew-interval` unless given: a quarter of the default lock-delay, so three renewals fit in
/// one lease (lock-delay minus margin) and one slow or lost renewal does not lapse it.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(125);
/// `--check-interval` unless given: how soon Consul notices a dead node. Consul runs HTTP checks
/// at most once a second, so this is also the shortest that takes effect on a real agent.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Consul's `MaxLockDelay`: a longer lock-delay is silently cut to it, so the lease may not rely on more.
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Shortest timeout of the HTTP check: `/consul-check` reads in-memory state only, but a loaded
/// node must not fail it (and lose its session) for answering slowly.
const MIN_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// What the elector needs to know.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// This node's name (unique in the cluster).
    pub name: String,
    /// `host:port` others dial to reach this node's HTTP API.
    pub advertise_addr: String,
    /// `host:port` followers dial for replication when it is served on its own listener
    /// (`--replication-listen`); `None`: at `advertise_addr`.
    pub replication_addr: Option<String>,
    /// Consul service name all nodes register under.
    pub service_name: String,
    /// The KV key whose lock is leadership.
    pub election_key: String,
    /// Session TTL (Consul may let a session live up to 2× this after the last renewal).
    pub session_ttl: Duration,
    /// Session lock-delay: how long Consul keeps the key from others after invalidating us.
    pub lock_delay: Duration,
    /// How often the session is renewed; each success extends the lease.
    pub renew_interval: Duration,
    /// Interval of the HTTP check Consul runs against `/consul-check`.
    pub check_interval: Duration,
    /// Subtracted from the lease for clock-rate differences and scheduling delays.
    pub lease_margin: Duration,
    /// Pause before contending again after a transaction that failed for a reason other than
    /// the lock, and between lock attempts once the lock-delay should have ended (after a lock
    /// refusal the next attempt waits until the key has been seen free for `lock_delay`).
    pub acquire_retry: Duration,
}

impl ElectionConfig {
    /// The defaults of `simpleloggers node` for a node called `name` reachable at `advertise_addr`.
    pub fn new(name: impl Into<String>, advertise_addr: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            advertise_addr: advertise_addr.into(),
            replication_addr: None,
            service_name: crate::discovery::DEFAULT_SERVICE_NAME.into(),
            election_key: crate::discovery::DEFAULT_ELECTION_KEY.into(),
            session_ttl: DEFAULT_SESSION_TTL,
            lock_delay: DEFAULT_LOCK_DELAY,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            check_interval: DEFAULT_CHECK_INTERVAL,
            lease_margin: default_lease_margin(DEFAULT_LOCK_DELAY),
            acquire_retry: Duration::from_millis(25),
        }
    }

    /// The Consul service instance id of this node.
    pub fn service_id(&self) -> String {
        format!("{}-{}", self.service_name, self.name)
    }

    /// The id of the HTTP check on `/consul-check` the session is bound to.
    pub fn check_id(&self) -> String {
        format!("{}:consul-check", self.service_id())
    }

    /// Timeout of the HTTP check: half the interval, at least [`MIN_CHECK_TIMEOUT`]. A leader
    /// whose address stops answering (no refusal: a vanished pod IP) is critical after it.
    fn check_timeout(&self) -> Duration {
        (self.check_interval / 2).max(MIN_CHECK_TIMEOUT)
    }

    /// How long a renewal may take before it is useless.
    fn renew_timeout(&self) -> Duration {
        (self.lock_delay / 2).max(Duration::from_millis(200))
    }

    /// Checks the timing settings against each other; the message names the flag to change.
    ///
    /// # Errors
    /// A lease that could never be held or renewed in time.
    pub fn validate(&self) -> Result<(), String> {
        if self.lock_delay > MAX_LOCK_DELAY {
            return Err(format!(
                "--lock-delay ({:?}) must be at most {MAX_LOCK_DELAY:?}: Consul caps the lock-delay there, \
                 and the lease relies on the whole of it",
                self.lock_delay
            ));
        }
        if self.lock_delay <= self.lease_margin {
            return Err(format!(
                "--lock-delay ({:?}) must exceed the lease margin ({:?}): the lease is lock-delay minus the margin",
                self.lock_delay, self.lease_margin
            ));
        }
        if self.renew_interval.is_zero() || self.renew_interval * 2 > self.lock_delay - self.lease_margin {
            return Err(format!(
                "--renew-interval ({:?}) must be at most half of --lock-delay minus the lease margin ({:?}), \
                 or the lease lapses between renewals",
                self.renew_interval,
                self.lock_delay - self.lease_margin
            ));
        }
        if self.session_ttl < self.lock_delay {
            return Err(format!(
                "--session-ttl ({:?}) must be at least --lock-delay ({:?})",
                self.session_ttl, self.lock_delay
            ));
        }
        if self.check_interval.is_zero() {
            return Err("--check-interval must be positive".into());
        }
        Ok(())
    }
}

/// The default safety margin: an eighth of the lock-delay, between 50 ms and 500 ms.
pub fn default_lease_margin(lock_delay: Duration) -> Duration {
    (lock_delay / 8).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// This node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// No session yet (registering, or Consul unreachable since start).
    Starting,
    /// Has a session, does not hold the lock.
    Follower,
    /// Holds the lock with a valid lease.
    Leader,
    /// Shutting down: takes no writes, reports not ready.
    Stopping,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Follower => "follower",
            Role::Leader => "leader",
            Role::Stopping => "stopping",
        }
    }
}

/// What the elector needs besides Consul: the replication settings and the local log.
#[derive(Clone)]
pub struct ReplicaSetup {
    /// `--replicas`: how many nodes hold the log.
    pub replicas: u32,
    /// `--min-insync` (resolved: a majority unless given).
    pub min_insync: u32,
    /// `--unclean-leader-election`.
    pub unclean_leader_election: bool,
    /// The local log: its incarnation, last term and durable end (reported, and the floor of the
    /// term this node leads in).
    pub local: Arc<dyn LocalReplica>,
}

impl ReplicaSetup {
    /// One replica (`--replicas 1`): the node starts the cluster alone and leads.
    pub fn single(local: Arc<dyn LocalReplica>) -> Self {
        Self {
            replicas: 1,
            min_insync: 1,
            unclean_leader_election: false,
            local,
        }
    }

    /// This node as an ISR member.
    fn member(&self, name: &str) -> Member {
        Member {
            name: name.to_string(),
            incarnation: self.local.incarnation(),
        }
    }
}

impl std::fmt::Debug for ReplicaSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSetup")
            .field("replicas", &self.replicas)
            .field("min_insync", &self.min_insync)
            .field("unclean_leader_election", &self.unclean_leader_election)
            .finish_non_exhaustive()
    }
}

/// A snapshot of the election as this node sees it.
#[derive(Clone, Debug)]
pub struct LeaderState {
    /// This node's role.
    pub role: Role,
    /// Our term while leader (handed out by the term key when we took the lock); otherwise the
    /// term of the leader we know of (0: none).
    pub term: u64,
    /// While leading: the case this term was won in. Otherwise: the case this node is in now
    /// (`not_in_isr`, waiting for reports after a Consul state loss, ...).
    pub case: ElectionCase,
    /// The current leader as the election key names it (ourselves when leading).
    pub leader: Option<LeaderRecord>,
    /// Until when we may accept writes (leader only).
    pub lease_until: Option<Instant>,
    /// Our Consul session.
    pub session: Option<String>,
    /// Whether the last Consul request succeeded.
    pub consul_reachable: bool,
    /// The last permission Consul's ACLs denied this node (the error names it and what to
    /// grant), until a report write or a contend succeeds again.
    pub consul_denied: Option<String>,
    /// Why we are in this role (for logs, `/readyz` and `/api/v1/status`).
    pub reason: String,
    /// When the role last changed.
    pub since: SystemTime,
    /// How many times this node's role changed.
    pub transitions: u64,
}

/// Why a write cannot be accepted here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLeader {
    /// Our role.
    pub role: Role,
    /// Why (lease lapsed, another node leads, ...).
    pub reason: String,
    /// The leader to send to instead, when known (boxed: refusals travel in `Result`s).
    pub leader: Option<Box<LeaderRecord>>,
}

impl LeaderState {
    fn initial() -> Self {
        Self {
            role: Role::Starting,
            term: 0,
            case: ElectionCase::Normal,
            leader: None,
            lease_until: None,
            session: None,
            consul_reachable: false,
            consul_denied: None,
            reason: "starting: registering with Consul".into(),
            since: SystemTime::now(),
            transitions: 0,
        }
    }

    /// The term to write with, if a write may be accepted at `now`: only by the leader, and
    /// only while its lease holds. This is checked on every write and again before its
    /// acknowledgement.
    ///
    /// # Errors
    /// Any other role, or a lapsed lease.
    pub fn write_term(&self, now: Instant) -> Result<u64, NotLeader> {
        let not_leader = |reason: String| NotLeader {
            role: self.role,
            reason,
            leader: self.leader.clone().map(Box::new),
        };
        match (self.role, self.lease_until) {
            (Role::Leader, Some(until)) if now < until => Ok(self.term),
            (Role::Leader, _) => Err(not_leader("the leader's lease has lapsed".into())),
            (Role::Stopping, _) => Err(not_leader("this node is shutting down".into())),
            (role, _) => Err(not_leader(format!(
                "this node is a {}: {}",
                role.as_str(),
                self.reason
            ))),
        }
    }

    /// Time left on the lease (leader only).
    pub fn lease_remaining(&self, now: Instant) -> Option<Duration> {
        match self.role {
            Role::Leader => self.lease_until.map(|u| u.saturating_duration_since(now)),
            _ => None,
        }
    }
}

/// Mutable election facts, shared by the session keeper and the lock loop; the published
/// [`LeaderState`] is derived from them by [`Core::derive`].
#[derive(Debug)]
struct Core {
    session: Option<String>,
    /// Latest moment a renewal or acquire was *sent* and then succeeded, plus lock-delay minus
    /// the margin.
    lease_until: Option<Instant>,
    /// The term while the election key shows our session.
    holding: Option<u64>,
    /// The case the held term was won in.
    won_case: ElectionCase,
    /// The case as last decided (shown while not leading).
    case: ElectionCase,
    /// The leader as the key shows it.
    leader: Option<CurrentLeader>,
    consul_reachable: bool,
    /// See [`LeaderState::consul_denied`].
    consul_denied: Option<String>,
    stopping: bool,
    /// [`Elector::resign`] has run: a second call does nothing.
    resigned: bool,
    reason: String,
}

impl Core {
    fn derive(&self, now: Instant, previous: &LeaderState) -> LeaderState {
        let leading = self.holding.is_some() && self.lease_until.is_some_and(|u| now < u);
        let role = if self.stopping {
            Role::Stopping
        } else if self.session.is_none() {
            Role::Starting
        } else if leading {
            Role::Leader
        } else {
            Role::Follower
        };
        let term = match role {
            Role::Leader => self.holding.unwrap_or_default(),
            _ => self.leader.as_ref().map_or(previous.term, |l| l.term),
        };
        let changed = role != previous.role || (role == Role::Leader && term != previous.term);
        LeaderState {
            role,
            term,
            case: if role == Role::Leader {
                self.won_case.clone()
            } else {
                self.case.clone()
            },
            leader: self.leader.as_ref().map(|l| l.record.clone()),
            lease_until: if role == Role::Leader {
                self.lease_until
            } else {
                None
            },
            session: self.session.clone(),
            consul_reachable: self.consul_reachable,
            consul_denied: self.consul_denied.clone(),
            reason: self.reason.clone(),
            since: if changed {
                SystemTime::now()
            } else {
                previous.since
            },
            transitions: previous.transitions + u64::from(changed && previous.role != Role::Starting),
        }
    }
}

struct Shared {
    consul: ConsulClient,
    config: ElectionConfig,
    /// `E`, `E/term`, `E/isr`, `E/reports/`.
    keys: ReplicationKeys,
    /// Replication settings and the local log.
    setup: ReplicaSetup,
    /// Follows `E/isr`; handed to replication.
    isr: IsrHandle,
    core: Mutex<Core>,
    state: watch::Sender<LeaderState>,
    /// Wakes the lock loop when a session appears or is lost.
    session_changed: Notify,
    /// Wakes the report keeper when a session appears.
    report_now: Notify,
    /// Stops both background loops.
    stop: CancellationToken,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock cannot leave Core half-updated in a way that matters
        // more than stopping the node would, so recover the guard.
        self.core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to the facts and publishes the derived state, logging role changes.
    fn update(&self, change: impl FnOnce(&mut Core)) {
        let mut core = self.core();
        change(&mut core);
        let now = Instant::now();
        self.state.send_if_modified(|state| {
            let next = core.derive(now, state);
            if next.role != state.role || (next.role == Role::Leader && next.term != state.term) {
                tracing::info!(
                    from = state.role.as_str(),
                    to = next.role.as_str(),
                    term = next.term,
                    reason = %next.reason,
                    "leadership transition"
                );
            }
            let modified = next.role != state.role
                || next.term != state.term
                || next.case != state.case
                || next.leader != state.leader
                || next.lease_until != state.lease_until
                || next.session != state.session
                || next.consul_reachable != state.consul_reachable
                || next.consul_denied != state.consul_denied
                || next.reason != state.reason;
            *state = next;
            modified
        });
    }

    fn our_record(&self, term: Option<u64>) -> LeaderRecord {
        LeaderRecord {
            name: self.config.name.clone(),
            address: self.config.advertise_addr.clone(),
            replication_address: self.config.replication_addr.clone(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            term,
        }
    }

    /// This node's report as of now.
    fn own_report(&self) -> Report {
        let local = &self.setup.local;
        Report {
            name: self.config.name.clone(),
            incarnation: local.incarnation(),
            last_term: local.last_term(),
            log_end: local.log_end(),
            address: self.config.advertise_addr.clone(),
        }
    }
}

/// Runs the election for one node. Cheap to clone.
#[derive(Clone)]
pub struct Elector {
    shared: Arc<Shared>,
}

impl Elector {
    /// Starts registering, creating a session, keeping this node's report current and contending
    /// for the lock in the background, as [`ReplicaSetup`] and the keys under the election key
    /// allow (see [`bootstrap::decide`]). A won term is `max(log's last term, term key, ...) + 1`,
    /// handed out atomically with the lock, so it is above every term the log holds even after
    /// Consul lost its state.
    pub fn start_replicated(consul: ConsulClient, config: ElectionConfig, setup: ReplicaSetup) -> Self {
        let (state, _) = watch::channel(LeaderState::initial());
        let stop = CancellationToken::new();
        let isr = IsrHandle::start(consul.clone(), &config.election_key, stop.child_token());
        let shared = Arc::new(Shared {
            consul: consul.with_timeout(config.renew_timeout()),
            keys: ReplicationKeys::new(&config.election_key),
            config,
            setup,
            isr,
            core: Mutex::new(Core {
                session: None,
                lease_until: None,
                holding: None,
                won_case: ElectionCase::Normal,
                case: ElectionCase::Normal,
                leader: None,
                consul_reachable: false,
                consul_denied: None,
                stopping: false,
                resigned: false,
                reason: "starting: registering with Consul".into(),
            }),
            state,
            session_changed: Notify::new(),
            report_now: Notify::new(),
            stop,
        });
        tokio::spawn(keep_session(shared.clone()));
        tokio::spawn(keep_report(shared.clone()));
        tokio::spawn(contend(shared.clone()));
        tokio::spawn(watch_lease(shared.clone()));
        Self { shared }
    }

    /// The ISR key, followed with blocking queries; changed only through this node's session.
    pub fn isr(&self) -> IsrHandle {
        self.shared.isr.clone()
    }

    /// A receiver of every published state.
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.shared.state.subscribe()
    }

    /// The latest published state.
    pub fn current(&self) -> LeaderState {
        self.shared.state.borrow().clone()
    }

    /// Runs `f` on the latest published state without cloning it (for the write path).
    pub fn with_current<R>(&self, f: impl FnOnce(&LeaderState) -> R) -> R {
        f(&self.shared.state.borrow())
    }

    /// The term to write with now, if this node may accept a write.
    ///
    /// # Errors
    /// Not the leader, or the lease has lapsed.
    pub fn write_term(&self) -> Result<u64, NotLeader> {
        self.shared.state.borrow().write_term(Instant::now())
    }

    /// The configuration.
    pub fn config(&self) -> &ElectionConfig {
        &self.shared.config
    }

    /// Stops taking writes and reports not-ready at once; the lock is still held. Follow with
    /// [`Elector::resign`].
    pub fn begin_shutdown(&self) {
        self.shared.stop.cancel();
        self.shared.update(|core| {
            core.stopping = true;
            core.reason = "shutting down".into();
        });
    }

    /// Hands leadership over: releases the lock (so no lock-delay applies), destroys the
    /// session and deregisters the service. Each step is bounded; failures are logged, since
    /// Consul will clean up by itself through the session's checks. Runs once; later calls
    /// return at once.
    pub async fn resign(&self) {
        self.begin_shutdown();
        let shared = &self.shared;
        let (session, held) = {
            let mut core = shared.core();
            if std::mem::replace(&mut core.resigned, true) {
                return;
            }
            (core.session.clone(), core.holding.is_some())
        };
        let consul = shared.consul.with_timeout(RESIGN_STEP_TIMEOUT);
        if let Some(session) = &session {
            let report = shared.keys.report(&shared.config.name);
            let mut report_deleted = false;
            if held {
                // The lock and our replica report go in one transaction: the next leader, which
                // can only take the lock after this, never sees our report still there, so it
                // drops us from the ISR at its first look instead of a poll later (issue 14:
                // the graceful handover's tail). Deleting the report first would cost a round
                // trip before the release.
                let value = serde_json::to_vec(&shared.our_record(None)).unwrap_or_default();
                let ops = [
                    TxnOp::Unlock {
                        key: shared.config.election_key.clone(),
                        value,
                        flags: 0,
                        session: session.clone(),
                    },
                    TxnOp::Delete { key: report.clone() },
                ];
                match consul.txn(&ops).await {
                    Ok(TxnOutcome::Committed(_)) => {
                        report_deleted = true;
                        tracing::info!(key = %shared.config.election_key, "released the leader lock");
                    }
                    Ok(TxnOutcome::RolledBack(errors)) => {
                        tracing::warn!(?errors, "the leader lock was no longer ours to release");
                    }
                    Err(err) => tracing::warn!(%err, "could not release the leader lock"),
                }
            }
            // Deleted before the session goes, so no lock-delay is left on it for our next start.
            if !report_deleted {
                if let Err(err) = consul.kv_delete(&report, &DeleteOptions::default()).await {
                    tracing::debug!(%err, "could not delete our report");
                }
            }
            if let Err(err) = consul.session_destroy(session).await {
                tracing::warn!(%err, "could not destroy the session");
            }
        }
        if let Err(err) = consul.agent_service_deregister(&shared.config.service_id()).await {
            tracing::warn!(%err, "could not deregister the service");
        }
        shared.update(|core| {
            core.holding = None;
            core.session = None;
        });
    }
}

/// Registers the service, creates the session and renews it; each successful renewal extends
/// the lease to (time it was sent + lock-delay − margin).
async fn keep_session(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut ticker = tokio::time::interval(config.renew_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let session = shared.core().session.clone();
        let Some(session) = session else {
            match establish_session(&shared).await {
                Ok(id) => {
                    backoff.reset();
                    tracing::info!(session = %id, "created Consul session");
                    shared.update(|core| {
                        core.session = Some(id);
                        core.consul_reachable = true;
                        core.reason = "session created; contending for the lock".into();
                    });
                    shared.session_changed.notify_one();
                    shared.report_now.notify_one();
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot create a Consul session yet; retrying");
                    shared.update(|core| {
                        core.consul_reachable = !err.is_unavailable();
                        core.reason = format!("waiting for a Consul session: {err}");
                        if err.is_permission_denied() {
                            core.consul_denied = Some(err.to_string());
                        }
                    });
                    sleep_or_stop(&shared, backoff.next_delay()).await;
                }
            }
            continue;
        };
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let sent = Instant::now();
        match shared.consul.session_renew(&session).await {
            Ok(_) => shared.update(|core| {
                if core.session.as_deref() == Some(session.as_str()) {
                    let until = sent + config.lock_delay - config.lease_margin;
                    core.lease_until = Some(core.lease_until.map_or(until, |u| u.max(until)));
                }
                core.consul_reachable = true;
            }),
            Err(err) if err.is_not_found() => {
                let term = shared.core().holding;
                tracing::warn!(session = %session, ?term, reason = "renewal answered 404: a bound check failed, the TTL expired or the session was destroyed", "Consul invalidated our session");
                shared.update(|core| {
                    core.session = None;
                    core.holding = None;
                    core.lease_until = None;
                    core.consul_reachable = true;
                    core.reason =
                        "Consul invalidated the session (a bound check failed or its TTL expired)".into();
                });
                shared.session_changed.notify_one();
            }
            Err(err) => {
                tracing::warn!(%err, "session renewal failed; the lease runs out unless a renewal succeeds");
                shared.update(|core| {
                    core.consul_reachable = false;
                    core.reason = format!("cannot renew the session: {err}");
                });
            }
        }
    }
}

/// Registers this node's service with its `/consul-check` check and creates a session bound to
/// that check and to the agent's `serfHealth`. A freshly registered check starts critical, and
/// Consul refuses sessions bound to critical checks, so creation is retried until it passes.
async fn establish_session(shared: &Shared) -> Result<String, ConsulError> {
    let config = &shared.config;
    let (host, port) = split_host_port(&config.advertise_addr);
    let registration = ServiceRegistration {
        id: config.service_id(),
        name: config.service_name.clone(),
        address: host,
        port,
        meta: [("node_name".to_string(), config.name.clone())]
            .into_iter()
            .collect(),
        checks: vec![CheckDefinition {
            check_id: config.check_id(),
            name: format!("{} /consul-check", config.name),
            http: Some(format!("http://{}/consul-check", config.advertise_addr)),
            interval: Some(config.check_interval),
            timeout: Some(config.check_timeout()),
            deregister_critical_service_after: Some(DEREGISTER_CRITICAL_AFTER),
            ..CheckDefinition::default()
        }],
        ..ServiceRegistration::default()
    };
    shared.consul.agent_service_register(&registration).await?;
    let request = SessionRequest {
        name: format!("simpleloggers {}", config.name),
        lock_delay: Some(config.lock_delay),
        ttl: Some(config.session_ttl),
        node_checks: Some(vec!["serfHealth".into()]),
        service_checks: vec![ServiceCheckRef {
            id: config.check_id(),
            namespace: String::new(),
        }],
        ..SessionRequest::default()
    };
    // Wait (bounded by the check interval a few times over) for the first check run to pass.
    let deadline = Instant::now() + config.check_interval * 5 + Duration::from_secs(1);
    loop {
        match shared.consul.session_create(&request).await {
            Ok(id) => return Ok(id),
            Err(ConsulError::Unavailable {
                status: Some(_),
                ref message,
                ..
            }) if message.contains("critical") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

pub(crate) fn split_host_port(addr: &str) -> (String, Option<u16>) {
    match addr.rsplit_once(':') {
        Some((host, port)) => match port.parse() {
            Ok(port) => (
                host.trim_start_matches('[').trim_end_matches(']').to_string(),
                Some(port),
            ),
            Err(_) => (addr.to_string(), None),
        },
        None => (addr.to_string(), None),
    }
}

/// One read of every key under the election key: the lock, the term key, the ISR key and the
/// live reports.
struct View {
    /// `E`.
    election: Option<KvPair>,
    /// `E/term`, decoded.
    term: TermView,
    /// `E/term`'s value when it is a term record.
    term_record: Option<TermRecord>,
    /// `E/isr`: absent (`Ok(None)`), present, or not an ISR (`Err`).
    isr: Result<Option<IsrRecord>, ()>,
    /// Reports whose key a session holds.
    reports: Vec<Report>,
}

impl View {
    fn parse(keys: &ReplicationKeys, pairs: Vec<KvPair>) -> Self {
        let mut view = View {
            election: None,
            term: TermView::Absent,
            term_record: None,
            isr: Ok(None),
            reports: Vec::new(),
        };
        for pair in pairs {
            if pair.key == keys.election {
                view.election = Some(pair);
            } else if pair.key == keys.term {
                match serde_json::from_slice::<TermRecord>(&pair.value) {
                    Ok(record) => {
                        view.term = TermView::Present {
                            term: record.term,
                            index: pair.modify_index,
                        };
                        view.term_record = Some(record);
                    }
                    Err(_) => view.term = TermView::Unreadable,
                }
            } else if pair.key == keys.isr {
                view.isr = IsrRecord::from_kv(Some(&pair)).map_err(|_| ());
            } else if pair.key.starts_with(&keys.reports) && pair.session.is_some() {
                match serde_json::from_slice::<Report>(&pair.value) {
                    Ok(report) => view.reports.push(report),
                    Err(err) => tracing::debug!(key = %pair.key, %err, "ignoring an unreadable report"),
                }
            }
        }
        view
    }

    /// The current leader: its term from the term key when the term key names the holding
    /// session, else from its record (or `LockIndex` for a record without a term).
    fn leader(&self) -> Option<CurrentLeader> {
        let mut leader = leader_from_kv(self.election.as_ref())?;
        if let Some(record) = self.term_record.as_ref().filter(|r| r.session == leader.session) {
            leader.term = record.term;
        }
        Some(leader)
    }
}

/// Follows the election key and the keys under it with blocking queries and, when the lock is
/// free and [`bootstrap::decide`] says this node may, contends with one transaction.
async fn contend(shared: Arc<Shared>) {
    let config = &shared.config;
    let keys = &shared.keys;
    let mut watcher = Watcher::new(WATCH_WAIT).consistent();
    // The last wait/defer reason logged, so each is logged once.
    let mut logged = String::new();
    // When the key was first seen free in this stretch: a lock-delay left by a crashed holder
    // ends at most `lock_delay` after that (Consul released the key before we saw it free).
    let mut free_since: Option<Instant> = None;
    // After a refused attempt: when to try again. Until then the blocking query keeps watching,
    // so a node that lost to another still learns of the new leader at once.
    let mut retry_at: Option<Instant> = None;
    loop {
        let session = shared.core().session.clone();
        let Some(session) = session else {
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = shared.session_changed.notified() => continue,
            }
        };
        let fetched = tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = shared.session_changed.notified() => { watcher.reset(); retry_at = None; continue; }
            () = sleep_until_opt(retry_at) => { watcher.reset(); retry_at = None; continue; }
            fetched = watcher.next(|opts| {
                let consul = shared.consul.clone().with_timeout(Duration::from_secs(5));
                let prefix = keys.election.clone();
                async move { consul.kv_list(&prefix, &opts).await }
            }) => fetched,
        };
        let view = match fetched {
            Ok(pairs) => View::parse(keys, pairs),
            Err(err) => {
                if err.is_permission_denied() {
                    tracing::warn!(%err, "Consul refused the watch of the election key");
                } else {
                    tracing::debug!(%err, "watch of the election key failed");
                }
                shared.update(|core| {
                    core.consul_reachable = !err.is_unavailable();
                    core.reason = format!("cannot read the election key: {err}");
                    if err.is_permission_denied() {
                        core.consul_denied = Some(err.to_string());
                    }
                });
                continue;
            }
        };
        let holder = view.election.as_ref().and_then(|p| p.session.clone());
        if holder.is_some() {
            free_since = None;
            retry_at = None;
        } else {
            free_since.get_or_insert_with(Instant::now);
        }
        let leader = view.leader();
        if holder.as_deref() == Some(session.as_str()) {
            if shared.core().holding.is_none() && !adopt(&shared, &session, &view).await {
                watcher.reset();
                continue;
            }
            shared.update(|core| {
                core.leader = leader;
                core.consul_reachable = true;
                core.reason = "holds the lock".into();
            });
            continue;
        }
        let own = shared.setup.member(&config.name);
        let isr = match &view.isr {
            Ok(Some(record)) => IsrView::Present(record),
            Ok(None) => IsrView::Absent,
            Err(()) => IsrView::Unreadable,
        };
        let decision = bootstrap::decide(&Inputs {
            own: &own,
            own_last_term: shared.setup.local.last_term(),
            isr,
            term_key: view.term,
            reports: &view.reports,
            replicas: shared.setup.replicas,
            min_insync: shared.setup.min_insync,
            unclean: shared.setup.unclean_leader_election,
        });
        shared.update(|core| {
            if core.holding.is_some() {
                tracing::warn!(holder = ?holder, "the election key no longer shows our session: stepping down");
            }
            core.holding = None;
            core.leader = leader.clone();
            core.consul_reachable = true;
            core.case = decision.case().clone();
            core.reason = match (&leader, &decision) {
                (Some(l), _) => format!("{} leads in term {}", l.record.name, l.term),
                (None, Decision::Contend(_)) => "no leader; contending".into(),
                (None, Decision::Defer { contender, case }) => {
                    format!("no leader; {contender} is to contend ({})", case.as_str())
                }
                (None, Decision::Wait { reason, .. }) => format!("no leader; {reason}"),
            };
        });
        if holder.is_some() {
            continue;
        }
        let plan = match decision {
            Decision::Contend(plan) => plan,
            Decision::Defer { contender, case } => {
                let line = format!("{contender} is to contend ({})", case.as_str());
                if logged != line {
                    tracing::info!(
                        contender,
                        case = case.as_str(),
                        "no leader; another node is to contend"
                    );
                    logged = line;
                }
                continue;
            }
            Decision::Wait { case, reason } => {
                if logged != reason {
                    tracing::info!(case = case.as_str(), %reason, "no leader, and this node may not contend yet");
                    logged = reason;
                }
                continue;
            }
        };
        logged.clear();
        if retry_at.is_some_and(|at| Instant::now() < at) {
            // Something else under the key changed (a report); the pause still runs.
            continue;
        }
        retry_at = None;
        let pause = match try_plan(&shared, &session, plan).await {
            Attempt::Won => continue,
            // A lock-delay is in force (or another session just took the key, which the
            // blocking query shows): nothing may change on the key in the first case, so try
            // again when it must have ended.
            Attempt::LockRefused => acquire_pause(free_since, Instant::now(), config),
            // The ISR or term key changed since it was read, or Consul failed: read again soon.
            Attempt::Failed => config.acquire_retry,
        };
        retry_at = Some(Instant::now() + pause);
    }
}

/// Sleeps until `at`; never resolves for `None`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// How long to wait before contending again after a refused attempt on a key first seen free at
/// `free_since`: until the lock-delay a crashed holder left must have ended (`free_since +
/// lock-delay`, since Consul released the key no later than we saw it free), and at least
/// `acquire_retry` (the pace once it should have ended, e.g. for a holder whose session had a
/// longer lock-delay than ours).
fn acquire_pause(free_since: Option<Instant>, now: Instant, config: &ElectionConfig) -> Duration {
    free_since
        .map_or(Duration::ZERO, |seen| {
            (seen + config.lock_delay).saturating_duration_since(now)
        })
        .max(config.acquire_retry)
}

/// How one contend transaction ended.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// It committed: we lead in the plan's term.
    Won,
    /// Consul refused the lock operation: a lock-delay is in force, or another session holds
    /// the key by now.
    LockRefused,
    /// Another operation failed (the ISR or term key changed since it was read), or the request.
    Failed,
}

/// Sends the contend transaction of `plan`.
async fn try_plan(shared: &Shared, session: &str, plan: Plan) -> Attempt {
    let config = &shared.config;
    let record = shared.our_record(Some(plan.term));
    let term_record = TermRecord {
        term: plan.term,
        name: config.name.clone(),
        session: session.to_string(),
    };
    let ops = match (serde_json::to_vec(&record), serde_json::to_vec(&term_record)) {
        (Ok(leader_value), Ok(term_value)) => plan.ops(&shared.keys, session, leader_value, term_value),
        (Err(err), _) | (_, Err(err)) => Err(err),
    };
    let ops = match ops {
        Ok(ops) => ops,
        Err(err) => {
            tracing::error!(%err, "cannot encode the contend transaction");
            return Attempt::Failed;
        }
    };
    let lock_op = ops
        .iter()
        .position(|op| matches!(op, TxnOp::Lock { key, .. } if *key == config.election_key));
    let sent = Instant::now();
    match shared.consul.txn(&ops).await {
        Ok(TxnOutcome::Committed(_)) => {
            match plan.case {
                ElectionCase::Unclean => tracing::error!(
                    term = plan.term,
                    "unclean leader election (--unclean-leader-election): leading without every \
                     replica's report; acknowledged messages may be lost"
                ),
                ElectionCase::Normal => {}
                ref case => tracing::info!(
                    term = plan.term,
                    case = case.as_str(),
                    "created the in-sync set with this node alone"
                ),
            }
            shared.update(|core| {
                let until = sent + config.lock_delay - config.lease_margin;
                core.lease_until = Some(core.lease_until.map_or(until, |u| u.max(until)));
                core.holding = Some(plan.term);
                core.won_case = plan.case.clone();
                core.leader = Some(CurrentLeader {
                    record,
                    term: plan.term,
                    session: session.to_string(),
                });
                core.consul_reachable = true;
                core.reason = "holds the lock".into();
            });
            Attempt::Won
        }
        Ok(TxnOutcome::RolledBack(errors)) => {
            tracing::debug!(?errors, term = plan.term, "contend transaction rolled back");
            if errors.iter().any(|e| Some(e.op_index) == lock_op) {
                Attempt::LockRefused
            } else {
                Attempt::Failed
            }
        }
        Err(err) if err.is_permission_denied() => {
            tracing::warn!(%err, term = plan.term, "Consul refused the contend transaction");
            shared.update(|core| {
                core.reason = format!("cannot contend for the lock: {err}");
                core.consul_denied = Some(err.to_string());
            });
            Attempt::Failed
        }
        Err(err) => {
            // An invalid session answers 409/500 too: the keeper finds out with a renewal.
            tracing::debug!(%err, "contend transaction failed");
            Attempt::Failed
        }
    }
}

/// The key shows our session although no transaction of ours was seen to commit (its answer was
/// lost): lead in the term the term key gives our session, or give back a lock that has none.
/// True when the lock is adopted.
async fn adopt(shared: &Shared, session: &str, view: &View) -> bool {
    if let Some(record) = view.term_record.as_ref().filter(|r| r.session == session) {
        tracing::info!(
            term = record.term,
            "the election key shows our session: leading in the term the term key gives it"
        );
        // The lease is what the session's renewals (and earlier transactions) earned: each
        // proves the session alive when it was sent, whenever the lock was taken.
        let term = record.term;
        shared.update(|core| {
            core.holding = Some(term);
            core.won_case = core.case.clone();
        });
        return true;
    }
    tracing::warn!("the election key shows our session without a term of ours: giving the lock back");
    let value = serde_json::to_vec(&shared.our_record(None)).unwrap_or_default();
    match shared
        .consul
        .kv_release(&shared.config.election_key, session, value)
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::debug!("the lock was no longer ours to give back"),
        Err(err) => {
            tracing::warn!(%err, "could not give the lock back; retrying");
            sleep_or_stop(shared, shared.config.acquire_retry).await;
        }
    }
    false
}

/// Keeps `E/reports/<name>` current: acquired with our session (so it counts only while we are
/// alive), rewritten when the log's last term or end changed, at most every [`REPORT_INTERVAL`].
async fn keep_report(shared: Arc<Shared>) {
    let key = shared.keys.report(&shared.config.name);
    let mut ticker = tokio::time::interval(REPORT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written: Option<(String, Report, Instant)> = None;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = ticker.tick() => {}
            _ = shared.report_now.notified() => {}
        }
        let Some(session) = shared.core().session.clone() else {
            written = None;
            continue;
        };
        let report = shared.own_report();
        if written
            .as_ref()
            .is_some_and(|(s, r, at)| *s == session && *r == report && at.elapsed() < REPORT_REFRESH)
        {
            continue;
        }
        let value = match serde_json::to_vec(&report) {
            Ok(v) => v,
            Err(err) => {
                tracing::error!(%err, "cannot encode our report");
                continue;
            }
        };
        match shared.consul.kv_acquire(&key, &session, value).await {
            Ok(true) => {
                written = Some((session, report, Instant::now()));
                let was_denied = shared.core().consul_denied.is_some();
                if was_denied {
                    shared.update(|core| core.consul_denied = None);
                }
            }
            // A lock-delay left by a previous session of ours, or that session still holds it.
            Ok(false) => tracing::debug!(key, "cannot take our report key yet; retrying"),
            Err(err) if err.is_permission_denied() => {
                tracing::warn!(%err, key, "Consul refused our report; retrying");
                shared.update(|core| core.consul_denied = Some(err.to_string()));
            }
            Err(err) => tracing::debug!(%err, key, "writing our report failed; retrying"),
        }
    }
}

/// Reads the keys under the election key once (for tests and `status`).
///
/// # Errors
/// Consul could not be read.
pub async fn read_reports(consul: &ConsulClient, election_key: &str) -> Result<Vec<Report>, ConsulError> {
    let keys = ReplicationKeys::new(election_key);
    let (pairs, _) = consul.kv_list(&keys.reports, &QueryOptions::default()).await?;
    Ok(View::parse(&keys, pairs).reports)
}

/// Republishes the state when the lease lapses, so the role follows the clock even when no
/// Consul answer arrives (writes and probes check the clock themselves anyway).
async fn watch_lease(shared: Arc<Shared>) {
    let mut rx = shared.state.subscribe();
    loop {
        let until = rx.borrow_and_update().lease_until;
        let lapse = async {
            match until {
                Some(until) => tokio::time::sleep_until(until.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            _ = lapse => shared.update(|core| {
                if core.lease_until.is_some_and(|u| u <= Instant::now()) {
                    core.reason = "the lease lapsed: no successful renewal in time".into();
                }
            }),
        }
    }
}

async fn sleep_or_stop(shared: &Shared, pause: Duration) {
    tokio::select! {
        _ = shared.stop.cancelled() => {}
        _ = tokio::time::sleep(pause) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> Core {
        Core {
            session: Some("s".into()),
            lease_until: None,
            holding: None,
            won_case: ElectionCase::Normal,
            case: ElectionCase::Normal,
            leader: None,
            consul_reachable: true,
            consul_denied: None,
            stopping: false,
            resigned: false,
            reason: String::new(),
        }
    }

    /// Leadership needs the lock *and* a lease in the future; a lapsed lease demotes at once.
    #[test]
    fn leader_needs_lock_and_lease() {
        let now = Instant::now();
        let prev = LeaderState::initial();
        let mut c = core();
        c.holding = Some(4);
        assert_eq!(c.derive(now, &prev).role, Role::Follower, "no lease yet");
        c.lease_until = Some(now + Duration::from_secs(1));
        let s = c.derive(now, &prev);
        assert_eq!((s.role, s.term), (Role::Leader, 4));
        assert_eq!(s.write_term(now), Ok(4));
        let later = now + Duration::from_secs(2);
        assert!(
            s.write_term(later).is_err(),
            "the lease is checked against the clock, not the role"
        );
        assert_eq!(c.derive(later, &s).role, Role::Follower);
    }

    /// A stopping node is never leader, whatever it holds; without a session it is starting.
    #[test]
    fn stopping_and_starting() {
        let now = Instant::now();
        let prev = LeaderState::initial();
        let mut c = core();
        c.holding = Some(1);
        c.lease_until = Some(now + Duration::from_secs(5));
        c.stopping = true;
        let s = c.derive(now, &prev);
        assert_eq!(s.role, Role::Stopping);
        assert_eq!(s.write_term(now).unwrap_err().role, Role::Stopping);
        let mut c = core();
        c.session = None;
        assert_eq!(c.derive(now, &prev).role, Role::Starting);
    }

    /// Timing settings that could never yield a usable lease are refused, naming the flag.
    #[test]
    fn validate_names_the_flag() {
        let mut c = ElectionConfig::new("n", "127.0.0.1:1");
        assert!(c.validate().is_ok());
        c.renew_interval = Duration::from_secs(1);
        assert!(c.validate().unwrap_err().contains("--renew-interval"));
        let mut c = ElectionConfig::new("n", "127.0.0.1:1");
        c.lock_delay = Duration::ZERO;
        assert!(c.validate().unwrap_err().contains("--lock-delay"));
        c.lock_delay = Duration::from_secs(61);
        c.lease_margin = default_lease_margin(c.lock_delay);
        assert!(c.validate().unwrap_err().contains("at most 60s"));
    }

    /// After a refused acquire the node waits until the lock-delay must have ended, counted from
    /// when it first saw the key free, then retries at the `acquire_retry` pace.
    #[test]
    fn acquire_pause_waits_out_the_lock_delay() {
        let c = ElectionConfig::new("n", "127.0.0.1:1");
        let seen = Instant::now();
        let at = |ms| seen + Duration::from_millis(ms);
        assert_eq!(
            acquire_pause(Some(seen), at(100), &c),
            c.lock_delay - Duration::from_millis(100)
        );
        assert_eq!(acquire_pause(Some(seen), at(490), &c), c.acquire_retry);
        assert_eq!(acquire_pause(Some(seen), at(2000), &c), c.acquire_retry);
        assert_eq!(acquire_pause(None, at(0), &c), c.acquire_retry);
    }

    /// The default timings keep the lease proof's inequalities: lease = lock-delay − margin > 0,
    /// at least two renewals per lease, a renewal that times out before the lease it would
    /// extend lapses, and a check timeout no longer than the check interval.
    #[test]
    fn default_timings_fit_the_lease() {
        let c = ElectionConfig::new("n", "127.0.0.1:1");
        assert!(c.validate().is_ok());
        let lease = c.lock_delay - c.lease_margin;
        assert_eq!(lease, Duration::from_micros(437_500));
        assert!(c.renew_interval * 3 <= lease);
        assert!(c.renew_timeout() < lease);
        assert!(c.check_timeout() <= c.check_interval);
    }

    /// Advertise addresses split into the host and port Consul registers.
    #[test]
    fn host_port() {
        assert_eq!(split_host_port("10.0.0.1:3000"), ("10.0.0.1".into(), Some(3000)));
        assert_eq!(split_host_port("[::1]:3000"), ("::1".into(), Some(3000)));
        assert_eq!(split_host_port("node-0"), ("node-0".into(), None));
    }
}
