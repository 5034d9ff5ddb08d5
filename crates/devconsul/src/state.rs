//! The dev server's whole in-memory catalog: one global Raft-like index, KV entries and their
//! tombstones, lock-delays, sessions, services and checks. Pure and synchronous: callers pass the
//! current time in, hold the mutex around each call, and wake blocking queries afterwards.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio::time::{Duration, Instant};

/// Consul's cap on any lock-delay (`structs.MaxLockDelay`).
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// The check every session binds to by default.
pub const SERF_CHECK_ID: &str = "serfHealth";

/// One KV entry, serialized with Consul's field order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DirEntry {
    /// Number of times the key has been acquired.
    pub lock_index: u64,
    /// The full key.
    pub key: String,
    /// Opaque client flags.
    pub flags: u64,
    /// Base64 on the wire, `null` when empty.
    #[serde(serialize_with = "ser_value")]
    pub value: Vec<u8>,
    /// The holding session, omitted when unheld.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Index of the write that created the key.
    pub create_index: u64,
    /// Index of the last write that changed the key.
    pub modify_index: u64,
}

/// Serializes a value as standard base64, or `null` when empty (Go's nil `[]byte`).
fn ser_value<S: serde::Serializer>(value: &[u8], ser: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    if value.is_empty() {
        ser.serialize_none()
    } else {
        ser.serialize_str(&base64::engine::general_purpose::STANDARD.encode(value))
    }
}

/// What happens to held keys when a session is invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Behavior {
    /// Keys are unlocked (the default).
    #[serde(rename = "release")]
    Release,
    /// Keys are deleted.
    #[serde(rename = "delete")]
    Delete,
}

/// A `ServiceChecks` entry of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheck {
    /// The check ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Always empty on CE.
    pub namespace: String,
}

/// A session as `session/info` reports it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Session {
    /// Random UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Free-form name.
    pub name: String,
    /// Owning node (always the dev node).
    pub node: String,
    /// Lock-delay in nanoseconds.
    pub lock_delay: u64,
    /// Invalidation behaviour.
    pub behavior: Behavior,
    /// The TTL string as given (`""` = none).
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// Node-level checks the session is bound to.
    pub node_checks: Vec<String>,
    /// Service checks the session is bound to (`null` when none).
    pub service_checks: Option<Vec<ServiceCheck>>,
    /// Deprecated `Checks` kept alongside `NodeChecks`, omitted when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// Creation index.
    pub create_index: u64,
    /// Equal to `CreateIndex`: sessions never change.
    pub modify_index: u64,
    /// The parsed TTL; `None` = never expires.
    #[serde(skip)]
    pub ttl_duration: Option<Duration>,
    /// When the TTL timer (armed at 2×TTL) fires.
    #[serde(skip)]
    pub expires_at: Option<Instant>,
}

impl Session {
    /// Whether the session is bound to check `id`.
    fn bound_to(&self, id: &str) -> bool {
        self.node_checks.iter().any(|c| c == id)
            || self.checks.iter().any(|c| c == id)
            || self.service_checks.iter().flatten().any(|c| c.id == id)
    }
}

/// A check's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Passing,
    /// Degraded; does not invalidate sessions.
    Warning,
    /// Failed; invalidates bound sessions.
    Critical,
}

impl Status {
    /// Parses Consul's lowercase spelling.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }
}

/// How a check gets its status.
#[derive(Clone, Debug)]
pub enum CheckKind {
    /// The node's Serf health: always passing.
    Serf,
    /// Updated by clients through `agent/check/pass|warn|fail|update`.
    Ttl {
        /// Critical when not updated within this long.
        ttl: Duration,
    },
    /// Probed by the server.
    Http {
        /// Target URL.
        url: String,
        /// HTTP method (default GET).
        method: String,
        /// Extra request headers.
        header: BTreeMap<String, Vec<String>>,
        /// Request body.
        body: String,
        /// Probe interval.
        interval: Duration,
        /// Probe timeout.
        timeout: Duration,
        /// Skip TLS verification.
        tls_skip_verify: bool,
    },
    /// A TCP connect probe.
    Tcp {
        /// `host:port`.
        addr: String,
        /// Probe interval.
        interval: Duration,
        /// Probe timeout.
        timeout: Duration,
    },
}

