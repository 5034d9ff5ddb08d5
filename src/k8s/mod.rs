//! Operator-style Kubernetes integration, all best-effort: the pod role label, leadership
//! Events, the `LogCluster` status and the leader-driven rolling update. Consul stays the source
//! of truth; a Kubernetes API failure is logged and retried with backoff, and never changes the
//! election or what the node serves. Off by itself outside a cluster.
//!
//! # Layout
//! - [`crd`]: the `LogCluster` custom resource types and their YAML.
//! - [`pod`]: the `simpleloggers.io/role` label on the node's own pod.
//! - [`events`]: `BecameLeader` / `SteppedDown` Events.
//! - [`status`]: the LogCluster status the leader writes.
//! - [`rollout`]: the pure rollout [`rollout::plan`] and the step that carries it out.
//!
//! # Environment
//! `KUBERNETES_SERVICE_HOST` (set by Kubernetes; unset = off), `POD_NAME` (required; unset =
//! off), `SIMPLELOGGERS_K8S_NAMESPACE` (else the service-account namespace file),
//! `SIMPLELOGGERS_STATEFULSET` (else `POD_NAME` without its ordinal), `SIMPLELOGGERS_LOGCLUSTER`
//! (else the StatefulSet name), `SIMPLELOGGERS_K8S_ROLLOUT` (`false`/`0`/`off`/`no` disables the
//! leader-driven rollout).
//!
//! # RBAC (namespaced Role; exactly the calls made)
//! - `""` pods: `patch` (role label), `list` (members, rollout), `delete` (rollout).
//! - `apps` statefulsets: `get`.
//! - `simpleloggers.io` logclusters/status: `patch`.
//! - `events.k8s.io` events: `create`, `patch` (kube's Recorder patches a repeated event).
//!
//! The StatefulSet is polled every period (5 s) by the leader rather than watched: one `get`
//! and one `list` per period, nothing to resync.

pub mod crd;
pub mod events;
pub mod pod;
pub mod rollout;
pub mod status;

use std::time::{Duration, Instant, SystemTime};

use kube::{
    runtime::events::{Recorder, Reporter},
    Client,
};
use tokio::{sync::watch, task::JoinHandle};

pub use crd::{LogCluster, LogClusterSpec, LogClusterStatus};

use crate::{
    consul::{ConsulClient, QueryOptions},
    election::{LeaderState, Role},
    shutdown::CancellationToken,
};

/// Where the service-account namespace is mounted in a pod.
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// Bound on every Kubernetes API call, so a hung apiserver never stalls the loop.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the Consul health read of the members.
const CONSUL_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the last label patch and event when the node stops.
const FINAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between retries of a failing call.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The reporting controller name on Events.
pub const REPORTER: &str = "simpleloggers";

/// Errors of a Kubernetes call. Never fatal: the loop logs them at warn and retries.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The API answered with an error or could not be reached.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// The call took longer than the bound.
    #[error("Kubernetes API call timed out after {0:?}")]
    Timeout(Duration),
    /// An object is not shaped as expected.
    #[error("{0}")]
    Invalid(String),
}

/// Who this node is in Kubernetes, and which objects it maintains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sConfig {
    /// This pod's name (`POD_NAME`); the node name defaults to the hostname, which is the same.
    pub pod_name: String,
    /// The namespace (`SIMPLELOGGERS_K8S_NAMESPACE`, else the service-account namespace file,
    /// else the client's default).
    pub namespace: String,
    /// The node StatefulSet (`SIMPLELOGGERS_STATEFULSET`, else the pod name without its ordinal).
    pub statefulset: String,
    /// The LogCluster whose status the leader writes (`SIMPLELOGGERS_LOGCLUSTER`, else the
    /// StatefulSet name).
    pub logcluster: String,
    /// How often the leader refreshes the status and takes a rollout step.
    pub period: Duration,
    /// Whether the leader replaces out-of-date pods (`SIMPLELOGGERS_K8S_ROLLOUT`, default on;
    /// `false`/`0`/`off` disables).
    pub rollout: bool,
}

