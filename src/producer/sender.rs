//! Delivery of one batch: picks the target (a fixed URL, or the leader named in Consul, or the
//! leader a follower pointed to), posts the batch with its idempotency headers, classifies the
//! answer (stored / out of order / retry / give up) and retries the *same* batch with exponential
//! back-off that wakes early when the leader changes, or — when the node is missing an earlier
//! batch — when an earlier batch settles. A partial acknowledgement is kept and the rest resent.
//! Also asks the leader where a producer id stopped, for a restarted producer.

use std::{sync::Mutex, time::Duration};

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use serde::Deserialize;
use tokio::{sync::watch, time::Instant};

use super::{batch::Batch, summary::Ack, window::Window};
use crate::{consul::Backoff, discovery::CurrentLeader, shutdown::CancellationToken};

/// First retry delay: small, so a failover costs little more than the new leader's election.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest retry delay (a leader change wakes a waiting retry earlier).
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest pause before resending to the node Consul names as leader after a retryable failure:
/// a 503 while it takes over (it serves milliseconds after taking the lock) or after its lease
/// lapsed (a renewal or the next leader follows within one lease), or a refused connection (it
/// crashed: Consul names the next leader about a second later, and a leader change wakes the
/// wait at once anyway).
pub const NAMED_LEADER_RETRY_MAX: Duration = Duration::from_millis(200);
/// Longest wait a node's `Retry-After` can impose. It comes in whole seconds, too coarse for a
/// failover: a leader change (watch or hint) is what a retry really waits for.
pub const RETRY_AFTER_CAP: Duration = Duration::from_millis(500);
/// Header naming the batch's producer.
pub const PRODUCER_ID_HEADER: &str = "x-producer-id";
/// Header with the sequence number of the batch's first message.
pub const PRODUCER_SEQ_HEADER: &str = "x-producer-seq";
/// Header with the producer's oldest sequence still awaiting an answer (see [`Window`]).
pub const PRODUCER_PENDING_FROM_HEADER: &str = "x-producer-pending-from";
/// Header a follower uses to name the leader (`host:port`).
pub const LEADER_HEADER: &str = "x-simpleloggers-leader";
/// The write path on a node.
pub const LOG_PATH: &str = "/api/v1/log";
/// Where a node tells a producer id's last stored sequence (`/api/v1/producers/{id}`).
pub const PRODUCERS_PATH: &str = "/api/v1/producers";
/// The `code` of a 409 that refuses a batch because an earlier one is missing (retriable).
pub const OUT_OF_ORDER: &str = "out_of_order_sequence";

/// What the node said it stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Offset of the first message.
    pub first_offset: u64,
    /// Offset of the last message.
    pub last_offset: u64,
    /// Messages stored (or found already stored).
    pub count: u64,
    /// The leader's term.
    pub term: u64,
    /// An earlier attempt had stored it already.
    pub duplicate: bool,
}

/// What to do after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledged: done (or, if fewer than sent, done with that many).
    Stored(Stored),
    /// Refused because the node has not stored an earlier batch yet: resend once one settles.
    OutOfOrder {
        /// Why, for the logs.
        reason: String,
        /// The sequence the node expects next, if it said.
        expected: Option<u64>,
    },
    /// Not stored, and worth resending (to whoever is leader by then).
    Retry {
        /// Why, for the logs.
        reason: String,
        /// The node's `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// The leader (`host:port`) a follower named, if any.
        leader_hint: Option<String>,
    },
    /// Not stored and never will be by resending: bad input or a misdirected request.
    Fatal(String),
}

/// The batch answer (`application/x-ndjson`).
#[derive(Deserialize)]
struct BatchAnswer {
    first_offset: u64,
    last_offset: u64,
    count: u64,
    term: u64,
    #[serde(default)]
    duplicate: bool,
}

/// The single-message answer (`text/plain`), accepted too.
#[derive(Deserialize)]
struct SingleAnswer {
    offset: u64,
    term: u64,
    #[serde(default)]
    duplicate: bool,
}

