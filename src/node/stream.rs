//! The live tail: `GET /api/v1/log/stream?from=N` as Server-Sent Events over this node's own log.
//! Pull-based: records are read a page at a time only when the client has taken the previous
//! ones, so a slow client never makes the node buffer more than one page.

use std::{collections::VecDeque, convert::Infallible, time::Duration};

use axum::{
    extract::{RawQuery, State},
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt};

use super::{ApiError, Entry, Node};
use crate::{
    election::Role,
    log::{LogError, LogStore, Record},
};

/// Records read from the store per page.
const PAGE_RECORDS: usize = 256;
/// Payload bytes read from the store per page.
const PAGE_BYTES: usize = 1 << 20;
/// Interval of the keep-alive comments (proxies and port-forwards drop idle connections).
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How soon a browser's `EventSource` reconnects after the connection drops (its default is ~3 s).
const RECONNECT: Duration = Duration::from_secs(1);

/// Where a stream starts: the `from` parameter, or one past `Last-Event-ID` on a reconnect
/// (which wins, since the browser re-sends the original URL). `None`: the current end.
///
/// # Errors
/// Unknown parameters or a `from`/`Last-Event-ID` that is not an unsigned integer.
pub fn parse_stream_start(query: Option<&str>, last_event_id: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut from = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "from" => {
                from = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "query parameter from must be an unsigned integer, got {value:?}"
                    ))
                })?)
            }
            // The read token for clients that cannot set headers; checked by the auth layer.
            super::auth::ACCESS_TOKEN_PARAM => {}
            other => return Err(ApiError::BadRequest(format!("unknown query parameter {other:?}"))),
        }
    }
    match last_event_id.map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) => {
            let last = id.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("Last-Event-ID must be an unsigned integer, got {id:?}"))
            })?;
            Ok(Some(last.saturating_add(1)))
        }
        None => Ok(from),
    }
}

/// The SSE event of one record: `id: <offset>`, `data: <Entry JSON>`.
pub fn record_event(record: Record) -> Event {
    let offset = record.offset;
    let data = serde_json::to_string(&Entry::from(record))
        .unwrap_or_else(|e| format!(r#"{{"offset":{offset},"error":"cannot encode: {e}"}}"#));
    Event::default().id(offset.to_string()).data(data)
}

/// `GET /api/v1/log/stream`.
pub async fn stream(
    State(node): State<Node>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Last-Event-ID is not ASCII".into()))?,
        ),
        None => None,
    };
    let start = parse_stream_start(query.as_deref(), last_event_id)?;
    let next = start
        .unwrap_or_else(|| node.store.high_watermark())
        .max(node.store.start_offset());
    let tail = Tail {
        store: node.store.clone(),
        role: node.elector.subscribe(),
        next,
        page: VecDeque::new(),
        done: false,
    };
    // First a `retry:` hint and a comment saying where the stream starts, so that `curl -N`
    // shows at once that it is connected.
    let hello = Event::default().retry(RECONNECT).comment(format!(
        "simpleloggers log stream of {} from offset {next}",
        node.config.name
    ));
    let events = futures::stream::once(async move { Ok(hello) }).chain(futures::stream::unfold(
        tail,
        |mut tail| async move {
            let event = tail.next_event().await?;
            Some((Ok(event), tail))
        },
    ));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The state of one stream.
struct Tail {
    /// The node's log.
    store: LogStore,
    /// The node's role: the stream ends when the node starts shutting down, so open streams
    /// never hold up the graceful drain.
    role: tokio::sync::watch::Receiver<crate::election::LeaderState>,
    /// Offset of the next record to read from the store.
    next: u64,
    /// Records read but not yet sent (at most one page).
    page: VecDeque<Record>,
    /// Set once the stream must end after the buffered records.
    done: bool,
}

impl Tail {
    /// The next event, waiting for new records; `None` ends the stream.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(record) = self.page.pop_front() {
                return Some(record_event(record));
            }
            if self.done {
                return None;
            }
            let end = self.wait().await?;
            if self.next > end {
                // The log was truncated below our position: follow it down.
                self.next = end;
                continue;
            }
            match self.store.read(self.next, PAGE_RECORDS, PAGE_BYTES).await {
                Ok(records) => {
                    match records.last() {
                        Some(last) => self.next = last.offset + 1,
                        // Nothing readable below `end` (only control records, which reads
                        // skip): wait past it, or the wait would answer at once forever.
                        None => self.next = self.next.max(end),
                    }
                    self.page.extend(records);
                }
                Err(LogError::OffsetTrimmed { start, .. }) => {
                    self.next = start;
                    return Some(Event::default().comment(format!("skipped to {start}: retention")));
                }
                Err(err) => {
                    tracing::warn!(%err, "log stream read failed; closing the stream");
                    self.done = true;
                    return Some(Event::default().event("error").data(err.to_string()));
                }
            }
        }
    }

    /// Waits until a record at `next` is visible (or the log shrank below it); `None` when the
    /// node stops or the store closes.
    async fn wait(&mut self) -> Option<u64> {
        let mut visible = self.store.subscribe();
        loop {
            if self.role.borrow_and_update().role == Role::Stopping {
                return None;
            }
            let end = *visible.borrow_and_update();
            if end != self.next {
                return Some(end);
            }
            tokio::select! {
                changed = visible.changed() => changed.ok()?,
                changed = self.role.changed() => changed.ok()?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `from` defaults to the end, `Last-Event-ID` wins and resumes after it, bad input is a 400.
    #[test]
    fn start_rules() {
        assert_eq!(parse_stream_start(None, None).unwrap(), None);
        assert_eq!(parse_stream_start(Some("from=0"), None).unwrap(), Some(0));
        assert_eq!(parse_stream_start(Some("from=7"), Some("41")).unwrap(), Some(42));
        assert_eq!(parse_stream_start(None, Some(" ")).unwrap(), None);
        for bad in ["from=-1", "from=x", "limit=3"] {
            let err = parse_stream_start(Some(bad), None).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(parse_stream_start(None, Some("abc")).is_err());
    }
}
