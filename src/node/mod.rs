//! The node: `simpleloggers node`. Opens the durable log, runs the [`Elector`], and serves the
//! HTTP API (writes on the leader, reads, probes, status, metrics) under the limits of
//! [`HttpLimits`]. Shuts down in the order that
//! hands leadership over fastest: not-ready → no new writes → drain → release → destroy →
//! deregister → close the log.

pub mod auth;
mod dashboard;
mod error;
mod fault_file;
mod health;
mod probes;
mod read;
mod retention;
mod server;
mod stream;
mod write;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use tokio::{net::TcpListener, sync::Semaphore};

pub use dashboard::ClusterCache;
pub use error::ApiError;
pub use health::{admit, admit_replicated, LogFacts, LogHealth, Refusal};
pub use probes::{readiness, writes, Readiness, Status, Writes};
pub use read::{parse_read_params, Entry, ReadAnswer};
pub use retention::parse_byte_size;
pub use server::{serve, BodyTimeout, HttpLimits};
pub use stream::{parse_stream_start, record_event};
pub use write::{
    parse_ndjson, producer_from_headers, BatchAck, ProducerState, SingleAck, PRODUCER_ID,
    PRODUCER_PENDING_FROM, PRODUCER_SEQ,
};

use crate::{
    consul::ConsulClient,
    election::{ElectionConfig, Elector, ReplicaSetup, Role},
    flags::{ClusterArgs, ElectionArgs, ReplicationArgs, ServiceArgs},
    log::{Durability, FaultInjector, LogConfig, LogStore},
    metrics::{method_label, HttpLabels, Metrics},
    replication::{protocol::ReplicationClient, Replication, ReplicationSettings},
    shutdown::CancellationToken,
};

/// How long a leader that is shutting down waits for its in-sync replicas to catch up.
const HANDOVER_WAIT: Duration = Duration::from_secs(2);
/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a follower does with a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FollowerWrites {
    /// Answer 503 with the leader's address.
    #[default]
    Reject,
    /// Proxy the write to the leader.
    Forward,
}

/// Flags of `simpleloggers node` (each with an environment fallback).
#[derive(Clone, Debug, clap::Args)]
pub struct NodeConfig {
    /// Node name, unique in the cluster (default: the hostname).
    #[arg(long, env = "SIMPLELOGGERS_NAME")]
    pub name: Option<String>,
    /// Address the HTTP API listens on.
    #[arg(long, env = "SIMPLELOGGERS_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,
    /// `host:port` other nodes and producers dial; derived from --listen, or from POD_IP when
    /// listening on 0.0.0.0.
    #[arg(long, env = "SIMPLELOGGERS_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Directory of the durable log.
    #[arg(long, env = "SIMPLELOGGERS_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// When a write is acknowledged: always (after fdatasync), `interval:<ms>`, never.
    #[arg(long, env = "SIMPLELOGGERS_DURABILITY", default_value = "always")]
    pub durability: Durability,
    /// Largest accepted message.
    #[arg(long, env = "SIMPLELOGGERS_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub max_message_bytes: usize,
    /// Largest accepted NDJSON batch body.
    #[arg(long, env = "SIMPLELOGGERS_MAX_BATCH_BYTES", default_value_t = 32 << 20)]
    pub max_batch_bytes: usize,
    /// What a follower does with a write.
    #[arg(
        long,
        env = "SIMPLELOGGERS_FOLLOWER_WRITES",
        value_enum,
        default_value = "reject"
    )]
    pub follower_writes: FollowerWrites,
    /// Forget a producer's idempotence state (its last batches and sequence) once it has stored
    /// nothing for this long; a forgotten producer starts afresh (Kafka's default: 7 days).
    #[arg(long, env = "SIMPLELOGGERS_PRODUCER_ID_EXPIRY", default_value = "7d", value_parser = humantime::parse_duration)]
    pub producer_id_expiry: Duration,
    /// Size at which the log rolls to a new segment file (bytes, or e.g. 64MiB); retention deletes
    /// whole segments, so this is also its granularity.
    #[arg(long, env = "SIMPLELOGGERS_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_byte_size)]
    pub segment_bytes: u64,
    /// Delete the oldest whole segments while the log is larger than this (bytes, or e.g.
    /// 10GiB); unset keeps everything.
    #[arg(long, env = "SIMPLELOGGERS_RETENTION_BYTES", value_parser = parse_byte_size)]
    pub retention_bytes: Option<u64>,
    /// Delete whole segments whose newest record is older than this (e.g. 7d); unset keeps
    /// everything.
    #[arg(long, env = "SIMPLELOGGERS_RETENTION_AGE", value_parser = humantime::parse_duration)]
    pub retention_age: Option<Duration>,
    /// How often retention runs besides on every segment roll (age retention needs it when no
    /// writes arrive).
    #[arg(long, env = "SIMPLELOGGERS_RETENTION_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,
    /// Test hook: while this file names an errno (ENOSPC, EIO, a number), every log write fails
    /// with it; `sync:<errno>` fails every log sync instead. Never set in production.
    #[arg(long, env = "SIMPLELOGGERS_FAULT_FILE", hide = true)]
    pub fault_file: Option<PathBuf>,
    /// Consul and the election key.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The Consul service this node registers under.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The election's timing.
    #[command(flatten)]
    pub election: ElectionArgs,
    /// Timeouts and caps of the HTTP server.
    #[command(flatten)]
    pub http_limits: HttpLimits,
    /// Replicas, acks and the in-sync set.
    #[command(flatten)]
    pub replication: ReplicationArgs,
    /// The write and read tokens of the API.
    #[command(flatten)]
    pub access: auth::AccessArgs,
}

