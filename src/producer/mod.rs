//! The producer (`simpleloggers producer`): reads messages from a source, batches them, and sends
//! them to the leader found through Consul (or to a fixed `--target`), retrying each batch with
//! the same producer id and sequence number until it is acknowledged, so nothing is stored twice
//! and nothing is dropped without being counted in the [`Summary`]. The protocol (duplicates,
//! gaps, pipelining, restarts) is described in `docs/producer.md`.
//!
//! Tasks: with a fixed `--producer-id`, the leader is first asked where that id stopped; the
//! source feeds a bounded channel; the run loop cuts batches from it ([`batch`]) and hands each
//! to a sender task ([`sender`]) while the [`window`] has room (`--max-in-flight` batches from the
//! oldest pending one); a drain timer bounds how long pending batches are retried once the source
//! has stopped.

pub mod batch;
mod error;
pub mod sender;
pub mod source;
mod summary;
pub mod window;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::AsyncBufRead,
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_util::task::TaskTracker;

use self::{
    batch::{Batch, Batcher},
    sender::{LookupError, Outcome, Rest, Route, Router, Sender},
    source::Emitter,
    window::Window,
};
pub use self::{
    error::ProducerError,
    source::Source,
    summary::{Ack, Stats, Summary},
};
use crate::{
    consul::{ConsulClient, ConsulConfig},
    discovery::{watch_leader, CurrentLeader},
    flags::ClusterArgs,
    log::PRODUCER_WINDOW,
    shutdown::CancellationToken,
};

/// The election key the nodes contend for, whose value names the leader.
pub use crate::discovery::DEFAULT_ELECTION_KEY;

