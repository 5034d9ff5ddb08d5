//! Leader election through Consul: a session bound to the node's own `/consul-check` (which fails
//! while its log cannot append) and its agent's `serfHealth`, a KV lock acquired with it, a
//! *lease* on the monotonic clock that decides whether this node may accept writes, and a *term
//! fence*: a lock whose term is not above the log's last term is given back. The [`Elector`]
//! publishes a [`LeaderState`] on a watch channel; the HTTP layer, the probes and the status page
//! read it. See `docs/election.md` for why the lease is safe.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::{
    consul::{
        Backoff, CheckDefinition, ConsulClient, ConsulError, ServiceCheckRef, ServiceRegistration,
        SessionRequest, Watcher,
    },
    discovery::{leader_from_kv, CurrentLeader, LeaderRecord},
    shutdown::CancellationToken,
};

/// How long one blocking query on the election key may wait.
const WATCH_WAIT: Duration = Duration::from_secs(30);
/// Consul's minimum for `DeregisterCriticalServiceAfter`: a crashed node leaves the catalog after it.
const DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(60);
/// Bound on each step of a graceful resignation, so SIGTERM never hangs on a dead Consul.
const RESIGN_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// `--session-ttl` unless given: how long Consul keeps a silent node's session.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// `--lock-delay` unless given: with the lease margin, it bounds how long a lost leader may write.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(2);
/// `--renew-interval` unless given: at most half the default lease (lock-delay minus margin).
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(500);
/// `--check-interval` unless given: how soon Consul notices a dead node.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What the elector needs to know.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// This node's name (unique in the cluster).
    pub name: String,
    /// `host:port` others dial to reach this node's HTTP API.
    pub advertise_addr: String,
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
    /// Pause between acquire attempts while a lock-delay is in force.
    pub acquire_retry: Duration,
}