/// The settings after defaults and derivations, shared by the handlers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Node name.
    pub name: String,
    /// Largest message.
    pub max_message_bytes: usize,
    /// Largest batch body.
    pub max_batch_bytes: usize,
    /// Follower behaviour.
    pub follower_writes: FollowerWrites,
    /// Consul service name the nodes register under (for `/api/v1/cluster`).
    pub service_name: String,
    /// KV key whose lock is leadership (for `/api/v1/cluster`).
    pub election_key: String,
    /// Requests handled at once (`--http-max-concurrent-requests`).
    pub max_concurrent_requests: usize,
    /// The API's token rules (`--api-token`, `--read-token`); `None` when the API is open.
    pub access: Option<auth::AccessRules>,
    /// Replication has a listener of its own (`--replication-listen`): not served beside the API.
    pub separate_replication_listener: bool,
}

/// The state every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct Node(std::sync::Arc<NodeParts>);

impl std::ops::Deref for Node {
    type Target = NodeParts;
    fn deref(&self) -> &NodeParts {
        &self.0
    }
}

impl From<NodeParts> for Node {
    fn from(parts: NodeParts) -> Self {
        Node(std::sync::Arc::new(parts))
    }
}

/// What a [`Node`] holds. Behind one `Arc`: every request clones the node (the router's state,
/// the metrics middleware), and cloning the parts one by one was ~20 atomic reference-count
/// changes on shared cache lines per clone and as many on drop (issue 14).
pub struct NodeParts {
    /// Settings.
    pub config: std::sync::Arc<Settings>,
    /// The election.
    pub elector: Elector,
    /// The local log.
    pub store: LogStore,
    /// Whether the local log can append now (the Consul check, readiness and write admission).
    pub health: LogHealth,
    /// Metrics.
    pub metrics: Metrics,
    /// Client for forwarding writes to the leader and asking peers for their status.
    pub http: reqwest::Client,
    /// Consul, for the cluster view of the dashboard.
    pub consul: ConsulClient,
    /// The last cluster view, shared by every dashboard that polls this node.
    pub cluster: ClusterCache,
    /// Replication: follower progress, the ISR, the high watermark, write admission.
    pub replication: Replication,
}