impl K8sConfig {
    /// The configuration from environment lookups (`env`), the namespace file's contents and the
    /// client's default namespace. `None` when `POD_NAME` is unset: the integration stays off.
    pub fn from_lookup(
        env: impl Fn(&str) -> Option<String>,
        namespace_file: Option<String>,
        default_namespace: &str,
    ) -> Option<Self> {
        let get = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let pod_name = get("POD_NAME")?;
        let namespace = get("SIMPLELOGGERS_K8S_NAMESPACE")
            .or_else(|| {
                namespace_file
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| default_namespace.to_string());
        let statefulset = get("SIMPLELOGGERS_STATEFULSET").unwrap_or_else(|| strip_ordinal(&pod_name));
        let logcluster = get("SIMPLELOGGERS_LOGCLUSTER").unwrap_or_else(|| statefulset.clone());
        let rollout = !matches!(
            get("SIMPLELOGGERS_K8S_ROLLOUT")
                .map(|v| v.to_ascii_lowercase())
                .as_deref(),
            Some("false" | "0" | "off" | "no")
        );
        Some(Self {
            pod_name,
            namespace,
            statefulset,
            logcluster,
            period: Duration::from_secs(5),
            rollout,
        })
    }
}

/// Where the leader asks which members pass in Consul (the rollout waits for a replacement to
/// pass before the next, and the status reports it).
#[derive(Clone, Debug)]
pub struct ConsulHealth {
    /// The node's Consul client.
    pub client: ConsulClient,
    /// The service the nodes register under.
    pub service: String,
}

impl ConsulHealth {
    /// Names of the nodes whose instance passes every check (by the `node_name` meta the
    /// election registers, else the service id without the `<service>-` prefix).
    ///
    /// # Errors
    /// Any Consul failure.
    pub async fn passing(&self) -> Result<std::collections::HashSet<String>, crate::consul::ConsulError> {
        let (entries, _) = self
            .client
            .health_service(&self.service, true, &QueryOptions::default())
            .await?;
        let prefix = format!("{}-", self.service);
        Ok(entries
            .into_iter()
            .map(|e| match e.service.meta.get("node_name") {
                Some(name) => name.clone(),
                None => e
                    .service
                    .id
                    .strip_prefix(&prefix)
                    .unwrap_or(&e.service.id)
                    .to_string(),
            })
            .collect())
    }
}

/// `name-3` → `name`; a name without a numeric suffix is kept.
fn strip_ordinal(pod: &str) -> String {
    match pod.rsplit_once('-') {
        Some((base, n)) if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            base.to_string()
        }
        _ => pod.to_string(),
    }
}

/// Starts the integration in the background when running in a cluster: `KUBERNETES_SERVICE_HOST`
/// set, `POD_NAME` set, and an in-cluster client available. Otherwise logs once and the task
/// ends. Never blocks the caller; the handle ends after `shutdown` (plus at most a few seconds
/// for the last label patch and event).
pub fn spawn(
    state: watch::Receiver<LeaderState>,
    log_end: watch::Receiver<u64>,
    consul: Option<ConsulHealth>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            tracing::info!(
                "not running in Kubernetes (KUBERNETES_SERVICE_HOST unset): Kubernetes integration off"
            );
            return;
        }
        let client = match Client::try_default().await {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(%err, "no Kubernetes client: Kubernetes integration off");
                return;
            }
        };
        let file = std::fs::read_to_string(NAMESPACE_FILE).ok();
        let Some(config) =
            K8sConfig::from_lookup(|k| std::env::var(k).ok(), file, client.default_namespace())
        else {
            tracing::warn!("POD_NAME is unset: Kubernetes integration off");
            return;
        };
        tracing::info!(?config, "Kubernetes integration on");
        run(config, client, consul, state, log_end, shutdown).await;
    })
}

/// Exponential backoff for one kind of call: first retry after the loop period, doubling up to
/// [`MAX_BACKOFF`].
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    fn failed(&mut self, now: Instant, base: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = base
            .saturating_mul(1 << self.failures.min(6).saturating_sub(1))
            .min(MAX_BACKOFF);
        self.not_before = Some(now + delay);
        delay
    }

    fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// Bounds `call` by [`CALL_TIMEOUT`].
async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, K8sError>>,
) -> Result<T, K8sError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(K8sError::Timeout(limit)))
}