impl CheckKind {
    /// Consul's `Type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Serf => "",
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
        }
    }
}

/// A check registered on the node (serfHealth or a service's check).
#[derive(Clone, Debug)]
pub struct Check {
    /// Check ID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Current status.
    pub status: Status,
    /// Free-form notes.
    pub notes: String,
    /// Last output.
    pub output: String,
    /// Owning service ID (`""` for node checks).
    pub service_id: String,
    /// Owning service name.
    pub service_name: String,
    /// Owning service tags.
    pub service_tags: Vec<String>,
    /// How the status is produced.
    pub kind: CheckKind,
    /// `DeregisterCriticalServiceAfter`, already clamped to the minimum.
    pub deregister_after: Option<Duration>,
    /// Consecutive successes needed before turning passing.
    pub success_before_passing: u32,
    /// Consecutive failures needed before turning critical.
    pub failures_before_critical: u32,
    /// Running count of consecutive successes.
    pub successes: u32,
    /// Running count of consecutive failures.
    pub failures: u32,
    /// Since when the check has been critical.
    pub critical_since: Option<Instant>,
    /// TTL checks: when the check expires.
    pub ttl_deadline: Option<Instant>,
    /// The check definition echoed by `agent/checks`.
    pub definition: serde_json::Value,
    /// Creation index.
    pub create_index: u64,
    /// Last change index.
    pub modify_index: u64,
}

/// Service weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight when passing.
    pub passing: i64,
    /// Weight when warning.
    pub warning: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// A service registered on the node.
#[derive(Clone, Debug)]
pub struct Service {
    /// Service ID.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Tags (never null on the wire).
    pub tags: Vec<String>,
    /// Address (`""` = the node's).
    pub address: String,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Port.
    pub port: i64,
    /// Weights.
    pub weights: Weights,
    /// EnableTagOverride.
    pub enable_tag_override: bool,
    /// Creation index.
    pub create_index: u64,
    /// Last change index.
    pub modify_index: u64,
}

/// Why a session was invalidated (logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// `session/destroy`.
    Destroyed,
    /// The 2×TTL timer fired.
    TtlExpired,
    /// A bound check turned critical.
    CheckCritical(String),
    /// A bound check was deregistered.
    CheckDeregistered(String),
}

impl std::fmt::Display for Invalidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalidation::Destroyed => write!(f, "destroyed"),
            Invalidation::TtlExpired => write!(f, "TTL expired"),
            Invalidation::CheckCritical(c) => write!(f, "check '{c}' is critical"),
            Invalidation::CheckDeregistered(c) => write!(f, "check '{c}' was deregistered"),
        }
    }
}

/// Outcome of an acquire/release attempt that is not a plain bool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockError {
    /// Empty session ID.
    MissingSession,
    /// The session does not exist.
    InvalidSession(String),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::MissingSession => write!(f, "missing session"),
            LockError::InvalidSession(s) => write!(f, "invalid session \"{s}\""),
        }
    }
}

/// A session-create request after parsing and fix-ups.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Name.
    pub name: String,
    /// Node (must be the dev node).
    pub node: String,
    /// Lock-delay in nanoseconds.
    pub lock_delay: u64,
    /// Behavior.
    pub behavior: Behavior,
    /// TTL string as given.
    pub ttl: String,
    /// Parsed TTL.
    pub ttl_duration: Option<Duration>,
    /// Node checks.
    pub node_checks: Vec<String>,
    /// Service checks.
    pub service_checks: Option<Vec<ServiceCheck>>,
    /// Deprecated checks.
    pub checks: Vec<String>,
}

/// The store. Every mutation that changes something takes the next global index.
#[derive(Debug)]
pub struct Store {
    /// The global Raft-like index (last used).
    pub index: u64,
    /// Node name.
    pub node: String,
    /// Node ID (UUID).
    pub node_id: String,
    /// Index at which the node was registered.
    pub node_index: u64,
    /// KV entries by key.
    pub kv: BTreeMap<String, DirEntry>,
    /// Deleted keys and the index of their deletion (never reaped: a dev server lives briefly).
    pub tombstones: BTreeMap<String, u64>,
    /// Highest index of any KV write, deletes included.
    pub kv_index: u64,
    /// Keys in lock-delay and when it ends.
    pub lock_delays: HashMap<String, Instant>,
    /// Sessions by ID.
    pub sessions: BTreeMap<String, Session>,
    /// Highest index of any session create/destroy.
    pub sessions_index: u64,
    /// Services by ID.
    pub services: BTreeMap<String, Service>,
    /// Checks by ID (serfHealth included).
    pub checks: BTreeMap<String, Check>,
    /// Highest index of any service/check change.
    pub catalog_index: u64,
}

