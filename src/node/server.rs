//! The node's HTTP/1.1 server, with the limits that keep it up under a hostile or broken client
//! (`axum::serve` has none): at most `--http-max-connections` open connections, a deadline for
//! every request head and every idle keep-alive gap, a deadline for every request body, and the
//! graceful drain on shutdown.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, Router};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_util::task::TaskTracker;

use crate::{metrics::Metrics, shutdown::CancellationToken};

/// The error type of request bodies handed to the router.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the accept loop pauses after a failure that is not the peer's (e.g. out of file
/// descriptors), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Flags bounding what HTTP clients may hold on a node (each with an environment fallback).
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "HTTP limits")]
pub struct HttpLimits {
    /// How long a client may take to send a complete request head: from the accept on a new
    /// connection, from its first byte on a kept-alive one. Then the connection is closed.
    #[arg(
        long = "http-header-timeout",
        env = "SIMPLELOGGERS_HTTP_HEADER_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request before it is closed
    /// (longer than the 90 s that reqwest and hyper keep idle connections pooled, so that clients
    /// drop them first).
    #[arg(
        long = "http-idle-timeout",
        env = "SIMPLELOGGERS_HTTP_IDLE_TIMEOUT",
        default_value = "120s",
        value_parser = humantime::parse_duration
    )]
    pub idle_timeout: Duration,
    /// How long a client may take to send a whole request body, counted from the end of its head;
    /// a body still incomplete then is answered 408.
    #[arg(
        long = "http-body-timeout",
        env = "SIMPLELOGGERS_HTTP_BODY_TIMEOUT",
        default_value = "60s",
        value_parser = humantime::parse_duration
    )]
    pub body_timeout: Duration,
    /// Open connections at most; further ones wait in the listen backlog until one closes.
    #[arg(
        long = "http-max-connections",
        env = "SIMPLELOGGERS_HTTP_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub max_connections: usize,
    /// Requests handled at once at most (the probes and /metrics are not counted); beyond it a
    /// request is answered 503 with `Retry-After` at once.
    #[arg(
        long = "http-max-concurrent-requests",
        env = "SIMPLELOGGERS_HTTP_MAX_CONCURRENT_REQUESTS",
        default_value_t = 256
    )]
    pub max_concurrent_requests: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_concurrent_requests: 256,
        }
    }
}

impl HttpLimits {
    /// Checks that every limit is usable.
    ///
    /// # Errors
    /// A zero timeout or cap, or a cap larger than a semaphore can count; the message names the
    /// flag.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, value) in [
            ("--http-header-timeout", self.header_timeout),
            ("--http-idle-timeout", self.idle_timeout),
            ("--http-body-timeout", self.body_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be positive"));
            }
        }
        for (flag, value) in [
            ("--http-max-connections", self.max_connections),
            ("--http-max-concurrent-requests", self.max_concurrent_requests),
        ] {
            if value == 0 || value > Semaphore::MAX_PERMITS {
                return Err(format!("{flag} must be between 1 and {}", Semaphore::MAX_PERMITS));
            }
        }
        Ok(())
    }
}

/// The error a request body yields once `--http-body-timeout` has passed without it being
/// complete; the write path answers it with 408.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body was not received within {} (--http-body-timeout)",
    humantime::format_duration(*.limit)
)]
pub struct BodyTimeout {
    /// The limit that passed.
    pub limit: Duration,
}

impl BodyTimeout {
    /// The `BodyTimeout` in `err`'s chain of sources, if any (body errors arrive wrapped by
    /// axum and by `http_body_util::Limited`).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
        let mut next = Some(err);
        while let Some(err) = next {
            if let Some(timeout) = err.downcast_ref::<BodyTimeout>() {
                return Some(timeout);
            }
            next = err.source();
        }
        None
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves, then drains: no new
/// connections, every connection finishes its request in flight and closes (idle ones at once).
/// Returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Arc::new(limits);
    // mini-redis style: a connection is accepted only with a permit, so the ones beyond the cap
    // wait in the kernel's backlog instead of costing a task and buffers here.
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let drain = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // Never happens: the semaphore is never closed.
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The peer gave up before we accepted; nothing to do.
            Err(err) if is_peer_error(&err) => continue,
            Err(err) => {
                tracing::warn!(%err, "cannot accept an HTTP connection; retrying");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        // Answers are written whole; Nagle would only hold the tail of one back for the ACK
        // of the previous one (a replication answer, an acknowledgement).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, %peer, "cannot set TCP_NODELAY");
        }
        let connection = Connection {
            app: app.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            drain: drain.clone(),
            _permit: permit,
        };
        connections.spawn(async move {
            tracing::trace!(%peer, "HTTP connection accepted");
            connection.serve(stream).await;
        });
    }
    drop(listener);
    drain.cancel();
    connections.close();
    connections.wait().await;
}