/// The integration loop: follows `state` and, every `config.period`, refreshes what the leader
/// maintains (with member health from `consul` when given). Runs until `shutdown`; then sets
/// the label to follower and, if it led, records `SteppedDown`. Every failure is logged at warn
/// and retried with backoff.
pub async fn run(
    config: K8sConfig,
    client: Client,
    consul: Option<ConsulHealth>,
    mut state: watch::Receiver<LeaderState>,
    log_end: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTER.into(),
            instance: Some(config.pod_name.clone()),
        },
    );
    let pod_ref = events::pod_reference(&config.namespace, &config.pod_name);
    let mut labelled: Option<&'static str> = None;
    let mut label_backoff = Backoff::default();
    let mut leader_backoff = Backoff::default();
    let mut leading: Option<u64> = None;
    let mut ticker = tokio::time::interval(config.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                true
            }
            _ = ticker.tick() => false,
        };
        let snapshot = state.borrow_and_update().clone();
        let now = Instant::now();

        let want = pod::role_label(snapshot.role);
        if labelled != Some(want) && (changed || label_backoff.ready(now)) {
            match bounded(
                CALL_TIMEOUT,
                pod::patch_role(&client, &config.namespace, &config.pod_name, snapshot.role),
            )
            .await
            {
                Ok(()) => {
                    tracing::info!(pod = %config.pod_name, role = want, "pod role label set");
                    labelled = Some(want);
                    label_backoff.succeeded();
                }
                Err(err) => {
                    let retry = label_backoff.failed(now, config.period);
                    tracing::warn!(%err, ?retry, "cannot set the pod role label");
                }
            }
        }

        let became = leading != Some(snapshot.term) && snapshot.role == Role::Leader;
        if let Some(event) = events::leadership_event(leading, &snapshot) {
            let mut event = event;
            event.secondary = Some(events::logcluster_reference(
                &config.namespace,
                &config.logcluster,
            ));
            if let Err(err) = bounded(CALL_TIMEOUT, async {
                Ok(recorder.publish(&event, &pod_ref).await?)
            })
            .await
            {
                tracing::warn!(%err, reason = %event.reason, "cannot record the leadership Event");
            }
        }
        leading = (snapshot.role == Role::Leader).then_some(snapshot.term);

        if snapshot.role == Role::Leader && (became || (!changed && leader_backoff.ready(now))) {
            let offset = *log_end.borrow();
            // Abandoned as soon as leadership is lost or the node stops: a former leader must
            // not go on deleting pods, and the label must follow the role promptly.
            let mut watcher = state.clone();
            let lost = watcher.wait_for(|s| s.role != Role::Leader);
            tokio::select! {
                // A finished step wins over a simultaneous stop, so its outcome is logged.
                biased;
                done = leader_duties(&config, &client, consul.as_ref(), &state, &snapshot, offset) => match done {
                    Ok(()) => leader_backoff.succeeded(),
                    Err(err) => {
                        let retry = leader_backoff.failed(now, config.period);
                        tracing::warn!(%err, ?retry, "cannot update the LogCluster status or roll out");
                    }
                },
                _ = lost => tracing::info!("leadership lost: LogCluster status and rollout abandoned"),
                _ = shutdown.cancelled() => {}
            }
        }
    }
    // Stopping: give the label up and say why, bounded so shutdown is never held up.
    if labelled != Some("follower") {
        if let Err(err) = bounded(
            FINAL_TIMEOUT,
            pod::patch_role(&client, &config.namespace, &config.pod_name, Role::Stopping),
        )
        .await
        {
            tracing::warn!(%err, "cannot set the pod role label to follower on shutdown");
        }
    }
    if let Some(term) = leading {
        let mut event = events::stepped_down(term, "the node is shutting down");
        event.secondary = Some(events::logcluster_reference(
            &config.namespace,
            &config.logcluster,
        ));
        if let Err(err) = bounded(FINAL_TIMEOUT, async {
            Ok(recorder.publish(&event, &pod_ref).await?)
        })
        .await
        {
            tracing::warn!(%err, "cannot record the SteppedDown Event");
        }
    }
}

