//! The internal replication endpoint's handlers, `/internal/v1/replication/{end-offset,fetch}`:
//! the cluster-secret check (constant time), the end-offset question, and the fetch: checked
//! against the epoch cache, counted as the follower's progress, held (long poll) until records
//! or a new high watermark exist, answered with raw frames and the leader's view in headers.
//! Mounted by the node outside the public request-slot limit: replication must not starve when
//! the public API is overloaded.

use std::sync::Arc;

use axum::{
    extract::{RawQuery, Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use subtle::ConstantTimeEq;

use super::{
    protocol::{
        EndOffsetAnswer, EndOffsetQuery, FetchQuery, FetchRefusal, QueryError, END_OFFSET_PATH, FETCH_PATH,
        HEADER_HW, HEADER_LOG_END, HEADER_LOG_START, HEADER_NEXT, HEADER_SESSION, HEADER_TERM,
    },
    state::TERM_START_WAIT,
    Replication,
};
use crate::log::LogError;

/// How long a held fetch that has only a new high watermark to tell waits for records to tell it
/// with. Followers need the HW for their readers and as their truncation floor, neither of which
/// needs it within microseconds; the leader's commit does not depend on it at all.
const HW_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// An internal request that failed; the body is `{"code", "message", ...}`.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    /// The query does not parse (400 `bad_request`).
    #[error(transparent)]
    BadRequest(#[from] QueryError),
    /// One of the protocol's refusals.
    #[error(transparent)]
    Refused(#[from] FetchRefusal),
    /// The local log failed (503 `log_unavailable`).
    #[error("the leader's log: {0}")]
    Log(#[from] LogError),
}

impl IntoResponse for InternalError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            InternalError::BadRequest(err) => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "code": "bad_request", "message": err.to_string() }),
            ),
            InternalError::Refused(refusal) => (
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                refusal.body(),
            ),
            InternalError::Log(err) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "code": "log_unavailable", "message": err.to_string() }),
            ),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The internal routes, to be merged into the node's router (after its request-slot layer).
pub fn router<S>(repl: Replication) -> Router<S> {
    let secret: Option<Arc<str>> = repl.settings().cluster_secret.as_deref().map(Arc::from);
    Router::new()
        .route(END_OFFSET_PATH, get(end_offset))
        .route(FETCH_PATH, get(fetch))
        .route_layer(middleware::from_fn_with_state(secret, check_secret))
        .with_state(repl)
}

/// Whether `authorization` (the header's value) carries `secret` as a bearer token, compared in
/// constant time.
pub fn authorized(secret: &str, authorization: Option<&HeaderValue>) -> bool {
    let Some(token) = authorization
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(token.trim().as_bytes().ct_eq(secret.as_bytes()))
}

/// 401 unless the request carries the cluster secret (when one is set).
async fn check_secret(State(secret): State<Option<Arc<str>>>, request: Request, next: Next) -> Response {
    match secret {
        Some(secret) if !authorized(&secret, request.headers().get(header::AUTHORIZATION)) => {
            InternalError::Refused(FetchRefusal::Unauthorized).into_response()
        }
        _ => next.run(request).await,
    }
}

/// `GET /internal/v1/replication/end-offset?term=T`.
async fn end_offset(
    State(repl): State<Replication>,
    RawQuery(query): RawQuery,
) -> Result<Json<EndOffsetAnswer>, InternalError> {
    let query = EndOffsetQuery::parse(query.as_deref())?;
    repl.serving_soon(TERM_START_WAIT).await?;
    Ok(Json(EndOffsetAnswer::from_lookup(
        repl.store().end_offset_for(query.term),
    )))
}

/// The divergence check of a fetch against the leader's log (first retained offset `log_start`,
/// `end_offset_for` as `lookup`): `Ok` when the follower's `(last_term, from)` is a prefix of
/// the leader's log, so the fetch counts as progress.
///
/// # Errors
/// [`FetchRefusal::OffsetTrimmed`] below the first retained offset, or for an empty follower
/// log neither at it nor at a committed offset; [`FetchRefusal::Diverged`] with the leader's answer otherwise.
pub fn check_fetch(
    from: u64,
    last_term: Option<u64>,
    log_start: u64,
    high_watermark: u64,
    lookup: impl FnOnce(u64) -> Option<(u64, u64)>,
) -> Result<(), FetchRefusal> {
    if from < log_start {
        return Err(FetchRefusal::OffsetTrimmed { log_start });
    }
    match last_term {
        // An empty log (never held a record, or emptied to start where a leader's log started):
        // at the leader's start, or at a committed offset, which was a batch boundary of every
        // in-sync log (an earlier leader's first retained offset).
        None if from == log_start || from <= high_watermark => Ok(()),
        None => Err(FetchRefusal::OffsetTrimmed { log_start }),
        Some(term) => match lookup(term) {
            Some((found, end)) if found == term && from <= end => Ok(()),
            other => {
                let answer = EndOffsetAnswer::from_lookup(other);
                Err(FetchRefusal::Diverged {
                    term: answer.term,
                    end: answer.end,
                })
            }
        },
    }
}