/// An error body, possibly naming the leader.
#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    expected: Option<u64>,
    #[serde(default)]
    leader: Option<LeaderRef>,
}

#[derive(Deserialize)]
struct LeaderRef {
    #[serde(default)]
    address: Option<String>,
}

/// The `error` of a JSON error body, or the body itself (shortened) when it is not one.
fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(ErrorAnswer {
            error: Some(serde_json::Value::String(s)),
            ..
        }) => s,
        Ok(ErrorAnswer {
            error: Some(other), ..
        }) => other.to_string(),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            match text.char_indices().nth(200) {
                Some((cut, _)) => format!("{}…", &text[..cut]),
                None => text.to_string(),
            }
        }
    }
}

/// Classifies a node's answer. Pure: status, the two headers that matter, and the body.
///
/// - `200` with offsets: stored (a `duplicate` answer too); an unreadable `200` is retried,
///   which is safe because the resend carries the same id and sequence number;
/// - `409` with code `out_of_order_sequence`: an earlier batch must be stored first (resent in
///   order); any other `409` (a stale sequence) is fatal;
/// - `503` (follower, lapsed lease), `507` (storage full, may clear or move with the leader),
///   `408`, `429` and other `5xx`: retry, keeping `Retry-After` and the leader hint;
/// - `400`, `413` and every other status: fatal, with the node's JSON `error`.
pub fn classify(status: u16, retry_after: Option<&str>, leader_header: Option<&str>, body: &[u8]) -> Verdict {
    if status == 200 {
        if let Ok(a) = serde_json::from_slice::<BatchAnswer>(body) {
            return Verdict::Stored(Stored {
                first_offset: a.first_offset,
                last_offset: a.last_offset,
                count: a.count,
                term: a.term,
                duplicate: a.duplicate,
            });
        }
        if let Ok(a) = serde_json::from_slice::<SingleAnswer>(body) {
            return Verdict::Stored(Stored {
                first_offset: a.offset,
                last_offset: a.offset,
                count: 1,
                term: a.term,
                duplicate: a.duplicate,
            });
        }
        return Verdict::Retry {
            reason: format!("200 with an unreadable body: {}", error_text(body)),
            retry_after: None,
            leader_hint: None,
        };
    }
    if status == 409 {
        if let Ok(e) = serde_json::from_slice::<ErrorAnswer>(body) {
            if e.code.as_deref() == Some(OUT_OF_ORDER) {
                return Verdict::OutOfOrder {
                    reason: format!("HTTP 409: {}", error_text(body)),
                    expected: e.expected,
                };
            }
        }
    }
    if status == 401 {
        return Verdict::Fatal(format!(
            "HTTP 401: the node requires a write token: set --api-token / SIMPLELOGGERS_API_TOKEN to its --api-token ({})",
            error_text(body)
        ));
    }
    let retryable =
        status == 503 || status == 507 || status == 408 || status == 429 || (500..600).contains(&status);
    if !retryable {
        return Verdict::Fatal(format!("HTTP {status}: {}", error_text(body)));
    }
    let leader_hint = leader_header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            serde_json::from_slice::<ErrorAnswer>(body)
                .ok()
                .and_then(|e| e.leader)
                .and_then(|l| l.address)
                .filter(|a| !a.is_empty())
        });
    Verdict::Retry {
        reason: format!("HTTP {status}: {}", error_text(body)),
        retry_after: retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
        leader_hint,
    }
}

/// The delay before the next attempt: the back-off, stretched to the node's `Retry-After` (capped
/// at [`RETRY_AFTER_CAP`]) unless we know where to go now: a leader hint, or the refusing node is
/// the one Consul names as leader (it took the lock a moment ago and is about to serve).
pub fn retry_delay(backoff: Duration, retry_after: Option<Duration>, know_where: bool) -> Duration {
    match retry_after {
        Some(after) if !know_where => backoff.max(after.min(RETRY_AFTER_CAP)),
        _ => backoff,
    }
}

