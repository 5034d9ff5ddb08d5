//! Typed client for the subset of Consul's HTTP API that simpleloggers uses: KV, sessions, agent
//! services and checks, health, transactions and blocking queries. The same code talks to a real
//! Consul agent in clusters and to `simpleloggers dev-consul` in tests and the demo.

mod agent;
mod client;
mod config;
mod duration;
mod error;
mod health;
mod kv;
mod session;
mod tls;
mod txn;
mod watch;

pub use agent::{AgentSelf, CheckDefinition, CheckStatus, ServiceRegistration};
pub use client::{operation, ConsulClient, QueryMeta, QueryOptions, RequestObserver};
pub use config::{ConsulConfig, DEFAULT_ADDR, DEFAULT_TIMEOUT};
pub use duration::format_go_duration;
pub use error::{ConsulError, MissingPermission};
pub use health::{HealthCheck, HealthNode, HealthService, ServiceEntry};
pub use kv::{DeleteOptions, KvPair, PutOptions};
pub use session::{Behavior, ServiceCheckRef, SessionInfo, SessionRequest};
pub use txn::{TxnError, TxnOp, TxnOutcome};
pub use watch::{Backoff, Watcher};

/// Result type of the Consul client.
pub type Result<T, E = ConsulError> = std::result::Result<T, E>;
