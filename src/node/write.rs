//! The write path: `POST /api/v1/log`. One raw message, or an NDJSON batch appended atomically;
//! fenced by the leader's term and lease, acknowledged only once durable and only if the lease
//! still holds; idempotent for producers that send `X-Producer-Id` / `X-Producer-Seq` (and
//! `X-Producer-Pending-From`), whose last sequence `GET /api/v1/producers/{id}` tells a restarted
//! producer. The protocol is described in `docs/producer.md`.

use std::time::{Duration, Instant};

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

use super::{ApiError, FollowerWrites, Node, Refusal};
use crate::{
    flags::Acks,
    log::{AppendOutcome, LogError, LogStore, ProducerBatch},
    replication::{state::TERM_START_WAIT, WriteRefusal},
};

/// Header naming the producer of an idempotent write.
pub const PRODUCER_ID: &str = "x-producer-id";
/// Header carrying the sequence number of the first message of an idempotent write.
pub const PRODUCER_SEQ: &str = "x-producer-seq";
/// Optional header: the producer's oldest sequence still awaiting an answer (at most
/// `X-Producer-Seq`); every lower one is settled and never sent again.
pub const PRODUCER_PENDING_FROM: &str = "x-producer-pending-from";
/// Set on a forwarded write so that it is never forwarded twice.
const FORWARDED: &str = "x-simpleloggers-forwarded";
/// Longest accepted producer id.
const MAX_PRODUCER_ID: usize = 128;
/// How long a producer batch that arrived before an earlier one of the same producer waits on
/// the node for it before being refused as out of order (409). A pipelining producer sends its
/// batches over several connections, so they often arrive slightly out of order; waiting here
/// costs the batch a group commit instead of a round trip and a resend.
pub const OUT_OF_ORDER_WAIT: Duration = Duration::from_millis(100);

/// The answer to a single-message write.
#[derive(Debug, Serialize)]
pub struct SingleAck {
    /// Where the message is stored.
    pub offset: u64,
    /// The term of the leader that stored it.
    pub term: u64,
    /// True when this was a retry of a message already stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// The answer to a batch write.
#[derive(Debug, Serialize)]
pub struct BatchAck {
    /// Offset of the first message.
    pub first_offset: u64,
    /// Offset of the last message.
    pub last_offset: u64,
    /// How many messages.
    pub count: u64,
    /// The term of the leader that stored them.
    pub term: u64,
    /// True when this was a retry of a batch already stored.
    pub duplicate: bool,
}

/// Splits an NDJSON body into payloads: one JSON string per non-empty line. A string without
/// escapes (the usual log line) is a slice of `body`, not a copy. The error names the first bad
/// line (1-based).
pub fn parse_ndjson(body: &Bytes, max_message_bytes: usize) -> Result<Vec<Bytes>, ApiError> {
    let mut payloads = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let message = json_string(body, line).map_err(|e| {
            ApiError::BadRequest(format!("line {}: expected one JSON string per line: {e}", i + 1))
        })?;
        if message.is_empty() {
            return Err(ApiError::BadRequest(format!("line {}: empty message", i + 1)));
        }
        if message.len() > max_message_bytes {
            return Err(ApiError::TooLarge(format!(
                "line {}: message of {} bytes exceeds --max-message-bytes ({max_message_bytes})",
                i + 1,
                message.len()
            )));
        }
        payloads.push(message);
    }
    if payloads.is_empty() {
        return Err(ApiError::BadRequest("empty batch: no message lines".into()));
    }
    Ok(payloads)
}

/// The JSON string on `line` (a part of `body`): borrowed from `body` when it has no escapes
/// (serde_json can then hand out the text in place), decoded into a new buffer otherwise.
fn json_string(body: &Bytes, line: &[u8]) -> Result<Bytes, serde_json::Error> {
    match serde_json::from_slice::<&str>(line) {
        Ok(text) if !text.is_empty() => Ok(body.slice_ref(text.as_bytes())),
        Ok(_) => Ok(Bytes::new()),
        Err(_) => serde_json::from_slice::<String>(line).map(Bytes::from),
    }
}