impl ElectionConfig {
    /// The defaults of `simpleloggers node` for a node called `name` reachable at `advertise_addr`.
    pub fn new(name: impl Into<String>, advertise_addr: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            advertise_addr: advertise_addr.into(),
            service_name: crate::discovery::DEFAULT_SERVICE_NAME.into(),
            election_key: crate::discovery::DEFAULT_ELECTION_KEY.into(),
            session_ttl: DEFAULT_SESSION_TTL,
            lock_delay: DEFAULT_LOCK_DELAY,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            check_interval: DEFAULT_CHECK_INTERVAL,
            lease_margin: default_lease_margin(DEFAULT_LOCK_DELAY),
            acquire_retry: Duration::from_millis(100),
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

    /// How long a renewal may take before it is useless.
    fn renew_timeout(&self) -> Duration {
        (self.lock_delay / 2).max(Duration::from_millis(200))
    }

    /// Checks the timing settings against each other; the message names the flag to change.
    ///
    /// # Errors
    /// A lease that could never be held or renewed in time.
    pub fn validate(&self) -> Result<(), String> {
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

/// A snapshot of the election as this node sees it.
#[derive(Clone, Debug)]
pub struct LeaderState {
    /// This node's role.
    pub role: Role,
    /// Our term while leader; otherwise the term of the leader we know of (0: none).
    pub term: u64,
    /// The current leader as the election key names it (ourselves when leading).
    pub leader: Option<LeaderRecord>,
    /// Until when we may accept writes (leader only).
    pub lease_until: Option<Instant>,
    /// Our Consul session.
    pub session: Option<String>,
    /// Whether the last Consul request succeeded.
    pub consul_reachable: bool,
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
    /// The leader to send to instead, when known.
    pub leader: Option<LeaderRecord>,
}

impl LeaderState {
    fn initial() -> Self {
        Self {
            role: Role::Starting,
            term: 0,
            leader: None,
            lease_until: None,
            session: None,
            consul_reachable: false,
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
            leader: self.leader.clone(),
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
    /// The leader as the key shows it.
    leader: Option<CurrentLeader>,
    consul_reachable: bool,
    stopping: bool,
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
            leader: self.leader.as_ref().map(|l| l.record.clone()),
            lease_until: if role == Role::Leader {
                self.lease_until
            } else {
                None
            },
            session: self.session.clone(),
            consul_reachable: self.consul_reachable,
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

/// The log's last term, read when a lock is acquired (see [`Elector::start_fenced`]).
type TermFloor = Box<dyn Fn() -> Option<u64> + Send + Sync>;

struct Shared {
    consul: ConsulClient,
    config: ElectionConfig,
    /// The log's last term: a lock acquired with a term not above it is released again.
    term_floor: TermFloor,
    core: Mutex<Core>,
    state: watch::Sender<LeaderState>,
    /// Wakes the lock loop when a session appears or is lost.
    session_changed: Notify,
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
                || next.leader != state.leader
                || next.lease_until != state.lease_until
                || next.session != state.session
                || next.consul_reachable != state.consul_reachable
                || next.reason != state.reason;
            *state = next;
            modified
        });
    }

    fn our_record(&self) -> LeaderRecord {
        LeaderRecord {
            name: self.config.name.clone(),
            address: self.config.advertise_addr.clone(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}

/// Runs the election for one node. Cheap to clone.
#[derive(Clone)]
pub struct Elector {
    shared: Arc<Shared>,
}

impl Elector {
    /// Starts registering, creating a session and contending for the lock in the background,
    /// with no log to fence against (every term is accepted).
    pub fn start(consul: ConsulClient, config: ElectionConfig) -> Self {
        Self::start_fenced(consul, config, || None)
    }

    /// Like [`Elector::start`], but a lock acquired in a term not above `last_term()` (the log's
    /// last term) is released at once instead of led: the log would refuse every write in that
    /// term. This happens when Consul's state was lost and `LockIndex` restarted; each acquire
    /// raises `LockIndex` by one, so contending again soon yields a term above the log's.
    pub fn start_fenced(
        consul: ConsulClient,
        config: ElectionConfig,
        last_term: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        let (state, _) = watch::channel(LeaderState::initial());
        let shared = Arc::new(Shared {
            consul: consul.with_timeout(config.renew_timeout()),
            config,
            term_floor: Box::new(last_term),
            core: Mutex::new(Core {
                session: None,
                lease_until: None,
                holding: None,
                leader: None,
                consul_reachable: false,
                stopping: false,
                reason: "starting: registering with Consul".into(),
            }),
            state,
            session_changed: Notify::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(keep_session(shared.clone()));
        tokio::spawn(contend(shared.clone()));
        tokio::spawn(watch_lease(shared.clone()));
        Self { shared }
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

    /// Stops taking writes and reports not-ready at once; the lock is still held so that
    /// in-flight writes can finish. Follow with [`Elector::resign`].
    pub fn begin_shutdown(&self) {
        self.shared.stop.cancel();
        self.shared.update(|core| {
            core.stopping = true;
            core.reason = "shutting down".into();
        });
    }

    /// Hands leadership over: releases the lock (so no lock-delay applies), destroys the
    /// session and deregisters the service. Each step is bounded; failures are logged, since
    /// Consul will clean up by itself through the session's checks.
    pub async fn resign(&self) {
        self.begin_shutdown();
        let shared = &self.shared;
        let (session, held) = {
            let core = shared.core();
            (core.session.clone(), core.holding.is_some())
        };
        let consul = shared.consul.with_timeout(RESIGN_STEP_TIMEOUT);
        if let Some(session) = &session {
            if held {
                let value = serde_json::to_vec(&shared.our_record()).unwrap_or_default();
                match consul
                    .kv_release(&shared.config.election_key, session, value)
                    .await
                {
                    Ok(true) => tracing::info!(key = %shared.config.election_key, "released the leader lock"),
                    Ok(false) => tracing::warn!("the leader lock was no longer ours to release"),
                    Err(err) => tracing::warn!(%err, "could not release the leader lock"),
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
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot create a Consul session yet; retrying");
                    shared.update(|core| {
                        core.consul_reachable = !err.is_unavailable();
                        core.reason = format!("waiting for a Consul session: {err}");
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
            timeout: Some(config.check_interval.max(Duration::from_millis(500))),
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

fn split_host_port(addr: &str) -> (String, Option<u16>) {
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

/// Follows the election key with blocking queries and acquires it when it is free.
async fn contend(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut watcher = Watcher::new(WATCH_WAIT);
    // Locks given back in a row because their term was not above the log's (logged once).
    let mut refused = 0u64;
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
            _ = shared.session_changed.notified() => { watcher.reset(); continue; }
            fetched = watcher.next(|opts| {
                let consul = shared.consul.clone().with_timeout(Duration::from_secs(5));
                let key = config.election_key.clone();
                async move { consul.kv_get(&key, &opts).await }
            }) => fetched,
        };
        let pair = match fetched {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(%err, "watch of the election key failed");
                shared.update(|core| {
                    core.consul_reachable = false;
                    core.reason = format!("cannot read the election key: {err}");
                });
                continue;
            }
        };
        let holder = pair.as_ref().and_then(|p| p.session.clone());
        let leader = leader_from_kv(pair.as_ref());
        if holder.as_deref() == Some(session.as_str()) {
            let term = pair.as_ref().map_or(0, |p| p.lock_index);
            let new_term = shared.core().holding != Some(term);
            if let Some(last) = (shared.term_floor)().filter(|last| new_term && term <= *last) {
                refuse_term(&shared, &session, term, last, refused).await;
                refused += 1;
                watcher.reset();
                continue;
            }
            if refused > 0 {
                tracing::info!(
                    term,
                    refused,
                    "leading after giving back locks whose term the log was past"
                );
                refused = 0;
            }
            shared.update(|core| {
                core.holding = Some(term);
                core.leader = leader;
                core.consul_reachable = true;
                core.reason = "holds the lock".into();
            });
            continue;
        }
        shared.update(|core| {
            if core.holding.is_some() {
                tracing::warn!(holder = ?holder, "the election key no longer shows our session: stepping down");
            }
            core.holding = None;
            core.leader = leader.clone();
            core.consul_reachable = true;
            core.reason = match &leader {
                Some(l) => format!("{} leads in term {}", l.record.name, l.term),
                None => "no leader; contending".into(),
            };
        });
        if holder.is_some() {
            continue;
        }
        // Nobody holds the key: try to take it.
        let value = match serde_json::to_vec(&shared.our_record()) {
            Ok(v) => v,
            Err(err) => {
                tracing::error!(%err, "cannot encode the leader record");
                continue;
            }
        };
        let sent = Instant::now();
        match shared
            .consul
            .kv_acquire(&config.election_key, &session, value)
            .await
        {
            Ok(true) => {
                shared.update(|core| {
                    let until = sent + config.lock_delay - config.lease_margin;
                    core.lease_until = Some(core.lease_until.map_or(until, |u| u.max(until)));
                });
                // The term is the LockIndex read back; the next (immediate) read sets it.
                watcher.reset();
            }
            Ok(false) => {
                // Lost a race or a lock-delay is in force: nothing will wake a blocking query,
                // so look again shortly.
                sleep_or_stop(&shared, config.acquire_retry).await;
                watcher.reset();
            }
            Err(err) => {
                tracing::debug!(%err, "acquire failed");
                if err.is_unavailable() {
                    // An invalid session answers 500 too: let the keeper find out with a renewal.
                    sleep_or_stop(&shared, config.acquire_retry).await;
                }
                watcher.reset();
            }
        }
    }
}

/// Gives back a lock acquired in `term`, which the log (already at `last`) would refuse writes in:
/// the next acquire, by any node, gets a higher `LockIndex`.
async fn refuse_term(shared: &Shared, session: &str, term: u64, last: u64, refused_before: u64) {
    let reason = format!(
        "acquired the lock in term {term}, but the log already holds term {last} \
         (Consul's state was reset?): giving it back until the term is higher"
    );
    if refused_before == 0 {
        tracing::warn!(term, log_last_term = last, "{reason}");
    } else {
        tracing::debug!(term, log_last_term = last, "{reason}");
    }
    shared.update(|core| {
        core.holding = None;
        core.reason = reason;
    });
    let value = serde_json::to_vec(&shared.our_record()).unwrap_or_default();
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
            leader: None,
            consul_reachable: true,
            stopping: false,
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
    }

    /// Advertise addresses split into the host and port Consul registers.
    #[test]
    fn host_port() {
        assert_eq!(split_host_port("10.0.0.1:3000"), ("10.0.0.1".into(), Some(3000)));
        assert_eq!(split_host_port("[::1]:3000"), ("::1".into(), Some(3000)));
        assert_eq!(split_host_port("node-0"), ("node-0".into(), None));
    }
}
