//! Harness shared by the producer's black-box tests: a fake leader (axum on 127.0.0.1:0) that
//! stores batches by (producer id, seq) with duplicate detection like the real node and can be
//! told to fail, stall or drop connections; and a fake Consul KV serving the election key with
//! blocking queries, so discovery and failover run over real HTTP.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use simpleloggers::{
    consul::KvPair,
    discovery::LeaderRecord,
    producer::{Ack, Summary},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// Waits until `cond` holds, checking every 10 ms; panics with `what` after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit` (a hung test fails).
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// One stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub producer_id: String,
    pub seq: u64,
    pub message: String,
}

/// What a request carried.
#[derive(Clone, Debug)]
pub struct Seen {
    pub producer_id: Option<String>,
    pub seq: Option<u64>,
    pub content_type: Option<String>,
    pub lines: usize,
}

/// Storage that several fake nodes can share (as if replicated), so "stored exactly once"
/// can be checked across a failover.
#[derive(Default)]
pub struct Store {
    pub log: Vec<Entry>,
    /// (producer id, first seq) -> (first offset, count).
    pub batches: HashMap<(String, u64), (u64, u64)>,
}

/// A misbehaviour for the next request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status with a JSON error (and the leader header, if given), store nothing.
    Status { status: u16, leader: Option<String> },
    /// Store the batch, then answer 503: the acknowledgement is lost.
    StoreThenUnavailable,
    /// Wait this long before handling the request normally (past the client's timeout).
    Stall(Duration),
    /// Store the batch, then wait this long before answering: the client times out although
    /// the batch is stored.
    StoreThenStall(Duration),
}

/// How the fake node behaves when it has no scripted fault.
#[derive(Clone, Debug)]
pub enum Role {
    Leader,
    /// Answers 503 naming this leader (`host:port`), if any.
    Follower(Option<String>),
}

struct NodeState {
    faults: VecDeque<Fault>,
    role: Role,
    term: u64,
    requests: Vec<Seen>,
    /// Batches containing this text are rejected with 400.
    poison: Option<String>,
}

#[derive(Clone)]
struct Shared {
    node: Arc<Mutex<NodeState>>,
    store: Arc<Mutex<Store>>,
}

