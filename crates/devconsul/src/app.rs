//! The state every request handler and background task shares: the store behind its mutex, the
//! index watch channel blocking queries wait on, the check runners, and the TTL timer task.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    sync::{watch, Notify},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{acl::Acl, config::Config, state::Store};

/// State shared by every request handler and background task.
pub(crate) struct App {
    /// The store; std mutex, never held across `.await`, poisoning tolerated.
    store: Mutex<Store>,
    /// Publishes the global index after each write; blocking queries wait on it.
    index_tx: watch::Sender<u64>,
    /// Wakes the timer task when a session or TTL deadline may have moved.
    timers: Notify,
    /// Running check probes by check ID, cancelled on deregistration.
    runners: Mutex<HashMap<String, CancellationToken>>,
    /// Settings.
    pub(crate) config: Config,
    /// The enforced ACLs; `None` when ACLs are off (the dev default).
    pub(crate) acl: Option<Arc<Acl>>,
    /// Client for HTTP checks.
    pub(crate) client: reqwest::Client,
    /// Client for HTTP checks with `TLSSkipVerify`.
    pub(crate) insecure_client: reqwest::Client,
    /// Server shutdown; parent of every runner token.
    pub(crate) shutdown: CancellationToken,
    /// Tracks background tasks so none outlives the server.
    pub(crate) tracker: TaskTracker,
}

impl App {
    /// A fresh store for one node with a random node ID.
    ///
    /// # Errors
    /// The HTTP check clients cannot be built.
    pub(crate) fn new(
        config: Config,
        acl: Option<Arc<Acl>>,
        shutdown: CancellationToken,
    ) -> Result<App, reqwest::Error> {
        let client = reqwest::Client::builder().build()?;
        let insecure_client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()?;
        let node_id = uuid::Uuid::new_v4().to_string();
        let store = Store::new(&config.node_name, &node_id);
        let (index_tx, _) = watch::channel(store.index);
        Ok(App {
            store: Mutex::new(store),
            index_tx,
            timers: Notify::new(),
            runners: Mutex::new(HashMap::new()),
            config,
            acl,
            client,
            insecure_client,
            shutdown,
            tracker: TaskTracker::new(),
        })
    }

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

    /// A receiver that sees every change of the global index (blocking queries wait on it).
    pub(crate) fn watch_index(&self) -> watch::Receiver<u64> {
        self.index_tx.subscribe()
    }

    /// Access to the runner table.
    pub(crate) fn runners(&self) -> MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.runners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Fires session TTL timers and TTL-check deadlines exactly when due (no fixed polling).
pub(crate) async fn timer_task(app: Arc<App>) {
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