/// Reads the idempotency headers: id and seq both or neither, and `X-Producer-Pending-From`
/// (optional, only with them, at most the seq).
pub fn producer_from_headers(headers: &HeaderMap) -> Result<Option<ProducerBatch>, ApiError> {
    let text = |name: &str| -> Result<Option<&str>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::BadRequest(format!("header {name} is not ASCII")))
            })
            .transpose()
    };
    let number = |name: &str, value: &str| {
        value.trim().parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "header {name} must be an unsigned integer, got {value:?}"
            ))
        })
    };
    let pending_from = text(PRODUCER_PENDING_FROM)?;
    match (text(PRODUCER_ID)?, text(PRODUCER_SEQ)?) {
        (None, None) if pending_from.is_some() => Err(ApiError::BadRequest(
            "X-Producer-Pending-From needs X-Producer-Id and X-Producer-Seq".into(),
        )),
        (None, None) => Ok(None),
        (Some(id), Some(seq)) => {
            let id = id.trim();
            if id.is_empty() || id.len() > MAX_PRODUCER_ID {
                return Err(ApiError::BadRequest(format!(
                    "header X-Producer-Id must be 1 to {MAX_PRODUCER_ID} characters"
                )));
            }
            let seq = number("X-Producer-Seq", seq)?;
            let pending_from = pending_from
                .map(|p| number("X-Producer-Pending-From", p))
                .transpose()?;
            if pending_from.is_some_and(|p| p > seq) {
                return Err(ApiError::BadRequest(
                    "X-Producer-Pending-From must not exceed X-Producer-Seq".into(),
                ));
            }
            Ok(Some(ProducerBatch {
                producer_id: id.to_string(),
                seq,
                pending_from,
            }))
        }
        _ => Err(ApiError::BadRequest(
            "X-Producer-Id and X-Producer-Seq must be sent together".into(),
        )),
    }
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/x-ndjson") || v.eq_ignore_ascii_case("application/jsonl")
        })
}

/// `POST /api/v1/log`.
pub async fn append(State(node): State<Node>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let started = Instant::now();
    let term = match admit_soon(&node).await {
        Ok(term) => term,
        Err(Refusal::Log(reason)) => return Err(ApiError::NotServing(reason)),
        Err(Refusal::Replication(refusal)) => return Err(refused(&node, refusal)),
        Err(Refusal::NotLeader(not_leader)) => {
            let forwarded = headers.contains_key(FORWARDED);
            return match (&node.config.follower_writes, &not_leader.leader) {
                (FollowerWrites::Forward, Some(leader))
                    if !forwarded && leader.address != node.elector.config().advertise_addr =>
                {
                    forward(&node, &leader.address, headers, body).await
                }
                _ => Err(ApiError::NotLeader(not_leader)),
            };
        }
    };
    let batch = is_ndjson(&headers);
    let limit = if batch {
        node.config.max_batch_bytes
    } else {
        node.config.max_message_bytes
    };
    let flag = if batch {
        "--max-batch-bytes"
    } else {
        "--max-message-bytes"
    };
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|err| ApiError::body(&err, flag, limit))?;
    let producer = producer_from_headers(&headers)?;
    let payloads = if batch {
        parse_ndjson(&body, node.config.max_message_bytes)?
    } else if body.is_empty() {
        return Err(ApiError::BadRequest(
            "empty message: the request body is the message".into(),
        ));
    } else {
        vec![body]
    };
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let outcome = match producer {
        Some(producer) => append_in_order(&node, term, producer, payloads).await,
        None => node.store.append(term, None, payloads).await,
    }
    .inspect_err(|err| node.health.append_failed(err))?;
    // Durable now; acknowledge only if we are still the leader of the same term with a lease.
    match node.elector.write_term() {
        Ok(t) if t == term => {}
        _ => return Err(ApiError::LeaseLapsed),
    }
    let (first, count, duplicate) = match outcome {
        AppendOutcome::Appended { first, count } => (first, u64::from(count), false),
        AppendOutcome::Duplicate { first, count } => (first, u64::from(count), true),
    };
    // Kafka's NotEnoughReplicasAfterAppend: the ISR may have shrunk while the append ran.
    if let Err(refusal) = node.replication.admit(term) {
        return Err(refused(&node, refusal));
    }
    if node.replication.settings().acks == Acks::All {
        wait_committed(&node, term, first + count - 1).await?;
    }
    if duplicate {
        node.metrics.duplicates.inc();
    } else {
        node.metrics.messages_appended.inc_by(count);
        node.metrics.bytes_appended.inc_by(bytes);
        node.metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(if batch {
        Json(BatchAck {
            first_offset: first,
            last_offset: first + count - 1,
            count,
            term,
            duplicate,
        })
        .into_response()
    } else {
        Json(SingleAck {
            offset: first,
            term,
            duplicate,
        })
        .into_response()
    })
}

/// [`Node::admit`], waiting up to [`TERM_START_WAIT`] while this node leads a term that has not
/// begun yet. A producer that finds the new leader a few milliseconds after the election (it
/// watches the key) would otherwise get a 503 and retry only after its back-off, which was most
/// of a graceful handover's time (issue 14); every other refusal is answered at once.
async fn admit_soon(node: &Node) -> Result<u64, Refusal> {
    let deadline = tokio::time::Instant::now() + TERM_START_WAIT;
    loop {
        match node.admit() {
            Err(Refusal::Replication(WriteRefusal::TermStarting { .. } | WriteRefusal::IsrUnknown))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            other => return other,
        }
    }
}