impl Node {
    /// The term to write with now, if a write may be accepted: [`admit_replicated`] on the
    /// current leader state, log health and replication, the same predicate `/readyz` answers
    /// with.
    ///
    /// # Errors
    /// Why the write is refused.
    pub fn admit(&self) -> Result<u64, Refusal> {
        let facts = self.health.facts();
        let term = self
            .elector
            .with_current(|state| admit(state, Instant::now(), &facts))?;
        self.replication.admit(term).map_err(Refusal::Replication)?;
        Ok(term)
    }
}

/// Errors that stop a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A flag is wrong; the message names it.
    #[error("{0}")]
    Config(String),
    /// The log cannot be opened.
    #[error("cannot open the log in {dir}: {source}")]
    Log {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: crate::log::LogError,
    },
    /// The Consul client cannot be built.
    #[error(transparent)]
    Consul(#[from] crate::consul::ConsulError),
    /// The listener failed.
    #[error("cannot serve HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// The address others dial: `--advertise-addr`, else the listen address when it is specific,
/// else `POD_IP` with the listen port.
///
/// # Errors
/// Listening on 0.0.0.0 without an advertise address or `POD_IP`.
pub fn advertise_addr(
    explicit: Option<&str>,
    bound: SocketAddr,
    pod_ip: Option<&str>,
) -> Result<String, NodeError> {
    if let Some(addr) = explicit.filter(|a| !a.trim().is_empty()) {
        return Ok(addr.trim().to_string());
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    match pod_ip.map(str::trim).filter(|ip| !ip.is_empty()) {
        Some(ip) => {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| NodeError::Config(format!("POD_IP {ip:?} is not an IP address")))?;
            Ok(SocketAddr::new(ip, bound.port()).to_string())
        }
        None => Err(NodeError::Config(format!(
            "--advertise-addr is required when --listen is {bound} (or set POD_IP)"
        ))),
    }
}

fn default_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "simpleloggers".into())
}

