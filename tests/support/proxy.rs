//! A cuttable HTTP/1.1 forward proxy on 127.0.0.1:0, for the replication tests: a follower's
//! fetches go through it (`--replication-proxy`, reqwest `Proxy::all`, so requests come in
//! absolute form `GET http://host:port/path HTTP/1.1`), and a test cuts them. Each request is
//! forwarded on a connection of its own and its answer streams back as it arrives (a long poll
//! holds nothing back). [`Proxy::cut`] closes every open connection, both sides, and closes each
//! new one at once, until [`Proxy::restore`]. [`Proxy::partition`] cuts only the way to some
//! destinations (a network partition between two nodes): open connections are closed, and requests
//! to those destinations are held, unanswered, until [`Proxy::heal`]. Tested by
//! `tests/replication_proxy.rs`.

#![allow(dead_code)] // each test uses a different part

use std::{
    collections::BTreeSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    service::service_fn,
    Request, Response, StatusCode, Uri,
};
use hyper_util::rt::TokioIo;
use simpleloggers::shutdown::CancellationToken;
use tokio::{net::TcpListener, task::JoinHandle};

/// The body of every answer the proxy gives (forwarded or its own).
type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Headers that belong to one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "upgrade",
];

/// State shared by the accept loop and every connection.
struct Shared {
    /// While set, new connections are closed at once and requests answered 502.
    cut: AtomicBool,
    /// Cancelled by a cut: every connection open at that moment (to the client and upstream)
    /// ends; replaced by a fresh token for the connections after it.
    generation: Mutex<CancellationToken>,
    /// Requests forwarded upstream (an answer came back, of any status).
    forwarded: AtomicU64,
    /// Connections closed at accept because the proxy was cut.
    refused: AtomicU64,
    /// Destinations (`host:port`) requests to which are held until the partition heals.
    partitioned: Mutex<BTreeSet<String>>,
    /// Requests held by a partition so far.
    held: AtomicU64,
}

impl Shared {
    fn generation(&self) -> CancellationToken {
        self.generation.lock().expect("proxy lock").clone()
    }

    fn is_partitioned(&self, authority: &str) -> bool {
        self.partitioned.lock().expect("proxy lock").contains(authority)
    }

    /// Closes every open connection (client and upstream side).
    fn close_open_connections(&self) {
        let mut generation = self.generation.lock().expect("proxy lock");
        generation.cancel();
        *generation = CancellationToken::new();
    }
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.generation().cancel();
    }
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1:0.
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            generation: Mutex::new(CancellationToken::new()),
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            partitioned: Mutex::new(BTreeSet::new()),
            held: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`, for `--replication-proxy`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection through the proxy: open ones are closed (a long poll in flight
    /// fails), new ones are closed as soon as they are accepted.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_open_connections();
    }

    /// Partitions the way to each of `destinations` (`host:port`, as in the request target):
    /// every open connection is closed (a long poll in flight to any destination fails), and
    /// requests to these destinations are held without an answer until [`Proxy::heal`]; requests
    /// elsewhere pass.
    pub fn partition<I, S>(&self, destinations: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.shared
            .partitioned
            .lock()
            .expect("proxy lock")
            .extend(destinations.into_iter().map(Into::into));
        self.shared.close_open_connections();
    }

    /// Ends every partition: held requests go on to their destination.
    pub fn heal(&self) {
        self.shared.partitioned.lock().expect("proxy lock").clear();
    }

    /// How many requests a partition held so far.
    pub fn held(&self) -> u64 {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// How many requests it forwarded so far (answered upstream, any status).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// How many connections it closed at accept because it was cut.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.cut.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(stream);
            continue;
        }
        let generation = shared.generation();
        let conn_shared = shared.clone();
        tokio::spawn(async move {
            let conn_generation = generation.clone();
            let service = service_fn(move |req| forward(conn_shared.clone(), conn_generation.clone(), req));
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = generation.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// The proxy's own answer: `status` with a JSON error body.
fn answer(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "code": "proxy", "error": message }).to_string();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Removes the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Forwards one absolute-form request to its origin and streams the answer back.
async fn forward(
    shared: Arc<Shared>,
    generation: CancellationToken,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if shared.cut.load(Ordering::SeqCst) {
        return Ok(answer(StatusCode::BAD_GATEWAY, "cut"));
    }
    let uri = req.uri().clone();
    let Some(authority) = uri.authority().filter(|_| uri.scheme_str() == Some("http")) else {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            &format!("not an absolute-form http:// request target: {uri}"),
        ));
    };
    let origin_form: Uri = match uri.path_and_query().map_or("/", |p| p.as_str()).parse() {
        Ok(u) => u,
        Err(e) => return Ok(answer(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    if shared.is_partitioned(authority.as_str()) {
        shared.held.fetch_add(1, Ordering::SeqCst);
        // Held like a packet into a partition: no answer until it heals (or the client gives up
        // and drops the connection, which drops this future).
        while shared.is_partitioned(authority.as_str()) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    *req.uri_mut() = origin_form;
    strip_hop_by_hop(req.headers_mut());
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        req.headers_mut().insert(header::HOST, host);
    }
    let stream = match tokio::net::TcpStream::connect(authority.as_str()).await {
        Ok(s) => s,
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_GATEWAY,
                &format!("connect {authority}: {e}"),
            ))
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_GATEWAY,
                &format!("handshake {authority}: {e}"),
            ))
        }
    };
    // The upstream connection ends with the answer's body, or at a cut.
    tokio::spawn(async move {
        tokio::select! {
            _ = generation.cancelled() => {}
            _ = conn => {}
        }
    });
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_GATEWAY,
                &format!("forward to {authority}: {e}"),
            ))
        }
    };
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}