/// The leader's periodic work: read the StatefulSet and its pods, take one rollout step, write
/// the LogCluster status. A failure to read the pods still writes a status (with this node
/// alone as member).
async fn leader_duties(
    config: &K8sConfig,
    client: &Client,
    consul: Option<&ConsulHealth>,
    current: &watch::Receiver<LeaderState>,
    state: &LeaderState,
    log_end: u64,
) -> Result<(), K8sError> {
    let observed = match bounded(
        CALL_TIMEOUT,
        rollout::observe(client, &config.namespace, &config.statefulset),
    )
    .await
    {
        Ok(mut observed) => {
            if let Some(consul) = consul {
                match tokio::time::timeout(CONSUL_TIMEOUT, consul.passing()).await {
                    // The leader itself passes (its session is bound to its checks); when its
                    // pod name is not among the passing names, node names differ from pod
                    // names and Consul cannot tell about pods: fall back to running alone.
                    Ok(Ok(passing)) if !passing.contains(&config.pod_name) => tracing::warn!(
                        pod = %config.pod_name,
                        "this pod is not among the passing Consul instances; are node names \
                         (--name) different from pod names? Using pod state alone"
                    ),
                    Ok(Ok(passing)) => {
                        for pod in &mut observed.pods {
                            pod.consul_passing = Some(passing.contains(&pod.name));
                        }
                    }
                    Ok(Err(err)) => tracing::warn!(%err, "cannot read member health from Consul"),
                    Err(_) => tracing::warn!("reading member health from Consul timed out"),
                }
            }
            Some(observed)
        }
        Err(err) => {
            tracing::warn!(%err, statefulset = %config.statefulset, "cannot read the StatefulSet and its pods");
            None
        }
    };
    let action = observed
        .as_ref()
        .filter(|_| config.rollout)
        .map(|o| rollout::plan(&o.sts, &o.pods, &config.pod_name));
    if let Some(action) = &action {
        match action {
            rollout::Action::Wait(why) => tracing::debug!(%why, "rollout waits"),
            rollout::Action::Done => tracing::debug!("rollout: every pod is up to date"),
            rollout::Action::Delete(_) => {}
        }
        // Re-checked right before acting: only the current leader deletes pods.
        let still_leader = current.borrow().role == Role::Leader;
        if !still_leader {
            return Ok(());
        }
        if let Err(err) = bounded(CALL_TIMEOUT, rollout::execute(client, &config.namespace, action)).await {
            tracing::warn!(%err, "rollout: cannot delete the pod");
        }
    }
    let status = status::build_status(
        &config.pod_name,
        state,
        log_end,
        observed.as_ref().map(|o| o.pods.as_slice()),
        action.as_ref(),
        SystemTime::now(),
    );
    bounded(
        CALL_TIMEOUT,
        status::patch_status(client, &config.namespace, &config.logcluster, &status),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// Without POD_NAME the integration is off.
    #[test]
    fn off_without_pod_name() {
        assert_eq!(
            K8sConfig::from_lookup(env(&[]), Some("ns".into()), "default"),
            None
        );
    }

    /// Defaults: namespace from the file, StatefulSet from the pod name, LogCluster from it.
    #[test]
    fn defaults_from_pod_name() {
        let c = K8sConfig::from_lookup(
            env(&[("POD_NAME", "logs-simpleloggers-2")]),
            Some("obs\n".into()),
            "default",
        )
        .unwrap();
        assert_eq!(c.namespace, "obs");
        assert_eq!(c.statefulset, "logs-simpleloggers");
        assert_eq!(c.logcluster, "logs-simpleloggers");
        assert!(c.rollout);
        let c = K8sConfig::from_lookup(env(&[("POD_NAME", "solo")]), None, "default").unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.statefulset.as_str()),
            ("default", "solo")
        );
    }

    /// Explicit variables win.
    #[test]
    fn explicit_env() {
        let c = K8sConfig::from_lookup(
            env(&[
                ("POD_NAME", "a-0"),
                ("SIMPLELOGGERS_K8S_NAMESPACE", "x"),
                ("SIMPLELOGGERS_STATEFULSET", "sts"),
                ("SIMPLELOGGERS_LOGCLUSTER", "lc"),
                ("SIMPLELOGGERS_K8S_ROLLOUT", "off"),
            ]),
            Some("ignored".into()),
            "default",
        )
        .unwrap();
        assert_eq!(
            (
                c.namespace.as_str(),
                c.statefulset.as_str(),
                c.logcluster.as_str(),
                c.rollout
            ),
            ("x", "sts", "lc", false)
        );
    }

    /// Backoff doubles from the period up to the cap, and resets on success.
    #[test]
    fn backoff() {
        let mut b = Backoff::default();
        let now = Instant::now();
        assert!(b.ready(now));
        let base = Duration::from_secs(5);
        assert_eq!(b.failed(now, base), Duration::from_secs(5));
        assert_eq!(b.failed(now, base), Duration::from_secs(10));
        assert!(!b.ready(now));
        for _ in 0..10 {
            b.failed(now, base);
        }
        assert_eq!(b.failed(now, base), MAX_BACKOFF);
        b.succeeded();
        assert!(b.ready(now));
    }
}