/// The error for a write replication refuses, counted by reason.
fn refused(node: &Node, refusal: WriteRefusal) -> ApiError {
    match refusal {
        WriteRefusal::NotEnoughReplicas { isr, min_insync } => {
            node.metrics.write_refused("not_enough_replicas");
            ApiError::NotEnoughReplicas { isr, min_insync }
        }
        other => {
            node.metrics.write_refused(match other {
                WriteRefusal::TermStarting { .. } => "term_starting",
                WriteRefusal::Deposed { .. } => "deposed",
                WriteRefusal::HandingOver => "handing_over",
                _ => "isr_unknown",
            });
            ApiError::NotServing(other.to_string())
        }
    }
}

/// `--acks all`: waits until the high watermark passes `last` (every in-sync replica holds the
/// write durably), for at most [`commit_timeout`](crate::replication::ReplicationSettings::commit_timeout).
///
/// # Errors
/// [`ApiError::CommitTimeout`] (or [`ApiError::NotEnoughReplicas`] when the ISR shrank below
/// `--min-insync` meanwhile): the write may still be committed, the producer retries it;
/// [`ApiError::LeaseLapsed`] when this node stopped leading `term`.
async fn wait_committed(node: &Node, term: u64, last: u64) -> Result<(), ApiError> {
    let timeout = node.replication.settings().commit_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribe before looking, so a move between the look and the wait still wakes us.
    let mut hw = node.store.subscribe();
    let mut states = node.elector.subscribe();
    loop {
        hw.borrow_and_update();
        if node.store.high_watermark() > last {
            return Ok(());
        }
        if node.elector.write_term() != Ok(term) {
            return Err(ApiError::LeaseLapsed);
        }
        tokio::select! {
            changed = hw.changed() => if changed.is_err() { return Err(ApiError::Log(LogError::Closed)) },
            _ = states.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(match node.replication.admit(term) {
                    Err(refusal @ WriteRefusal::NotEnoughReplicas { .. }) => refused(node, refusal),
                    _ => {
                        node.metrics.write_refused("commit_timeout");
                        ApiError::CommitTimeout(timeout)
                    }
                });
            }
        }
    }
}

/// The answer of `GET /api/v1/producers/{id}`.
#[derive(Debug, Serialize)]
pub struct ProducerState {
    /// The producer id asked about.
    pub producer_id: String,
    /// Its last stored sequence: a restarted producer continues at `last_seq + 1`.
    pub last_seq: u64,
}

/// `GET /api/v1/producers/{id}`: the producer's last stored sequence on the leader (including a
/// batch whose sync is still running). 404 for a producer the leader does not know (never seen,
/// or idle longer than `--producer-id-expiry`): start at 0. Followers answer 503 with the leader,
/// as for writes, since only the leader's answer is worth continuing from.
pub async fn producer_state(State(node): State<Node>, Path(id): Path<String>) -> Result<Response, ApiError> {
    node.elector.write_term().map_err(ApiError::NotLeader)?;
    let id = id.trim();
    if id.is_empty() || id.len() > MAX_PRODUCER_ID {
        return Err(ApiError::BadRequest(format!(
            "a producer id has 1 to {MAX_PRODUCER_ID} characters"
        )));
    }
    match node.store.producer_last_seq(id) {
        Some(last_seq) => Ok(Json(ProducerState {
            producer_id: id.to_string(),
            last_seq,
        })
        .into_response()),
        None => Err(ApiError::UnknownProducer(id.to_string())),
    }
}

/// Appends a producer batch; one that arrives before an earlier batch of its producer is tried
/// again each time the producer's last sequence moves, for up to [`OUT_OF_ORDER_WAIT`], before
/// the out-of-order refusal is answered.
async fn append_in_order(
    node: &Node,
    term: u64,
    producer: ProducerBatch,
    payloads: Vec<Bytes>,
) -> Result<AppendOutcome, LogError> {
    let deadline = tokio::time::Instant::now() + OUT_OF_ORDER_WAIT;
    loop {
        let before = node.store.producer_last_seq(&producer.producer_id);
        match node
            .store
            .append(term, Some(producer.clone()), payloads.clone())
            .await
        {
            Err(LogError::OutOfOrderSequence { .. }) if tokio::time::Instant::now() < deadline => {
                moved_on(&node.store, &producer.producer_id, before, deadline).await;
            }
            other => return other,
        }
    }
}