/// Runs a node on `listener` until `shutdown` is cancelled, then hands leadership over.
///
/// # Errors
/// Bad flags, an unusable log or Consul configuration, or a listener failure.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let bound = listener.local_addr()?;
    let pod_ip = std::env::var("POD_IP").ok();
    let advertise = advertise_addr(config.advertise_addr.as_deref(), bound, pod_ip.as_deref())?;
    let name = config.name.clone().unwrap_or_else(default_name);
    if config.max_message_bytes == 0 {
        return Err(NodeError::Config("--max-message-bytes must be positive".into()));
    }
    config.http_limits.validate().map_err(NodeError::Config)?;
    if config.retention_interval.is_zero() || config.retention_age.is_some_and(|a| a.is_zero()) {
        return Err(NodeError::Config(
            "--retention-interval and --retention-age must be positive".into(),
        ));
    }
    // The internal replication endpoint on its own listener, if asked: followers dial the
    // advertise host at that port (the leader publishes it in its record).
    let replication_listener =
        match config.replication.replication_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                NodeError::Config(format!("cannot listen on --replication-listen {addr}: {e}"))
            })?),
            None => None,
        };
    let mut election = ElectionConfig::new(&name, &advertise);
    if let Some(listener) = &replication_listener {
        let (host, _) = crate::election::split_host_port(&advertise);
        let port = listener.local_addr()?.port();
        election.replication_addr = Some(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        });
    }
    election.service_name = config.service.service_name.clone();
    election.election_key = config.cluster.election_key.clone();
    config.election.apply_to(&mut election);
    election.validate().map_err(NodeError::Config)?;
    config.replication.validate().map_err(NodeError::Config)?;

    let mut log = LogConfig::new(&config.data_dir);
    log.durability = config.durability;
    log.max_record_bytes = config.max_message_bytes;
    log.producer_id_expiry = config.producer_id_expiry;
    log.segment_bytes = config.segment_bytes;
    log.retention_bytes = config.retention_bytes;
    log.retention_age = config.retention_age;
    // With replicas the high watermark is moved by replication (the leader's ISR, a follower's
    // leader). A lone node (--replicas 1) keeps the log's own rule, HW = log end: the same
    // commit point without a checkpoint write per group, and its reads as they always were.
    log.replicated = config.replication.replicas > 1;
    let faults = config.fault_file.as_ref().map(|_| FaultInjector::new());
    log.fault_injector = faults.clone();
    let store = LogStore::open(log).await.map_err(|source| NodeError::Log {
        dir: config.data_dir.clone(),
        source,
    })?;
    if let (Some(path), Some(faults)) = (&config.fault_file, &faults) {
        tokio::spawn(fault_file::run(path.clone(), faults.clone(), shutdown.clone()));
    }
    let health = LogHealth::new(store.clone(), faults);
    tokio::spawn(
        health
            .clone()
            .run(config.election.check_interval, shutdown.clone()),
    );
    if config.retention_bytes.is_some() || config.retention_age.is_some() {
        tokio::spawn(retention::run(
            store.clone(),
            config.retention_interval,
            shutdown.clone(),
        ));
    }
    let metrics = Metrics::new();
    let consul = ConsulClient::new(&config.cluster.consul)?.with_observer(metrics.consul_observer());
    let k8s_consul = crate::k8s::ConsulHealth {
        client: consul.clone(),
        service: config.service.service_name.clone(),
    };
    // Terms come from the term key, above the log's last term (see docs/election.md); who may
    // contend follows the ISR key and the nodes' reports (docs/replication.md).
    let replica = ReplicaSetup {
        replicas: config.replication.replicas,
        min_insync: config.replication.min_insync(),
        unclean_leader_election: config.replication.unclean_leader_election,
        local: std::sync::Arc::new(store.clone()),
    };
    let elector = Elector::start_replicated(consul.clone(), election, replica);
    let replication = Replication::new(
        ReplicationSettings::new(&name, &config.replication),
        store.clone(),
        metrics.clone(),
        Some(elector.isr()),
    );
    let client = ReplicationClient::new(
        config.replication.cluster_secret.clone(),
        config.replication.replication_proxy.as_deref(),
    )
    .map_err(|e| NodeError::Config(e.to_string()))?;
    // Replication outlives the HTTP drain (a leader handing over serves fetches until it
    // resigns); it stops after the resignation.
    let replication_stop = CancellationToken::new();
    tokio::spawn(crate::replication::leader::run(
        replication.clone(),
        elector.clone(),
        replication_stop.clone(),
    ));
    tokio::spawn(crate::replication::follower::run(
        replication.clone(),
        elector.clone(),
        client,
        replication_stop.clone(),
    ));
    let node: Node = NodeParts {
        config: std::sync::Arc::new(Settings {
            name: name.clone(),
            max_message_bytes: config.max_message_bytes,
            max_batch_bytes: config.max_batch_bytes.max(config.max_message_bytes),
            follower_writes: config.follower_writes,
            service_name: config.service.service_name.clone(),
            election_key: config.cluster.election_key.clone(),
            max_concurrent_requests: config.http_limits.max_concurrent_requests,
            access: config.access.rules(),
            separate_replication_listener: config.replication.replication_listen.is_some(),
        }),
        elector: elector.clone(),
        store: store.clone(),
        health,
        metrics: metrics.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .default_headers(
                auth::bearer_headers(config.access.own_credential(), "--api-token/--read-token")
                    .map_err(NodeError::Config)?,
            )
            .build()
            .map_err(|e| {
                NodeError::Config(format!("cannot build the HTTP client used for forwarding: {e}"))
            })?,
        consul,
        cluster: ClusterCache::default(),
        replication: replication.clone(),
    }
    .into();
    tokio::spawn(follow_state(node.clone(), shutdown.clone()));
    // Best-effort Kubernetes integration (role label, Events, LogCluster status, rollout); it
    // switches itself off outside a cluster and never affects the election.
    let k8s_task = crate::k8s::spawn(
        elector.subscribe(),
        store.subscribe(),
        Some(k8s_consul),
        shutdown.clone(),
    );
    tracing::info!(%name, %advertise, listen = %bound, "node started");

    let replication_server = replication_listener.map(|listener| {
        let app = replication_router(node.clone());
        let stop = replication_stop.clone();
        tokio::spawn(serve(
            listener,
            app,
            config.http_limits.clone(),
            metrics.clone(),
            async move { stop.cancelled().await },
        ))
    });
    let app = router(node);
    let stopping = shutdown.clone();
    let elector_for_stop = elector.clone();
    let handing_over = replication.clone();
    let serving = serve(listener, app, config.http_limits.clone(), metrics, async move {
        stopping.cancelled().await;
        // A leader first stops taking writes and lets the ISR catch up (bounded), so that the
        // next leader's high watermark moves at once; followers still fetch meanwhile.
        if elector_for_stop.with_current(|s| s.role == Role::Leader) {
            handing_over.begin_handover();
            if !handing_over.wait_isr_caught_up(HANDOVER_WAIT).await {
                tracing::warn!(
                    "the in-sync replicas did not catch up within {HANDOVER_WAIT:?}; handing over anyway"
                );
            }
        }
        // Not ready and no new writes at once; in-flight requests still finish, held fetches
        // at once (a long drain would outlive the Consul check and cost a lock-delay).
        handing_over.end_long_polls();
        elector_for_stop.begin_shutdown();
        // Resign before the listener closes: Consul's next probe of /consul-check must not find
        // the port closed while we still hold the lock (a critical check would invalidate the
        // session and leave a lock-delay on the key). In-flight requests finish afterwards.
        elector_for_stop.resign().await;
    });
    let server = tokio::spawn(serving);
    shutdown.cancelled().await;
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(%err, "HTTP server task failed"),
        Err(_) => tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}"),
    }
    elector.resign().await;
    replication_stop.cancel();
    if let Some(server) = replication_server {
        if tokio::time::timeout(DRAIN_TIMEOUT, server).await.is_err() {
            tracing::warn!("replication requests did not finish within {DRAIN_TIMEOUT:?}");
        }
    }
    // The integration's last label patch and Event are bounded; do not wait longer than that.
    let _ = tokio::time::timeout(Duration::from_secs(3), k8s_task).await;
    if let Err(err) = store.close().await {
        tracing::warn!(%err, "closing the log failed");
    }
    tracing::info!("node stopped");
    Ok(())
}