/// `GET /internal/v1/replication/fetch?...`.
async fn fetch(
    State(repl): State<Replication>,
    RawQuery(query): RawQuery,
) -> Result<Response, InternalError> {
    let query = FetchQuery::parse(query.as_deref())?;
    let (term, session) = repl.serving_soon(TERM_START_WAIT).await?;
    if query.term > term {
        repl.deposed(term, query.term);
        return Err(FetchRefusal::StaleTerm { term }.into());
    }
    let store = repl.store();
    check_fetch(
        query.from,
        query.last_term,
        store.start_offset(),
        store.high_watermark(),
        |t| store.end_offset_for(t),
    )?;
    // Subscribe before recording the progress: the HW move it causes must wake this poll.
    // Records are servable once written (before the leader's own sync: `servable_end`), so the
    // follower's fetch and sync overlap the leader's sync.
    let mut hw_rx = store.subscribe();
    let mut records_rx = store.subscribe_servable();
    hw_rx.borrow_and_update();
    records_rx.borrow_and_update();
    repl.record_fetch(term, &query.name, &query.incarnation, query.from);
    if !query.wait.is_zero() {
        // Held at most half the lag bound: a follower is judged caught up by its fetches'
        // arrivals, so an idle one must arrive again well within `--replica-lag-max` or it would
        // leave the ISR (and fail to join it) for lack of news, not for lag.
        let hold = query.wait.min(repl.settings().replica_lag_max / 2);
        let deadline = tokio::time::Instant::now() + hold;
        let mut hw_news_since = None;
        loop {
            if store.servable_end() > query.from || repl.is_draining() {
                break;
            }
            // A new HW alone waits up to `HW_LINGER` for records to carry it: the HW this very
            // fetch reports usually moves a moment after it arrives, and answering that at once
            // cost every follower a second request/answer pair per commit round (issue 14).
            let until = if query.hw.is_none_or(|known| known < store.high_watermark()) {
                let since = *hw_news_since.get_or_insert_with(tokio::time::Instant::now);
                deadline.min(since + HW_LINGER)
            } else {
                deadline
            };
            if tokio::time::Instant::now() >= until {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                // An error: the store is closing; answer now rather than spin on it.
                changed = hw_rx.changed() => if changed.is_err() { break },
                changed = records_rx.changed() => if changed.is_err() { break },
                _ = repl.draining() => break,
            }
        }
    }
    let chunk = match store.read_frames(query.from, query.max_bytes).await {
        Ok(chunk) => chunk,
        Err(LogError::OffsetTrimmed { start, .. }) => {
            return Err(FetchRefusal::OffsetTrimmed { log_start: start }.into())
        }
        Err(err) => return Err(err.into()),
    };
    let headers = [
        (HEADER_TERM, term.to_string()),
        (HEADER_SESSION, session),
        (HEADER_HW, store.high_watermark().to_string()),
        (HEADER_LOG_START, store.start_offset().to_string()),
        (HEADER_LOG_END, store.durable_end().to_string()),
        (HEADER_NEXT, chunk.end.max(query.from).to_string()),
    ];
    let mut response = ([(header::CONTENT_TYPE, "application/octet-stream")], chunk.bytes).into_response();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bearer token is compared exactly; anything else is unauthorized.
    #[test]
    fn secret_check() {
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(authorized("s3cret", Some(&ok)));
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret!",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(
                !authorized("s3cret", Some(&HeaderValue::from_static(bad))),
                "{bad}"
            );
        }
        assert!(!authorized("s3cret", None));
    }

    /// A fetch passes only from a prefix of the leader's log: the follower's last term ends, in
    /// the leader's log, at or after `from`; an empty follower log only at the leader's start.
    #[test]
    fn fetch_check() {
        // Leader: term 1 at 0..10, term 3 at 10..20.
        let lookup = |t: u64| match t {
            0 => None,
            1 | 2 => Some((1, 10)),
            _ => Some((3, 20)),
        };
        assert_eq!(check_fetch(7, Some(1), 0, 0, lookup), Ok(()));
        assert_eq!(check_fetch(10, Some(1), 0, 0, lookup), Ok(()));
        assert_eq!(check_fetch(20, Some(3), 0, 0, lookup), Ok(()));
        assert_eq!(
            check_fetch(12, Some(1), 0, 0, lookup),
            Err(FetchRefusal::Diverged {
                term: Some(1),
                end: 10
            }),
            "the follower holds term-1 records the leader does not"
        );
        assert_eq!(
            check_fetch(12, Some(2), 0, 0, lookup),
            Err(FetchRefusal::Diverged {
                term: Some(1),
                end: 10
            }),
            "a term the leader never had"
        );
        assert_eq!(check_fetch(0, None, 0, 0, lookup), Ok(()));
        assert_eq!(
            check_fetch(5, None, 0, 4, lookup),
            Err(FetchRefusal::OffsetTrimmed { log_start: 0 }),
            "an empty log above the HW: where the leader's log has no known boundary"
        );
        assert_eq!(
            check_fetch(5, None, 0, 5, lookup),
            Ok(()),
            "an emptied log at a committed offset"
        );
        assert_eq!(
            check_fetch(5, None, 5, 5, lookup),
            Ok(()),
            "an emptied log at the leader's start"
        );
        assert_eq!(
            check_fetch(3, Some(1), 5, 9, lookup),
            Err(FetchRefusal::OffsetTrimmed { log_start: 5 })
        );
        assert_eq!(
            check_fetch(3, Some(1), 0, 9, |_| None),
            Err(FetchRefusal::Diverged { term: None, end: 0 })
        );
    }
}