/// Waits until the producer's last sequence differs from `before`, or `deadline`. Wakes on the
/// store's durable-end watch (the earlier batch being stored moves the sequence; `subscribe`
/// follows the high watermark, which may lag the store) and on the visible end (which moves
/// first under `interval`/`never` without replication) instead of polling.
async fn moved_on(store: &LogStore, producer_id: &str, before: Option<u64>, deadline: tokio::time::Instant) {
    // Subscribe before checking, so an append between the check and the wait still wakes us.
    let mut stored = store.subscribe_durable();
    let mut visible = store.subscribe();
    while store.producer_last_seq(producer_id) == before {
        let changed = async {
            tokio::select! {
                r = stored.changed() => r,
                r = visible.changed() => r,
            }
        };
        match tokio::time::timeout_at(deadline, changed).await {
            Ok(Ok(())) => {}
            // Past the deadline, or the store is closing: let the caller answer.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Proxies a write to the leader (`--follower-writes forward`), passing its answer through.
async fn forward(node: &Node, leader: &str, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let fail = |message: String| ApiError::Forward {
        leader: leader.to_string(),
        message,
    };
    let limit = node.config.max_batch_bytes.max(node.config.max_message_bytes);
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|err| ApiError::body(&err, "--max-batch-bytes", limit))?;
    let mut request = node
        .http
        .request(Method::POST, format!("http://{leader}/api/v1/log"))
        .header(FORWARDED, "1")
        .body(body);
    for name in [
        header::CONTENT_TYPE.as_str(),
        PRODUCER_ID,
        PRODUCER_SEQ,
        PRODUCER_PENDING_FROM,
    ] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.clone());
        }
    }
    let answer = request.send().await.map_err(|e| fail(e.to_string()))?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer.bytes().await.map_err(|e| fail(e.to_string()))?;
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NDJSON lines become payloads; blank lines and CRLF are tolerated.
    #[test]
    fn ndjson_parses() {
        let p = parse_ndjson(&Bytes::from_static(b"\"a\"\r\n\n\"b c\"\n"), 10).unwrap();
        assert_eq!(p, vec![Bytes::from("a"), Bytes::from("b c")]);
    }

    /// A line without escapes is served from the request body itself (no copy); one with
    /// escapes is decoded.
    #[test]
    fn ndjson_borrows_plain_lines_and_decodes_escapes() {
        let body = Bytes::from_static(b"\"plain line\"\n\"tab\\there \\u00e9\"\n");
        let p = parse_ndjson(&body, 100).unwrap();
        assert_eq!(
            p,
            vec![Bytes::from("plain line"), Bytes::from("tab\there \u{e9}")]
        );
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(p[0].as_ptr() as usize)), "a slice of the body");
        assert!(
            !range.contains(&(p[1].as_ptr() as usize)),
            "decoded into its own buffer"
        );
    }

    /// A malformed line is named by number, and nothing is returned.
    #[test]
    fn ndjson_names_bad_line() {
        let err = parse_ndjson(&Bytes::from_static(b"\"a\"\n{\"x\":1}\n\"c\"\n"), 10).unwrap_err();
        assert!(
            matches!(&err, ApiError::BadRequest(m) if m.starts_with("line 2:")),
            "{err}"
        );
        let parse = |b: &'static [u8], max| parse_ndjson(&Bytes::from_static(b), max);
        assert!(matches!(parse(b"\n\n", 10), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse(b"\"toolong\"", 3), Err(ApiError::TooLarge(_))));
        assert!(matches!(parse(b"\"\"", 3), Err(ApiError::BadRequest(_))));
    }

    /// Idempotency headers come in pairs with a numeric sequence.
    #[test]
    fn producer_headers() {
        let mut h = HeaderMap::new();
        assert!(producer_from_headers(&h).unwrap().is_none());
        h.insert(PRODUCER_ID, HeaderValue::from_static("p1"));
        assert!(producer_from_headers(&h).is_err(), "id without seq");
        h.insert(PRODUCER_SEQ, HeaderValue::from_static("x"));
        assert!(producer_from_headers(&h).is_err(), "non-numeric seq");
        h.insert(PRODUCER_SEQ, HeaderValue::from_static("42"));
        let p = producer_from_headers(&h).unwrap().unwrap();
        assert_eq!((p.producer_id.as_str(), p.seq, p.pending_from), ("p1", 42, None));
        h.insert(PRODUCER_PENDING_FROM, HeaderValue::from_static("40"));
        assert_eq!(producer_from_headers(&h).unwrap().unwrap().pending_from, Some(40));
        h.insert(PRODUCER_PENDING_FROM, HeaderValue::from_static("43"));
        assert!(producer_from_headers(&h).is_err(), "pending beyond the batch");
        h.insert(PRODUCER_PENDING_FROM, HeaderValue::from_static("-1"));
        assert!(producer_from_headers(&h).is_err(), "not a number");
        let mut only = HeaderMap::new();
        only.insert(PRODUCER_PENDING_FROM, HeaderValue::from_static("1"));
        assert!(
            producer_from_headers(&only).is_err(),
            "pending without id and seq"
        );
    }
}