/// Turns `host:port` or a URL into a base URL without a trailing slash.
pub fn base_url(address: &str) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.starts_with("http://") || address.starts_with("https://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Where batches go.
#[derive(Clone, Debug)]
pub enum Route {
    /// Always this base URL (`--target`).
    Fixed(String),
    /// The leader named under the election key.
    Leader(watch::Receiver<Option<CurrentLeader>>),
}

/// A leader hint from a follower, valid while the primary route has not changed.
#[derive(Clone, Debug)]
struct Hint {
    /// Base URL of the hinted leader.
    url: String,
    /// The primary route's URL when the hint came; a different one voids the hint.
    primary: Option<String>,
}

/// Chooses the target of each attempt, shared by every in-flight batch.
#[derive(Debug)]
pub struct Router {
    route: Route,
    hint: Mutex<Option<Hint>>,
}

impl Router {
    /// A router over `route`, without a hint.
    pub fn new(route: Route) -> Self {
        Self {
            route,
            hint: Mutex::new(None),
        }
    }

    fn primary(&self) -> Option<String> {
        match &self.route {
            Route::Fixed(url) => Some(url.clone()),
            Route::Leader(rx) => rx.borrow().as_ref().map(|l| l.record.url()),
        }
    }

    /// The base URL to send to now: a still-valid hint, else the primary route.
    pub fn target(&self) -> Option<String> {
        let primary = self.primary();
        if let Ok(mut hint) = self.hint.lock() {
            match hint.as_ref() {
                Some(h) if h.primary == primary => return Some(h.url.clone()),
                Some(_) => *hint = None,
                None => {}
            }
        }
        primary
    }

    /// Remembers that the node at `from` named `leader` (`host:port`) as the leader.
    pub fn hint(&self, from: &str, leader: &str) {
        let url = base_url(leader);
        if url == from {
            return;
        }
        tracing::debug!(from, leader = %url, "following the leader hint");
        if let Ok(mut hint) = self.hint.lock() {
            *hint = Some(Hint {
                url,
                primary: self.primary(),
            });
        }
    }

    /// An attempt on `url` failed: a hint pointing there is dropped.
    pub fn failed(&self, url: &str) {
        if let Ok(mut hint) = self.hint.lock() {
            if hint.as_ref().is_some_and(|h| h.url == url) {
                *hint = None;
            }
        }
    }

    /// A receiver that wakes on leader changes (none for a fixed route).
    fn watch(&self) -> Option<watch::Receiver<Option<CurrentLeader>>> {
        match &self.route {
            Route::Fixed(_) => None,
            Route::Leader(rx) => Some(rx.clone()),
        }
    }
}

/// Resolves when the leader changes; never for a fixed route or a watch that has stopped.
async fn leader_changed(rx: &mut Option<watch::Receiver<Option<CurrentLeader>>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// How one batch ended: its acknowledgements, then what became of the messages left.
#[derive(Debug)]
pub struct Outcome {
    /// Acknowledgements in sequence order: one, or several when the node stored (or had stored)
    /// only part of the batch at a time; each counts exactly the messages it acknowledges.
    pub acks: Vec<Ack>,
    /// The messages no acknowledgement covers.
    pub rest: Rest,
}

/// What became of the messages of a batch that were not acknowledged.
#[derive(Debug, PartialEq, Eq)]
pub enum Rest {
    /// None left: every message was acknowledged.
    Nothing,
    /// Given up: fatal answer or retry budget spent.
    Failed {
        /// Messages given up on.
        count: u64,
        /// Why.
        reason: String,
    },
    /// Stopped by the drain timeout before an answer: neither acknowledged nor failed.
    Abandoned {
        /// Messages left without an answer.
        count: u64,
    },
}

impl Outcome {
    fn ended(acks: Vec<Ack>, rest: Rest) -> Self {
        Self { acks, rest }
    }
}

/// Why [`Sender::last_seq`] has no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum LookupError {
    /// Stopped (drain timeout) before any node answered.
    Stopped,
    /// The node refused the question for good (e.g. an id it rejects); the message says why.
    Refused(String),
}

/// The answer of `GET /api/v1/producers/{id}`.
#[derive(Deserialize)]
struct ProducerAnswer {
    last_seq: u64,
}

/// Sends batches for one producer.
#[derive(Debug)]
pub struct Sender {
    /// Shared HTTP client (its timeout is `--request-timeout`).
    pub client: reqwest::Client,
    /// Target selection.
    pub router: std::sync::Arc<Router>,
    /// `X-Producer-Id`.
    pub producer_id: String,
    /// How long to keep retrying one batch.
    pub retry_max_elapsed: Duration,
    /// The pending batches: `X-Producer-Pending-From` and the signal to resend in order.
    pub window: std::sync::Arc<Window>,
}

impl Sender {
    /// One POST of `batch` to `base`.
    async fn attempt(&self, base: &str, seq: u64, body: Bytes) -> Verdict {
        // Never above the batch's own sequence (a partial batch's rest starts later).
        let pending_from = self.window.pending_from().min(seq);
        let sent = self
            .client
            .post(format!("{base}{LOG_PATH}"))
            .header(CONTENT_TYPE, "application/x-ndjson")
            .header(PRODUCER_ID_HEADER, &self.producer_id)
            .header(PRODUCER_SEQ_HEADER, seq.to_string())
            .header(PRODUCER_PENDING_FROM_HEADER, pending_from.to_string())
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => return transport_retry(&err),
        };
        let status = response.status().as_u16();
        let headers: HeaderMap = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(err) => return transport_retry(&err),
        };
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        classify(status, header(RETRY_AFTER.as_str()), header(LEADER_HEADER), &body)
    }

    /// Delivers `batch`: retries retryable failures with back-off until acknowledged, a fatal
    /// answer, `retry_max_elapsed`, or `abort` (the drain timeout). Each retry is counted by
    /// `on_retry`. An out-of-order refusal is resent as soon as another batch settles (the node
    /// is missing an earlier one); a partial acknowledgement is kept and the rest resent.
    pub async fn deliver(&self, batch: &Batch, abort: &CancellationToken, on_retry: impl Fn()) -> Outcome {
        let give_up_at = Instant::now() + self.retry_max_elapsed;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut changes = self.router.watch();
        let mut settled = self.window.settled();
        let mut last_reason = String::from("no leader known");
        let mut attempts: u32 = 0;
        // The target of the last attempt: a new one (leader change, hint) starts the back-off
        // afresh, so delays grown against a dead leader do not pace the first tries of the next.
        let mut last_target: Option<String> = None;
        let mut acks = Vec::new();
        // What is left to acknowledge: the whole batch, then the rest after a partial answer.
        let mut part = batch.clone();
        loop {
            if abort.is_cancelled() {
                return Outcome::ended(acks, abandoned(&part));
            }
            // Wait for somewhere to send to.
            let target = loop {
                if let Some(changes) = changes.as_mut() {
                    changes.borrow_and_update();
                }
                if let Some(target) = self.router.target() {
                    break target;
                }
                tracing::debug!(seq = part.seq, "no leader known; waiting");
                tokio::select! {
                    biased;
                    _ = abort.cancelled() => return Outcome::ended(acks, abandoned(&part)),
                    _ = tokio::time::sleep_until(give_up_at) => {
                        return Outcome::ended(acks, self.give_up(&part, attempts, &last_reason));
                    }
                    _ = leader_changed(&mut changes) => {}
                }
            };
            if attempts > 0 {
                on_retry();
            }
            if last_target.as_deref() != Some(target.as_str()) {
                backoff.reset();
                last_target = Some(target.clone());
            }
            attempts += 1;
            settled.borrow_and_update();
            let verdict = tokio::select! {
                biased;
                _ = abort.cancelled() => return Outcome::ended(acks, abandoned(&part)),
                verdict = self.attempt(&target, part.seq, part.body.clone()) => verdict,
            };
            let delay = match verdict {
                Verdict::Stored(stored) if stored.count == 0 => {
                    last_reason = "the node acknowledged none of the messages".to_string();
                    backoff.next_delay()
                }
                Verdict::Stored(stored) => {
                    let acked = stored.count.min(part.count as u64);
                    if stored.count > part.count as u64 {
                        tracing::warn!(
                            seq = part.seq,
                            sent = part.count,
                            stored = stored.count,
                            "the node acknowledged more messages than were sent"
                        );
                    }
                    acks.push(Ack {
                        seq: part.seq,
                        count: acked,
                        first_offset: stored.first_offset,
                        last_offset: stored.first_offset + acked - 1,
                        term: stored.term,
                        duplicate: stored.duplicate,
                        leader: target,
                    });
                    // `acked` is at most `part.count`, a usize.
                    match part.rest_after(acked as usize) {
                        None => return Outcome::ended(acks, Rest::Nothing),
                        Some(rest) => {
                            tracing::info!(
                                seq = part.seq,
                                sent = part.count,
                                acknowledged = acked,
                                "partial acknowledgement; sending the rest"
                            );
                            // Sending the rest is a new request, not a retry.
                            part = rest;
                            attempts = 0;
                            backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
                            continue;
                        }
                    }
                }
                Verdict::OutOfOrder { reason, expected } => {
                    // An earlier batch is not on this node yet: its settling (or a back-off, in
                    // case it is elsewhere) is the cue to resend, which keeps the order.
                    tracing::debug!(
                        seq = part.seq,
                        ?expected,
                        target,
                        "out of order; resending once an earlier batch settles"
                    );
                    last_reason = reason;
                    let now = Instant::now();
                    if now >= give_up_at {
                        return Outcome::ended(acks, self.give_up(&part, attempts, &last_reason));
                    }
                    let delay = backoff.next_delay().min(give_up_at - now);
                    tokio::select! {
                        biased;
                        _ = abort.cancelled() => return Outcome::ended(acks, abandoned(&part)),
                        _ = settled.changed() => {}
                        _ = tokio::time::sleep(delay) => {}
                        _ = leader_changed(&mut changes) => {}
                    }
                    continue;
                }
                Verdict::Fatal(reason) => {
                    tracing::warn!(seq = part.seq, count = part.count, target, %reason, "batch rejected; not retrying");
                    let count = part.count as u64;
                    return Outcome::ended(acks, Rest::Failed { count, reason });
                }
                Verdict::Retry {
                    reason,
                    retry_after,
                    leader_hint,
                } => {
                    self.router.failed(&target);
                    if let Some(leader) = &leader_hint {
                        self.router.hint(&target, leader);
                    }
                    // A failure of the node Consul names as leader: it has not finished taking
                    // over, its lease just lapsed, or it crashed; the back-off, capped at
                    // NAMED_LEADER_RETRY_MAX, paces the retry and a leader change cuts it short.
                    let named_leader = matches!(self.router.route, Route::Leader(_))
                        && self.router.primary().as_deref() == Some(target.as_str());
                    let delay = retry_delay(
                        backoff.next_delay(),
                        retry_after,
                        leader_hint.is_some() || named_leader,
                    );
                    let delay = if named_leader {
                        delay.min(NAMED_LEADER_RETRY_MAX)
                    } else {
                        delay
                    };
                    tracing::debug!(seq = part.seq, attempt = attempts, target, %reason, ?delay, "retrying batch");
                    last_reason = reason;
                    delay
                }
            };
            let now = Instant::now();
            if now >= give_up_at {
                return Outcome::ended(acks, self.give_up(&part, attempts, &last_reason));
            }
            // The last attempt happens at the end of the budget, not before it.
            let delay = delay.min(give_up_at - now);
            tokio::select! {
                biased;
                _ = abort.cancelled() => return Outcome::ended(acks, abandoned(&part)),
                _ = tokio::time::sleep(delay) => {}
                _ = leader_changed(&mut changes) => {}
            }
        }
    }

    fn give_up(&self, batch: &Batch, attempts: u32, reason: &str) -> Rest {
        let reason = format!(
            "gave up after {attempts} attempt(s) in {:?}: {reason}",
            self.retry_max_elapsed
        );
        tracing::warn!(seq = batch.seq, count = batch.count, %reason, "batch failed");
        Rest::Failed {
            count: batch.count as u64,
            reason,
        }
    }

    /// Asks the leader for this producer id's last stored sequence (`GET
    /// /api/v1/producers/{id}`), retrying like a batch (no leader, 503, transport errors) until an
    /// answer: `Some(last)` to continue at `last + 1`, `None` when the leader knows no batch of
    /// it (404: start at 0).
    ///
    /// # Errors
    /// [`LookupError::Stopped`] once `stop` is cancelled; [`LookupError::Refused`] for a final
    /// answer such as 400.
    pub async fn last_seq(&self, stop: &CancellationToken) -> Result<Option<u64>, LookupError> {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut changes = self.router.watch();
        loop {
            if let Some(changes) = changes.as_mut() {
                changes.borrow_and_update();
            }
            let Some(target) = self.router.target() else {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Err(LookupError::Stopped),
                    _ = leader_changed(&mut changes) => {}
                }
                continue;
            };
            let answer = tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(LookupError::Stopped),
                answer = self.ask_last_seq(&target) => answer,
            };
            let (reason, retry_after, leader_hint) = match answer {
                Ok(found) => return Ok(found),
                Err(Verdict::Fatal(reason)) => return Err(LookupError::Refused(reason)),
                Err(Verdict::Retry {
                    reason,
                    retry_after,
                    leader_hint,
                }) => (reason, retry_after, leader_hint),
                Err(other) => (format!("{other:?}"), None, None),
            };
            self.router.failed(&target);
            if let Some(leader) = &leader_hint {
                self.router.hint(&target, leader);
            }
            let delay = retry_delay(backoff.next_delay(), retry_after, leader_hint.is_some());
            tracing::debug!(target, %reason, ?delay, "asking for the producer's last sequence again");
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(LookupError::Stopped),
                _ = tokio::time::sleep(delay) => {}
                _ = leader_changed(&mut changes) => {}
            }
        }
    }

    /// One `GET /api/v1/producers/{id}` to `base`.
    async fn ask_last_seq(&self, base: &str) -> Result<Option<u64>, Verdict> {
        let mut url = url::Url::parse(base).map_err(|e| Verdict::Fatal(format!("bad URL {base:?}: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| Verdict::Fatal(format!("bad URL {base:?}")))?
            .pop_if_empty()
            .extend(PRODUCERS_PATH.trim_start_matches('/').split('/'))
            .push(&self.producer_id);
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| transport_retry(&e))?;
        let status = response.status().as_u16();
        let headers: HeaderMap = response.headers().clone();
        let body = response.bytes().await.map_err(|e| transport_retry(&e))?;
        match status {
            200 => serde_json::from_slice::<ProducerAnswer>(&body)
                .map(|a| Some(a.last_seq))
                .map_err(|e| Verdict::Retry {
                    reason: format!("200 with an unreadable body: {e}"),
                    retry_after: None,
                    leader_hint: None,
                }),
            404 => Ok(None),
            _ => {
                let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
                Err(classify(
                    status,
                    header(RETRY_AFTER.as_str()),
                    header(LEADER_HEADER),
                    &body,
                ))
            }
        }
    }
}

/// The messages of `part`, left without an answer by the drain timeout.
fn abandoned(part: &Batch) -> Rest {
    Rest::Abandoned {
        count: part.count as u64,
    }
}

/// A connection error, timeout or broken body: always worth a retry.
fn transport_retry(err: &reqwest::Error) -> Verdict {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connection refused or unreachable"
    } else {
        "transport error"
    };
    Verdict::Retry {
        reason: format!("{kind}: {}", error_chain(err)),
        retry_after: None,
        leader_hint: None,
    }
}

