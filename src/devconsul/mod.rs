//! Embedded, in-memory, single-node Consul-compatible dev server (`simpleloggers dev-consul`):
//! the subset of Consul's HTTP API that simpleloggers and independent Consul clients use, with
//! Consul's shapes, status codes and timing rules (see `docs/dev-consul.md`).
//!
//! # Layout
//! - [`state`]: the pure store (index, KV, tombstones, lock-delays, sessions, services, checks).
//! - [`duration`]: Go duration parsing/formatting.
//! - `http`: router, ACL, common headers, blocking-query helper; `decode`: Go-style JSON decoding.
//! - `kv`, `session`, `agent` (services, checks, check runners), `health` (health, catalog,
//!   status, self), `txn`: the endpoints.

mod agent;
mod decode;
pub mod duration;
mod health;
mod http;
mod kv;
mod session;
pub mod state;
mod txn;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use thiserror::Error;
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};
use tokio_util::task::TaskTracker;

use crate::shutdown::CancellationToken;
use state::Store;

/// Failures of the dev server itself (request errors are HTTP responses, never these).
#[derive(Debug, Error)]
pub enum DevConsulError {
    /// The listen address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("dev-consul server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The HTTP client used by HTTP checks could not be built.
    #[error("cannot build the HTTP check client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Parses a human duration (`10s`, `1m`, `500ms`) for flags.
fn parse_flag_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Dev server settings; every flag has a `SIMPLELOGGERS_DEV_CONSUL_*` environment fallback.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve Consul's HTTP API on (Consul's default port is 8500; port 0 = any free port).
    #[arg(
        long,
        env = "SIMPLELOGGERS_DEV_CONSUL_LISTEN",
        default_value = "127.0.0.1:8500"
    )]
    pub listen: SocketAddr,
    /// Shortest session TTL accepted (Consul's `session_ttl_min`, default 10s); lower it for tests.
    #[arg(long, env = "SIMPLELOGGERS_DEV_CONSUL_SESSION_TTL_MIN", default_value = "10s", value_parser = parse_flag_duration)]
    pub session_ttl_min: Duration,
    /// When set, ACLs are enforced: every request must carry this token (`?token=`,
    /// `X-Consul-Token` or `Authorization: Bearer`), except `/v1/status/leader`.
    #[arg(long, env = "SIMPLELOGGERS_DEV_CONSUL_ACL_TOKEN", hide_env_values = true)]
    pub acl_token: Option<String>,
    /// Name of the single emulated node.
    #[arg(
        long,
        env = "SIMPLELOGGERS_DEV_CONSUL_NODE_NAME",
        default_value = "dev-consul"
    )]
    pub node_name: String,
    /// Datacenter name reported by the agent.
    #[arg(long, env = "SIMPLELOGGERS_DEV_CONSUL_DATACENTER", default_value = "dc1")]
    pub datacenter: String,
    /// How often services with long-critical checks are reaped (Consul: 30s). Test knob.
    #[arg(long, hide = true, env = "SIMPLELOGGERS_DEV_CONSUL_CHECK_REAP_INTERVAL", default_value = "30s", value_parser = parse_flag_duration)]
    pub check_reap_interval: Duration,
    /// Lower bound applied to `DeregisterCriticalServiceAfter` (Consul: 1m). Test knob.
    #[arg(long, hide = true, env = "SIMPLELOGGERS_DEV_CONSUL_CHECK_DEREGISTER_MIN", default_value = "1m", value_parser = parse_flag_duration)]
    pub check_deregister_min: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8500)),
            session_ttl_min: Duration::from_secs(10),
            acl_token: None,
            node_name: "dev-consul".to_string(),
            datacenter: "dc1".to_string(),
            check_reap_interval: Duration::from_secs(30),
            check_deregister_min: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// The defaults, but listening on `127.0.0.1:0` (any free port): what tests want.
    pub fn ephemeral() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        }
    }
}

/// State shared by every request handler and background task.
pub(crate) struct App {
    /// The store; std mutex, never held across `.await`, poisoning tolerated.
    store: Mutex<Store>,
    /// Publishes the global index after each write; blocking queries wait on it.
    index_tx: watch::Sender<u64>,
    /// Wakes the timer task when a session or TTL deadline may have moved.
    timers: Notify,
    /// Settings.
    config: Config,
    /// Client for HTTP checks.
    client: reqwest::Client,
    /// Client for HTTP checks with `TLSSkipVerify`.
    insecure_client: reqwest::Client,
    /// Running check probes by check ID, cancelled on deregistration.
    runners: Mutex<HashMap<String, CancellationToken>>,
    /// Server shutdown; parent of every runner token.
    shutdown: CancellationToken,
    /// Tracks background tasks so none outlives the server.
    tracker: TaskTracker,
}