impl Store {
    /// A store with the node and its passing serfHealth check registered.
    pub fn new(node: &str, node_id: &str) -> Store {
        let mut store = Store {
            index: 0,
            node: node.to_string(),
            node_id: node_id.to_string(),
            node_index: 0,
            kv: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            kv_index: 0,
            lock_delays: HashMap::new(),
            sessions: BTreeMap::new(),
            sessions_index: 0,
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            catalog_index: 0,
        };
        let idx = store.next_index();
        store.node_index = idx;
        let idx = store.next_index();
        store.checks.insert(
            SERF_CHECK_ID.to_string(),
            Check {
                id: SERF_CHECK_ID.to_string(),
                name: "Serf Health Status".to_string(),
                status: Status::Passing,
                notes: String::new(),
                output: "Agent alive and reachable".to_string(),
                service_id: String::new(),
                service_name: String::new(),
                service_tags: Vec::new(),
                kind: CheckKind::Serf,
                deregister_after: None,
                success_before_passing: 0,
                failures_before_critical: 0,
                successes: 0,
                failures: 0,
                critical_since: None,
                ttl_deadline: None,
                definition: serde_json::json!({}),
                create_index: idx,
                modify_index: idx,
            },
        );
        store.catalog_index = idx;
        store
    }

    /// Takes the next global index.
    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    // ---------------------------------------------------------------- KV

    /// The index a single-key read reports: the key's ModifyIndex, else the KV table index.
    pub fn kv_key_index(&self, key: &str) -> u64 {
        self.kv.get(key).map_or(self.kv_index, |e| e.modify_index)
    }

    /// Entries under `prefix`, sorted by key.
    pub fn kv_list(&self, prefix: &str) -> Vec<&DirEntry> {
        self.kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
            .collect()
    }

    /// The index a prefix read reports: highest ModifyIndex of matches and tombstones, else the
    /// table index (rule K6).
    pub fn kv_prefix_index(&self, prefix: &str) -> u64 {
        let live = self
            .kv_list(prefix)
            .iter()
            .map(|e| e.modify_index)
            .max()
            .unwrap_or(0);
        let dead = self
            .tombstones
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(0);
        match live.max(dead) {
            0 => self.kv_index,
            i => i,
        }
    }

    /// Stores `entry` (key, value, flags, session, lock index) unless identical to what is stored
    /// (rule K12); returns whether anything changed.
    fn kv_write(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: Option<String>,
        lock_index: u64,
    ) -> bool {
        if let Some(old) = self.kv.get(key) {
            if old.value == value
                && old.flags == flags
                && old.session == session
                && old.lock_index == lock_index
            {
                return false;
            }
        }
        let idx = self.next_index();
        let create_index = self.kv.get(key).map_or(idx, |e| e.create_index);
        self.kv.insert(
            key.to_string(),
            DirEntry {
                lock_index,
                key: key.to_string(),
                flags,
                value,
                session,
                create_index,
                modify_index: idx,
            },
        );
        self.kv_index = idx;
        true
    }

    /// Plain PUT (rules K11–K13): keeps the holder, stores LockIndex 0.
    pub fn kv_set(&mut self, key: &str, value: Vec<u8>, flags: u64) -> bool {
        let session = self.kv.get(key).and_then(|e| e.session.clone());
        self.kv_write(key, value, flags, session, 0);
        true
    }

    /// CAS PUT (rule K11): `cas=0` only when absent, else only when ModifyIndex matches.
    pub fn kv_cas(&mut self, key: &str, value: Vec<u8>, flags: u64, cas: u64) -> bool {
        let ok = match self.kv.get(key) {
            None => cas == 0,
            Some(e) => cas != 0 && e.modify_index == cas,
        };
        if ok {
            self.kv_set(key, value, flags);
        }
        ok
    }