/// Keeps the gauges in line with the published state.
async fn follow_state(node: Node, shutdown: CancellationToken) {
    let mut rx = node.elector.subscribe();
    let mut last_transitions = 0;
    loop {
        {
            let state = rx.borrow_and_update();
            node.metrics.is_leader.set(i64::from(state.role == Role::Leader));
            node.metrics.term.set(state.term as i64);
            node.metrics
                .leadership_changes
                .inc_by(state.transitions.saturating_sub(last_transitions));
            last_transitions = state.transitions;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// The node's routes.
pub fn router(node: Node) -> Router {
    let slots = RequestSlots {
        permits: Arc::new(Semaphore::new(node.config.max_concurrent_requests)),
        limit: node.config.max_concurrent_requests,
    };
    let public = Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .route("/api/v1/cluster", get(dashboard::cluster))
        .route("/api/v1/log", get(read::read).post(write::append))
        .route("/api/v1/log/stream", get(stream::stream))
        .route("/api/v1/producers/{id}", get(write::producer_state))
        .route("/api/v1/status", get(probes::status))
        // The routes above share --http-max-concurrent-requests. The probes and /metrics below
        // do not: an overloaded node must not also be declared dead (restarted by the kubelet,
        // its session invalidated by Consul) or go blind.
        .route_layer(middleware::from_fn_with_state(slots, limit_requests));
    // Outside the slots, so unauthenticated requests cannot take them; not installed at all
    // when no token is set (docs: README "Access").
    let public = match node.config.access.clone() {
        Some(rules) => public.route_layer(middleware::from_fn_with_state(rules, auth::require)),
        None => public,
    };
    // The internal replication endpoint sits here unless it has a listener of its own.
    let public = if !node.config.separate_replication_listener {
        public.merge(crate::replication::http::router(node.replication.clone()))
    } else {
        public
    };
    public
        .route("/readyz", get(probes::readyz))
        .route("/healthz", get(probes::healthz))
        .route("/consul-check", get(probes::consul_check))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(node.clone(), count_requests))
        .with_state(node)
}

/// The routes of the `--replication-listen` listener: the internal replication endpoint alone.
pub fn replication_router(node: Node) -> Router {
    Router::new()
        .merge(crate::replication::http::router(node.replication.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(node.clone(), count_requests))
        .with_state(node)
}

async fn metrics(State(node): State<Node>) -> Response {
    node.metrics.log_end_offset.set(node.store.end_offset() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        node.metrics.render(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The shared budget of requests handled at once.
#[derive(Clone)]
struct RequestSlots {
    /// One permit per request being handled.
    permits: Arc<Semaphore>,
    /// How many there are (for the error message).
    limit: usize,
}

/// Sheds load: a request that finds every slot taken is answered 503 at once rather than queued,
/// so an overloaded node answers quickly and clients back off (`Retry-After`). The slot is held
/// until the handler has answered (for the live stream: until it has started).
async fn limit_requests(State(slots): State<RequestSlots>, request: Request, next: Next) -> Response {
    match slots.permits.try_acquire() {
        // Held until the handler has answered.
        Ok(_slot) => next.run(request).await,
        Err(_) => ApiError::Overloaded { limit: slots.limit }.into_response(),
    }
}

/// Counts every request. Its labels are bounded whatever the client sends: the route is the
/// router's pattern (never the raw path), the method a standard one or `other`.
async fn count_requests(State(node): State<Node>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    node.metrics.http_seconds.observe(started.elapsed().as_secs_f64());
    let status = response.status();
    node.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: status.as_u16(),
        })
        .inc();
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::warn!("internal error answered");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advertise address comes from the flag, a specific listen address, or POD_IP.
    #[test]
    fn advertise_rules() {
        let any: SocketAddr = "0.0.0.0:3000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(advertise_addr(Some("n0:3000"), any, None).unwrap(), "n0:3000");
        assert_eq!(
            advertise_addr(None, lo, Some("10.0.0.9")).unwrap(),
            "127.0.0.1:4000"
        );
        assert_eq!(
            advertise_addr(None, any, Some("10.0.0.9")).unwrap(),
            "10.0.0.9:3000"
        );
        let err = advertise_addr(None, any, None).unwrap_err().to_string();
        assert!(err.contains("--advertise-addr"), "{err}");
        assert!(advertise_addr(None, any, Some("not-an-ip")).is_err());
    }

    /// `--producer-id-expiry` defaults to the log's 7 days and takes a human duration.
    #[test]
    fn producer_id_expiry_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            node: NodeConfig,
        }
        let parsed = Cli::try_parse_from(["node"]).unwrap().node;
        assert_eq!(parsed.producer_id_expiry, crate::log::DEFAULT_PRODUCER_ID_EXPIRY);
        let parsed = Cli::try_parse_from(["node", "--producer-id-expiry", "90m"])
            .unwrap()
            .node;
        assert_eq!(parsed.producer_id_expiry, Duration::from_secs(5400));
        assert!(Cli::try_parse_from(["node", "--producer-id-expiry", "soon"]).is_err());
    }
}