impl App {
    /// Locks the store, recovering from poisoning (the store is valid after any panic-free step).
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a mutation, then wakes blocking queries (if the index moved) and the timer task.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut Store, Instant) -> R) -> R {
        let result = self.write_quiet(f);
        self.timers.notify_one();
        result
    }

    /// Like [`App::write`] without waking the timer task (used by the timer task itself).
    fn write_quiet<R>(&self, f: impl FnOnce(&mut Store, Instant) -> R) -> R {
        let (result, index) = {
            let mut store = self.lock();
            let result = f(&mut store, Instant::now());
            (result, store.index)
        };
        self.index_tx.send_if_modified(|current| {
            let changed = *current != index;
            *current = index;
            changed
        });
        result
    }

    /// Runs a read.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&self.lock())
    }

    /// Access to the runner table.
    fn runners(&self) -> MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.runners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serves the dev server on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// Fails if the HTTP check client cannot be built or the server stops with an I/O error.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), DevConsulError> {
    let client = reqwest::Client::builder()
        .build()
        .map_err(DevConsulError::Client)?;
    let insecure_client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(DevConsulError::Client)?;
    let node_id = uuid::Uuid::new_v4().to_string();
    let store = Store::new(&config.node_name, &node_id);
    let (index_tx, _) = watch::channel(store.index);
    let app = Arc::new(App {
        store: Mutex::new(store),
        index_tx,
        timers: Notify::new(),
        config,
        client,
        insecure_client,
        runners: Mutex::new(HashMap::new()),
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
    });
    app.tracker.spawn(timer_task(app.clone()));
    app.tracker.spawn(reap_task(app.clone()));
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, node = %app.config.node_name, "dev-consul serving");
    let router = http::router(app.clone());
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    app.tracker.close();
    app.tracker.wait().await;
    result.map_err(DevConsulError::Serve)
}

/// Fires session TTL timers and TTL-check deadlines exactly when due (no fixed polling).
async fn timer_task(app: Arc<App>) {
    loop {
        let next = app.write_quiet(|store, now| store.expire(now));
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            () = app.shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next.unwrap_or(far)) => {}
            () = app.timers.notified() => {}
        }
    }
}

/// Reaps services whose checks stayed critical past `DeregisterCriticalServiceAfter` (rule A7).
async fn reap_task(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.config.check_reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let removed = app.write(|store, now| {
            let services = store.reap_critical(now);
            let live: Vec<String> = store.checks.keys().cloned().collect();
            (services, live)
        });
        if !removed.0.is_empty() {
            agent::stop_runners_except(&app, &removed.1);
        }
    }
}

/// A running dev server; dropping it stops the server.
#[derive(Debug)]
pub struct DevConsulHandle {
    /// The bound address.
    addr: SocketAddr,
    /// Cancels the server.
    shutdown: CancellationToken,
    /// The server task.
    task: Option<tokio::task::JoinHandle<Result<(), DevConsulError>>>,
}

impl DevConsulHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:8500`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it to finish.
    ///
    /// # Errors
    /// The server's own error, if it failed.
    pub async fn stop(mut self) -> Result<(), DevConsulError> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for DevConsulHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Test/demo convenience: binds `127.0.0.1:0` (any free port) — or `config.listen` when it was
/// changed from the default `127.0.0.1:8500`, so `spawn(Config::default())` never collides with a
/// real Consul or a parallel test — spawns the server on the current runtime and returns its
/// handle. To serve on 8500 itself, bind a listener and call [`run`].
///
/// # Errors
/// The address cannot be bound.
pub async fn spawn(config: Config) -> Result<DevConsulHandle, DevConsulError> {
    let bind = if config.listen == Config::default().listen {
        Config::ephemeral().listen
    } else {
        config.listen
    };
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| DevConsulError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DevConsulError::Bind { addr: bind, source })?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, config, shutdown.clone()));
    Ok(DevConsulHandle {
        addr,
        shutdown,
        task: Some(task),
    })
}