    /// Whether `key` is in lock-delay at `now`.
    pub fn in_lock_delay(&self, key: &str, now: Instant) -> bool {
        self.lock_delays.get(key).is_some_and(|until| now < *until)
    }

    /// Acquire (rule K14), evaluated in Consul's order.
    ///
    /// # Errors
    /// Missing or unknown session.
    pub fn kv_acquire(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        sid: &str,
        now: Instant,
    ) -> Result<bool, LockError> {
        if self.in_lock_delay(key, now) {
            return Ok(false);
        }
        self.kv_lock_checked(key, value, flags, sid)
    }

    /// Acquire without the lock-delay check (the transaction path checks it separately).
    pub fn kv_lock_checked(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        sid: &str,
    ) -> Result<bool, LockError> {
        if sid.is_empty() {
            return Err(LockError::MissingSession);
        }
        if !self.sessions.contains_key(sid) {
            return Err(LockError::InvalidSession(sid.to_string()));
        }
        match self.kv.get(key) {
            Some(e) if e.session.as_deref() == Some(sid) => {
                let lock_index = e.lock_index;
                self.kv_write(key, value, flags, Some(sid.to_string()), lock_index);
                Ok(true)
            }
            Some(e) if e.session.is_some() => Ok(false),
            existing => {
                let lock_index = existing.map_or(0, |e| e.lock_index) + 1;
                self.kv_write(key, value, flags, Some(sid.to_string()), lock_index);
                Ok(true)
            }
        }
    }