/// How the producer runs. Every field is a flag of `simpleloggers producer` with an
/// `SIMPLELOGGERS_*` environment fallback; [`Config::for_target`] and [`Config::for_consul`]
/// build one with the defaults from Rust.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Send to this base URL (e.g. a Kubernetes Service) instead of discovering the leader.
    #[arg(long, env = "SIMPLELOGGERS_TARGET")]
    pub target: Option<String>,
    /// Synthetic messages (`Message: N`) per second when neither `--stdin` nor `--file` is given;
    /// 0 sends as fast as the leader accepts.
    #[arg(long, env = "SIMPLELOGGERS_RATE", default_value_t = 1.0)]
    pub rate: f64,
    /// Send each line of standard input (blank lines are skipped and counted).
    #[arg(long, env = "SIMPLELOGGERS_STDIN", conflicts_with = "file")]
    pub stdin: bool,
    /// Follow this file like `tail -F` and send each line, surviving rotation and truncation.
    #[arg(long, env = "SIMPLELOGGERS_FILE")]
    pub file: Option<PathBuf>,
    /// With `--file`: start at the file's current end instead of its beginning.
    #[arg(long, env = "SIMPLELOGGERS_FROM_END", requires = "file")]
    pub from_end: bool,
    /// With `--file`: how often to check for new lines, rotation and truncation at end of file.
    #[arg(long, env = "SIMPLELOGGERS_FILE_POLL", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub file_poll: Duration,
    /// Stop after this many messages (then drain and exit).
    #[arg(long, env = "SIMPLELOGGERS_COUNT")]
    pub count: Option<u64>,
    /// Most messages per request.
    #[arg(long, env = "SIMPLELOGGERS_BATCH_MAX", default_value_t = 1000)]
    pub batch_max: usize,
    /// Soft cap on a request body in bytes (a single larger message is still sent, alone).
    #[arg(long, env = "SIMPLELOGGERS_BATCH_MAX_BYTES", default_value_t = 512 * 1024)]
    pub batch_max_bytes: usize,
    /// How long to wait for more messages to fill a batch once it has one.
    #[arg(long, env = "SIMPLELOGGERS_LINGER", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Batches awaiting an answer at once, 1 to 8 (the nodes remember each producer's last 8
    /// batches), counted from the oldest unanswered one. Order and exactly-once storage hold
    /// with any value: a batch that reaches a node before an earlier one is refused and resent.
    #[arg(long, env = "SIMPLELOGGERS_MAX_IN_FLIGHT", default_value_t = 1)]
    pub max_in_flight: usize,
    /// Timeout of one request (connect, send and answer).
    #[arg(long, env = "SIMPLELOGGERS_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Timeout of establishing a connection (at most `--request-timeout`): a vanished leader's
    /// address is given up on quickly, and nothing was sent yet, so it is always safe to retry.
    #[arg(long, env = "SIMPLELOGGERS_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How long to keep retrying one batch before counting its messages as failed.
    #[arg(long, env = "SIMPLELOGGERS_RETRY_MAX_ELAPSED", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_max_elapsed: Duration,
    /// Once the source has stopped (shutdown, `--count`, end of input): how long pending batches
    /// may still be retried; what is left after that is reported as unacknowledged.
    #[arg(long, env = "SIMPLELOGGERS_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// `X-Producer-Id` (default: a random UUID v4). A restarted producer with the same id
    /// continues after the last sequence the leader stored for it (see `--first-seq`).
    #[arg(long, env = "SIMPLELOGGERS_PRODUCER_ID")]
    pub producer_id: Option<String>,
    /// Sequence number of the first message. Default: 0 with a random producer id; with a
    /// given `--producer-id`, one past the last sequence the leader has stored for that id
    /// (asked before the first batch; 0 if it knows none).
    #[arg(long, env = "SIMPLELOGGERS_FIRST_SEQ")]
    pub first_seq: Option<u64>,
    /// The nodes' write token (their `--api-token`), sent as `Authorization: Bearer` on every
    /// request; a node that requires one answers 401 without it, which stops the producer.
    #[arg(long = "api-token", env = "SIMPLELOGGERS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Consul and the election key that names the leader (used unless `--target` is given).
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl Config {
    /// Defaults (synthetic messages at 1/s, batches of up to 1000, ...) sending to the leader
    /// discovered through Consul at `consul`.
    pub fn for_consul(consul: ConsulConfig) -> Self {
        Self {
            cluster: ClusterArgs::new(consul),
            target: None,
            rate: 1.0,
            stdin: false,
            file: None,
            from_end: false,
            file_poll: Duration::from_millis(200),
            count: None,
            batch_max: 1000,
            batch_max_bytes: 512 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight: 1,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            retry_max_elapsed: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(30),
            producer_id: None,
            first_seq: None,
            api_token: None,
        }
    }

    /// Defaults sending to the fixed base URL `target` (no Consul).
    pub fn for_target(target: impl Into<String>) -> Self {
        Self {
            target: Some(target.into()),
            ..Self::for_consul(ConsulConfig::default())
        }
    }

    /// Checks what clap cannot.
    ///
    /// # Errors
    /// [`ProducerError::Config`] naming the offending setting.
    pub fn validate(&self) -> Result<(), ProducerError> {
        let bad = |msg: &str| Err(ProducerError::Config(msg.to_string()));
        if self.stdin && self.file.is_some() {
            return bad("--stdin and --file are exclusive");
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            return bad("--rate must be a non-negative number");
        }
        if self.batch_max == 0 {
            return bad("--batch-max must be at least 1");
        }
        if self.max_in_flight == 0 || self.max_in_flight > PRODUCER_WINDOW {
            return bad(&format!("--max-in-flight must be 1 to {PRODUCER_WINDOW}"));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("--request-timeout and --connect-timeout must be positive");
        }
        if let Some(target) = &self.target {
            let raw = target.trim();
            let url = if raw.contains("://") {
                raw.to_string()
            } else {
                format!("http://{raw}")
            };
            match url::Url::parse(&url) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https")
                        && parsed.host_str().is_some_and(|h| !h.is_empty()) => {}
                _ => return bad(&format!("--target {target:?} is not a valid http(s) URL")),
            }
        }
        if self.producer_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            return bad("--producer-id must not be empty");
        }
        Ok(())
    }

    /// The source these settings name (the synthetic one unless `--stdin` or `--file`).
    pub fn source(&self) -> Source {
        if let Some(path) = &self.file {
            Source::File {
                path: path.clone(),
                from_end: self.from_end,
                poll: self.file_poll,
            }
        } else if self.stdin {
            Source::Lines(Box::new(tokio::io::BufReader::new(tokio::io::stdin())))
        } else {
            Source::Synthetic { rate: self.rate }
        }
    }
}

