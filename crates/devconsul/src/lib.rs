//! Single-node, in-memory server for the subset of Consul's HTTP API that simpleloggers (and
//! independent Consul clients) use, with Consul's shapes, status codes and timing rules; served by
//! `simpleloggers dev-consul` and spawned in-process by the demo and tests (see
//! `docs/dev-consul.md`). It depends on nothing of simpleloggers.
//!
//! # Layout
//! - [`Config`] (`config`): the settings, a `clap::Args` group with environment fallbacks.
//! - [`acl`]: ACL tokens and rules (Consul's JSON rule syntax), resolution and denial texts.
//! - `app`: the state shared by handlers and background tasks, and the TTL timer task.
//! - [`state`]: the pure store (index, KV, tombstones, lock-delays, sessions, services, checks).
//! - [`duration`]: Go duration parsing/formatting; `decode`: Go-style JSON decoding.
//! - `reply`: the request context, Consul's error and response shapes, and the blocking-query
//!   helper every endpoint uses.
//! - `kv`, `session`, `agent` (services, checks, check runners), `health` (health, catalog,
//!   status, self), `txn`: the endpoints.
//! - `http`: the router: Consul's route table, 404/405/OPTIONS, ACL, common validation, dispatch.
//!
//! Imports flow one way: this root → `http` → endpoints → `reply` → `app` → `state`; only the
//! root imports the router.

pub mod acl;
mod agent;
mod app;
mod config;
mod decode;
pub mod duration;
mod health;
mod http;
mod kv;
mod reply;
mod session;
pub mod state;
mod txn;

use std::{net::SocketAddr, sync::Arc};

use thiserror::Error;
pub use tokio_util::sync::CancellationToken;

use app::App;
pub use config::Config;

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
    /// The ACL file (`--acl-config`) cannot be read or parsed.
    #[error("invalid --acl-config: {0}")]
    Acl(String),
    /// The HTTP client used by HTTP checks could not be built.
    #[error("cannot build the HTTP check client: {0}")]
    Client(#[source] reqwest::Error),
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
    let acl = config.acl().map_err(DevConsulError::Acl)?;
    let app = Arc::new(App::new(config, acl, shutdown.clone()).map_err(DevConsulError::Client)?);
    app.tracker.spawn(app::timer_task(app.clone()));
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

/// The router over a fresh store, without a listener and without the session-TTL timer and reaper
/// tasks: for the in-process property tests (`tests/fuzz_*.rs`) and fuzz targets (`fuzz/`), whose
/// requests go through exactly the code a served request does. Check runners it starts stop when
/// `shutdown` is cancelled. Hidden; not a stable API.
///
/// # Errors
/// The ACL file (`--acl-config`) is unusable or the HTTP check client cannot be built.
#[doc(hidden)]
pub fn router_in_process(
    config: Config,
    shutdown: CancellationToken,
) -> Result<axum::Router, DevConsulError> {
    let acl = config.acl().map_err(DevConsulError::Acl)?;
    let app = Arc::new(App::new(config, acl, shutdown).map_err(DevConsulError::Client)?);
    Ok(http::router(app))
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
/// The address cannot be bound, or `--acl-config` is unreadable or invalid.
pub async fn spawn(config: Config) -> Result<DevConsulHandle, DevConsulError> {
    // Refused here, not only inside the task, so the caller sees a bad ACL file at once.
    config.acl().map_err(DevConsulError::Acl)?;
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
