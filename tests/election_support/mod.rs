//! Elector-level test harness: a dev Consul on 127.0.0.1 (restartable on its address, which loses
//! its state), electors started in-process with fast timings, each with its own tiny HTTP server
//! answering `/consul-check`, and [`FakeReplica`], a `LocalReplica` whose log facts the test sets.

#![allow(dead_code)] // each test file uses a different part

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use devconsul::DevConsulHandle;
use simpleloggers::{
    consul::{ConsulClient, QueryOptions},
    election::{ElectionConfig, Elector, LeaderState, ReplicaSetup, Role},
    replication::isr::{IsrState, LocalReplica, Member, ReplicationKeys, TermRecord},
    shutdown::CancellationToken,
};

/// The election key every test uses.
pub const KEY: &str = "service/simpleloggers/leader";
/// Generous bound for one election step on a loaded machine (check 250 ms, lock-delay 1 s).
pub const WAIT: Duration = Duration::from_secs(20);

/// A local log as the elector sees it; the test sets what it holds.
#[derive(Debug)]
pub struct FakeReplica {
    facts: Mutex<(String, Option<u64>, u64)>,
}

impl FakeReplica {
    /// A log with incarnation `inc-<name>`, last term `last_term` and durable end `log_end`.
    pub fn new(name: &str, last_term: Option<u64>, log_end: u64) -> Arc<Self> {
        Arc::new(Self {
            facts: Mutex::new((format!("inc-{name}"), last_term, log_end)),
        })
    }

    /// As if the log now ended at `log_end` with a last record in `last_term`.
    pub fn set(&self, last_term: Option<u64>, log_end: u64) {
        let mut facts = self.facts.lock().unwrap();
        facts.1 = last_term;
        facts.2 = log_end;
    }
}

impl LocalReplica for FakeReplica {
    fn incarnation(&self) -> String {
        self.facts.lock().unwrap().0.clone()
    }
    fn last_term(&self) -> Option<u64> {
        self.facts.lock().unwrap().1
    }
    fn log_end(&self) -> u64 {
        self.facts.lock().unwrap().2
    }
}

/// A dev Consul that can be restarted on the same address (empty, as after a state loss).
pub struct Consul {
    handle: Option<DevConsulHandle>,
    addr: SocketAddr,
    pub client: ConsulClient,
}

fn consul_config(listen: SocketAddr) -> devconsul::Config {
    devconsul::Config {
        listen,
        session_ttl_min: Duration::from_secs(1),
        check_interval_min: Duration::from_millis(250),
        ..devconsul::Config::ephemeral()
    }
}

impl Consul {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        let handle = devconsul::spawn(consul_config("127.0.0.1:0".parse().unwrap()))
            .await
            .expect("start the dev Consul");
        let addr = handle.addr();
        Self {
            client: ConsulClient::from_addr(handle.url()).unwrap(),
            handle: Some(handle),
            addr,
        }
    }

    /// Stops it and starts a new, empty one on the same address: Consul lost its state.
    pub async fn restart_empty(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await.expect("stop the dev Consul");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match devconsul::spawn(consul_config(self.addr)).await {
                Ok(handle) => {
                    self.handle = Some(handle);
                    return;
                }
                Err(err) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {err}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("restart the dev Consul on {}: {err}", self.addr),
            }
        }
    }

    /// Reads `key`'s value as JSON (`None`: absent) with its pair.
    pub async fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let (pair, _) = self.client.kv_get(key, &QueryOptions::default()).await.unwrap();
        pair.map(|p| serde_json::from_slice(&p.value).unwrap_or_else(|e| panic!("{key}: {e}")))
    }

    /// The term key's record.
    pub async fn term(&self) -> Option<TermRecord> {
        self.json(&ReplicationKeys::new(KEY).term).await
    }

    /// The ISR key's value.
    pub async fn isr(&self) -> Option<IsrState> {
        self.json(&ReplicationKeys::new(KEY).isr).await
    }

    /// The session holding the election key.
    pub async fn holder(&self) -> Option<String> {
        let (pair, _) = self.client.kv_get(KEY, &QueryOptions::default()).await.unwrap();
        pair.and_then(|p| p.session)
    }
}