/// Optional ways to observe or feed a run (for the demo and tests).
#[derive(Default)]
pub struct Hooks {
    /// Receives a fresh [`Summary`] after every batch outcome and a few times per second.
    pub progress: Option<watch::Sender<Summary>>,
    /// Receives every acknowledgement, in the order the producer learnt of them.
    pub acks: Option<mpsc::UnboundedSender<Ack>>,
    /// Read messages (one per line) from this instead of the configured source.
    pub reader: Option<Box<dyn AsyncBufRead + Send + Unpin>>,
}

impl Hooks {
    /// Hooks that publish progress and every acknowledgement, with the receiving ends.
    pub fn observed() -> (Self, watch::Receiver<Summary>, mpsc::UnboundedReceiver<Ack>) {
        let (progress, progress_rx) = watch::channel(Summary::default());
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let hooks = Hooks {
            progress: Some(progress),
            acks: Some(acks),
            reader: None,
        };
        (hooks, progress_rx, acks_rx)
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("progress", &self.progress.is_some())
            .field("acks", &self.acks.is_some())
            .field("reader", &self.reader.is_some())
            .finish()
    }
}

/// How often progress is published while nothing else happens.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Runs the producer until its source ends (`--count`, end of input) or `shutdown` is cancelled,
/// then drains pending batches (bounded by `--drain-timeout`) and returns the [`Summary`].
///
/// # Errors
/// Only when it cannot start: invalid configuration, or a Consul/HTTP client that cannot be
/// built. Failed sends are counted in the summary instead.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Summary, ProducerError> {
    run_with(config, shutdown, Hooks::default()).await
}