fn is_peer_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection and what it needs.
struct Connection {
    /// The routes.
    app: Router,
    /// The limits.
    limits: Arc<HttpLimits>,
    /// Where the open connections and the closes by a deadline are counted.
    metrics: Metrics,
    /// Cancelled when the server drains.
    drain: CancellationToken,
    /// Held while the connection is open: the connection cap.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves HTTP/1.1 on `stream` until the client closes it, it breaks, a deadline passes, or
    /// the drain has let its request in flight finish.
    async fn serve(self, stream: TcpStream) {
        let _open = OpenConnection::count(&self.metrics);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(WatchedIo {
            stream,
            activity: activity.clone(),
        });
        let app = self.app.clone();
        let body_timeout = self.limits.body_timeout;
        let watched = activity.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let guard = RequestGuard::start(watched.clone());
            let request = request.map(|body| DeadlineBody::new(body, body_timeout));
            // A `Router` is always ready, so it can be called without `poll_ready`.
            let answer = tower_service::Service::call(&mut app.clone(), request);
            async move {
                let response = answer.await?;
                Ok::<_, Infallible>(response.map(|body| Body::new(GuardedBody { body, _guard: guard })))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The deadlines below own this: hyper's header timer also runs while a kept-alive
        // connection is idle, so it could not be combined with a separate idle timeout.
        builder.header_read_timeout(None);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            let deadline = activity.deadline(&self.limits);
            let wake = deadline.map_or_else(Instant::now, |(at, _)| at);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%err, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = self.drain.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = activity.changed.notified() => {}
                () = tokio::time::sleep_until(wake), if deadline.is_some() => {
                    if let Some((at, reason)) = activity.deadline(&self.limits) {
                        if Instant::now() >= at {
                            tracing::debug!(reason = reason.label(), "closing an HTTP connection");
                            self.metrics
                                .http_connections_closed
                                .get_or_create(&crate::metrics::ReasonLabels {
                                    reason: reason.label().to_string(),
                                })
                                .inc();
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Counts a connection in the open-connections gauge while it lives.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn count(metrics: &Metrics) -> Self {
        metrics.http_connections.inc();
        OpenConnection(metrics.http_connections.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Which deadline closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    /// The request head did not arrive within `--http-header-timeout`.
    Header,
    /// No request came within `--http-idle-timeout`.
    Idle,
}

impl Deadline {
    /// The metric label.
    fn label(self) -> &'static str {
        match self {
            Deadline::Header => "header_timeout",
            Deadline::Idle => "idle_timeout",
        }
    }
}

/// What a connection is doing, which decides the deadline that applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head since then.
    Head(Instant),
    /// Between requests since then, no byte of the next one received.
    Idle(Instant),
    /// This many requests are being handled or answered; no deadline (the body has its own).
    Busy(usize),
}

/// The phase of one connection, updated by its I/O and its requests, watched by its task.
struct Activity {
    /// The current phase.
    phase: Mutex<Phase>,
    /// Woken on every phase change, so that the connection's task re-arms its deadline.
    changed: Notify,
}

impl Activity {
    /// A new connection: its first request head is due.
    fn new() -> Self {
        Activity {
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn update(&self, next: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock();
        let new = next(*phase);
        if new != *phase {
            *phase = new;
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// Bytes were read: on an idle connection, the next request head has begun.
    fn bytes_arrived(&self) {
        self.update(|phase| match phase {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    fn request_started(&self) {
        self.update(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        });
    }

    fn request_finished(&self) {
        self.update(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    /// When the connection must be closed, and why; `None` while a request is in flight.
    fn deadline(&self, limits: &HttpLimits) -> Option<(Instant, Deadline)> {
        match *self.phase.lock() {
            Phase::Head(since) => Some((since + limits.header_timeout, Deadline::Header)),
            Phase::Idle(since) => Some((since + limits.idle_timeout, Deadline::Idle)),
            Phase::Busy(_) => None,
        }
    }
}

/// Marks a request in flight from its head until its response body is dropped (fully written,
/// or the connection closed).
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        RequestGuard(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The socket, telling the connection's [`Activity`] when bytes arrive.
struct WatchedIo {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        poll
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request body that fails with [`BodyTimeout`] once `limit` has passed since the head
/// arrived. The deadline is for the whole body, not for each chunk, so a client dripping a byte
/// at a time cannot stretch it.
struct DeadlineBody {
    body: Incoming,
    /// When the head arrived.
    since: Instant,
    limit: Duration,
    /// Armed the first time the body is not ready (never for a request without a body).
    timer: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(body: Incoming, limit: Duration) -> Self {
        DeadlineBody {
            body,
            since: Instant::now(),
            limit,
            timer: None,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(BoxError::from)));
        }
        let deadline = this.since + this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout { limit: this.limit })))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its request marked in flight until it is dropped.
struct GuardedBody {
    body: Body,
    _guard: RequestGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults pass; a zero timeout or cap is refused, naming its flag.
    #[test]
    fn limits_are_validated() {
        assert_eq!(HttpLimits::default().validate(), Ok(()));
        let zero_timeout = HttpLimits {
            body_timeout: Duration::ZERO,
            ..HttpLimits::default()
        };
        assert!(zero_timeout
            .validate()
            .unwrap_err()
            .contains("--http-body-timeout"));
        let zero_cap = HttpLimits {
            max_connections: 0,
            ..HttpLimits::default()
        };
        assert!(zero_cap
            .validate()
            .unwrap_err()
            .contains("--http-max-connections"));
    }

    /// A connection owes a head when new, owes nothing while busy, idles after its last
    /// response, and owes a head again from the first byte of the next request.
    #[tokio::test(start_paused = true)]
    async fn phases_pick_the_deadline() {
        let limits = HttpLimits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            ..HttpLimits::default()
        };
        let activity = Arc::new(Activity::new());
        let start = Instant::now();
        assert_eq!(
            activity.deadline(&limits),
            Some((start + limits.header_timeout, Deadline::Header))
        );
        let guard = RequestGuard::start(activity.clone());
        activity.bytes_arrived();
        assert_eq!(
            activity.deadline(&limits),
            None,
            "a body arriving is not a new head"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(guard);
        let idle = Instant::now();
        assert_eq!(
            activity.deadline(&limits),
            Some((idle + limits.idle_timeout, Deadline::Idle))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        activity.bytes_arrived();
        assert_eq!(
            activity.deadline(&limits),
            Some((Instant::now() + limits.header_timeout, Deadline::Header))
        );
    }
}