/// One elector with its `/consul-check` server and its fake log.
pub struct Node {
    pub name: String,
    pub elector: Elector,
    pub replica: Arc<FakeReplica>,
    check: CancellationToken,
}

/// Replication settings of a test node.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub replicas: u32,
    pub min_insync: u32,
    pub unclean: bool,
}

impl Settings {
    /// `--replicas n` with the default majority `--min-insync`.
    pub fn replicas(n: u32) -> Self {
        Self {
            replicas: n,
            min_insync: n / 2 + 1,
            unclean: false,
        }
    }

    /// With `--unclean-leader-election`.
    pub fn unclean(self) -> Self {
        Self {
            unclean: true,
            ..self
        }
    }
}

impl Node {
    /// Starts elector `name` against `consul` with the fast timings.
    pub async fn start(consul: &Consul, name: &str, replica: Arc<FakeReplica>, settings: Settings) -> Node {
        let check = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/consul-check", axum::routing::get(|| async { "ok" }));
        let stop = check.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .ok();
        });
        let mut config = ElectionConfig::new(name, addr.to_string());
        config.session_ttl = Duration::from_secs(2);
        config.lock_delay = Duration::from_secs(1);
        config.renew_interval = Duration::from_millis(200);
        config.check_interval = Duration::from_millis(250);
        config.lease_margin = simpleloggers::election::default_lease_margin(config.lock_delay);
        config.validate().unwrap();
        let local: Arc<dyn LocalReplica> = replica.clone();
        let elector = Elector::start_replicated(
            consul.client.clone(),
            config,
            ReplicaSetup {
                replicas: settings.replicas,
                min_insync: settings.min_insync,
                unclean_leader_election: settings.unclean,
                local,
            },
        );
        Node {
            name: name.into(),
            elector,
            replica,
            check,
        }
    }

    /// This node as an ISR member.
    pub fn member(&self) -> Member {
        Member {
            name: self.name.clone(),
            incarnation: self.replica.incarnation(),
        }
    }

    /// Waits until the published state satisfies `pred` (panics after [`WAIT`]).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&LeaderState) -> bool) -> LeaderState {
        let mut rx = self.elector.subscribe();
        let found = match tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s))).await {
            Ok(Ok(state)) => Some(state.clone()),
            _ => None,
        };
        found.unwrap_or_else(|| {
            panic!(
                "{}: not {what} within {WAIT:?}: {:?}",
                self.name,
                self.elector.current()
            )
        })
    }

    /// Waits until its ISR handle sees an ISR key; returns it.
    pub async fn wait_isr(&self) -> simpleloggers::replication::isr::IsrRecord {
        let mut rx = self.elector.isr().subscribe();
        let found = match tokio::time::timeout(WAIT, rx.wait_for(|r| r.is_some())).await {
            Ok(Ok(record)) => record.clone(),
            _ => None,
        };
        found.unwrap_or_else(|| panic!("{}: no ISR seen within {WAIT:?}", self.name))
    }

    /// Waits until it leads; returns the state.
    pub async fn wait_leader(&self) -> LeaderState {
        self.wait_for("leader", |s| s.role == Role::Leader).await
    }

    /// Graceful stop: releases the lock, destroys the session, stops the check server.
    pub async fn stop(self) {
        self.elector.resign().await;
        self.check.cancel();
    }
}

/// Asserts that, for `window`, none of `nodes` becomes leader (polling every 50 ms): what a node
/// that may not lead must keep to while the lock is free.
pub async fn assert_no_leader_for(nodes: &[&Node], window: Duration) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        for n in nodes {
            let state = n.elector.current();
            assert_ne!(state.role, Role::Leader, "{} leads: {state:?}", n.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