/// The error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::LeaderRecord;

    /// 200 answers (batch or single form, duplicate or not) are acknowledgements.
    #[test]
    fn classify_stored() {
        let v = classify(
            200,
            None,
            None,
            br#"{"first_offset":5,"last_offset":7,"count":3,"term":2,"duplicate":true}"#,
        );
        assert_eq!(
            v,
            Verdict::Stored(Stored {
                first_offset: 5,
                last_offset: 7,
                count: 3,
                term: 2,
                duplicate: true
            })
        );
        let v = classify(200, None, None, br#"{"offset":9,"term":4}"#);
        assert!(matches!(
            v,
            Verdict::Stored(Stored {
                first_offset: 9,
                count: 1,
                duplicate: false,
                ..
            })
        ));
        assert!(
            matches!(classify(200, None, None, b"ok"), Verdict::Retry { .. }),
            "unreadable 200 is resent"
        );
    }

    /// 503 keeps Retry-After and the leader hint (header first, else the JSON body); 5xx, 507,
    /// 408 and 429 are retried.
    #[test]
    fn classify_retry() {
        let v = classify(
            503,
            Some("2"),
            Some("10.0.0.2:3000"),
            br#"{"error":"not the leader"}"#,
        );
        assert_eq!(
            v,
            Verdict::Retry {
                reason: "HTTP 503: not the leader".into(),
                retry_after: Some(Duration::from_secs(2)),
                leader_hint: Some("10.0.0.2:3000".into()),
            }
        );
        let v = classify(
            503,
            None,
            None,
            br#"{"error":"x","leader":{"name":"n2","address":"h:1"}}"#,
        );
        assert!(matches!(v, Verdict::Retry { leader_hint: Some(ref h), .. } if h == "h:1"));
        for status in [500, 502, 504, 507, 408, 429] {
            assert!(
                matches!(classify(status, None, None, b""), Verdict::Retry { .. }),
                "{status}"
            );
        }
    }

    /// Bad input and other client errors are final, with the node's error message.
    #[test]
    fn classify_fatal() {
        assert_eq!(
            classify(400, None, None, br#"{"error":"line 2 is not a JSON string"}"#),
            Verdict::Fatal("HTTP 400: line 2 is not a JSON string".into())
        );
        for status in [413, 404, 415] {
            assert!(
                matches!(classify(status, None, None, b"nope"), Verdict::Fatal(_)),
                "{status}"
            );
        }
    }

    /// Retry-After stretches the back-off (capped) unless a hint says where the leader is.
    #[test]
    fn delay_rules() {
        let b = Duration::from_millis(50);
        assert_eq!(retry_delay(b, None, false), b);
        assert_eq!(
            retry_delay(b, Some(Duration::from_secs(1)), false),
            RETRY_AFTER_CAP
        );
        assert_eq!(
            retry_delay(Duration::from_secs(1), Some(Duration::from_secs(1)), false),
            Duration::from_secs(1),
            "a longer back-off is kept"
        );
        assert_eq!(retry_delay(b, Some(Duration::from_secs(1)), true), b);
    }

    fn leader(address: &str) -> Option<CurrentLeader> {
        Some(CurrentLeader {
            record: LeaderRecord {
                name: "n".into(),
                address: address.into(),
                since: String::new(),
                term: None,
            },
            term: 1,
            session: "s".into(),
        })
    }

    /// A hint wins until it fails or the watched leader changes; a fixed route is used as is.
    #[test]
    fn router_hints() {
        let (tx, rx) = watch::channel(leader("a:1"));
        let router = Router::new(Route::Leader(rx));
        assert_eq!(router.target().as_deref(), Some("http://a:1"));
        router.hint("http://a:1", "b:2");
        assert_eq!(router.target().as_deref(), Some("http://b:2"));
        router.failed("http://b:2");
        assert_eq!(
            router.target().as_deref(),
            Some("http://a:1"),
            "a failed hint is dropped"
        );
        router.hint("http://a:1", "b:2");
        tx.send_replace(leader("c:3"));
        assert_eq!(
            router.target().as_deref(),
            Some("http://c:3"),
            "a leader change voids the hint"
        );
        tx.send_replace(None);
        assert_eq!(router.target(), None);
        let fixed = Router::new(Route::Fixed(base_url("svc:3000/")));
        assert_eq!(fixed.target().as_deref(), Some("http://svc:3000"));
    }
}