    /// Release (rule K15): only by the holder; replaces value and flags, keeps LockIndex.
    ///
    /// # Errors
    /// Empty session ID.
    pub fn kv_release(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        sid: &str,
    ) -> Result<bool, LockError> {
        if sid.is_empty() {
            return Err(LockError::MissingSession);
        }
        match self.kv.get(key) {
            Some(e) if e.session.as_deref() == Some(sid) => {
                let lock_index = e.lock_index;
                self.kv_write(key, value, flags, None, lock_index);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Deletes one key, leaving a tombstone; returns whether a key existed.
    fn kv_remove(&mut self, key: &str, idx: u64) -> bool {
        if self.kv.remove(key).is_some() {
            self.tombstones.insert(key.to_string(), idx);
            self.kv_index = idx;
            true
        } else {
            false
        }
    }

    /// DELETE (rule K16); with `cas`, only when ModifyIndex matches (absent → true).
    pub fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> bool {
        match (self.kv.get(key), cas) {
            (None, _) => true,
            (Some(e), Some(cas)) if e.modify_index != cas => false,
            (Some(_), _) => {
                let idx = self.next_index();
                self.kv_remove(key, idx);
                true
            }
        }
    }

    /// DELETE `?recurse`: every key under the prefix at one index.
    pub fn kv_delete_tree(&mut self, prefix: &str) {
        let keys: Vec<String> = self.kv_list(prefix).iter().map(|e| e.key.clone()).collect();
        if keys.is_empty() {
            return;
        }
        let idx = self.next_index();
        for key in keys {
            self.kv_remove(&key, idx);
        }
    }

    // ---------------------------------------------------------------- Sessions

    /// Creates a session after checking its node and checks (rule S6); arms its TTL timer.
    ///
    /// # Errors
    /// The Consul error text (returned as 500).
    pub fn session_create(&mut self, new: NewSession, now: Instant) -> Result<Session, String> {
        if new.node != self.node {
            return Err("failed inserting session: Missing node registration".to_string());
        }
        let ids = new
            .node_checks
            .iter()
            .chain(new.checks.iter())
            .chain(new.service_checks.iter().flatten().map(|c| &c.id));
        for id in ids {
            match self.checks.get(id) {
                None => {
                    return Err(format!(
                        "failed inserting session: Missing check '{id}' registration"
                    ))
                }
                Some(c) if c.status == Status::Critical => {
                    return Err(format!(
                        "failed inserting session: Check '{id}' is in critical state"
                    ))
                }
                Some(_) => {}
            }
        }
        let idx = self.next_index();
        let session = Session {
            id: uuid::Uuid::new_v4().to_string(),
            name: new.name,
            node: new.node,
            lock_delay: new.lock_delay,
            behavior: new.behavior,
            ttl: new.ttl,
            node_checks: new.node_checks,
            service_checks: new.service_checks,
            checks: new.checks,
            create_index: idx,
            modify_index: idx,
            ttl_duration: new.ttl_duration,
            expires_at: new.ttl_duration.map(|ttl| now + ttl * 2),
        };
        self.sessions.insert(session.id.clone(), session.clone());
        self.sessions_index = idx;
        Ok(session)
    }

    /// Renew (rule S9): re-arms the 2×TTL timer; not a write, so no index moves.
    pub fn session_renew(&mut self, id: &str, now: Instant) -> Option<Session> {
        let session = self.sessions.get_mut(id)?;
        session.expires_at = session.ttl_duration.map(|ttl| now + ttl * 2);
        Some(session.clone())
    }

    /// Invalidates a session at one new index (rules L2, L3). Returns false if it did not exist.
    pub fn session_invalidate(&mut self, id: &str, why: &Invalidation, now: Instant) -> bool {
        let Some(session) = self.sessions.remove(id) else {
            return false;
        };
        let idx = self.next_index();
        self.sessions_index = idx;
        let held: Vec<String> = self
            .kv
            .values()
            .filter(|e| e.session.as_deref() == Some(id))
            .map(|e| e.key.clone())
            .collect();
        for key in &held {
            match session.behavior {
                Behavior::Release => {
                    if let Some(e) = self.kv.get_mut(key) {
                        e.session = None;
                        e.modify_index = idx;
                        self.kv_index = idx;
                    }
                }
                Behavior::Delete => {
                    self.kv_remove(key, idx);
                }
            }
            if session.lock_delay > 0 {
                let delay = Duration::from_nanos(session.lock_delay).min(MAX_LOCK_DELAY);
                self.lock_delays.insert(key.clone(), now + delay);
            }
        }
        self.lock_delays.retain(|_, until| *until > now);
        tracing::info!(session = %id, name = %session.name, reason = %why, released_keys = held.len(), index = idx, "session invalidated");
        true
    }

    /// Invalidates every session bound to check `check_id`.
    fn invalidate_bound(&mut self, check_id: &str, why: &Invalidation, now: Instant) {
        let bound: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.bound_to(check_id))
            .map(|s| s.id.clone())
            .collect();
        for id in bound {
            self.session_invalidate(&id, why, now);
        }
    }

    // ---------------------------------------------------------------- Services and checks

    /// Registers (or replaces) a service and its checks (rule A1). Checks keep the status of a
    /// previous check with the same ID; with `replace_checks`, the service's other checks go.
    pub fn service_register(
        &mut self,
        mut service: Service,
        checks: Vec<Check>,
        replace_checks: bool,
        now: Instant,
    ) {
        let idx = self.next_index();
        self.catalog_index = idx;
        service.create_index = self.services.get(&service.id).map_or(idx, |s| s.create_index);
        service.modify_index = idx;
        let new_ids: Vec<String> = checks.iter().map(|c| c.id.clone()).collect();
        if replace_checks {
            let stale: Vec<String> = self
                .checks
                .values()
                .filter(|c| c.service_id == service.id && !new_ids.contains(&c.id))
                .map(|c| c.id.clone())
                .collect();
            for id in stale {
                self.check_remove(&id, now);
            }
        }
        for mut check in checks {
            check.create_index = idx;
            check.modify_index = idx;
            if let Some(old) = self.checks.get(&check.id) {
                check.create_index = old.create_index;
                check.status = old.status;
                check.output = old.output.clone();
                check.critical_since = old.critical_since;
            }
            if check.status == Status::Critical && check.critical_since.is_none() {
                check.critical_since = Some(now);
            }
            if let CheckKind::Ttl { ttl } = check.kind {
                check.ttl_deadline = Some(now + ttl);
            }
            self.checks.insert(check.id.clone(), check);
        }
        self.services.insert(service.id.clone(), service);
    }

    /// Removes one check and invalidates sessions bound to it.
    fn check_remove(&mut self, id: &str, now: Instant) {
        if self.checks.remove(id).is_some() {
            self.catalog_index = self.next_index();
            self.invalidate_bound(id, &Invalidation::CheckDeregistered(id.to_string()), now);
        }
    }

    /// Deregisters a service and all its checks (rule A6). Returns the removed check IDs, or
    /// `None` if the service is unknown.
    pub fn service_deregister(&mut self, id: &str, now: Instant) -> Option<Vec<String>> {
        self.services.remove(id)?;
        self.catalog_index = self.next_index();
        let ids: Vec<String> = self
            .checks
            .values()
            .filter(|c| c.service_id == id)
            .map(|c| c.id.clone())
            .collect();
        for check in &ids {
            self.check_remove(check, now);
        }
        tracing::info!(service = %id, "service deregistered");
        Some(ids)
    }

    /// Deregisters a single check (the serf check cannot be removed). Returns false if unknown.
    pub fn check_deregister(&mut self, id: &str, now: Instant) -> bool {
        if id == SERF_CHECK_ID || !self.checks.contains_key(id) {
            return false;
        }
        self.check_remove(id, now);
        true
    }

    /// Sets a check's status and output directly (TTL updates, rule A5); re-arms a TTL timer.
    /// A change bumps the catalog index; turning critical invalidates bound sessions (rule A8).
    pub fn check_set(&mut self, id: &str, status: Status, output: String, now: Instant) {
        let Some(check) = self.checks.get_mut(id) else {
            return;
        };
        if let CheckKind::Ttl { ttl } = check.kind {
            check.ttl_deadline = Some(now + ttl);
        }
        if check.status == status && check.output == output {
            return;
        }
        let was = check.status;
        check.status = status;
        check.output = output;
        check.critical_since = match status {
            Status::Critical => check.critical_since.or(Some(now)),
            _ => None,
        };
        let idx = self.next_index();
        self.catalog_index = idx;
        if let Some(check) = self.checks.get_mut(id) {
            check.modify_index = idx;
        }
        if status == Status::Critical && was != Status::Critical {
            tracing::info!(check = %id, "check is critical");
        }
        if status == Status::Critical {
            self.invalidate_bound(id, &Invalidation::CheckCritical(id.to_string()), now);
        }
    }

    /// Records a probe result, honouring SuccessBeforePassing / FailuresBeforeCritical.
    pub fn check_probe_result(&mut self, id: &str, status: Status, output: String, now: Instant) {
        let Some(check) = self.checks.get_mut(id) else {
            return;
        };
        match status {
            Status::Passing => {
                check.failures = 0;
                check.successes = check.successes.saturating_add(1);
                if check.successes < check.success_before_passing {
                    return;
                }
            }
            Status::Critical => {
                check.successes = 0;
                check.failures = check.failures.saturating_add(1);
                if check.failures < check.failures_before_critical {
                    return;
                }
            }
            Status::Warning => {}
        }
        self.check_set(id, status, output, now);
    }

    /// Fires due timers: expired sessions (rule S11) and TTL checks (rule A4). Returns the next
    /// deadline, if any.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        let due: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.expires_at.is_some_and(|t| t <= now))
            .map(|s| s.id.clone())
            .collect();
        for id in due {
            self.session_invalidate(&id, &Invalidation::TtlExpired, now);
        }
        let ttl_due: Vec<(String, String)> = self
            .checks
            .values()
            .filter(|c| c.ttl_deadline.is_some_and(|t| t <= now))
            .map(|c| (c.id.clone(), c.output.clone()))
            .collect();
        for (id, last) in ttl_due {
            if let Some(c) = self.checks.get_mut(&id) {
                c.ttl_deadline = None;
            }
            let output = if last.is_empty() || last.starts_with("TTL expired") {
                "TTL expired".to_string()
            } else {
                format!("TTL expired (last output before timeout follows): {last}")
            };
            self.check_set(&id, Status::Critical, output, now);
            if let Some(c) = self.checks.get_mut(&id) {
                c.ttl_deadline = None;
            }
        }
        let sessions = self.sessions.values().filter_map(|s| s.expires_at);
        let checks = self.checks.values().filter_map(|c| c.ttl_deadline);
        sessions.chain(checks).min()
    }

    /// Deregisters services with a check critical for longer than its
    /// `DeregisterCriticalServiceAfter` (rule A7). Returns the removed service IDs.
    pub fn reap_critical(&mut self, now: Instant) -> Vec<String> {
        let mut doomed: Vec<String> = self
            .checks
            .values()
            .filter(|c| match (c.deregister_after, c.critical_since) {
                (Some(after), Some(since)) => now.saturating_duration_since(since) > after,
                _ => false,
            })
            .map(|c| c.service_id.clone())
            .filter(|s| !s.is_empty())
            .collect();
        doomed.sort();
        doomed.dedup();
        for id in &doomed {
            tracing::info!(service = %id, "deregistering service: check critical longer than DeregisterCriticalServiceAfter");
            self.service_deregister(id, now);
        }
        doomed
    }

    /// The health/catalog index for one service name (any catalog change).
    pub fn service_index(&self) -> u64 {
        self.catalog_index.max(self.node_index)
    }

    /// Instances of service `name`, sorted by ID.
    pub fn service_instances(&self, name: &str) -> Vec<&Service> {
        self.services.values().filter(|s| s.name == name).collect()
    }

    /// Checks shown with an instance: node checks, then the service's.
    pub fn instance_checks(&self, service_id: &str) -> Vec<&Check> {
        let node = self.checks.values().filter(|c| c.service_id.is_empty());
        let own = self.checks.values().filter(|c| c.service_id == service_id);
        node.chain(own).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new("dev", "00000000-0000-0000-0000-000000000000")
    }

    fn new_session(store: &mut Store, lock_delay: u64, behavior: Behavior, now: Instant) -> String {
        let new = NewSession {
            name: String::new(),
            node: "dev".into(),
            lock_delay,
            behavior,
            ttl: String::new(),
            ttl_duration: None,
            node_checks: vec![SERF_CHECK_ID.into()],
            service_checks: None,
            checks: vec![],
        };
        store.session_create(new, now).map(|s| s.id).unwrap_or_default()
    }

    /// K12: an identical write changes nothing and takes no index.
    #[test]
    fn identical_write_takes_no_index() {
        let mut s = store();
        s.kv_set("a", b"1".to_vec(), 0);
        let idx = s.index;
        s.kv_set("a", b"1".to_vec(), 0);
        assert_eq!(s.index, idx);
        s.kv_set("a", b"2".to_vec(), 0);
        assert_eq!(s.index, idx + 1);
        assert_eq!(s.kv["a"].create_index, idx);
    }

    /// K14/L2/L3: acquire bumps LockIndex; invalidation releases at one index and sets lock-delay.
    #[test]
    fn acquire_invalidate_lock_delay() {
        let mut s = store();
        let now = Instant::now();
        let sid = new_session(&mut s, 5_000_000_000, Behavior::Release, now);
        assert_eq!(s.kv_acquire("k", b"v".to_vec(), 0, &sid, now), Ok(true));
        assert_eq!(s.kv["k"].lock_index, 1);
        assert_eq!(s.kv_acquire("k", b"w".to_vec(), 0, &sid, now), Ok(true));
        assert_eq!(s.kv["k"].lock_index, 1);
        assert!(s.session_invalidate(&sid, &Invalidation::Destroyed, now));
        assert_eq!(s.kv["k"].session, None);
        assert_eq!(s.kv["k"].modify_index, s.index);
        assert!(s.in_lock_delay("k", now + Duration::from_secs(4)));
        assert!(!s.in_lock_delay("k", now + Duration::from_secs(6)));
        let sid2 = new_session(&mut s, 0, Behavior::Release, now);
        assert_eq!(s.kv_acquire("k", vec![], 0, &sid2, now), Ok(false));
        assert_eq!(
            s.kv_acquire("k", vec![], 0, &sid2, now + Duration::from_secs(6)),
            Ok(true)
        );
        assert_eq!(s.kv["k"].lock_index, 2);
    }

    /// L3: lock-delay is capped at 60s (MaxLockDelay).
    #[test]
    fn lock_delay_is_capped() {
        let mut s = store();
        let now = Instant::now();
        let sid = new_session(&mut s, 600_000_000_000, Behavior::Release, now);
        assert_eq!(s.kv_acquire("k", vec![], 0, &sid, now), Ok(true));
        s.session_invalidate(&sid, &Invalidation::TtlExpired, now);
        assert!(s.in_lock_delay("k", now + Duration::from_secs(59)));
        assert!(!s.in_lock_delay("k", now + Duration::from_secs(61)));
    }

    /// A8/L1: a check turning critical invalidates bound sessions; warning does not.
    #[test]
    fn critical_check_invalidates_bound_sessions() {
        let mut s = store();
        let now = Instant::now();
        let service = Service {
            id: "svc".into(),
            name: "svc".into(),
            tags: vec![],
            address: String::new(),
            meta: BTreeMap::new(),
            port: 0,
            weights: Weights::default(),
            enable_tag_override: false,
            create_index: 0,
            modify_index: 0,
        };
        let mut check = s.checks[SERF_CHECK_ID].clone();
        check.id = "c".into();
        check.service_id = "svc".into();
        check.kind = CheckKind::Ttl {
            ttl: Duration::from_secs(60),
        };
        check.status = Status::Passing;
        s.service_register(service, vec![check], false, now);
        let sid = new_session(&mut s, 0, Behavior::Release, now);
        if let Some(session) = s.sessions.get_mut(&sid) {
            session.checks.push("c".into());
        }
        s.check_set("c", Status::Warning, String::new(), now);
        assert!(s.sessions.contains_key(&sid));
        s.check_set("c", Status::Critical, String::new(), now);
        assert!(!s.sessions.contains_key(&sid));
    }

    /// A2: FailuresBeforeCritical / SuccessBeforePassing delay status changes by consecutive results.
    #[test]
    fn probe_thresholds() {
        let mut s = store();
        let now = Instant::now();
        let mut check = s.checks[SERF_CHECK_ID].clone();
        check.id = "h".into();
        check.failures_before_critical = 2;
        check.success_before_passing = 2;
        s.checks.insert("h".into(), check);
        s.check_probe_result("h", Status::Critical, "down".into(), now);
        assert_eq!(s.checks["h"].status, Status::Passing);
        s.check_probe_result("h", Status::Critical, "down".into(), now);
        assert_eq!(s.checks["h"].status, Status::Critical);
        s.check_probe_result("h", Status::Passing, "up".into(), now);
        assert_eq!(s.checks["h"].status, Status::Critical);
        s.check_probe_result("h", Status::Passing, "up".into(), now);
        assert_eq!(s.checks["h"].status, Status::Passing);
    }

    /// K14: empty and unknown sessions are errors.
    #[test]
    fn acquire_errors() {
        let mut s = store();
        let now = Instant::now();
        assert_eq!(
            s.kv_acquire("k", vec![], 0, "", now),
            Err(LockError::MissingSession)
        );
        assert_eq!(
            s.kv_acquire("k", vec![], 0, "nope", now),
            Err(LockError::InvalidSession("nope".into()))
        );
    }

    /// L2: a delete-behaviour session deletes its keys and leaves tombstones (K16).
    #[test]
    fn delete_behavior_leaves_tombstone() {
        let mut s = store();
        let now = Instant::now();
        let sid = new_session(&mut s, 0, Behavior::Delete, now);
        assert_eq!(s.kv_acquire("p/k", vec![], 0, &sid, now), Ok(true));
        s.session_invalidate(&sid, &Invalidation::TtlExpired, now);
        assert!(!s.kv.contains_key("p/k"));
        assert_eq!(s.kv_prefix_index("p/"), s.index);
        assert!(s.lock_delays.is_empty());
    }

    /// S11: the TTL timer fires at 2×TTL, not before.
    #[test]
    fn ttl_fires_at_twice_ttl() {
        let mut s = store();
        let now = Instant::now();
        let mut new = NewSession {
            name: String::new(),
            node: "dev".into(),
            lock_delay: 0,
            behavior: Behavior::Release,
            ttl: "10s".into(),
            ttl_duration: Some(Duration::from_secs(10)),
            node_checks: vec![],
            service_checks: None,
            checks: vec![],
        };
        new.node_checks.clear();
        let sid = s.session_create(new, now).map(|s| s.id).unwrap_or_default();
        s.expire(now + Duration::from_secs(15));
        assert!(s.sessions.contains_key(&sid));
        s.expire(now + Duration::from_secs(20));
        assert!(!s.sessions.contains_key(&sid));
    }
}