/// A fake simpleloggers node serving `POST /api/v1/log`.
pub struct FakeNode {
    pub addr: SocketAddr,
    shared: Shared,
    drops: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener that closes the next `drops` connections right after accepting them.
struct DroppingListener {
    inner: TcpListener,
    drops: Arc<AtomicUsize>,
}

impl axum::serve::Listener for DroppingListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.inner.accept().await else {
                continue;
            };
            let drop_it = self
                .drops
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if drop_it {
                drop(stream);
                continue;
            }
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl FakeNode {
    /// A leader with its own store.
    pub async fn start() -> Self {
        Self::start_sharing(Arc::default()).await
    }

    /// A leader storing into `store`.
    pub async fn start_sharing(store: Arc<Mutex<Store>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Shared {
            node: Arc::new(Mutex::new(NodeState {
                faults: VecDeque::new(),
                role: Role::Leader,
                term: 1,
                requests: Vec::new(),
                poison: None,
            })),
            store,
        };
        let drops = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/api/v1/log", post(write))
            .with_state(shared.clone());
        let listener = DroppingListener {
            inner: listener,
            drops: drops.clone(),
        };
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake node serves");
        });
        Self {
            addr,
            shared,
            drops,
            task,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:port`, as a leader record or hint names it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn store(&self) -> Arc<Mutex<Store>> {
        self.shared.store.clone()
    }

    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.node.lock().unwrap().faults.extend(faults);
    }

    pub fn drop_next_connections(&self, n: usize) {
        self.drops.store(n, Ordering::SeqCst);
    }

    pub fn set_role(&self, role: Role) {
        self.shared.node.lock().unwrap().role = role;
    }

    pub fn set_term(&self, term: u64) {
        self.shared.node.lock().unwrap().term = term;
    }

    pub fn poison(&self, text: &str) {
        self.shared.node.lock().unwrap().poison = Some(text.to_string());
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.shared.node.lock().unwrap().requests.clone()
    }

    /// Stored messages, in log order.
    pub fn messages(&self) -> Vec<String> {
        self.shared
            .store
            .lock()
            .unwrap()
            .log
            .iter()
            .map(|e| e.message.clone())
            .collect()
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.shared.store.lock().unwrap().log.clone()
    }

    pub fn stored(&self) -> usize {
        self.shared.store.lock().unwrap().log.len()
    }
}

fn error(status: u16, message: &str, leader: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status).expect("a valid status");
    let mut body = json!({ "error": message });
    let mut headers = HeaderMap::new();
    if let Some(leader) = leader {
        body["leader"] = json!({ "name": "other", "address": leader });
        headers.insert("x-simpleloggers-leader", leader.parse().expect("header value"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert("retry-after", "1".parse().expect("header value"));
    }
    (status, headers, Json(body)).into_response()
}

async fn write(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let producer_id = header("x-producer-id");
    let seq = header("x-producer-seq").and_then(|s| s.parse::<u64>().ok());
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let (fault, role, term, poison) = {
        let mut node = shared.node.lock().unwrap();
        node.requests.push(Seen {
            producer_id: producer_id.clone(),
            seq,
            content_type: header("content-type"),
            lines: lines.len(),
        });
        (
            node.faults.pop_front(),
            node.role.clone(),
            node.term,
            node.poison.clone(),
        )
    };
    let mut lose_ack = false;
    let mut stall_after = None;
    match fault {
        Some(Fault::Status { status, leader }) => {
            return error(status, "scripted failure", leader.as_deref());
        }
        Some(Fault::Stall(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::StoreThenUnavailable) => lose_ack = true,
        Some(Fault::StoreThenStall(delay)) => stall_after = Some(delay),
        None => {}
    }
    if let Role::Follower(leader) = role {
        return error(503, "not the leader", leader.as_deref());
    }
    let (Some(producer_id), Some(seq)) = (producer_id, seq) else {
        return error(400, "missing X-Producer-Id or X-Producer-Seq", None);
    };
    let mut messages = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<String>(line) {
            Ok(m) => messages.push(m),
            Err(_) => return error(400, &format!("line {} is not a JSON string", i + 1), None),
        }
    }
    if messages.is_empty() {
        return error(400, "empty batch", None);
    }
    if let Some(poison) = poison {
        if messages.iter().any(|m| m.contains(&poison)) {
            return error(400, "poisoned message", None);
        }
    }
    let answer = {
        let mut store = shared.store.lock().unwrap();
        let key = (producer_id.clone(), seq);
        if let Some(&(first, count)) = store.batches.get(&key) {
            json!({"first_offset": first, "last_offset": first + count - 1, "count": count, "term": term, "duplicate": true})
        } else {
            let first = store.log.len() as u64;
            let count = messages.len() as u64;
            for (i, message) in messages.into_iter().enumerate() {
                store.log.push(Entry {
                    producer_id: producer_id.clone(),
                    seq: seq + i as u64,
                    message,
                });
            }
            store.batches.insert(key, (first, count));
            json!({"first_offset": first, "last_offset": first + count - 1, "count": count, "term": term, "duplicate": false})
        }
    };
    if let Some(delay) = stall_after {
        tokio::time::sleep(delay).await;
    }
    if lose_ack {
        return error(503, "stored, but the lease lapsed before the answer", None);
    }
    Json(answer).into_response()
}

/// A fake Consul KV: `GET /v1/kv/<key>` with blocking queries (`?index=`), enough for
/// `discovery::watch_leader`.
pub struct FakeConsul {
    pub addr: SocketAddr,
    tx: KvCell,
    task: JoinHandle<()>,
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The election key's Consul index and entry.
type KvCell = Arc<watch::Sender<(u64, Option<KvPair>)>>;

#[derive(serde::Deserialize)]
struct KvQuery {
    index: Option<u64>,
}

async fn kv_get(State(tx): State<KvCell>, Query(q): Query<KvQuery>) -> Response {
    let mut rx = tx.subscribe();
    let current = rx.borrow_and_update().0;
    if q.index.is_some_and(|i| i >= current) {
        // Block until a change or a short wait (the real wait is longer; shorter is allowed).
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
    }
    let (index, pair) = rx.borrow().clone();
    let mut headers = HeaderMap::new();
    headers.insert("x-consul-index", index.to_string().parse().expect("header value"));
    match pair {
        Some(pair) => (StatusCode::OK, headers, Json(vec![pair])).into_response(),
        None => (StatusCode::NOT_FOUND, headers).into_response(),
    }
}

impl FakeConsul {
    /// A Consul whose election key is absent.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let tx = Arc::new(watch::channel((1, None)).0);
        let app = Router::new()
            .route("/v1/kv/{*key}", get(kv_get))
            .with_state(tx.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake consul serves");
        });
        Self { addr, tx, task }
    }

    /// Names `address` as the leader (held lock, term `term`), or clears the key with `None`.
    pub fn set_leader(&self, leader: Option<(&str, &str)>, term: u64) {
        let pair = leader.map(|(name, address)| {
            let record = LeaderRecord {
                name: name.into(),
                address: address.into(),
                replication_address: None,
                since: "2026-01-01T00:00:00Z".into(),
                term: None,
            };
            KvPair {
                key: "service/simpleloggers/leader".into(),
                value: serde_json::to_vec(&record).expect("record serialises"),
                session: Some(format!("session-{term}")),
                lock_index: term,
                ..KvPair::default()
            }
        });
        self.tx.send_modify(|(index, current)| {
            *index += 1;
            *current = pair;
        });
    }
}

/// Checks `acks` against the store: every acknowledged message is at its offset, with its seq.
pub fn check_acks(acks: &[Ack], entries: &[Entry], summary: &Summary) {
    let mut total = 0;
    for ack in acks {
        for i in 0..ack.count {
            let entry = &entries[(ack.first_offset + i) as usize];
            assert_eq!(entry.seq, ack.seq + i, "ack {ack:?} points at {entry:?}");
            assert_eq!(entry.producer_id, summary.producer_id);
        }
        total += ack.count;
    }
    assert_eq!(total, summary.acknowledged, "acks add up to the summary");
}

/// Drains an unbounded receiver.
pub fn drain<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        out.push(item);
    }
    out
}