/// [`run`] with live progress, acknowledgements and/or a custom line source.
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    hooks: Hooks,
) -> Result<Summary, ProducerError> {
    config.validate()?;
    let (producer_id, start) = identity(&config);
    let client = reqwest::Client::builder()
        .default_headers(
            crate::node::auth::bearer_headers(config.api_token.as_deref(), "--api-token")
                .map_err(ProducerError::Config)?,
        )
        .timeout(config.request_timeout)
        .connect_timeout(config.connect_timeout.min(config.request_timeout))
        .build()
        .map_err(ProducerError::Http)?;
    // Background tasks (the leader watch, the source, the drain timer) outlive shutdown until
    // the drain is over, then stop; the guard also stops them if this future is dropped.
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    let tasks = TaskTracker::new();
    let route = match &config.target {
        Some(target) => Route::Fixed(sender::base_url(target)),
        None => {
            let consul = ConsulClient::new(&config.cluster.consul).map_err(ProducerError::Consul)?;
            let rx = watch_leader(
                consul,
                config.cluster.election_key.clone(),
                background.child_token(),
            );
            tasks.spawn(log_leader_changes(rx.clone(), background.child_token()));
            Route::Leader(rx)
        }
    };
    tracing::info!(producer_id, ?start, target = ?config.target, election_key = config.cluster.election_key, "producer starting");

    let stats = Arc::new(Stats::new(producer_id.clone(), hooks.progress));
    let router = Arc::new(Router::new(route));

    let capacity = config.batch_max.saturating_mul(2).clamp(1024, 1 << 20);
    let (tx, rx) = mpsc::channel(capacity);
    let source = match hooks.reader {
        Some(reader) => Source::Lines(reader),
        None => config.source(),
    };
    let source_done = CancellationToken::new();
    let source_task = {
        let emitter = Emitter::new(tx, config.count, stats.clone(), shutdown.clone());
        let done = source_done.clone();
        let stop = background.child_token();
        tasks.spawn(async move {
            tokio::select! {
                _ = source::run(source, emitter) => {}
                _ = stop.cancelled() => {}
            }
            done.cancel();
        })
    };

    // The drain deadline starts when the source stops, for whatever reason.
    let abort = CancellationToken::new();
    {
        let (abort, shutdown, source_done) = (abort.clone(), shutdown.clone(), source_done.clone());
        let drain_timeout = config.drain_timeout;
        let stop = background.child_token();
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = source_done.cancelled() => {}
                _ = stop.cancelled() => return,
            }
            tracing::info!(?drain_timeout, "source stopped; draining pending batches");
            tokio::select! {
                _ = tokio::time::sleep(drain_timeout) => {
                    tracing::warn!("drain timeout reached; giving up on pending batches");
                    abort.cancel();
                }
                _ = stop.cancelled() => {}
            }
        });
    }

    // Where this run's sequence numbers start. The lookup waits for a leader like a batch does;
    // if the drain timeout stops it, every batch is abandoned unsent (the number is never used).
    let first_seq = match start {
        Start::At(seq) => seq,
        Start::AskLeader => {
            let lookup = Sender {
                client: client.clone(),
                router: router.clone(),
                producer_id: producer_id.clone(),
                retry_max_elapsed: config.retry_max_elapsed,
                window: Arc::new(Window::new(1, 0)),
            };
            match lookup.last_seq(&abort).await {
                Ok(None) => 0,
                Ok(Some(last)) => last.checked_add(1).ok_or_else(|| {
                    ProducerError::Config(format!(
                        "producer id {producer_id:?} has used every sequence number; pick another --producer-id"
                    ))
                })?,
                Err(LookupError::Stopped) => 0,
                Err(LookupError::Refused(reason)) => return Err(ProducerError::Resume(reason)),
            }
        }
    };
    tracing::info!(first_seq, "numbering messages");
    let window = Arc::new(Window::new(config.max_in_flight, first_seq));
    let sender = Arc::new(Sender {
        client,
        router,
        producer_id,
        retry_max_elapsed: config.retry_max_elapsed,
        window: window.clone(),
    });
    let mut batcher = Batcher::new(
        rx,
        first_seq,
        config.batch_max,
        config.batch_max_bytes,
        config.linger,
    );
    let mut in_flight: JoinSet<(Batch, Outcome)> = JoinSet::new();
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let acks = hooks.acks;
    let mut source_open = true;
    while source_open || !in_flight.is_empty() {
        tokio::select! {
            joined = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Some(joined) = joined {
                    record(joined, &stats, acks.as_ref());
                }
            }
            next = batcher.next_batch(), if source_open && window.has_room() => {
                match next {
                    Some(batch) => {
                        let (sender, abort, stats) = (sender.clone(), abort.clone(), stats.clone());
                        // Pending from now on; settled when the task ends, however it ends.
                        let pending = window.open(batch.seq, batch.count);
                        in_flight.spawn(async move {
                            let outcome = sender.deliver(&batch, &abort, || stats.add_retried()).await;
                            drop(pending);
                            (batch, outcome)
                        });
                    }
                    None => source_open = false,
                }
            }
            _ = ticker.tick() => stats.publish(),
        }
    }
    if let Err(err) = source_task.await {
        tracing::error!(%err, "the source task failed");
    }
    background.cancel();
    tasks.close();
    tasks.wait().await;
    let summary = stats.snapshot();
    stats.publish();
    tracing::info!(%summary, "producer finished");
    Ok(summary)
}

/// Where a run's sequence numbers start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// At this number (`--first-seq`, or 0 for a fresh random id).
    At(u64),
    /// After the last sequence the leader stored for the id (a fixed `--producer-id`).
    AskLeader,
}

/// The producer id of this run and where its sequence numbers start.
fn identity(config: &Config) -> (String, Start) {
    match (&config.producer_id, config.first_seq) {
        (_, Some(seq)) => (
            config
                .producer_id
                .as_deref()
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), |id| id.trim().to_string()),
            Start::At(seq),
        ),
        (None, None) => (uuid::Uuid::new_v4().to_string(), Start::At(0)),
        (Some(id), None) => (id.trim().to_string(), Start::AskLeader),
    }
}

/// Counts a finished batch and forwards its acknowledgement.
fn record(
    joined: Result<(Batch, Outcome), tokio::task::JoinError>,
    stats: &Stats,
    acks: Option<&mpsc::UnboundedSender<Ack>>,
) {
    let (batch, outcome) = match joined {
        Ok(done) => done,
        // Its messages stay counted as sent and not acknowledged.
        Err(err) => {
            tracing::error!(%err, "a sender task failed");
            return;
        }
    };
    for ack in outcome.acks {
        if stats.add_ack(&ack) {
            tracing::info!(
                leader = ack.leader,
                term = ack.term,
                "acknowledged by a new leader"
            );
        }
        if let Some(acks) = acks {
            // A dropped receiver only means nobody is listening any more.
            let _ = acks.send(ack);
        }
    }
    match outcome.rest {
        Rest::Nothing => {}
        Rest::Failed { count, .. } => stats.add_failed(count),
        Rest::Abandoned { count } => {
            tracing::warn!(
                seq = batch.seq,
                count,
                "messages not acknowledged before the drain timeout"
            );
            stats.publish();
        }
    }
}

/// How often to warn while Consul names no leader (a wrong `--consul-addr` or election key, or
/// a cluster without a leader, would otherwise only show as silence).
const NO_LEADER_WARN_EVERY: Duration = Duration::from_secs(10);

/// Logs every leader change the Consul watch reports, and warns while there is none.
async fn log_leader_changes(mut rx: watch::Receiver<Option<CurrentLeader>>, stop: CancellationToken) {
    tracing::info!("waiting for Consul to name a leader");
    loop {
        let leaderless = rx.borrow_and_update().is_none();
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(NO_LEADER_WARN_EVERY), if leaderless => {
                tracing::warn!(
                    waited = ?NO_LEADER_WARN_EVERY,
                    "still no leader in Consul (is --consul-addr / --election-key right?)"
                );
                continue;
            }
        }
        match rx.borrow().as_ref() {
            Some(leader) => tracing::info!(
                leader = leader.record.name,
                address = leader.record.address,
                term = leader.term,
                "leader observed"
            ),
            None => tracing::info!("no leader in Consul; waiting for one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    /// The flags' defaults are the ones `Config::for_consul` gives library users.
    #[test]
    fn flag_defaults_match_constructor() {
        let parsed = Cli::try_parse_from(["producer"]).unwrap().config;
        let built = Config::for_consul(parsed.cluster.consul.clone());
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }

    /// `--stdin` and `--file` exclude each other; nonsense numbers are refused.
    #[test]
    fn validation() {
        assert!(Cli::try_parse_from(["producer", "--stdin", "--file", "x"]).is_err());
        let mut c = Config::for_target("127.0.0.1:3000");
        assert!(c.validate().is_ok());
        c.batch_max = 0;
        assert!(c.validate().is_err());
        for bad in ["http://", "ftp://h:1", ""] {
            assert!(Config::for_target(bad).validate().is_err(), "{bad:?}");
        }
        let mut c = Config::for_target("https://svc.ns:3000/");
        assert!(c.validate().is_ok());
        c.target = None;
        c.rate = f64::NAN;
        assert!(c.validate().is_err());
    }

    /// A random id starts at 0; a fixed id asks the leader where it stopped unless
    /// `--first-seq` says where to start.
    #[test]
    fn identity_rules() {
        let c = Config::for_target("h:1");
        let (id, start) = identity(&c);
        assert!(uuid::Uuid::parse_str(&id).is_ok());
        assert_eq!(start, Start::At(0));
        let c = Config {
            producer_id: Some(" p1 ".into()),
            ..Config::for_target("h:1")
        };
        assert_eq!(identity(&c), ("p1".to_string(), Start::AskLeader));
        let c = Config {
            first_seq: Some(7),
            ..c
        };
        assert_eq!(identity(&c), ("p1".to_string(), Start::At(7)));
    }

    /// `--max-in-flight` is bounded by the batches a node remembers per producer.
    #[test]
    fn max_in_flight_is_bounded_by_the_window() {
        let mut c = Config::for_target("h:1");
        c.max_in_flight = PRODUCER_WINDOW;
        assert!(c.validate().is_ok());
        c.max_in_flight = PRODUCER_WINDOW + 1;
        assert!(c.validate().is_err());
        c.max_in_flight = 0;
        assert!(c.validate().is_err());
    }
}
